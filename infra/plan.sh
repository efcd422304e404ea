#!/usr/bin/env bash
# The real-plan path (`make infra-plan`; needs a Google account and network):
# build the function source zip, terraform init + plan, terraform show -json, and
# terraform-compliance with infra/compliance/*.feature against that plan.
# Settings come from infra/terraform.tfvars (copy terraform.tfvars.example) or TF_VAR_*.
# It never applies: the last line prints the command that applies the checked plan.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
# terraform warns on every call when TF_CLI_CONFIG_FILE names a missing file; it is
# ignored anyway, so drop it rather than print a misleading "problems" banner.
if [[ -n ${TF_CLI_CONFIG_FILE:-} && ! -f $TF_CLI_CONFIG_FILE ]]; then
	unset TF_CLI_CONFIG_FILE
fi
ROOT=$PWD

VENV_PYTHON=${VENV_PYTHON:-$ROOT/.venv/bin/python}
TERRAFORM=${TERRAFORM:-terraform}
BUILD=$ROOT/build
SOURCE_ZIP=$BUILD/function-source.zip
PLAN=$BUILD/tfplan
PLAN_JSON=$BUILD/tfplan.json

if ! command -v "$TERRAFORM" >/dev/null 2>&1; then
	echo "terraform is not installed: install Terraform >= 1.5 or set TERRAFORM=/path/to/terraform." >&2
	exit 1
fi
if [[ ! -f infra/terraform.tfvars && -z ${TF_VAR_project_id:-} ]]; then
	echo "No settings: copy infra/terraform.tfvars.example to infra/terraform.tfvars and set project_id and name_prefix (or export TF_VAR_project_id and TF_VAR_name_prefix)." >&2
	exit 1
fi
mkdir -p "$BUILD"

echo "==> function source zip ($SOURCE_ZIP)"
"$VENV_PYTHON" -m functions.package --output "$SOURCE_ZIP"

echo "==> terraform init"
"$TERRAFORM" -chdir=infra init -input=false

echo "==> terraform plan"
"$TERRAFORM" -chdir=infra plan -input=false -out="$PLAN" -var "function_source_zip=$SOURCE_ZIP"

echo "==> terraform show -json"
# One line, as terraform-compliance expects.
"$TERRAFORM" -chdir=infra show -json "$PLAN" >"$PLAN_JSON"

echo "==> terraform-compliance"
"$ROOT/.venv/bin/terraform-compliance" --planfile "$PLAN_JSON" --features "$ROOT/infra/compliance" --no-ansi

echo
echo "The plan passes infra/compliance. Apply exactly this plan with:"
echo "  $TERRAFORM -chdir=infra apply $PLAN"
