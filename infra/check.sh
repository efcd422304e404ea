#!/usr/bin/env bash
# Offline checks of infra/ (what `make infra-check` runs, and so `make test`):
#   1. terraform fmt -check on every .tf file;
#   2. checkov, from a venv of its own (.venv-checkov, created on first use), with the
#      waivers and their reasons in infra/.checkov.yaml;
#   3. the terraform-compliance cases: infra/compliance/tests/{passing,failing}/*.json
#      are up to date with make_cases.py, and each passes or fails as expected.json says.
# No Google account or network is needed, except PyPI the first time .venv-checkov is made.
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
# terraform warns on every call when TF_CLI_CONFIG_FILE names a missing file; it is
# ignored anyway, so drop it rather than print a misleading "problems" banner.
if [[ -n ${TF_CLI_CONFIG_FILE:-} && ! -f $TF_CLI_CONFIG_FILE ]]; then
	unset TF_CLI_CONFIG_FILE
fi

VENV_PYTHON=${VENV_PYTHON:-.venv/bin/python}
TERRAFORM=${TERRAFORM:-terraform}
CHECKOV_VENV=${CHECKOV_VENV:-.venv-checkov}
BOOTSTRAP_PYTHON=${BOOTSTRAP_PYTHON:-python3.11}
CHECKOV_REQUIREMENTS=infra/requirements-checkov.txt

summary=()
status=0

run_step() {
	local name=$1
	shift
	local started=$SECONDS
	echo "==> ${name}"
	if "$@"; then
		summary+=("PASS  ${name} ($((SECONDS - started))s)")
	else
		summary+=("FAIL  ${name} ($((SECONDS - started))s)")
		status=1
	fi
	echo
}

terraform_fmt() {
	if ! command -v "$TERRAFORM" >/dev/null 2>&1; then
		echo "terraform is not installed: install Terraform >= 1.5 or set TERRAFORM=/path/to/terraform." >&2
		return 1
	fi
	"$TERRAFORM" fmt -check -recursive -diff infra && echo "All .tf files are formatted."
}

ensure_checkov() {
	# The stamp holds the requirements the venv was built from; a change rebuilds it.
	local stamp=$CHECKOV_VENV/.requirements
	if [[ -x $CHECKOV_VENV/bin/checkov ]] && cmp -s "$CHECKOV_REQUIREMENTS" "$stamp"; then
		return 0
	fi
	echo "Installing checkov into ${CHECKOV_VENV} from ${CHECKOV_REQUIREMENTS} (its own venv: it downgrades shared packages)"
	if [[ ! -x $CHECKOV_VENV/bin/python ]]; then
		"$BOOTSTRAP_PYTHON" -m venv "$CHECKOV_VENV" || return 1
	fi
	"$CHECKOV_VENV/bin/python" -m pip install --quiet --disable-pip-version-check \
		-r "$CHECKOV_REQUIREMENTS" || return 1
	cp "$CHECKOV_REQUIREMENTS" "$stamp"
}

checkov_scan() {
	ensure_checkov || return 1
	"$CHECKOV_VENV/bin/checkov" --config-file infra/.checkov.yaml --directory infra
}

compliance_cases() {
	# The cases run once, under pytest (tests/infra), so `make test` reports them with
	# the rest of the suite and does not run them a second time.
	"$VENV_PYTHON" infra/compliance/tests/make_cases.py --check &&
		"$VENV_PYTHON" -m pytest -q -p no:cacheprovider tests/infra
}

run_step "terraform fmt -check -recursive infra" terraform_fmt
run_step "checkov (waivers: infra/.checkov.yaml)" checkov_scan
run_step "terraform-compliance offline cases (infra/compliance/tests)" compliance_cases

echo "infra-check summary:"
printf '  %s\n' "${summary[@]}"
if ((status != 0)); then
	echo "infra-check FAILED" >&2
else
	echo "infra-check passed"
fi
exit "$status"
