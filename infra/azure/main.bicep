// keepfn on Azure: a Keep block store served by Azure Functions over Azure Blob containers,
// fronted by API Management. Deploy into an existing resource group:
//
//   infra/azure/deploy.sh <resource-group>      (see infra/README.md)
//
// Plan choice: Flex Consumption (FC1). Keep clients PUT and GET 64 MiB blocks. Every Functions
// plan accepts request bodies up to the host's FUNCTIONS_REQUEST_BODY_SIZE_LIMIT (default
// 104857600 bytes, ~100 MB, hard ceiling 210 MB) and must answer an HTTP trigger within 230 s
// (the load balancer's idle timeout), so the body limit does not decide the plan. What does:
//   - HTTP streaming (app.setup({ enableHttpStream: true })) so a 64 MiB body is not buffered
//     twice: supported on Flex Consumption and Premium (Elastic Premium EP1+);
//   - the runtime storage reached by managed identity, including the deployment package:
//     Flex Consumption supports identity for AzureWebJobsStorage *and* for its deployment
//     container; Premium still needs a key-based Azure Files content share (WEBSITE_CONTENTAZUREFILECONNECTIONSTRING);
//   - memory: each in-flight 64 MiB block costs ~64 MiB; Flex instances have 2048 or 4096 MB and
//     a per-instance HTTP concurrency we set from that (instanceMemoryMB / 128);
//   - cost: Flex scales to zero; Premium bills an always-on instance.
// Switch to Premium (EP1) only if you need features Flex lacks in your region.
//
// API Management must be a Classic tier (Developer, Basic, Standard, Premium): the gateway then
// neither buffers nor time-limits large bodies. V2 tiers and Consumption buffer at most 2 MiB and
// cap a request at 30 s, which breaks 64 MiB PUTs; they are not allowed below.
//
// Secrets live only in Key Vault: the volume account key (copied there from listKeys, never
// passed through a parameter), the blob signing key, the SystemRootToken, the ManagementToken and
// the function key APIM presents. The app reads them with its system-assigned identity, which
// holds Key Vault Secrets User on this vault and nothing else besides Storage Blob Data Owner on
// its own runtime storage account (required by the Functions host for identity-based
// AzureWebJobsStorage). APIM's identity may read exactly one secret: the function key.

targetScope = 'resourceGroup'

// ---------------------------------------------------------------- parameters

@description('Short lowercase prefix for resource names (letters and digits).')
@minLength(3)
@maxLength(10)
param namePrefix string = 'keepfn'

@description('Azure region for every resource (must offer Flex Consumption).')
param location string = resourceGroup().location

@description('Arvados cluster id (five characters, e.g. zzzzz).')
@minLength(5)
@maxLength(5)
param clusterId string

@description('Federated clusters whose +R blocks this app reads for its clients, as comma-separated id=URL pairs of their API servers, e.g. xyzzy=https://api.xyzzy.example. Empty: none.')
param remoteClusters string = ''

@description('Blob containers to create in the volume storage account; each becomes one Keep volume.')
@minLength(1)
param volumeContainers array = [
  'keep0'
]

@description('Replication level reported to Keep clients for each Azure volume (like -azure-storage-replication).')
@minValue(1)
param volumeReplication int = 3

@description('Redundancy of the volume storage account.')
@allowed([
  'Standard_LRS'
  'Standard_ZRS'
  'Standard_GRS'
  'Standard_GZRS'
  'Standard_RAGRS'
  'Standard_RAGZRS'
])
param volumeStorageSku string = 'Standard_ZRS'

@description('Which of the two volume account keys is copied into Key Vault (flip it during key rotation, see infra/README.md).')
@allowed([
  0
  1
])
param activeVolumeKeyIndex int = 0

@description('NCRONTAB schedule (six fields, seconds first) of the timer that empties expired trash.')
param trashSweepSchedule string = '0 */30 * * * *'

@description('How long a trashed block stays recoverable before the sweep deletes it (Go duration, like -trash-lifetime).')
param trashLifetime string = '336h'

@description('How long an instance uses the signing key and tokens read from Key Vault before re-reading them (Go duration): a rotated secret is served within this time, without a restart.')
param secretsCacheTtl string = '5m'

@description('Honour trash requests at all (false = the reference\'s -never-delete=true).')
param trashEnabled bool = true

@description('Lifetime of blob permission signatures in seconds (Collections.BlobSigningTTL).')
@minValue(1)
param blobSignatureTtlSeconds int = 1209600

@description('Require valid +A signatures on GET and HEAD (like -enforce-permissions).')
param enforcePermissions bool = true

@description('Node.js version of the Functions runtime.')
@allowed([
  '20'
  '22'
])
param nodeVersion string = '22'

@description('Memory per Flex Consumption instance, in MB.')
@allowed([
  2048
  4096
])
param instanceMemoryMB int = 2048

@description('Upper bound on Flex Consumption instances.')
@minValue(1)
@maxValue(1000)
param maximumInstanceCount int = 40

@description('API Management tier. Classic tiers only: V2 and Consumption buffer bodies over 2 MiB and stop requests at 30 s.')
@allowed([
  'Developer'
  'Basic'
  'Standard'
  'Premium'
])
param apimSku string = 'Basic'

@description('Publisher e-mail shown by API Management (required by the service).')
param apimPublisherEmail string

@description('Publisher name shown by API Management.')
param apimPublisherName string = 'keepfn operator'

@description('Days to keep logs in the Log Analytics workspace.')
@minValue(30)
param logRetentionDays int = 30

@secure()
@description('Arvados BlobSigningKey (the same value as the cluster config). Stored only in Key Vault.')
@minLength(32)
param blobSigningKey string

@secure()
@description('Arvados SystemRootToken (the data manager / keep-balance token). Stored only in Key Vault.')
@minLength(32)
param systemRootToken string

@secure()
@description('Arvados ManagementToken for /metrics and /_health. Stored only in Key Vault.')
@minLength(32)
param managementToken string

@secure()
@description('Function host key that API Management presents to the Function App (generate a random one).')
@minLength(32)
param apimFunctionKey string

// ---------------------------------------------------------------- names and constants

var token = toLower(uniqueString(resourceGroup().id, namePrefix))
var runtimeStorageName = take('${namePrefix}fn${token}', 24)
var volumeStorageName = take('${namePrefix}vol${token}', 24)
var keyVaultName = take('${namePrefix}-kv-${token}', 24)
var functionAppName = '${namePrefix}-func-${token}'
var apimName = '${namePrefix}-apim-${token}'
var deploymentContainerName = 'app-package'

// Built-in role definition ids (https://learn.microsoft.com/azure/role-based-access-control/built-in-roles).
var roleKeyVaultSecretsUser = '4633458b-17de-408a-b874-0445c86b69e6'
var roleStorageBlobDataOwner = 'b7e6dc6d-f1e8-4753-8033-0f276bb0955b'

// Key Vault secret names the app reads (the names are app settings below, the values never are).
var secretVolumeKey = 'volume-account-key'
var secretBlobSigningKey = 'blob-signing-key'
var secretSystemRootToken = 'system-root-token'
var secretManagementToken = 'management-token'
var secretApimFunctionKey = 'apim-function-key'

// ---------------------------------------------------------------- monitoring

resource logs 'Microsoft.OperationalInsights/workspaces@2023-09-01' = {
  name: '${namePrefix}-logs-${token}'
  location: location
  properties: {
    sku: {
      name: 'PerGB2018'
    }
    retentionInDays: logRetentionDays
  }
}

resource appInsights 'Microsoft.Insights/components@2020-02-02' = {
  name: '${namePrefix}-ai-${token}'
  location: location
  kind: 'web'
  properties: {
    Application_Type: 'web'
    WorkspaceResourceId: logs.id
  }
}

// ---------------------------------------------------------------- storage

// The Functions host's own storage: locks, timer schedule state, the deployment package.
// Reached only by managed identity: shared keys are disabled on this account.
resource runtimeStorage 'Microsoft.Storage/storageAccounts@2023-05-01' = {
  name: runtimeStorageName
  location: location
  kind: 'StorageV2'
  sku: {
    name: 'Standard_LRS'
  }
  properties: {
    supportsHttpsTrafficOnly: true
    minimumTlsVersion: 'TLS1_2'
    allowBlobPublicAccess: false
    allowSharedKeyAccess: false
    defaultToOAuthAuthentication: true
  }
}

resource runtimeBlobService 'Microsoft.Storage/storageAccounts/blobServices@2023-05-01' = {
  parent: runtimeStorage
  name: 'default'
}

resource deploymentContainer 'Microsoft.Storage/storageAccounts/blobServices/containers@2023-05-01' = {
  parent: runtimeBlobService
  name: deploymentContainerName
  properties: {
    publicAccess: 'None'
  }
}

// The Keep volumes. keepfn uses the account key (as the reference keepstore does), read from
// Key Vault; the key is copied into Key Vault by this template and never leaves Azure.
resource volumeStorage 'Microsoft.Storage/storageAccounts@2023-05-01' = {
  name: volumeStorageName
  location: location
  kind: 'StorageV2'
  sku: {
    name: volumeStorageSku
  }
  properties: {
    accessTier: 'Hot'
    supportsHttpsTrafficOnly: true
    minimumTlsVersion: 'TLS1_2'
    allowBlobPublicAccess: false
    allowSharedKeyAccess: true
  }
}

resource volumeBlobService 'Microsoft.Storage/storageAccounts/blobServices@2023-05-01' = {
  parent: volumeStorage
  name: 'default'
}

resource volumeContainer 'Microsoft.Storage/storageAccounts/blobServices/containers@2023-05-01' = [
  for name in volumeContainers: {
    parent: volumeBlobService
    name: name
    properties: {
      publicAccess: 'None'
    }
  }
]

// ---------------------------------------------------------------- Key Vault

resource keyVault 'Microsoft.KeyVault/vaults@2023-07-01' = {
  name: keyVaultName
  location: location
  properties: {
    tenantId: subscription().tenantId
    sku: {
      family: 'A'
      name: 'standard'
    }
    enableRbacAuthorization: true
    enableSoftDelete: true
    softDeleteRetentionInDays: 90
    enablePurgeProtection: true
    publicNetworkAccess: 'Enabled'
  }
}

resource volumeKeySecret 'Microsoft.KeyVault/vaults/secrets@2023-07-01' = {
  parent: keyVault
  name: secretVolumeKey
  properties: {
    value: volumeStorage.listKeys().keys[activeVolumeKeyIndex].value
    contentType: 'Azure Storage account key of ${volumeStorageName}'
  }
}

resource blobSigningKeySecret 'Microsoft.KeyVault/vaults/secrets@2023-07-01' = {
  parent: keyVault
  name: secretBlobSigningKey
  properties: {
    value: blobSigningKey
    contentType: 'Arvados BlobSigningKey'
  }
}

resource systemRootTokenSecret 'Microsoft.KeyVault/vaults/secrets@2023-07-01' = {
  parent: keyVault
  name: secretSystemRootToken
  properties: {
    value: systemRootToken
    contentType: 'Arvados SystemRootToken'
  }
}

resource managementTokenSecret 'Microsoft.KeyVault/vaults/secrets@2023-07-01' = {
  parent: keyVault
  name: secretManagementToken
  properties: {
    value: managementToken
    contentType: 'Arvados ManagementToken'
  }
}

resource apimFunctionKeySecret 'Microsoft.KeyVault/vaults/secrets@2023-07-01' = {
  parent: keyVault
  name: secretApimFunctionKey
  properties: {
    value: apimFunctionKey
    contentType: 'Functions host key presented by API Management'
  }
}

// ---------------------------------------------------------------- API Management

// Declared before the Function App because the app's access restriction names APIM's address.
resource apim 'Microsoft.ApiManagement/service@2022-08-01' = {
  name: apimName
  location: location
  sku: {
    name: apimSku
    capacity: 1
  }
  identity: {
    type: 'SystemAssigned'
  }
  properties: {
    publisherEmail: apimPublisherEmail
    publisherName: apimPublisherName
    customProperties: {
      'Microsoft.WindowsAzure.ApiManagement.Gateway.Security.Protocols.Tls10': 'False'
      'Microsoft.WindowsAzure.ApiManagement.Gateway.Security.Protocols.Tls11': 'False'
      'Microsoft.WindowsAzure.ApiManagement.Gateway.Security.Backend.Protocols.Tls10': 'False'
      'Microsoft.WindowsAzure.ApiManagement.Gateway.Security.Backend.Protocols.Tls11': 'False'
      'Microsoft.WindowsAzure.ApiManagement.Gateway.Security.Backend.Protocols.Ssl30': 'False'
      'Microsoft.WindowsAzure.ApiManagement.Gateway.Security.Ciphers.TripleDes168': 'False'
    }
  }
}

// ---------------------------------------------------------------- Function App

resource plan 'Microsoft.Web/serverfarms@2024-04-01' = {
  name: '${namePrefix}-plan-${token}'
  location: location
  kind: 'functionapp'
  sku: {
    tier: 'FlexConsumption'
    name: 'FC1'
  }
  properties: {
    reserved: true
  }
}

resource functionApp 'Microsoft.Web/sites@2024-04-01' = {
  name: functionAppName
  location: location
  kind: 'functionapp,linux'
  identity: {
    type: 'SystemAssigned'
  }
  properties: {
    serverFarmId: plan.id
    httpsOnly: true
    clientAffinityEnabled: false
    publicNetworkAccess: 'Enabled'
    siteConfig: {
      minTlsVersion: '1.2'
      scmMinTlsVersion: '1.2'
      ftpsState: 'Disabled'
      http20Enabled: true
      // Only API Management reaches the app: its (static, Classic-tier) public address is the
      // one allowed source; everything else gets 403 from the front end. The function key that
      // APIM adds is a second, independent barrier.
      ipSecurityRestrictionsDefaultAction: 'Deny'
      ipSecurityRestrictions: [
        {
          name: 'api-management'
          action: 'Allow'
          priority: 100
          ipAddress: '${apim.properties.publicIPAddresses[0]}/32'
        }
      ]
      // The deployment endpoint keeps its own rules (deploy.sh publishes the zip through it, with
      // Entra ID credentials: basic publishing credentials are disabled below).
      scmIpSecurityRestrictionsUseMain: false
    }
    functionAppConfig: {
      deployment: {
        storage: {
          type: 'blobContainer'
          value: '${runtimeStorage.properties.primaryEndpoints.blob}${deploymentContainerName}'
          authentication: {
            type: 'SystemAssignedIdentity'
          }
        }
      }
      scaleAndConcurrency: {
        maximumInstanceCount: maximumInstanceCount
        instanceMemoryMB: instanceMemoryMB
        triggers: {
          http: {
            // One 64 MiB block in flight costs ~64 MiB; leave half the instance for the runtime.
            perInstanceConcurrency: instanceMemoryMB / 128
          }
        }
      }
      runtime: {
        name: 'node'
        version: nodeVersion
      }
    }
  }
}

resource ftpPublishing 'Microsoft.Web/sites/basicPublishingCredentialsPolicies@2024-04-01' = {
  parent: functionApp
  name: 'ftp'
  properties: {
    allow: false
  }
}

resource scmPublishing 'Microsoft.Web/sites/basicPublishingCredentialsPolicies@2024-04-01' = {
  parent: functionApp
  name: 'scm'
  properties: {
    allow: false
  }
}

// ---------------------------------------------------------------- role assignments (least privilege)

// The app reads its secrets: Key Vault Secrets User (read secret values) on this vault only.
resource appKeyVaultSecretsUser 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(keyVault.id, functionApp.id, roleKeyVaultSecretsUser)
  scope: keyVault
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roleKeyVaultSecretsUser)
    principalId: functionApp.identity.principalId
    principalType: 'ServicePrincipal'
  }
}

// The Functions host's identity-based AzureWebJobsStorage (blob leases for the timer singleton,
// host keys, the deployment package) on the runtime account only, never the volume account.
resource appRuntimeBlobOwner 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(runtimeStorage.id, functionApp.id, roleStorageBlobDataOwner)
  scope: runtimeStorage
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roleStorageBlobDataOwner)
    principalId: functionApp.identity.principalId
    principalType: 'ServicePrincipal'
  }
}

// APIM resolves its named value from exactly one secret: the function key.
resource apimFunctionKeyReader 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(apimFunctionKeySecret.id, apim.id, roleKeyVaultSecretsUser)
  scope: apimFunctionKeySecret
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roleKeyVaultSecretsUser)
    principalId: apim.identity.principalId
    principalType: 'ServicePrincipal'
  }
}

// ---------------------------------------------------------------- app settings

// No secret values here: only where to find them (vault URL and secret names). The shape is
// what functions/settings.ts reads from KEEP_VOLUMES.
var keepVolumes = [
  for name in volumeContainers: {
    account: volumeStorageName
    container: name
    endpoint: volumeStorage.properties.primaryEndpoints.blob
    keySecret: secretVolumeKey
    replication: volumeReplication
    readOnly: false
    storageClasses: [
      'default'
    ]
  }
]

resource appSettings 'Microsoft.Web/sites/config@2024-04-01' = {
  parent: functionApp
  name: 'appsettings'
  properties: {
    // Functions host: identity-based runtime storage (no connection string, no key).
    AzureWebJobsStorage__accountName: runtimeStorage.name
    AzureWebJobsStorage__credential: 'managedidentity'
    APPLICATIONINSIGHTS_CONNECTION_STRING: appInsights.properties.ConnectionString
    // 64 MiB blocks plus headers fit well under the default; stated so nobody lowers it.
    FUNCTIONS_REQUEST_BODY_SIZE_LIMIT: '104857600'
    // keepfn (parsed by functions/settings.ts).
    KEEP_CLUSTER_ID: clusterId
    KEEP_KEYVAULT_URL: keyVault.properties.vaultUri
    KEEP_VOLUMES: string(keepVolumes)
    KEEP_BLOB_SIGNING_KEY_SECRET: secretBlobSigningKey
    KEEP_SYSTEM_ROOT_TOKEN_SECRET: secretSystemRootToken
    KEEP_MANAGEMENT_TOKEN_SECRET: secretManagementToken
    KEEP_SECRETS_CACHE_TTL: secretsCacheTtl
    KEEP_ENFORCE_PERMISSIONS: string(enforcePermissions)
    KEEP_BLOB_SIGNING_TTL: string(blobSignatureTtlSeconds)
    KEEP_TRASH_ENABLED: string(trashEnabled)
    KEEP_TRASH_LIFETIME: trashLifetime
    KEEP_REMOTE_CLUSTERS: remoteClusters
    // The timer trigger's schedule is "%KEEP_TRASH_SCHEDULE%".
    KEEP_TRASH_SCHEDULE: trashSweepSchedule
    // One 64 MiB buffer per concurrent request the instance accepts (see perInstanceConcurrency).
    KEEP_MAX_BUFFERS: string(instanceMemoryMB / 128)
    // Requests must carry the host key, which only API Management has.
    KEEP_FUNCTION_AUTH_LEVEL: 'function'
  }
  dependsOn: [
    appKeyVaultSecretsUser
    appRuntimeBlobOwner
    volumeKeySecret
    blobSigningKeySecret
    systemRootTokenSecret
    managementTokenSecret
    volumeContainer
    deploymentContainer
  ]
}

// The host key APIM presents (x-functions-key) is the secure parameter apimFunctionKey, kept in
// Key Vault (apimFunctionKeySecret), from where APIM reads it; it never appears in an app
// setting or an output. It is set on the app by deploy.sh after the code is published, not
// here: host keys are managed by the running Functions host, and a Flex app with no package
// yet has none (azure-functions-host #11379, bicep-types-az #1356: a functionKeys resource
// on a fresh app fails with BadRequest / "error from host runtime").

// ---------------------------------------------------------------- APIM: the Keep API

resource functionKeyNamedValue 'Microsoft.ApiManagement/service/namedValues@2022-08-01' = {
  parent: apim
  name: 'keepfn-function-key'
  properties: {
    displayName: 'keepfn-function-key'
    secret: true
    keyVault: {
      secretIdentifier: apimFunctionKeySecret.properties.secretUri
    }
  }
  dependsOn: [
    apimFunctionKeyReader
  ]
}

resource backend 'Microsoft.ApiManagement/service/backends@2022-08-01' = {
  parent: apim
  name: 'keepfn-functions'
  properties: {
    protocol: 'http'
    url: 'https://${functionApp.properties.defaultHostName}'
    credentials: {
      header: {
        'x-functions-key': [
          '{{keepfn-function-key}}'
        ]
      }
    }
    tls: {
      validateCertificateChain: true
      validateCertificateName: true
    }
  }
  dependsOn: [
    functionKeyNamedValue
  ]
}

// Keep clients address blocks at the root (/<hash>+<size>..., /index, /trash, /untrash/...),
// so the API has an empty URL suffix. Arvados clients authenticate with their own tokens
// (Authorization: OAuth2 ...); APIM subscription keys would break them, so none is required.
resource keepApi 'Microsoft.ApiManagement/service/apis@2022-08-01' = {
  parent: apim
  name: 'keep'
  properties: {
    displayName: 'Keep block store'
    path: ''
    protocols: [
      'https'
    ]
    subscriptionRequired: false
    serviceUrl: 'https://${functionApp.properties.defaultHostName}'
  }
}

// Every method the Functions app registers, including keepstore's TOUCH.
var keepMethods = [
  'GET'
  'HEAD'
  'PUT'
  'POST'
  'DELETE'
  'OPTIONS'
  'PATCH'
  'TOUCH'
]

resource keepOperations 'Microsoft.ApiManagement/service/apis/operations@2022-08-01' = [
  for method in keepMethods: {
    parent: keepApi
    name: 'keep-${toLower(method)}'
    properties: {
      displayName: '${method} /*'
      method: method
      urlTemplate: '/*'
    }
  }
]

// Streams both ways: neither the 64 MiB request nor the response is buffered in the gateway,
// and the gateway waits as long as the Functions front end does (230 s).
var keepApiPolicy = '''
<policies>
  <inbound>
    <base />
    <set-backend-service backend-id="keepfn-functions" />
  </inbound>
  <backend>
    <forward-request timeout="230" buffer-request-body="false" buffer-response="false" fail-on-error-status-code="false" />
  </backend>
  <outbound>
    <base />
  </outbound>
  <on-error>
    <base />
  </on-error>
</policies>
'''

resource keepApiPolicyResource 'Microsoft.ApiManagement/service/apis/policies@2022-08-01' = {
  parent: keepApi
  name: 'policy'
  properties: {
    format: 'rawxml'
    value: keepApiPolicy
  }
  dependsOn: [
    backend
  ]
}

// ---------------------------------------------------------------- outputs

@description('The Keep service URL clients use (API Management gateway).')
output keepServiceUrl string = apim.properties.gatewayUrl

@description('service_host for `arv keep_service create` (port 443, service_ssl_flag true).')
output keepServiceHost string = replace(apim.properties.gatewayUrl, 'https://', '')

output functionAppName string = functionApp.name
output keyVaultName string = keyVault.name
output volumeStorageAccount string = volumeStorage.name
output volumeContainerNames array = volumeContainers
