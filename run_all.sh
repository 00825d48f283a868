#!/usr/bin/env bash
# Regenerate every table (results/) and figure (figures/) by running the notebooks in order.
#
#   ./run_all.sh                               smoke profile on the synthetic default (offline, < 15 min)
#   ./run_all.sh --profile paper               the paper's settings (GPU recommended)
#   ./run_all.sh --data PATH.npy               your own paired embeddings (.npy (2,N,d) / .safetensors / .npz / cache)
#   ./run_all.sh --data clip --extract train_source=/data/cc3m/{00000..00331}.tar --extract zeroshot_cifar10=/data/cifar
#
# Options:
#   --profile smoke|paper     run profile (default smoke)
#   --data SOURCE             synthetic (default) | clip | clap | embeddings:PATH | PATH
#   --param KEY=VALUE         notebook parameter for every notebook (e.g. --param steps=500)
#   --extract KEY=VALUE       option for 01_extract's extract_options (clip/clap sources)
#   --out DIR                 where runs/, results/, figures/ go (default: this folder)
#   --only LIST               comma-separated notebook numbers to run (e.g. 04,05)
#   --no-readme               do not refresh the measured numbers in README.md
#
# Executed notebooks are written to notebooks/executed/ (the sources stay clean). Each
# notebook's wall time is printed; the first failing notebook stops the run and is named;
# results written by earlier notebooks stay as they are.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$root"

profile=smoke; data=synthetic; out="$root"; only=""; readme=1
params=(); extract=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    --profile) profile="$2"; shift 2 ;;
    --data) data="$2"; shift 2 ;;
    --param) params+=("$2"); shift 2 ;;
    --extract) extract+=("$2"); shift 2 ;;
    --out) out="$(mkdir -p "$2" && cd "$2" && pwd)"; shift 2 ;;
    --only) only="$2"; shift 2 ;;
    --no-readme) readme=0; shift ;;
    -h|--help) sed -n '2,22p' "$0"; exit 0 ;;
    *) echo "run_all.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
done
case "$profile" in smoke|paper) ;; *) echo "run_all.sh: --profile must be smoke or paper" >&2; exit 2 ;; esac
case "$data" in
  synthetic|clip|clap|embeddings:*) ;;
  *) if [[ -e "$data" ]]; then data="embeddings:$(cd "$(dirname "$data")" && pwd)/$(basename "$data")";
     else echo "run_all.sh: --data $data: no such file (expected synthetic, clip, clap, embeddings:PATH or a path)" >&2; exit 2; fi ;;
esac

py="$(scripts/setup_env.sh)"
export PYTHONUNBUFFERED=1 MPLBACKEND=Agg
# Smoke-sized models are too small to gain from several intra-op threads, and OpenMP
# spinning makes them erratically slow when cores are shared; set OMP_NUM_THREADS to override.
if [[ "$profile" == smoke ]]; then export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"; fi
# Weights: on disk, or fetched once from the hub where it can be reached (docs/real_data.md);
# offline, the encoders fail fast with the expected location instead of retrying.

build="$root/build/notebooks"; executed="$root/notebooks/executed"
mkdir -p "$build" "$executed"
pm_args=(-p profile "$profile" -p data "$data" -p out_dir "$out")
for kv in "${params[@]+"${params[@]}"}"; do pm_args+=(-p "${kv%%=*}" "${kv#*=}"); done
extract_yaml=""
if [[ ${#extract[@]} -gt 0 ]]; then
  extract_yaml="$build/extract_options.yaml"
  { echo "extract_options:"; for kv in "${extract[@]}"; do printf '  %s: %s\n' "${kv%%=*}" "$("$py" -c 'import json,sys; print(json.dumps(sys.argv[1]))' "${kv#*=}")"; done; } > "$extract_yaml"
fi

echo "profile=$profile data=$data out=$out python=$py"
total_start=$(date +%s)
for src in notebooks/[0-9][0-9]_*.py; do
  name="$(basename "$src" .py)"; num="${name%%_*}"
  if [[ -n "$only" && ",$only," != *",$num,"* ]]; then continue; fi
  "$py" -m jupytext --quiet --to ipynb --output "$build/$name.ipynb" "$src"
  extra=()
  if [[ "$num" == "01" && -n "$extract_yaml" ]]; then extra=(-f "$extract_yaml"); fi
  start=$(date +%s)
  echo "=== $name"
  if ! "$py" -m papermill --cwd notebooks --kernel python3 --no-progress-bar --log-output \
        "$build/$name.ipynb" "$executed/$name.ipynb" "${pm_args[@]}" "${extra[@]+"${extra[@]}"}" \
        > "$build/$name.log" 2>&1; then
    tail -n 40 "$build/$name.log" >&2
    echo "FAILED: notebook $name (full log: $build/$name.log; executed copy: $executed/$name.ipynb)" >&2
    echo "Results already written by earlier notebooks are left as they are." >&2
    exit 1
  fi
  echo "    $name: $(( $(date +%s) - start )) s"
done
elapsed=$(( $(date +%s) - total_start ))
echo "all notebooks done in ${elapsed} s; tables in $out/results, figures in $out/figures"
if [[ -z "$only" ]]; then  # the full chain's wall time (a partial run must not overwrite it)
  "$py" -c "import json,sys; json.dump({'profile':sys.argv[1],'data':sys.argv[2],'wall_time_s':int(sys.argv[3])}, open(sys.argv[4],'w'))" \
    "$profile" "$data" "$elapsed" "$out/results/run_all.json"
fi
if [[ $readme -eq 1 && "$out" == "$root" && "$profile" == smoke && "$data" == synthetic && -z "$only" && ${#params[@]} -eq 0 ]]; then
  "$py" scripts/update_readme.py
fi
