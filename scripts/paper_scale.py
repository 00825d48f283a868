"""The paper's core comparison at the paper's scale, run end to end and measured.

    .venv/bin/python scripts/paper_scale.py            # notebooks 01-05, about 1.5 hours on 2 cores
    .venv/bin/python scripts/paper_scale.py --only 4,5 # again from notebook 04 (01-03 already ran)
    .venv/bin/python scripts/paper_scale.py --only 1   # the data, then train side by side, then the rest:
    .venv/bin/python scripts/paper_scale.py --pretrain CentredSAE,GSAE,MGSAE --only ""
    .venv/bin/python scripts/paper_scale.py --only 2,3,4,5

What it runs: ``./run_all.sh --profile paper`` with SAE, CentredSAE, GSAE and MGSAE (the ladder's
main rungs; seed 0; 25,000 steps x 128
pairs; m = 8192, K = 32; lambda = 0.05; mask rate 0.2) on the paper profile's CLIP-calibrated
synthetic data (200,000 pairs at d = 512, 10,000 held out), without the ablations and the alpha
sweep. Tables and figures go to ``results/paper-synthetic/`` and ``figures/paper-synthetic/``.

What it measures: each notebook is its own ``run_all.sh --only N`` in a fresh process whose
``RUSAGE_CHILDREN`` peak resident size covers that notebook's whole process tree (papermill and
its kernel), with its wall time and the 1-minute load average before and after. They are written
to ``docs/paper_scale.json`` and, between the markers ``<!-- paper-scale:begin -->`` and
``<!-- paper-scale:end -->``, to ``docs/performance.md`` (``--markdown``). Wall times never go to
``results/``: those hold only what a rerun reproduces byte for byte.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "lib"))

import torch  # noqa: E402

from mmsae.study.methods import LADDER  # noqa: E402
from mmsae.study.runs import notebook_parameters  # noqa: E402

NOTEBOOKS = {1: "01_extract", 2: "02_train_baseline", 3: "03_train_group_sparse", 4: "04_analyze_split",
             5: "05_steer"}
#: the ladder without its side rung (the mask alone, MaskedSAE): SAE, CentredSAE, GSAE, MGSAE
PAPER_SCALE_METHODS = LADDER[:4]
PARAMS = [f"models=[{','.join(PAPER_SCALE_METHODS)}]", "comparison_seeds=[0]", "run_ablations=false",
          "run_alpha_sweep=false"]
COMMAND = "./run_all.sh --profile paper " + " ".join(f"--param '{p}'" for p in PARAMS)

# run one notebook in a fresh interpreter: its RUSAGE_CHILDREN peak is that notebook's process tree
_MEASURE = """
import json, resource, subprocess, sys, time
t = time.time()
rc = subprocess.run(sys.argv[1:]).returncode
print(json.dumps({"rc": rc, "wall_s": time.time() - t,
                  "peak_rss_gib": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2 ** 20}))
"""


def run_notebook(n: int) -> dict:
    cmd = ["./run_all.sh", "--profile", "paper", "--only", str(n), "--no-readme"]
    declared = notebook_parameters(ROOT / "notebooks" / f"{NOTEBOOKS[n]}.py")
    for p in PARAMS:  # run_all.sh refuses a parameter the selected notebook does not declare
        if p.split("=", 1)[0] in declared:
            cmd += ["--param", p]
    load0 = os.getloadavg()[0]
    out = subprocess.run([sys.executable, "-c", _MEASURE, *cmd], cwd=ROOT, capture_output=True, text=True)
    sys.stderr.write(out.stderr)
    rec = json.loads(out.stdout.strip().splitlines()[-1])
    rec.update(notebook=NOTEBOOKS[n], load_before=round(load0, 2), load_after=round(os.getloadavg()[0], 2))
    rec["omp_num_threads"] = os.environ.get("OMP_NUM_THREADS", "unset")
    if rec["rc"] != 0:
        raise SystemExit(f"paper_scale: notebook {NOTEBOOKS[n]} failed (rc {rec['rc']}); see runs/paper-synthetic/")
    return rec


# the training loop's step beside the encoder GEMM it is built on, in one fresh process per thread count
_STEP_CHECK = """
import json, sys, time
import numpy as np, torch
sys.path.insert(0, sys.argv[2])
from mmsae.models.base import build_model
from mmsae.study.experiments import method_config
from mmsae.study.profiles import get_profile
from mmsae.train.loop import TrainConfig, train
th = int(sys.argv[1]); torch.set_num_threads(th)
a, w, out = torch.randn(256, 512), torch.randn(512, 8192), torch.empty(256, 8192)
def gemm():
    ts = []
    for _ in range(40):
        t = time.perf_counter(); torch.mm(a, w, out=out); ts.append(time.perf_counter() - t)
    return 2 * 256 * 512 * 8192 / float(np.median(ts)) / 1e9
rng = np.random.default_rng(0)
x, y = (rng.standard_normal((20000, 512)).astype(np.float32) for _ in range(2))
x /= np.linalg.norm(x, axis=1, keepdims=True); y /= np.linalg.norm(y, axis=1, keepdims=True)
g0 = gemm()
model = build_model(method_config("MGSAE", get_profile("paper"), d=512))
h = train(model, (x, y), TrainConfig(steps=400, batch_size=128, progress=False, device="cpu", log_every=100)).history
g1 = gemm()
step_ms = 1000 * 128 / h[-1]["pairs_per_s"]
gemm_ms = 1000 * 2 * 256 * 512 * 8192 / ((g0 + g1) / 2) / 1e9
print(json.dumps({"threads": th, "gemm_gflops_before": g0, "gemm_gflops_after": g1, "loop_step_ms": step_ms,
                  "gemm_ms": gemm_ms, "step_over_gemm": step_ms / gemm_ms}))
"""


def step_check(threads=(1, 2)) -> list[dict]:
    """The 25k-step runs of the notebooks take longer than ``scripts/benchmark.py`` extrapolates from
    a few steps. This measures why, in the same minute: the training loop's MGSAE step at the paper's
    shapes (the last 100 of 400 steps) beside the encoder GEMM ``(256 x 512) @ (512 x 8192)`` it is
    built on, timed just before and after. The loop's step over that GEMM compares with the
    benchmark's mgsae step over its own encoder GEMM; the GEMM's GFLOP/s with the benchmark run's."""
    out = []
    for th in threads:
        load0 = os.getloadavg()[0]
        p = subprocess.run([sys.executable, "-c", _STEP_CHECK, str(th), str(ROOT / "lib")], cwd=ROOT,
                           capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": str(th)})
        if p.returncode != 0:
            raise SystemExit(f"paper_scale: step check ({th} threads) failed:\n{p.stderr[-2000:]}")
        r = json.loads(p.stdout.strip().splitlines()[-1])
        out.append({k: (round(v, 2) if isinstance(v, float) else v) for k, v in r.items()}
                   | {"load_before": round(load0, 2), "date": time.strftime("%Y-%m-%d %H:%M")})
        print(f"paper_scale: step check, {th} thread(s): {out[-1]}", flush=True)
    return out


def training_times() -> dict:
    """Each trained model's own training wall time (``train_summary.json``, written by the training
    loop): a notebook reuses models already trained, so its wall time covers only the ones it trained."""
    models = ROOT / "runs" / "paper-synthetic" / "models"
    out = {}
    for f in sorted(models.glob("*/seed*/train_summary.json")):
        s = json.loads(f.read_text())
        out[f"{f.parent.parent.name}/{f.parent.name}"] = {"steps": s["steps"], "wall_s": round(s["wall_time_s"], 1),
                                                           "device": s["device"]}
    return out


def pretrain(names, threads: int = 1) -> None:
    """Train ``names`` for the run (seed 0) side by side, one worker process and ``threads`` torch
    threads each, into the folder notebooks 02/03 read: they reuse what is there (same settings, same
    data) instead of training one model after the other on two threads. Needs notebook 01 first."""
    from mmsae.study.experiments import tensorboard_dir, train_methods
    from mmsae.study.profiles import get_profile
    from mmsae.study.runs import RunPaths, load_run_data

    paths = RunPaths(ROOT, "paper", "synthetic")
    train_pairs = load_run_data(paths)[0]
    P = get_profile("paper")
    t0 = time.time()
    out = train_methods(list(names), [0], train_pairs, P, paths.root / "models", n_jobs=len(names), threads=threads,
                        tensorboard_dir=tensorboard_dir(paths.root, P["tensorboard"]), device="cpu")
    print(f"paper_scale: pretrained {list(out['model'])} in {(time.time() - t0) / 60:.1f} min", flush=True)
    return out


def markdown(rec: dict) -> str:
    rows = ["| notebook | wall time | peak resident memory | load before / after | OMP_NUM_THREADS | note |",
            "|---|---|---|---|---|---|"]
    for r in rec["notebooks"]:
        rows.append(f"| `{r['notebook']}` | {r['wall_s'] / 60:.1f} min | {r['peak_rss_gib']:.1f} GiB | "
                    f"{r['load_before']:.2f} / {r['load_after']:.2f} | {r.get('omp_num_threads', '?')} | "
                    f"{r.get('note', '')} |")
    total = sum(r["wall_s"] for r in rec["notebooks"])
    tt = rec.get("training", {})
    train = ("\n\nTraining time of each model (its own `train_summary.json`; a notebook reuses a model already "
             "trained, so its wall time covers only those it trained): "
             + ", ".join(f"{k} {v['steps']} steps in {v['wall_s'] / 60:.1f} min ({v['device']})" for k, v in tt.items())
             + ".") if tt else ""
    sc = rec.get("step_check", [])
    if sc:
        train += ("\n\nStep check (`--step-check`, " + sc[0]["date"] + "): the training loop's MGSAE step at the paper's "
                  "shapes beside the encoder GEMM it is built on, timed in the same process: " + "; ".join(
                      f"{r['threads']} thread(s): step {r['loop_step_ms']:.1f} ms, GEMM {r['gemm_ms']:.1f} ms "
                      f"({r['gemm_gflops_before']:.0f} / {r['gemm_gflops_after']:.0f} GFLOP/s before / after), step = "
                      f"{r['step_over_gemm']:.2f} x GEMM" for r in sc) + ".")
    return (f"Measured by `scripts/paper_scale.py` on {rec['machine'].split(', OMP_NUM_THREADS')[0]}: `{rec['command']}` (each notebook its own "
            f"`--only N` run). Total {total / 60:.1f} min; peak {max(r['peak_rss_gib'] for r in rec['notebooks']):.1f} "
            f"GiB (the whole process tree of a notebook).\n\n" + "\n".join(rows) + train)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--only", default="1,2,3,4,5", help="notebook numbers to run (measured ones are merged)")
    ap.add_argument("--markdown", default="docs/performance.md", help="write the table between the markers")
    ap.add_argument("--pretrain", default="",
                    help="comma-separated methods to train side by side (one process each) before the notebooks")
    ap.add_argument("--step-check", action="store_true",
                    help="also time the training loop's step beside its encoder GEMM (1 and 2 threads; about a minute)")
    args = ap.parse_args(argv)
    out = ROOT / "docs" / "paper_scale.json"
    rec = json.loads(out.read_text()) if out.exists() else {}
    done = {r["notebook"]: r for r in rec.get("notebooks", [])}
    if args.pretrain:
        names = [n.strip() for n in args.pretrain.split(",") if n.strip()]
        pretrain(names)
        rec["pretrained_side_by_side"] = (f"{', '.join(names)} with the SAE of `scripts/calibrate_generator.py --judge`: "
                                          f"{len(names) + 1} processes on {os.cpu_count()} cores")
        out.write_text(json.dumps(rec, indent=2) + "\n")
    if args.step_check:
        rec["step_check"] = step_check()
        out.write_text(json.dumps(rec, indent=2) + "\n")
    for n in (int(s) for s in args.only.split(",") if s.strip()):
        print(f"paper_scale: {NOTEBOOKS[n]} ...", flush=True)
        done[NOTEBOOKS[n]] = r = run_notebook(n)
        print(f"paper_scale: {NOTEBOOKS[n]} {r['wall_s'] / 60:.1f} min, peak {r['peak_rss_gib']:.1f} GiB", flush=True)
        rec = {"command": COMMAND, "machine": f"{platform.machine()} CPU, {os.cpu_count()} cores, torch "
                                              f"{torch.__version__}, OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}",
               "date": time.strftime("%Y-%m-%d"),
               "notebooks": [done[k] for k in NOTEBOOKS.values() if k in done], "training": training_times(),
               **{k: rec[k] for k in ("step_check", "pretrained_side_by_side") if k in rec}}
        out.write_text(json.dumps(rec, indent=2) + "\n")
    if args.markdown:
        md = ROOT / args.markdown
        text = md.read_text()
        block = f"<!-- paper-scale:begin -->\n{markdown(rec)}\n<!-- paper-scale:end -->"
        pat = re.compile(r"<!-- paper-scale:begin -->.*?<!-- paper-scale:end -->", re.S)
        text = pat.sub(lambda _: block, text) if pat.search(text) else text.rstrip() + "\n\n" + block + "\n"
        md.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
