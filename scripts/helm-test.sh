#!/usr/bin/env bash
# Lints, validates and renders the Helm chart (deploy/helm/aviary) with Helm's Go SDK
# (PyPI helm-python-sdk, no helm binary) and runs the chart tests in deploy/helm/tests.
#
# Uses the project venv (.tools/venv, made by scripts/bootstrap.sh); creates it and installs
# the test packages when they are missing, so it also runs on its own. Extra arguments go to
# pytest, e.g. `scripts/helm-test.sh -k rbac`.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="$root/.tools/venv"
py="$venv/bin/python"

log() { printf 'helm-test: %s\n' "$*" >&2; }

if [ ! -x "$py" ]; then
  log "creating $venv"
  python3 -m venv "$venv"
fi
want=(helm-python-sdk pytest pyyaml)
missing=()
for pkg in "${want[@]}"; do
  "$py" -m pip show -q "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
  log "installing from PyPI: ${missing[*]}"
  "$py" -m pip install -q --disable-pip-version-check "${missing[@]}"
fi

cd "$root"
# No .pytest_cache or __pycache__ in the work tree.
export PYTHONDONTWRITEBYTECODE=1
exec "$py" -m pytest -q -p no:cacheprovider deploy/helm/tests "$@"
