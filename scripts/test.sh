#!/usr/bin/env bash
# Install whatever is missing (project-local .venv, see scripts/setup_env.sh) and run the test suite.
# Extra arguments go to pytest, e.g. scripts/test.sh -m "not slow".
#
# Two pytest-xdist worker processes share the tests (MMSAE_TEST_WORKERS=N for another count, 0 for
# one process): each test file runs whole on one worker (--dist loadfile, so a module fixture such
# as the smoke run of tests/test_notebooks.py runs once), the long notebook files first
# (tests/conftest.py orders them; --no-loadscope-reorder keeps that order).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
py="$(scripts/setup_env.sh)"
export MPLBACKEND=Agg HF_HUB_OFFLINE="${HF_HUB_OFFLINE:-1}" TRANSFORMERS_OFFLINE="${TRANSFORMERS_OFFLINE:-1}"
workers="${MMSAE_TEST_WORKERS:-2}"
xdist=()
if [[ "$workers" != 0 ]]; then
  xdist=(-n "$workers" --dist loadfile --no-loadscope-reorder)
fi
exec "$py" -m pytest -q "${xdist[@]+"${xdist[@]}"}" "$@"
