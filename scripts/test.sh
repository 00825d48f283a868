#!/usr/bin/env bash
# Install whatever is missing (project-local .venv, see scripts/setup_env.sh) and run the test suite.
# Extra arguments go to pytest, e.g. scripts/test.sh -m "not slow".
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
py="$(scripts/setup_env.sh)"
export MPLBACKEND=Agg HF_HUB_OFFLINE="${HF_HUB_OFFLINE:-1}" TRANSFORMERS_OFFLINE="${TRANSFORMERS_OFFLINE:-1}"
exec "$py" -m pytest -q "$@"
