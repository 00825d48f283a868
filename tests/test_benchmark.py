"""scripts/benchmark.py: the floor, the ratios, the quiet-machine guard and the markdown section.

These tests check the script's logic on a tiny shape; they do not time anything that is
asserted (timings are never test conditions)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from conftest import load_script

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def bench():
    return load_script("benchmark")


def _args(tmp_path, *extra):
    return ["--quick", "--results", str(tmp_path), "--figures", str(tmp_path), "--methods", "topk,mgsae",
            "--peers", "", "--wait", "0", *extra]


def test_quick_run_writes_floor_ratios_and_markdown(bench, tmp_path, monkeypatch):
    monkeypatch.setattr(bench, "load_avg", lambda: 0.0)
    md = tmp_path / "perf.md"
    md.write_text("# P\n\nbefore\n<!-- benchmark:begin -->\nold\n<!-- benchmark:end -->\nafter\n")
    assert bench.main(_args(tmp_path, "--markdown", str(md), "--allow-busy")) == 0
    df = pd.read_csv(tmp_path / "benchmarks.csv")
    floor = df[(df.method == "floor") & (df.batch_pairs == 32)].ms_per_step.iloc[0]
    parts = df[df.method.isin(["encoder-gemm", "adam-update"]) & (df.batch_pairs == 32)].ms_per_step.sum()
    assert floor == pytest.approx(parts)
    ours = df[(df.kind == "mmsae")].set_index("method")
    assert set(ours.index) == {"topk", "mgsae"}
    for meth in ("topk", "mgsae"):
        assert ours.loc[meth, "ratio_to_floor"] == pytest.approx(ours.loc[meth, "ms_per_step"] / floor)
    assert df[df.method == "sgemm-peak"].gflops.iloc[0] > 0
    assert {"load_avg_start", "load_avg_end", "foreign_cores"} <= set(df.columns)
    text = md.read_text()
    assert text.startswith("# P\n\nbefore\n") and text.endswith("after\n") and "old" not in text
    assert "step / GEMM + Adam" in text and "load average" in text
    assert (tmp_path / "benchmark_throughput.pdf").exists() and (tmp_path / "benchmark_throughput.png").exists()


def test_targets_hold_each_step_to_its_floor(bench):
    """Batch 128: every step of STEP_TARGETS against GEMM + Adam (1.2x), AuxK on from the profile (1.5x); batch
    4096: against the GEMM alone (1.2x); met or NOT met as the numbers say."""
    rows = [dict(threads=1, batch_pairs=128, kind="floor", method="floor", ms_per_step=30.0)]
    rows += [dict(threads=1, batch_pairs=128, kind="mmsae", method=m, ms_per_step=v, ratio_to_floor=v / 30.0,
                  ratio_to_gemm=v / 25.0) for m, v in zip(bench.STEP_TARGETS, (33.0, 37.0, 35.0, 35.9, 35.8))]
    rows += [dict(threads=1, batch_pairs=4096, kind="mmsae", method=m, ms_per_step=v, ratio_to_floor=v / 800,
                  ratio_to_gemm=v / 790) for m, v in zip(bench.STEP_TARGETS, (900.0, 1000.0, 940.0, 947.0, 946.0))]
    pf = pd.DataFrame([dict(threads=1, batch_pairs=128, method="topk", latents="a third dead (AuxK on)",
                            step_ms_profiled=44.0, part="x"),
                       dict(threads=1, batch_pairs=128, method="mgsae", latents="a third dead (AuxK on)",
                            step_ms_profiled=46.0, part="x")])
    lines = bench.targets(pd.DataFrame(rows), pf)
    text = "\n".join(lines)
    assert "batch 128: topk step / GEMM + Adam = **1.10x** (target <= 1.2x: met)" in text
    assert "batch 128: gsae step / GEMM + Adam = **1.23x** (target <= 1.2x: NOT met)" in text
    assert "batch 4096: topk step / GEMM = **1.14x** (target <= 1.2x: met)" in text
    assert "batch 4096: gsae step / GEMM = **1.27x** (target <= 1.2x: NOT met)" in text
    assert "AuxK on, profiled step): topk step / GEMM + Adam = **1.47x** (target <= 1.5x: met)" in text
    assert "mgsae step / GEMM + Adam = **1.53x** (target <= 1.5x: NOT met)" in text
    assert len(lines) == 12
    table = "\n".join(bench.target_table(pd.DataFrame(rows), pf))
    assert "| 1 | 128 | GEMM + Adam | 1.10x | 1.23x | 1.17x | 1.20x | 1.19x | ≤ 1.2x | 4 of 5 |" in table
    assert "| 1 | 4096 | GEMM | 1.14x | 1.27x | 1.19x | 1.20x | 1.20x | ≤ 1.2x | 4 of 5 |" in table
    assert "| 1.47x | – | 1.53x | – | – | ≤ 1.5x | 1 of 2 |" in table


def test_refuses_on_a_busy_machine(bench, tmp_path, monkeypatch):
    monkeypatch.setattr(bench, "load_avg", lambda: 3.0)
    assert bench.main(_args(tmp_path)) == bench.EXIT_REFUSED
    assert not (tmp_path / "benchmarks.csv").exists()


def test_foreign_load_during_a_timing_is_redone_then_flagged(bench, tmp_path, monkeypatch):
    """Other processes' CPU time (machine busy jiffies minus ours) above --max-foreign: each
    timing is redone, stays busy, the rows are flagged and the markdown is not written."""
    monkeypatch.setattr(bench, "load_avg", lambda: 0.0)
    ticks = {"n": 0}

    def jiffies():  # the machine gains 1000 busy jiffies per reading, this process none
        ticks["n"] += 1000
        return ticks["n"], 0

    monkeypatch.setattr(bench, "_cpu_jiffies", jiffies)
    md = tmp_path / "perf.md"
    md.write_text("untouched")
    assert bench.main(_args(tmp_path, "--markdown", str(md), "--methods", "topk")) == bench.EXIT_BUSY
    assert md.read_text() == "untouched"
    df = pd.read_csv(tmp_path / "benchmarks.csv")
    timed = df[df.kind.isin(["mmsae"])]
    assert timed.busy.all() and (timed.redone == 3).all()


def test_timed_redoes_only_busy_runs(bench, monkeypatch):
    calls = iter([(0, 0), (500, 0), (500, 0), (500, 0)] + [(500, 0)] * 10)
    monkeypatch.setattr(bench, "_cpu_jiffies", lambda: next(calls))
    r = bench.timed(lambda: 0.01, repeats=2, max_foreign=0.2)  # first timed run busy, then quiet
    assert r["redone"] == 1 and not r["busy"] and len(r["seconds"]) == 2


def test_paper_scale_line_is_an_extrapolation(bench):
    sc = pd.DataFrame([dict(axis="m", threads=1, batch_pairs=128, m=8192, k=32, d=512, ms_per_step=60.0)])
    (line,) = bench.paper_scale(sc)
    assert "25.0 min" in line and "extrapolated" in line


@pytest.mark.slow
def test_scaling_points_run_in_their_own_processes(bench, tmp_path, monkeypatch):
    monkeypatch.setattr(bench, "load_avg", lambda: 0.0)
    args = _args(tmp_path, "--methods", "topk", "--scaling", "--scale-m", "256", "--scale-k", "4",
                 "--scale-batch", "16", "--allow-busy")
    assert bench.main(args) == 0
    sc = pd.read_csv(tmp_path / "benchmark_scaling.csv")
    assert set(sc.axis) == {"m", "K", "batch"}
    assert (sc.ms_per_step > 0).all() and (sc.floor_ms > 0).all() and (sc.peak_mem_mb >= 0).all()
    assert np.allclose(sc.ratio_to_floor, sc.ms_per_step / sc.floor_ms)


def test_profile_breakdown_is_taken_after_a_profiled_warm_up(bench, tmp_path, monkeypatch):
    """--profile: the kept profiled run is the second under the profiler (the first grows the
    heap around the profiler's records), its page faults are reported, and the parts of the
    step land in the CSV and the markdown."""
    monkeypatch.setattr(bench, "load_avg", lambda: 0.0)
    runs = []
    real_profile = bench.torch.profiler.profile

    class Counting(real_profile):
        def __enter__(self):
            runs.append(self)
            return super().__enter__()

    monkeypatch.setattr(bench.torch.profiler, "profile", Counting)
    md = tmp_path / "perf.md"
    md.write_text("<!-- benchmark:begin -->\n<!-- benchmark:end -->\n")
    assert bench.main(_args(tmp_path, "--methods", "topk", "--profile", "--markdown", str(md), "--allow-busy")) == 0
    pf = pd.read_csv(tmp_path / "benchmark_profile.csv")
    cases = pf.groupby(["method", "latents"]).ngroups
    assert cases == 4  # topk and mgsae, all alive and a third dead
    assert len(runs) == 2 * cases
    assert (pf.page_faults_per_step >= 0).all()
    assert {"encoder_gemm", "optimizer", "backward"} <= set(pf.part)
    assert "page faults a step" in md.read_text()
