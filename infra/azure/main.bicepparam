// Parameters for infra/azure/main.bicep. Replace every <placeholder>; deploy.sh refuses to run
// while one is left. The four secrets are read from environment variables at deploy time and
// are never written to this file: export them first (see infra/README.md).
using './main.bicep'

param namePrefix = 'keepfn'
param clusterId = '<cluster-id>'
param apimPublisherEmail = '<operator-email>'
param apimPublisherName = '<operator-name>'

param volumeContainers = [
  'keep0'
]
param volumeReplication = 3
param volumeStorageSku = 'Standard_ZRS'
param activeVolumeKeyIndex = 0

// Empty-trash timer (NCRONTAB, seconds first) and how long trashed blocks stay recoverable.
param trashSweepSchedule = '0 */30 * * * *'
param trashLifetime = '336h'
param trashEnabled = true

param blobSignatureTtlSeconds = 1209600
param enforcePermissions = true
param nodeVersion = '22'
param instanceMemoryMB = 2048
param maximumInstanceCount = 40
param apimSku = 'Basic'
param logRetentionDays = 30

param blobSigningKey = readEnvironmentVariable('KEEPFN_BLOB_SIGNING_KEY')
param systemRootToken = readEnvironmentVariable('KEEPFN_SYSTEM_ROOT_TOKEN')
param managementToken = readEnvironmentVariable('KEEPFN_MANAGEMENT_TOKEN')
param apimFunctionKey = readEnvironmentVariable('KEEPFN_APIM_FUNCTION_KEY')
