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

# The host key APIM sends (x-functions-key), the same value APIM reads from Key Vault. Host keys
# live in the running Functions host, so this comes after the code: a freshly published app may
# take a minute or two to start answering key operations, hence up to 2 minutes of retries. The
# value goes to az through a private file (az reads @file arguments), never on a command line
# another user could read in ps, and is never printed.
keyfile=$(mktemp)
trap 'rm -f "$keyfile"' EXIT
chmod 600 "$keyfile"
printf '%s' "$KEEPFN_APIM_FUNCTION_KEY" > "$keyfile"
for attempt in 1 2 3 4 5 6 7; do
  if az functionapp keys set --resource-group "$rg" --name "$app" \
      --key-type functionKeys --key-name apim --key-value "@$keyfile" --output none; then
    break
  fi
  if [ "$attempt" = 7 ]; then
    echo "deploy: could not set the APIM host key on $app; run infra/azure/deploy.sh again" >&2
    exit 1
  fi
  echo "deploy: the Functions host is not ready for key operations yet; retrying in 20 s" >&2
  sleep 20
done

echo "keepfn is deployed. Keep service URL: $url"
