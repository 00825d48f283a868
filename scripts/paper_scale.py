"""The paper's core comparison at the paper's scale, run end to end and measured.

    .venv/bin/python scripts/paper_scale.py            # notebooks 01-05, about an hour on 2 cores
    .venv/bin/python scripts/paper_scale.py --only 4,5 # again from notebook 04 (01-03 already ran)

What it runs: ``./run_all.sh --profile paper`` with SAE, GSAE and MGSAE (seed 0; 25,000 steps x 128
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

from mmsae.study.methods import PAPER_METHODS  # noqa: E402
from mmsae.study.runs import notebook_parameters  # noqa: E402

NOTEBOOKS = {1: "01_extract", 2: "02_train_baseline", 3: "03_train_group_sparse", 4: "04_analyze_split",
             5: "05_steer"}
PARAMS = [f"models=[{','.join(PAPER_METHODS)}]", "comparison_seeds=[0]", "run_ablations=false",
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
    if rec["rc"] != 0:
        raise SystemExit(f"paper_scale: notebook {NOTEBOOKS[n]} failed (rc {rec['rc']}); see runs/paper-synthetic/")
    return rec


def markdown(rec: dict) -> str:
    rows = ["| notebook | wall time | peak resident memory | load before / after |", "|---|---|---|---|"]
    for r in rec["notebooks"]:
        rows.append(f"| `{r['notebook']}` | {r['wall_s'] / 60:.1f} min | {r['peak_rss_gib']:.1f} GiB | "
                    f"{r['load_before']:.2f} / {r['load_after']:.2f} |")
    total = sum(r["wall_s"] for r in rec["notebooks"])
    return (f"Measured by `scripts/paper_scale.py` on {rec['machine']}: `{rec['command']}` (each notebook its own "
            f"`--only N` run). Total {total / 60:.1f} min; peak {max(r['peak_rss_gib'] for r in rec['notebooks']):.1f} "
            f"GiB (the whole process tree of a notebook).\n\n" + "\n".join(rows))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--only", default="1,2,3,4,5", help="notebook numbers to run (measured ones are merged)")
    ap.add_argument("--markdown", default="docs/performance.md", help="write the table between the markers")
    args = ap.parse_args(argv)
    out = ROOT / "docs" / "paper_scale.json"
    rec = json.loads(out.read_text()) if out.exists() else {}
    done = {r["notebook"]: r for r in rec.get("notebooks", [])}
    for n in (int(s) for s in args.only.split(",")):
        print(f"paper_scale: {NOTEBOOKS[n]} ...", flush=True)
        done[NOTEBOOKS[n]] = r = run_notebook(n)
        print(f"paper_scale: {NOTEBOOKS[n]} {r['wall_s'] / 60:.1f} min, peak {r['peak_rss_gib']:.1f} GiB", flush=True)
        rec = {"command": COMMAND, "machine": f"{platform.machine()} CPU, {os.cpu_count()} cores, torch "
                                              f"{torch.__version__}, OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}",
               "date": time.strftime("%Y-%m-%d"),
               "notebooks": [done[k] for k in NOTEBOOKS.values() if k in done]}
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
