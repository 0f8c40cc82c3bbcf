#!/usr/bin/env bash
# One-command deployment of keepfn to Azure (infrastructure + Functions code).
#
#   export KEEPFN_BLOB_SIGNING_KEY=... KEEPFN_SYSTEM_ROOT_TOKEN=... KEEPFN_MANAGEMENT_TOKEN=...
#   export KEEPFN_APIM_FUNCTION_KEY=...        # generate once: openssl rand -hex 32; keep it
#   infra/azure/deploy.sh <resource-group> [parameters.bicepparam]
#
# Needs: az (logged in, with Bicep: az bicep install), node 20+, the repository checked out.
# Not run in this repository's CI (no cloud account there); see infra/README.md.
set -euo pipefail

rg=${1:?usage: infra/azure/deploy.sh <resource-group> [parameters.bicepparam]}
root=$(cd "$(dirname "$0")/../.." && pwd)
params=${2:-$root/infra/azure/main.bicepparam}

if grep -nE "'<[a-z-]+>'" "$params"; then
  echo "deploy: replace the <placeholders> above in $params first" >&2
  exit 2
fi
for v in KEEPFN_BLOB_SIGNING_KEY KEEPFN_SYSTEM_ROOT_TOKEN KEEPFN_MANAGEMENT_TOKEN KEEPFN_APIM_FUNCTION_KEY; do
  if [ -z "${!v:-}" ]; then
    echo "deploy: export $v first (see infra/README.md)" >&2
    exit 2
  fi
done

(cd "$root" && npm run --silent package -- functions)

outputs=$(az deployment group create \
  --resource-group "$rg" \
  --name keepfn \
  --parameters "$params" \
  --query properties.outputs --output json)

app=$(node -e 'console.log(JSON.parse(process.argv[1]).functionAppName.value)' "$outputs")
url=$(node -e 'console.log(JSON.parse(process.argv[1]).keepServiceUrl.value)' "$outputs")

az functionapp deployment source config-zip \
  --resource-group "$rg" --name "$app" --src "$root/artifacts/keepfn-functions.zip"

echo "keepfn is deployed. Keep service URL: $url"
