#!/usr/bin/env python
"""Two runs of ``scripts/benchmark.py`` side by side: each of our steps against its own run's floors (GEMM + Adam
at batch 128, the GEMM alone at batch 4096, as the targets of issue 28 take them), before and after. Each run is
divided by the floor it measured itself, so the two may come from different hours of the same machine; the load
and sgemm rate of each are printed with it. Prints a markdown table (and writes it with ``--out``).

    python scripts/compare_benchmarks.py docs/benchmarks/2026-12-07-before-fused-passes.csv results/benchmarks.csv \\
        --before-profile docs/benchmarks/2026-12-07-before-fused-passes-profile.csv \\
        --after-profile results/benchmark_profile.csv
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchmark import STEP_TARGETS as METHODS, target_checks  # noqa: E402


def _ratios(df: pd.DataFrame, pf: pd.DataFrame | None) -> dict:
    """``{(threads, batch, method, auxk): (ms, ratio, against)}`` of one run: the ratios of the benchmark's own
    target checks, with the step's milliseconds beside them."""
    out = {}
    for c in target_checks(df, pf):
        if "values" not in c:
            continue
        th, B = c["threads"], c["batch"]
        for meth, ratio in c["values"].items():
            if c["auxk"]:
                r = pf[(pf.threads == th) & (pf.batch_pairs == B) & (pf.method == meth)
                       & pf.latents.str.startswith("a third dead")]
                ms = float(r.step_ms_profiled.iloc[0])
            else:
                r = df[(df.threads == th) & (df.batch_pairs == B) & (df.kind == "mmsae") & (df.method == meth)]
                ms = float(r.ms_per_step.iloc[0])
            out[(th, B, meth, c["auxk"])] = (ms, ratio, c["against"])
    return out


def _machine(df: pd.DataFrame) -> str:
    peak = df[(df.kind == "floor") & (df.method == "sgemm-peak")]
    rates = ", ".join(f"{float(r.gflops):.0f} GFLOP/s on {int(r.threads)} thread(s)" for _, r in peak.iterrows())
    return f"load {float(df.load_avg_start.iloc[0]):.2f} at the start; sgemm {rates}"


def table(before: pd.DataFrame, after: pd.DataFrame, pf_before=None, pf_after=None) -> str:
    a, b = _ratios(before, pf_before), _ratios(after, pf_after)
    lines = [f"Before: {_machine(before)}. After: {_machine(after)}.", "",
             "| threads | batch | step | against | before: ms | before: x | after: ms | after: x |",
             "|---:|---:|---|---|---:|---:|---:|---:|"]
    for key in sorted(set(a) & set(b), key=lambda k: (k[0], k[1], k[3], METHODS.index(k[2]) if k[2] in METHODS else 9)):
        th, B, meth, aux = key
        (ms0, r0, what), (ms1, r1, _) = a[key], b[key]
        name = f"{meth}, a third dead (AuxK on, profiled)" if aux else meth
        lines.append(f"| {th} | {B} | {name} | {what} | {ms0:,.1f} | {r0:.2f}x | {ms1:,.1f} | {r1:.2f}x |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> str:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("before")
    ap.add_argument("after")
    ap.add_argument("--before-profile")
    ap.add_argument("--after-profile")
    ap.add_argument("--out", help="also write the table to this file")
    args = ap.parse_args(argv)
    read = lambda p: pd.read_csv(p) if p else None  # noqa: E731
    text = table(pd.read_csv(args.before), pd.read_csv(args.after), read(args.before_profile),
                 read(args.after_profile))
    if args.out:
        Path(args.out).write_text(text)
    print(text, end="")
    return text


if __name__ == "__main__":
    main()
