#!/usr/bin/env bash
# One-command deployment of keepfn to AWS (package + terraform apply).
#
#   export TF_VAR_blob_signing_key=... TF_VAR_system_root_token=... TF_VAR_management_token=...
#   cp infra/aws/terraform.tfvars.example infra/aws/terraform.tfvars   # and fill it in
#   infra/aws/deploy.sh [extra terraform apply arguments]
#
# Needs: terraform >= 1.6, AWS credentials for the target account, node 20+.
# Not run in this repository's CI (no cloud account there); see infra/README.md.
set -euo pipefail

root=$(cd "$(dirname "$0")/../.." && pwd)
dir=$root/infra/aws

if [ ! -f "$dir/terraform.tfvars" ]; then
  echo "deploy: create $dir/terraform.tfvars from terraform.tfvars.example first" >&2
  exit 2
fi
if grep -nE '"<[a-z-]+>"' "$dir/terraform.tfvars"; then
  echo "deploy: replace the <placeholders> above in terraform.tfvars first" >&2
  exit 2
fi
for v in TF_VAR_blob_signing_key TF_VAR_system_root_token TF_VAR_management_token; do
  if [ -z "${!v:-}" ]; then
    echo "deploy: export $v first (see infra/README.md)" >&2
    exit 2
  fi
done

(cd "$root" && npm run --silent package -- lambda)

terraform -chdir="$dir" init -input=false
terraform -chdir="$dir" apply -input=false "$@"
echo "Keep service URL: $(terraform -chdir="$dir" output -raw keep_service_url)"
