#!/usr/bin/env bash
# Make sure a Python environment with mmsae and its tools exists; print its python path.
#
#   MMSAE_PYTHON=/path/to/python   use that interpreter (e.g. an activated conda env) as is
#   otherwise                      a project-local .venv is created or completed
#
# Installs: torch + torchvision (a pair that loads together), the package in editable mode
# with the notebook, encoder and test extras, pinned by requirements-lock.txt.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

if [[ -n "${MMSAE_PYTHON:-}" ]]; then
  "$MMSAE_PYTHON" -c "import mmsae, papermill, jupytext" >/dev/null 2>&1 || {
    echo "MMSAE_PYTHON=$MMSAE_PYTHON lacks mmsae/papermill/jupytext; install with: $MMSAE_PYTHON -m pip install -e '.[notebooks,encoders,test]'" >&2
    exit 1; }
  echo "$MMSAE_PYTHON"; exit 0
fi

py="$root/.venv/bin/python"
stamp="$root/.venv/.mmsae-installed"
want="$(cat requirements-lock.txt pyproject.toml | sha256sum | cut -c1-16)"
if [[ -x "$py" && -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then
  echo "$py"; exit 0
fi
{
  echo "[setup] creating/updating $root/.venv (first run takes a few minutes)"
  [[ -x "$py" ]] || "${PYTHON:-python3}" -m venv "$root/.venv"
  "$py" -m pip install --quiet --upgrade pip wheel
  # torch and torchvision must come as a matching pair (see README, "Installation")
  "$py" -m pip install --quiet -c requirements-lock.txt torch torchvision
  "$py" -m pip install --quiet -c requirements-lock.txt -e ".[notebooks,encoders,test,interop]"
  echo "$want" > "$stamp"
} >&2
echo "$py"
