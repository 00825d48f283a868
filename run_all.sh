#!/usr/bin/env bash
# Regenerate every table (results/) and figure (figures/) by running the notebooks in order.
#
#   ./run_all.sh                               the synthetic study (smoke profile, offline, < 15 min), then
#                                              the same notebooks on the shipped CLIP embeddings of 500 COCO pairs
#   ./run_all.sh --profile paper               the paper's settings (GPU recommended)
#   ./run_all.sh --data PATH.npy               your own paired embeddings (.npy (2,N,d) / .safetensors / .npz / cache)
#   ./run_all.sh --data clip --extract train_source=/data/cc3m/{00000..00331}.tar --extract zeroshot_cifar10=/data/cifar
#
# Options:
#   --profile smoke|paper     run profile (default smoke)
#   --data SOURCE             synthetic (default) | clip | clap | embeddings:PATH | PATH
#   --param KEY=VALUE         a parameter of the notebooks that declare KEY; VALUE is a YAML/JSON
#                             literal (--param steps=500 --param "seeds=[0,1]" --param run_ablations=false);
#                             a KEY no selected notebook declares is an error
#   --extract KEY=VALUE       option for 01_extract's extract_options (clip/clap/embeddings sources; text)
#   --out DIR                 where runs/, results/, figures/ go (default: this folder)
#   --only LIST               comma-separated notebook numbers to run (e.g. 4,5 or 04,05)
#   --real / --no-real        also run the notebooks on data/clip_vitb16_coco500.npy (real CLIP, no
#                             ablations); default: on when neither --data nor --only is given
#   --no-readme               do not refresh the measured numbers in README.md nor notebooks/executed/
#
# Tables and figures of the synthetic default go to results/ and figures/; those of any other
# data source to results/<slug>/ and figures/<slug>/ (slug: clip, clap, or the file's stem).
# Everything else a run writes lives in its own folder runs/<profile>-<slug>/ (not tracked):
# converted notebooks and their parameter files, logs/, executed/ copies (the sources stay
# clean), run_all.json (each notebook's wall time) and the lock that refuses a second run into
# the same folder. Each notebook's wall time is printed; the first failing notebook stops the
# run and is named; results written by earlier notebooks stay as they are. The notebooks run
# in this folder: relative paths in --param / --extract values are relative to it.
#
# The default run (smoke profile, synthetic data, this folder as --out, no --only, --param or
# --no-readme) also refreshes README.md's numbers and notebooks/executed/<slug>/NN_name.ipynb: the
# executed notebooks of both chains without timings or absolute paths (mmsae.study.notebooks),
# tracked so that the repository page shows them. Every run writes the paired notebooks/NN_name.ipynb
# that JupyterLab opens where it is missing (git-ignored; the .py twins are the sources).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd -P)"
caller="$(pwd)"

die() { echo "run_all.sh: $*" >&2; exit 2; }
need() {  # need OPTION "$#" VALUE: the option's value must be present and not another option
  if [[ $2 -lt 2 || -z "$3" || "$3" == --* ]]; then
    case "$1" in
      --profile) die "--profile needs a value: smoke or paper" ;;
      --data) die "--data needs a value: synthetic, clip, clap, embeddings:PATH or a path to embeddings" ;;
      --param) die "--param needs KEY=VALUE (a notebook parameter, e.g. --param steps=500)" ;;
      --extract) die "--extract needs KEY=VALUE (an extraction option, see docs/real_data.md)" ;;
      --out) die "--out needs a folder" ;;
      --only) die "--only needs comma-separated notebook numbers, e.g. --only 4,5" ;;
    esac
  fi
}

profile=smoke; data=synthetic; data_given=0; out="$root"; only=""; only_given=0; readme=1; real=auto
params=(); extract=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    --profile) need "$1" $# "${2-}"; profile="$2"; shift 2 ;;
    --data) need "$1" $# "${2-}"; data="$2"; data_given=1; shift 2 ;;
    --param) need "$1" $# "${2-}"; params+=("$2"); shift 2 ;;
    --extract) need "$1" $# "${2-}"; extract+=("$2"); shift 2 ;;
    --out) need "$1" $# "${2-}"; if [[ "$2" == /* ]]; then out="$2"; else out="$caller/$2"; fi; shift 2 ;;
    --only) need "$1" $# "${2-}"; only="$2"; only_given=1; shift 2 ;;
    --real) real=on; shift ;;
    --no-real) real=off; shift ;;
    --no-readme) readme=0; shift ;;
    -h|--help) sed -n '2,36p' "$0"; exit 0 ;;
    *) die "unknown option $1 (see --help)" ;;
  esac
done
case "$profile" in smoke|paper) ;; *) die "--profile must be smoke or paper, not '$profile'" ;; esac
if [[ "$real" == auto ]]; then
  if [[ $data_given -eq 0 && $only_given -eq 0 ]]; then real=auto; else real=off; fi
fi
cd "$root"

py="$(scripts/setup_env.sh)"
export PYTHONUNBUFFERED=1 MPLBACKEND=Agg
# Smoke-sized models are too small to gain from several intra-op threads, and OpenMP
# spinning makes them erratically slow when cores are shared; set OMP_NUM_THREADS to override.
if [[ "$profile" == smoke ]]; then export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"; fi
# Weights: on disk, or fetched once from the hub where it can be reached (docs/real_data.md);
# offline, the encoders fail fast with the expected location instead of retrying.

# ---------------------------------------------------------------- clean-up, signals, locks
tmp="$(mktemp -d "${TMPDIR:-/tmp}/run_all.XXXXXX")"
lock_dirs=(); child=""
cleanup() {
  rm -rf "$tmp"
  for d in "${lock_dirs[@]+"${lock_dirs[@]}"}"; do rm -rf "$d"; done
}
trap cleanup EXIT
on_signal() {
  if [[ -n "$child" ]]; then kill "$child" 2>/dev/null || true; wait "$child" 2>/dev/null || true; fi
  echo "run_all.sh: interrupted" >&2
  exit 130
}
trap on_signal INT TERM

alive() { kill -0 "$1" 2>/dev/null || [[ -d "/proc/$1" ]]; }

# lock_run DIR: hold DIR/run.lock until this script (and any notebook it started) has exited.
# flock(1) where available (released by the kernel however the process ends); otherwise a
# lock folder holding our PID, removed on exit and taken over only when that PID is dead
# (RUN_ALL_LOCK=mkdir forces this fallback).
lock_run() {
  local dir="$1" holder
  mkdir -p "$dir"
  if [[ "${RUN_ALL_LOCK:-flock}" != mkdir ]] && command -v flock >/dev/null 2>&1; then
    local fd
    exec {fd}>>"$dir/run.lock"
    if ! flock -n "$fd"; then
      holder="$(cat "$dir/run.lock.pid" 2>/dev/null || true)"
      if [[ -n "$holder" ]] && ! alive "$holder"; then holder="$holder, which has exited; a notebook it started is still running"; fi
      echo "run_all.sh: $dir is locked by another run_all.sh (pid ${holder:-unknown}) with the same --out, profile and data; wait for it to finish or choose another --out" >&2
      exit 3
    fi
    echo $$ > "$dir/run.lock.pid"
  else
    local ld="$dir/run.lock.d"
    if ! mkdir "$ld" 2>/dev/null; then
      holder="$(cat "$ld/pid" 2>/dev/null || true)"
      if [[ -n "$holder" ]] && ! alive "$holder"; then
        echo "run_all.sh: taking over the stale lock $ld of pid $holder, which is no longer running" >&2
        rm -rf "$ld"
        mkdir "$ld" 2>/dev/null || { echo "run_all.sh: $dir was locked by another run_all.sh just now; wait for it to finish or choose another --out" >&2; exit 3; }
      else
        echo "run_all.sh: $dir is locked by another run_all.sh (pid ${holder:-unknown}, lock $ld) with the same --out, profile and data; wait for it to finish or choose another --out" >&2
        exit 3
      fi
    fi
    echo $$ > "$ld/pid"; lock_dirs+=("$ld")
  fi
}

# ---------------------------------------------------------------- check options, prepare
prep=(prepare --root "$root" --cwd "$caller" --out "$out" --profile "$profile" --data "$data" --only "$only"
      --real "$real" --work "$tmp/prepared")
for kv in "${params[@]+"${params[@]}"}"; do prep+=(--param "$kv"); done
for kv in "${extract[@]+"${extract[@]}"}"; do prep+=(--extract "$kv"); done
"$py" -m mmsae.study.runs "${prep[@]}" > "$tmp/plan.tsv" || exit 2
mapfile -t chains < "$tmp/plan.tsv"
# the .ipynb twins JupyterLab opens with a double-click (only where missing: a user's outputs stay)
"$py" -m mmsae.study.notebooks pair "$root/notebooks"

mkdir -p "$out"; out="$(cd "$out" && pwd -P)"
# the default run refreshes what the repository shows: README numbers and the executed notebooks
publish=0
if [[ $readme -eq 1 && "$out" == "$root" && "$profile" == smoke && "$data" == synthetic && -z "$only" && ${#params[@]} -eq 0 ]]; then
  publish=1
fi
for line in "${chains[@]}"; do
  IFS=$'\t' read -r _ run_dir _ _ <<< "$line"
  lock_run "$run_dir"
done

# ---------------------------------------------------------------- run
echo "profile=$profile out=$out python=$py"
for line in "${chains[@]}"; do
  IFS=$'\t' read -r work run_dir chain_data results_dir <<< "$line"
  nbdir="$run_dir/notebooks"
  rm -rf "$nbdir"; mkdir -p "$nbdir/logs" "$nbdir/executed"
  cp "$work"/* "$nbdir/"
  echo "### data=$chain_data (run folder $run_dir)"
  chain_start=$(date +%s); times=()
  for yaml in "$nbdir"/*.yaml; do
    name="$(basename "$yaml" .yaml)"
    start=$(date +%s)
    echo "=== $name"
    # the kernel draws figures inline (MPLBACKEND=Agg above is for the other steps), so the executed
    # notebooks show them; the saved files do not depend on the backend
    MPLBACKEND=module://matplotlib_inline.backend_inline \
    "$py" -m papermill --cwd "$root" --kernel python3 --no-progress-bar --log-output \
        "$nbdir/$name.ipynb" "$nbdir/executed/$name.ipynb" -f "$yaml" > "$nbdir/logs/$name.log" 2>&1 &
    child=$!
    if ! wait "$child"; then
      child=""
      tail -n 40 "$nbdir/logs/$name.log" >&2
      echo "FAILED: notebook $name (data $chain_data; full log: $nbdir/logs/$name.log; executed copy: $nbdir/executed/$name.ipynb)" >&2
      echo "Results already written by earlier notebooks are left as they are." >&2
      exit 1
    fi
    child=""
    t=$(( $(date +%s) - start )); times+=("$name=$t")
    echo "    $name: $t s"
  done
  elapsed=$(( $(date +%s) - chain_start ))
  echo "data=$chain_data: notebooks done in ${elapsed} s; tables in $results_dir"
  # wall times stay in the untracked run folder (results/ must not change between identical reruns)
  "$py" -c 'import json,sys; p,d,o,w,f,*t=sys.argv[1:]; nb={k:int(v) for k,v in (x.split("=") for x in t)}
json.dump({"profile":p,"data":d,"only":o,"wall_time_s":int(w),"notebooks":nb},open(f,"w"),indent=2)' \
    "$profile" "$chain_data" "$only" "$elapsed" "$run_dir/run_all.json" "${times[@]}"
  if [[ $publish -eq 1 ]]; then  # scrubbed of timings and absolute paths, so a rerun leaves git clean
    slug="$(basename "$run_dir")"; slug="${slug#"$profile"-}"
    "$py" -m mmsae.study.notebooks publish --executed "$nbdir/executed" --dest "$root/notebooks/executed/$slug" --root "$root"
    echo "executed notebooks: notebooks/executed/$slug/"
  fi
done

if [[ $publish -eq 1 ]]; then
  "$py" scripts/update_readme.py  # the measured numbers; the runtime line only with --runtime
fi
