#!/usr/bin/env bash
# Make sure the SEPARATE benchmark env .venv-bench exists; print its python path.
#
#   bash scripts/setup_bench_env.sh            # create or complete <repo>/.venv-bench
#   "$(bash scripts/setup_bench_env.sh)" scripts/benchmark.py --quick
#
# Why a second env: the peer SAE trainers (overcomplete, SAELens, EleutherAI sparsify,
# saprmarks dictionary_learning) need numpy 2 (SAELens -> datasets -> pyarrow refuses
# numpy 1.x), while the project's lock (requirements-lock.txt) pins numpy 1.26.4. So the
# peers live here, next to the SAME torch as the main env (torch/torchvision pins taken
# from requirements-lock.txt), the project package (editable, its base dependencies) and
# pytest. Peer versions are pinned by scripts/bench-constraints.txt.
# A stamp file makes a rerun with unchanged pins instant.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

env_dir="$root/.venv-bench"
py="$env_dir/bin/python"
stamp="$env_dir/.mmsae-bench-installed"
torch_pins="$(grep -E '^(torch|torchvision)==' requirements-lock.txt)" || {
  echo "requirements-lock.txt: no torch==/torchvision== pin found" >&2; exit 1; }
want="$( { echo "$torch_pins"; cat scripts/bench-constraints.txt pyproject.toml; } | sha256sum | cut -c1-16)"
if [[ -x "$py" && -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then
  echo "$py"; exit 0
fi
{
  echo "[setup-bench] creating/updating $env_dir (first run downloads torch's CUDA libraries: minutes)"
  [[ -x "$py" ]] || "${PYTHON:-python3}" -m venv "$env_dir"
  "$py" -m pip install --quiet --upgrade pip wheel
  torch_c="$(mktemp)"
  trap 'rm -f "$torch_c"' EXIT
  echo "$torch_pins" > "$torch_c"
  # torch first, exactly the main env's version, so no peer can pull another one
  "$py" -m pip install --quiet -c "$torch_c" torch
  # the project (base deps only) + the four peers (the `bench` extra) + pytest (the `test` extra)
  "$py" -m pip install --quiet -c "$torch_c" -c scripts/bench-constraints.txt -e ".[bench,test]"
  "$py" - <<'PY'
import torch, numpy
want = [l.split("==")[1].strip() for l in open("requirements-lock.txt") if l.startswith("torch==")][0]
assert torch.__version__.split("+")[0] == want, f"torch {torch.__version__} != lock {want}"
print(f"[setup-bench] torch {torch.__version__}, numpy {numpy.__version__}")
PY
  echo "$want" > "$stamp"
} >&2
echo "$py"
