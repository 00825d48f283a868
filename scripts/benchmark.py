#!/usr/bin/env python
"""Training speed, measured against the machine's floor and the peer trainers.

    scripts/setup_bench_env.sh          # once: .venv-bench with the four peer trainers
    .venv-bench/bin/python scripts/benchmark.py --markdown docs/performance.md --markdown README.md

What one run measures, on one device, for each torch thread count (``--threads``) and
batch (``--batches``, pairs per step) at the shape ``--d/--m/--k`` (default the paper's
512 / 8192 / 32):

* **The floor** (``kind=floor``), in the same run: the encoder GEMM of the step's shape,
  ``(2B x d) @ (d x m)`` into a preallocated output, with its GFLOP/s; the machine's sgemm
  peak at that thread count (a square 2048 GEMM); and the memory-bound part of a step that
  no method avoids, one fused Adam update over parameters of the model's size. The floor of
  a step is GEMM + Adam; every method's step time is reported as a ratio to it.
* **Every method of this project** (``kind=mmsae``): one training step of the one loop
  (:func:`mmsae.train.train`) on ``B`` pairs (``2B`` embeddings), per method.
* **The peers** (``kind=peer``: overcomplete, SAELens, sparsify, dictionary_learning; see
  ``scripts/peers.py``): a TopK SAE of the same shape trained by the peer's own code on the
  same ``2B`` embeddings per step with Adam at the same learning rate; compared with this
  project's pooled TopK SAE (``topk``), the same objective. A peer that cannot run says why
  (in the main env they are not installed: use ``.venv-bench``).

Each figure is the median over ``--repeats`` timed runs of a few steps after an untimed
warm-up run (min and max are kept in the CSV).

**Quiet machine.** A timing is valid only on an otherwise idle machine. Before starting,
the 1-minute load average must be below ``--max-load`` (the script waits up to ``--wait``
seconds, then refuses, exit code 2). During every timed run the CPU time used by *other*
processes is measured from ``/proc/stat`` minus this process's own; a run during which
others used more than ``--max-foreign`` cores is repeated (up to 3 times), and if it stays
busy the row is flagged ``busy`` and the script exits with code 3 without writing the
markdown sections. ``--allow-busy`` writes them anyway, flagged. The load average before
and after the run is recorded in every row.

``--scaling`` adds how the MGSAE step grows with m, K, batch and threads, with peak memory,
and the extrapolated time of the paper's run (25k steps x 128 pairs x 8192 latents);
``--profile`` adds an op-by-op breakdown of a step (torch profiler, ``mmsae.*`` ranges).

Writes ``results/benchmarks.csv`` (+ ``benchmark_scaling.csv``, ``benchmark_profile.csv``),
``figures/benchmark_throughput.{pdf,png}`` (+ ``benchmark_scaling``), and with
``--markdown FILE`` the section between ``<!-- benchmark:begin -->`` and
``<!-- benchmark:end -->`` of FILE.
"""

from __future__ import annotations

import argparse
import itertools
import os
import platform
import statistics
import sys
import time
import traceback
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "lib"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from mmsae.models import SAEConfig, build_model, registry  # noqa: E402
from mmsae.train import TrainConfig, train  # noqa: E402

import peers  # noqa: E402

def methods() -> dict[str, str]:
    """This project's methods by their command-line names (the records of mmsae.models.registry, read when asked,
    so a method registered later is benchmarked too; lambda 0.05, mask rate 0.2)."""
    return {m.cli_name: m.name for m in registry.REGISTRY.values()}
#: what the table's note column says of a method whose step is not comparable with the floor as is
METHOD_NOTES = {"modality_specific": "two SAEs of m/2 latents: half the floor's encoder GEMM"}
LR = 4e-4
EXIT_REFUSED, EXIT_BUSY = 2, 3


# --------------------------------------------------------------------------- quiet machine
def _cpu_jiffies() -> tuple[int, int] | None:
    """(busy jiffies of the whole machine, jiffies of this process) or None off Linux."""
    try:
        f = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
        vals = [int(v) for v in f]
        busy = sum(vals) - vals[3] - (vals[4] if len(vals) > 4 else 0)  # minus idle, iowait
        me = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
        return busy, int(me[11]) + int(me[12])  # utime + stime (all threads)
    except (OSError, ValueError, IndexError):
        return None


class Foreign:
    """CPU cores used by other processes while the block runs (``.cores``; NaN off Linux)."""

    def __enter__(self):
        self.t, self.j = time.perf_counter(), _cpu_jiffies()
        return self

    def __exit__(self, *exc):
        j, dt = _cpu_jiffies(), time.perf_counter() - self.t
        hz = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
        if j is None or self.j is None or dt <= 0:
            self.cores = float("nan")
        else:
            self.cores = max(0.0, ((j[0] - self.j[0]) - (j[1] - self.j[1])) / hz / dt)
        return False


def load_avg() -> float:
    return os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")


def wait_until_quiet(max_load: float, wait_s: float) -> float:
    """Wait until the 1-minute load average is below ``max_load``; return it (NaN if unknown)."""
    t0 = time.time()
    load = load_avg()
    while load == load and load >= max_load and time.time() - t0 < wait_s:
        print(f"machine busy: load average {load:.2f} >= {max_load}; waiting ...", flush=True)
        time.sleep(10)
        load = load_avg()
    return load


# --------------------------------------------------------------------------- timing
def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize()


def timed(fn, repeats: int, max_foreign: float) -> dict:
    """Run ``fn()`` (returns seconds) once untimed, then ``repeats`` times; a run during which
    other processes used more than ``max_foreign`` cores is redone (up to 3 times)."""
    fn()
    times, foreign, redone = [], [], 0
    for _ in range(repeats):
        for attempt in range(4):
            with Foreign() as f:
                t = fn()
            if not (f.cores > max_foreign) or attempt == 3:
                break
            redone += 1
        times.append(t)
        foreign.append(f.cores)
    fmax = max(foreign) if foreign else float("nan")
    return dict(seconds=sorted(times), foreign_cores=fmax, redone=redone, busy=bool(fmax > max_foreign))


def make_data(n: int, d: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Unit-norm paired embeddings with a shared component and a modality offset (CLIP-like)."""
    rng = np.random.default_rng(seed)
    shared = rng.standard_normal((n, d)).astype(np.float32)
    x = shared + 0.7 * rng.standard_normal((n, d)).astype(np.float32) + 2.0
    y = shared + 0.7 * rng.standard_normal((n, d)).astype(np.float32) - 2.0
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    y /= np.linalg.norm(y, axis=1, keepdims=True)
    return x, y


def method_config(name: str, d: int, m: int, k: int) -> SAEConfig:
    return registry.config_for(methods()[name], d=d, m=m, k=k)


def steps_for(B: int) -> int:
    return 10 if B <= 512 else 3 if B <= 2048 else 2


def time_method(name: str, B: int, d: int, m: int, k: int, data, dev, repeats: int, max_foreign: float,
                steps: int | None = None) -> dict:
    """ms per training step of ``name`` through :func:`mmsae.train.train` (loop time only)."""
    steps = steps or steps_for(B)
    model = build_model(method_config(name, d, m, k), seed=0)
    cfg = TrainConfig(steps=steps, batch_size=B, progress=False, log_every=10 ** 9, warmup_steps=1,
                      device=str(dev), lr=LR)
    # each run on the same model with its own seed: rerunning one seed would replay the same
    # batches with the same MGSAE masks, which a real run never does, and the model then learns
    # to rank the latents those masks drop first on those rows (each replay trains only the
    # kept ones), so the masked selection falls back to slower paths more and more often
    seeds = itertools.count()
    r = timed(lambda: train(model, data, cfg, seed=next(seeds)).wall_time_s, repeats, max_foreign)
    return dict(r, steps=steps)


def time_gemm(B: int, d: int, m: int, dev, repeats: int, max_foreign: float, steps: int) -> dict:
    g = torch.Generator(device="cpu").manual_seed(0)
    u = torch.randn(2 * B, d, generator=g).to(dev)
    W = torch.randn(m, d, generator=g).to(dev)
    out = torch.empty(2 * B, m, device=dev)

    def run():
        _sync(dev)
        t = time.perf_counter()
        for _ in range(steps):
            torch.mm(u, W.t(), out=out)
        _sync(dev)
        return time.perf_counter() - t

    return dict(timed(run, repeats, max_foreign), steps=steps)


def time_sgemm_peak(dev, repeats: int, max_foreign: float, n: int = 2048) -> dict:
    a, b = torch.randn(n, n, device=dev), torch.randn(n, n, device=dev)
    out = torch.empty(n, n, device=dev)
    reps = 3 if dev.type == "cpu" else 50

    def run():
        _sync(dev)
        t = time.perf_counter()
        for _ in range(reps):
            torch.mm(a, b, out=out)
        _sync(dev)
        return time.perf_counter() - t

    r = timed(run, repeats, max_foreign)
    r["gflops"] = 2 * n ** 3 * reps / statistics.median(r["seconds"]) / 1e9
    return r


def time_adam(d: int, m: int, dev, repeats: int, max_foreign: float, steps: int) -> dict:
    """The memory-bound floor of one optimizer update: the fastest Adam torch offers on ``dev`` (fused and
    foreach implementations both timed, the faster kept) over parameters of the model's size (W_enc, W_dec, b_enc,
    b_pre). ``impl`` says which."""
    best = None
    for impl in ("fused", "foreach"):
        params = [torch.nn.Parameter(torch.randn(*s, device=dev)) for s in ((m, d), (m, d), (m,), (2, d))]
        for p in params:
            p.grad = torch.randn_like(p)
        try:
            opt = torch.optim.Adam(params, lr=LR, **{impl: True})
            opt.step()  # the first step allocates the moments
        except (RuntimeError, TypeError, ValueError):
            continue

        def run(opt=opt):
            _sync(dev)
            t = time.perf_counter()
            for _ in range(steps):
                opt.step()
            _sync(dev)
            return time.perf_counter() - t

        r = dict(timed(run, repeats, max_foreign), steps=steps, impl=impl)
        if best is None or statistics.median(r["seconds"]) < statistics.median(best["seconds"]):
            best = r
    if best is None:
        raise RuntimeError(f"no Adam implementation runs on {dev}")
    return best


def peer_batches(data, B: int, steps: int, dev) -> list[torch.Tensor]:
    """The ``2B`` pooled embeddings of ``B`` random pairs, per step (the same draw for every peer)."""
    x, y = data
    g = torch.Generator().manual_seed(0)
    xt, yt = torch.as_tensor(x), torch.as_tensor(y)
    out = []
    for _ in range(steps):
        i = torch.randint(0, len(x), (B,), generator=g)
        out.append(torch.cat([xt[i], yt[i]]).to(dev))
    return out


def time_peer(peer: str, B: int, d: int, m: int, k: int, data, dev, repeats: int, max_foreign: float) -> dict:
    steps = steps_for(B)
    batches = peer_batches(data, B, steps, dev)
    return dict(timed(lambda: peers.RUNNERS[peer](batches, d, m, k, LR, dev), repeats, max_foreign), steps=steps)


# --------------------------------------------------------------------------- main table
def measure(args, dev, threads: int, data, peer_ok: dict) -> list[dict]:
    torch.set_num_threads(threads)
    rows = []
    base = dict(device=dev.type, threads=threads, d=args.d, m=args.m, k=args.k)

    def add(kind, method, B, r, per_step_div=1, **extra):
        med = statistics.median(r["seconds"]) / r["steps"]
        row = dict(base, kind=kind, method=method, batch_pairs=B, steps=r["steps"], repeats=len(r["seconds"]),
                   ms_per_step=1e3 * med, ms_min=1e3 * r["seconds"][0] / r["steps"],
                   ms_max=1e3 * r["seconds"][-1] / r["steps"], pairs_per_s=B / med if B else np.nan,
                   foreign_cores=r["foreign_cores"], redone=r["redone"], busy=r["busy"], note="", **extra)
        rows.append(row)
        print(f"threads={threads} B={B:5d} {kind:6s} {method:22s} {row['ms_per_step']:9.2f} ms/step"
              + (f"  (busy: other processes used {r['foreign_cores']:.2f} cores)" if r["busy"] else ""), flush=True)
        return row

    peak = time_sgemm_peak(dev, args.repeats, args.max_foreign)
    add("floor", "sgemm-peak", 0, dict(peak, steps=1), gflops=peak["gflops"])
    for B in args.batches:
        st = steps_for(B)
        g = time_gemm(B, args.d, args.m, dev, args.repeats, args.max_foreign, st)
        gflops = 2 * 2 * B * args.d * args.m / (statistics.median(g["seconds"]) / st) / 1e9
        rg = add("floor", "encoder-gemm", B, g, gflops=gflops)
        a = time_adam(args.d, args.m, dev, args.repeats, args.max_foreign, max(st, 5))
        ra = add("floor", "adam-update", B, {k: v for k, v in a.items() if k != "impl"})
        ra["note"] = f"torch.optim.Adam({a['impl']}=True), the faster of fused and foreach"
        floor_ms = rg["ms_per_step"] + ra["ms_per_step"]
        rows.append(dict(base, kind="floor", method="floor", batch_pairs=B, ms_per_step=floor_ms,
                         pairs_per_s=B / floor_ms * 1e3, busy=rg["busy"] or ra["busy"], note="encoder-gemm + adam-update"))
        for name in args.methods:
            try:
                r = time_method(name, B, args.d, args.m, args.k, data, dev, args.repeats, args.max_foreign)
                add("mmsae", name, B, r)["note"] = METHOD_NOTES.get(name, "")
            except Exception as e:  # noqa: BLE001
                traceback.print_exc()
                rows.append(dict(base, kind="mmsae", method=name, batch_pairs=B, note=f"failed: {type(e).__name__}: {e}"[:200]))
        for peer in args.peers:
            if peer_ok.get(peer):
                rows.append(dict(base, kind="peer", method=peer, batch_pairs=B, note=peer_ok[peer]))
                print(f"threads={threads} B={B:5d} peer   {peer:22s} {peer_ok[peer]}")
                continue
            try:
                add("peer", peer, B, time_peer(peer, B, args.d, args.m, args.k, data, dev, args.repeats, args.max_foreign))
            except Exception as e:  # noqa: BLE001
                traceback.print_exc()
                rows.append(dict(base, kind="peer", method=peer, batch_pairs=B, note=f"failed: {type(e).__name__}: {e}"[:200]))
    return rows


def add_ratios(df):
    """ratio_to_floor = ms / (encoder GEMM + Adam update) ms, ratio_to_gemm = ms / encoder GEMM ms (same threads,
    batch); speedup_of_topk = peer ms / our topk ms."""
    df["ratio_to_floor"] = np.nan
    df["ratio_to_gemm"] = np.nan  # against the encoder GEMM alone (the floor without the optimizer update)
    df["speedup_of_topk"] = np.nan
    for (th, B), g in df[df.batch_pairs > 0].groupby(["threads", "batch_pairs"]):
        floor = g.loc[g.method == "floor", "ms_per_step"]
        gemm = g.loc[g.method == "encoder-gemm", "ms_per_step"]
        if len(gemm):
            df.loc[g.index[g.kind.isin(["mmsae", "peer"])], "ratio_to_gemm"] = \
                df.loc[g.index[g.kind.isin(["mmsae", "peer"])], "ms_per_step"] / float(gemm.iloc[0])
        ours = g.loc[(g.kind == "mmsae") & (g.method == "topk"), "ms_per_step"]
        timed_rows = g.index[g.kind.isin(["mmsae", "peer"])]
        peer_rows = g.index[g.kind == "peer"]
        if len(floor):
            df.loc[timed_rows, "ratio_to_floor"] = df.loc[timed_rows, "ms_per_step"] / float(floor.iloc[0])
        if len(ours) and ours.notna().all() and len(peer_rows):
            df.loc[peer_rows, "speedup_of_topk"] = df.loc[peer_rows, "ms_per_step"] / float(ours.iloc[0])
    return df


# --------------------------------------------------------------------------- scaling
def _rss_mb(field: str) -> float:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def scale_point(d: int, m: int, k: int, B: int, threads: int, dev, max_foreign: float) -> dict:
    """One point of the scaling grid, measured in a fresh process (see :func:`scaling`): the
    MGSAE step time, its floor and the memory the training added at its peak (the resident
    set's high-water mark minus the resident set once the data were in memory)."""
    from mmsae.engine.sparse import topk_rows

    torch.set_num_threads(threads)
    data = make_data(max(16384, 2 * B), d)
    topk_rows(torch.randn(2, 128), 2)  # load the compiled top-k kernel before the baseline
    rss0 = _rss_mb("VmRSS")
    st = max(2, min(10, steps_for(B)))
    r = time_method("mgsae", B, d, m, k, data, dev, 2, max_foreign, steps=st)
    peak = _rss_mb("VmHWM") - rss0
    g = time_gemm(B, d, m, dev, 2, max_foreign, st)
    a = time_adam(d, m, dev, 2, max_foreign, 5)
    ms = 1e3 * statistics.median(r["seconds"]) / st
    floor = 1e3 * (statistics.median(g["seconds"]) / st + statistics.median(a["seconds"]) / 5)
    return dict(threads=threads, batch_pairs=B, m=m, k=k, d=d, ms_per_step=ms, floor_ms=floor,
                ratio_to_floor=ms / floor, pairs_per_s=B / ms * 1e3, peak_mem_mb=peak,
                foreign_cores=max(r["foreign_cores"], g["foreign_cores"], a["foreign_cores"]),
                busy=bool(r["busy"] or g["busy"] or a["busy"]), note="")


def scaling(args, dev, data) -> list[dict]:
    """MGSAE step time and peak memory against m, K, batch and threads (one axis at a time,
    from batch 128 pairs, ``--m`` latents and ``--k``). Each point runs in its own process
    (this script with ``--scale-point``), so that its peak memory is its own: within one
    process the allocator keeps memory freed by an earlier point."""
    import json
    import subprocess

    B0, m0, k0 = 128, args.m, args.k
    grid = [("m", 1, B0, m, k0) for m in args.scale_m]
    grid += [("K", 1, B0, m0, k) for k in args.scale_k]
    grid += [("batch", th, B, m0, k0) for th in args.threads for B in args.scale_batch]
    rows = []
    for axis, th, B, m, k in grid:
        if m < 2 * k:
            continue
        cmd = [sys.executable, str(Path(__file__).resolve()), "--device", str(dev), "--max-foreign",
               str(args.max_foreign), "--scale-point", f"{args.d},{m},{k},{B},{th}"]
        p = subprocess.run(cmd, capture_output=True, text=True)
        line = [ln for ln in p.stdout.splitlines() if ln.startswith("SCALE_POINT ")]
        if p.returncode or not line:
            rows.append(dict(axis=axis, threads=th, batch_pairs=B, m=m, k=k, d=args.d,
                             note=f"failed: {(p.stderr.strip().splitlines() or ['?'])[-1]}"[:200]))
            print(f"scaling {axis:5s} threads={th} B={B:5d} m={m:6d} K={k:4d} failed:\n{p.stderr[-2000:]}")
            continue
        row = dict(axis=axis, **json.loads(line[-1][len("SCALE_POINT "):]))
        rows.append(row)
        print(f"scaling {axis:5s} threads={th} B={B:5d} m={m:6d} K={k:4d} {row['ms_per_step']:9.2f} ms/step "
              f"(floor {row['floor_ms']:.2f}, x{row['ratio_to_floor']:.2f}) peak +{row['peak_mem_mb']:.0f} MB", flush=True)
    return rows


# --------------------------------------------------------------------------- profile
PHASES = ["mmsae.encoder_gemm", "mmsae.topk_select", "mmsae.topk_select_masked", "mmsae.auxk_select",
          "mmsae.sparse_decode", "mmsae.auxk", "mmsae.forward", "mmsae.backward", "mmsae.decoder_projection",
          "mmsae.optimizer", "mmsae.decoder_renorm"]


def _minor_faults() -> int:
    """Minor page faults of this process so far (0 where ``resource`` is missing)."""
    try:
        import resource
    except ImportError:  # pragma: no cover - not POSIX
        return 0
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def profile(args, dev, data) -> list[dict]:
    """Op-by-op breakdown of a training step (torch profiler over the loop's ``mmsae.*`` ranges
    and, inside the backward, the autograd nodes)."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as tprofile

    torch.set_num_threads(args.threads[0])
    rows = []
    for name, B, dead in [(n, B, dead) for n in ("topk", "mgsae") for B in args.batches for dead in (False, True)]:
        st = steps_for(B)
        model = build_model(method_config(name, args.d, args.m, args.k), seed=0)
        cfg = TrainConfig(steps=st, batch_size=B, progress=False, log_every=10 ** 9, warmup_steps=1,
                          device=str(dev), lr=LR)
        train(model, data, cfg, seed=0)
        # two runs under the profiler, the first not kept: the profiler's own records stay
        # allocated between the step's buffers, so on its first run the heap grows and the
        # step's buffers are page-faulted in anew (here ~1,000 faults a step, several ms), which
        # would be charged to whatever part of the step allocated them
        for seed in (1, 2):  # new batches and masks each run (see time_method)
            if dead:  # a third of the latents dead: AuxK active
                with torch.no_grad():
                    model.since_fired[::3] = model.config.dead_after
            faults = _minor_faults()
            with tprofile(activities=[ProfilerActivity.CPU]) as prof:
                wall = train(model, data, cfg, seed=seed).wall_time_s
            faults = _minor_faults() - faults
        ev = {e.key: e for e in prof.key_averages()}
        total = 1e3 * wall / st
        got = {p: ev[p].cpu_time_total / 1e3 / st for p in PHASES if p in ev}
        inner = sum(got.get(p, 0.0) for p in ("mmsae.encoder_gemm", "mmsae.topk_select",
                                              "mmsae.topk_select_masked", "mmsae.auxk_select",
                                              "mmsae.sparse_decode", "mmsae.auxk"))
        parts = {p.replace("mmsae.", ""): v for p, v in got.items() if p not in ("mmsae.forward",)}
        parts["other forward (losses, l2,1, bookkeeping)"] = max(0.0, got.get("mmsae.forward", 0.0) - inner)
        # inside the backward: the autograd nodes
        for key, e in ev.items():
            if (key.endswith("Backward0") or key.endswith("Backward")) and not key.startswith("autograd::"):
                if e.cpu_time_total / 1e3 / st > 0.02 * total:
                    parts[f"  backward: {key}"] = e.cpu_time_total / 1e3 / st
        profiled = sum(v for p, v in got.items() if p not in PHASES[:6])
        parts["loop (sampling, logging, Python)"] = max(0.0, total - profiled)
        for part, v in parts.items():
            rows.append(dict(method=name, batch_pairs=B, threads=args.threads[0], part=part, ms_per_step=v,
                             share=v / total, step_ms_profiled=total, page_faults_per_step=faults / st,
                             latents="a third dead (AuxK on)" if dead else "all alive (AuxK off)"))
        print(f"profile {name} B={B} dead={dead}: step {total:.1f} ms under the profiler, "
              f"{faults / st:.0f} page faults a step")
    return rows


# --------------------------------------------------------------------------- output
def _fmt_ms(v) -> str:
    return "" if v != v else (f"{v:,.1f}" if v >= 10 else f"{v:.2f}")


def markdown_tables(df, sc, pf, meta: dict) -> str:
    out = []
    for th in sorted(df.threads.dropna().unique()):
        d = df[df.threads == th]
        peak = d[d.method == "sgemm-peak"]
        pk = f"{float(peak.gflops.iloc[0]):.0f} GFLOP/s" if len(peak) and "gflops" in d else "n/a"
        out += [f"**{int(th)} thread{'s' if th > 1 else ''}** (sgemm peak {pk}):", "",
                "| batch (pairs) | kind | method | ms / step | pairs / s | x floor (GEMM + Adam) | x GEMM | "
                "peer / our topk | note |",
                "|---:|---|---|---:|---:|---:|---:|---:|---|"]
        for B in sorted(d.batch_pairs.unique()):
            if B == 0:
                continue
            for _, r in d[d.batch_pairs == B].iterrows():
                note = r.get("note") if isinstance(r.get("note"), str) else ""
                if r.method == "encoder-gemm":
                    note = (note + f" {r.gflops:.0f} GFLOP/s").strip()
                if r.get("busy") is True:
                    note = (note + " BUSY").strip()
                ms = r.get("ms_per_step", np.nan)
                rat, sp = r.get("ratio_to_floor", np.nan), r.get("speedup_of_topk", np.nan)
                rg = r.get("ratio_to_gemm", np.nan)
                out.append(f"| {int(B)} | {r.kind} | {r.method} | {_fmt_ms(ms)} | "
                           f"{'' if ms != ms else f'{r.pairs_per_s:,.0f}'} | {'' if rat != rat else f'{rat:.2f}x'} | "
                           f"{'' if rg != rg else f'{rg:.2f}x'} | {'' if sp != sp else f'{sp:.2f}x'} | {note} |")
        out.append("")
    out += ["Targets (computed from the table above):", ""]
    out += targets(df, pf)
    if sc is not None and len(sc):
        out += ["", f"How the MGSAE step grows (one axis at a time from B=128 pairs, m={meta['m']}, K={meta['k']}; "
                "each point in a fresh process; peak memory = what the training added to the resident set at "
                "its peak, i.e. the high-water mark minus the resident set with the data loaded):", "",
                "| axis | threads | batch | m | K | ms / step | x floor | pairs / s | peak memory (MB) |",
                "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for _, r in sc.iterrows():
            if r.get("ms_per_step", np.nan) != r.get("ms_per_step", np.nan):
                out.append(f"| {r.axis} | {r.threads} | {r.batch_pairs} | {r.m} | {r.k} | {r.note} | | | |")
                continue
            out.append(f"| {r.axis} | {int(r.threads)} | {int(r.batch_pairs)} | {int(r.m)} | {int(r.k)} | "
                       f"{_fmt_ms(r.ms_per_step)} | {r.ratio_to_floor:.2f}x | {r.pairs_per_s:,.0f} | "
                       f"{r.peak_mem_mb:,.0f} |")
        out += ["", *paper_scale(sc)]
    if pf is not None and len(pf):
        out += ["", "Where a step's time goes (torch profiler, ms per step; the profiler itself adds "
                "time, so the parts are shares of the *profiled* step):", ""]
        for (name, B, lat), g in pf.groupby(["method", "batch_pairs", "latents"], sort=False):
            flt = g.page_faults_per_step.iloc[0] if "page_faults_per_step" in g else float("nan")
            flt = "" if flt != flt else f", {flt:.0f} page faults a step"
            out += [f"*{name}, batch {int(B)}, {lat}, {int(g.threads.iloc[0])} thread(s), profiled step "
                    f"{g.step_ms_profiled.iloc[0]:.1f} ms{flt}:*", "", "| part | ms / step | share |", "|---|---:|---:|"]
            out += [f"| {r.part} | {_fmt_ms(r.ms_per_step)} | {100 * r.share:.0f}% |" for _, r in g.iterrows()]
            out.append("")
    return "\n".join(out)


#: the steps held to the floor at the paper's batch (issue 28's targets)
STEP_TARGETS = ("topk", "gsae", "mgsae", "batchtopk", "matryoshka")


def target_checks(df, pf=None) -> list[dict]:
    """The speed targets against the run's own floors, one record per thread count, batch and kind of check:
    ``{threads, batch, auxk, against, limit, values: {method: ratio}}`` for the steps of :data:`STEP_TARGETS` (at
    batch 128 within 1.2x of GEMM + Adam, and, from the profile ``pf``, the profiled step with a third of the
    latents dead, AuxK on, within 1.5x; at batch 4096 within 1.2x of the GEMM alone), and ``{..., peers:
    {peer: speed-up of our topk}}`` for the peers."""
    out = []
    for th in sorted(df.threads.dropna().unique()):
        d = df[(df.threads == th) & (df.batch_pairs > 0)]
        for B in sorted(d.batch_pairs.unique()):
            g = d[d.batch_pairs == B]
            base = {"threads": int(th), "batch": int(B)}
            col, what = ("ratio_to_floor", "GEMM + Adam") if B <= 128 else ("ratio_to_gemm", "GEMM")
            vals = {}
            for meth in STEP_TARGETS:
                r = g[(g.kind == "mmsae") & (g.method == meth)]
                if len(r) and col in r and r[col].notna().all():
                    vals[meth] = float(r[col].iloc[0])
            if vals and (B <= 128 or B >= 4096):
                out.append({**base, "auxk": False, "against": what, "limit": 1.2, "values": vals})
            fl = g[(g.kind == "floor") & (g.method == "floor")]
            if pf is not None and len(pf) and B <= 128 and len(fl):
                prof = pf[(pf.threads == th) & (pf.batch_pairs == B) & (pf.latents.str.startswith("a third dead"))]
                aux = {m: float(r.step_ms_profiled.iloc[0]) / float(fl.ms_per_step.iloc[0])
                       for m, r in prof.groupby("method", sort=False)}
                if aux:
                    out.append({**base, "auxk": True, "against": "GEMM + Adam", "limit": 1.5, "values": aux})
            peers_here = {r.method: r.get("speedup_of_topk", np.nan) for _, r in g[g.kind == "peer"].iterrows()}
            peers_here = {k: float(v) for k, v in peers_here.items() if v == v}
            if peers_here:
                out.append({**base, "peers": peers_here})
    return out


def targets(df, pf=None) -> list[str]:
    """:func:`target_checks` as a list, one line per step or peer, met or NOT met."""
    out = []
    for c in target_checks(df, pf):
        head = (f"- {c['threads']} thread(s), batch {c['batch']}"
                + (", a third of the latents dead (AuxK on, profiled step):" if c.get("auxk") else ":"))
        if "peers" in c:
            out += [f"{head} our topk is **{sp:.2f}x** faster than {peer} (target >= {1.5 if peer == 'sparsify' else 3.0}x:"
                    f" {'met' if sp >= (1.5 if peer == 'sparsify' else 3.0) else 'NOT met'})"
                    for peer, sp in c["peers"].items()]
        else:
            out += [f"{head} {meth} step / {c['against']} = **{v:.2f}x** (target <= {c['limit']}x: "
                    f"{'met' if v <= c['limit'] else 'NOT met'})" for meth, v in c["values"].items()]
    return out


def target_table(df, pf=None) -> list[str]:
    """:func:`target_checks` at a glance (the README's speed section): one row per thread count and batch, each
    step of :data:`STEP_TARGETS` as a ratio to its floor, the target, how many meet it; then our TopK against each
    peer."""
    cols = list(STEP_TARGETS)
    checks = target_checks(df, pf)
    out = ["| threads | batch | against | " + " | ".join(cols) + " | target | met |",
           "|---:|---|---|" + "---:|" * len(cols) + "---|---|"]
    for c in (c for c in checks if "values" in c):
        v = c["values"]
        label = f"{c['batch']}, a third dead (AuxK on; profiled step)" if c["auxk"] else str(c["batch"])
        out.append(f"| {c['threads']} | {label} | {c['against']} | "
                   + " | ".join(f"{v[m]:.2f}x" if m in v else "–" for m in cols)
                   + f" | ≤ {c['limit']}x | {sum(x <= c['limit'] for x in v.values())} of {len(v)} |")
    peer_rows = [c for c in checks if "peers" in c]
    if peer_rows:
        names = list(dict.fromkeys(n for c in peer_rows for n in c["peers"]))
        out += ["", "Our TopK step against each peer's (how many times faster; same shape, same data):", "",
                "| threads | batch | " + " | ".join(names) + " |", "|---:|---:|" + "---:|" * len(names)]
        out += [f"| {c['threads']} | {c['batch']} | " + " | ".join(f"{c['peers'][n]:.1f}x" if n in c["peers"] else "–"
                                                            for n in names) + " |" for c in peer_rows]
    return out


def paper_scale(sc) -> list[str]:
    out = []
    for th in sorted(sc.threads.dropna().unique()):
        r = sc[(sc.threads == th) & (sc.batch_pairs == 128) & (sc.m == 8192) & (sc.k == 32) & (sc.d == 512)]
        if len(r) and r.ms_per_step.notna().any():
            ms = float(r.ms_per_step.dropna().iloc[0])
            out.append(f"- Paper-scale MGSAE (25,000 steps x 128 pairs, m = 8192, K = 32), {int(th)} thread(s): "
                       f"{ms:.1f} ms/step measured over a few steps, so about **{25_000 * ms / 60_000:.1f} min** "
                       f"for the whole run (extrapolated, not measured end to end).")
    return out


def write_markdown(path: Path, body: str) -> None:
    begin, end = "<!-- benchmark:begin -->", "<!-- benchmark:end -->"
    text = path.read_text() if path.exists() else "# Performance\n\n"
    block = f"{begin}\n{body}\n{end}"
    if begin in text and end in text:
        text = text[:text.index(begin)] + block + text[text.index(end) + len(end):]
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    path.write_text(text)
    print(f"wrote {path}")


def figure(df, sc, figures_dir) -> None:
    import matplotlib.pyplot as plt

    from mmsae.study.plots import legend_outside, panel_grid, save_figure, set_style

    set_style()
    ths = sorted(df.threads.dropna().unique())
    fig, axes = plt.subplots(1, len(ths), figsize=(4.4 * len(ths) + 1.2, 4.2), squeeze=False)
    for ax, th in zip(axes[0], ths):
        d = df[(df.threads == th) & df.kind.isin(["mmsae", "peer"]) & df.ratio_to_floor.notna()]
        Bs = sorted(d.batch_pairs.unique())
        names = list(dict.fromkeys(d.method))
        w = 0.8 / max(len(Bs), 1)
        for i, B in enumerate(Bs):
            g = d[d.batch_pairs == B].set_index("method")
            ax.barh([j + i * w for j in range(len(names))], [g.ratio_to_floor.get(n, np.nan) for n in names],
                    height=w, label=f"batch {int(B)}")
        ax.set_yticks([j + w * (len(Bs) - 1) / 2 for j in range(len(names))], names)
        ax.axvline(1.0, color="k", lw=0.8)
        ax.set_xscale("log")
        ax.set_xlabel("step time / floor (encoder GEMM + Adam)")
        ax.set_title(f"{int(th)} thread(s)")
        ax.invert_yaxis()
    fig.tight_layout()
    legend_outside(fig, axes[0][-1], fontsize=7)
    for p in save_figure(fig, "benchmark_throughput", figures_dir):
        print(f"wrote {p}")
    plt.close(fig)
    if sc is None or not len(sc) or "ms_per_step" not in sc:
        return
    axes_names = [a for a in ("m", "K", "batch") if a in set(sc.axis)]
    fig, axes = panel_grid(len(axes_names), 3.2, 3.0, max_cols=2, legend_w=1.8)
    col = {"m": "m", "K": "k", "batch": "batch_pairs"}
    for ax, a in zip(axes, axes_names):
        g = sc[(sc.axis == a) & sc.ms_per_step.notna()]
        for th, h in g.groupby("threads"):
            h = h.sort_values(col[a])
            ax.plot(h[col[a]], h.ms_per_step, marker="o", label=f"MGSAE, {int(th)} thread(s)")
            ax.plot(h[col[a]], h.floor_ms, ls="--", color=ax.lines[-1].get_color(), label=f"floor, {int(th)} thread(s)")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel({"m": "latents m", "K": "K", "batch": "batch (pairs)"}[a])
        ax.set_ylabel("ms / step")
    fig.tight_layout()
    legend_outside(fig, axes[0], fontsize=7)
    for p in save_figure(fig, "benchmark_scaling", figures_dir):
        print(f"wrote {p}")
    plt.close(fig)


def _ints(s: str) -> list[int]:
    return [int(v) for v in s.split(",") if v]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", default="1,2", help="torch intra-op thread counts (CPU)")
    p.add_argument("--batches", default="128,4096", help="pairs per step")
    p.add_argument("--methods", default=",".join(methods()))
    p.add_argument("--peers", default=",".join(peers.PEERS))
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--d", type=int, default=512)
    p.add_argument("--m", type=int, default=8192)
    p.add_argument("--k", type=int, default=32)
    p.add_argument("--scaling", action="store_true", help="also the scaling grid and the paper-scale estimate")
    p.add_argument("--scale-m", default="2048,4096,8192,16384,32768,65536")
    p.add_argument("--scale-k", default="8,16,32,64,128")
    p.add_argument("--scale-batch", default="32,128,512,2048,8192")
    p.add_argument("--profile", action="store_true", help="also the op-by-op profile of a step")
    p.add_argument("--scale-point", default=None, help=argparse.SUPPRESS)  # internal: one scaling point
    p.add_argument("--quick", action="store_true", help="smoke run: d=64 m=512 k=8, batch 32, 1 thread, 1 repeat")
    p.add_argument("--max-load", type=float, default=0.5, help="refuse to start above this 1-min load average")
    p.add_argument("--wait", type=float, default=120.0, help="seconds to wait for a quiet machine")
    p.add_argument("--max-foreign", type=float, default=0.2, help="cores other processes may use during a timing")
    p.add_argument("--allow-busy", action="store_true", help="measure and write even on a busy machine (flagged)")
    p.add_argument("--results", default=str(ROOT / "results"))
    p.add_argument("--figures", default=str(ROOT / "figures"))
    p.add_argument("--markdown", action="append", default=[], help="update this file's benchmark section (repeatable)")
    p.add_argument("--summary", action="append", default=[],
                   help="update this file's benchmark section with the short form: the targets and the paper-scale "
                        "estimate, no tables (e.g. README.md; repeatable)")
    p.add_argument("--redraw", action="store_true",
                   help="only redraw the figures (and, with --summary, the short form) from the recorded "
                        "results/benchmarks.csv, benchmark_scaling.csv and benchmark_profile.csv")
    args = p.parse_args(argv)
    if args.redraw:
        import pandas as pd

        res = Path(args.results)
        sc_path, pf_path = res / "benchmark_scaling.csv", res / "benchmark_profile.csv"
        df = pd.read_csv(res / "benchmarks.csv")
        sc = pd.read_csv(sc_path) if sc_path.exists() else None
        figure(df, sc, args.figures)
        if args.summary:  # the short form again, from the recorded run (nothing is measured)
            write_summaries(args.summary, recorded_header(df), df, pd.read_csv(pf_path) if pf_path.exists() else None,
                            sc)
        return 0
    if args.quick:
        args.d, args.m, args.k, args.repeats = 64, 512, 8, 1
        args.batches, args.threads = "32", "1"
        args.scale_m, args.scale_k, args.scale_batch = "256,512", "4,8", "16,32"
    args.threads, args.batches = _ints(args.threads), _ints(args.batches)
    args.scale_m, args.scale_k, args.scale_batch = _ints(args.scale_m), _ints(args.scale_k), _ints(args.scale_batch)
    args.methods = [m for m in args.methods.split(",") if m]
    args.peers = [m for m in args.peers.split(",") if m]
    unknown = [m for m in args.methods if m not in methods()] + [q for q in args.peers if q not in peers.PEERS]
    if unknown:
        p.error(f"unknown methods/peers {unknown}; methods: {list(methods())}, peers: {peers.PEERS}")
    dev = torch.device(args.device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda but CUDA is not available here")
    if args.scale_point:  # a child of --scaling: one point, printed as JSON
        import json

        d, m, k, B, th = _ints(args.scale_point)
        print("SCALE_POINT " + json.dumps(scale_point(d, m, k, B, th, dev, args.max_foreign)))
        return 0

    load0 = wait_until_quiet(args.max_load, args.wait if not args.allow_busy else 0)
    if load0 == load0 and load0 >= args.max_load and not args.allow_busy:
        print(f"refused: the machine is busy (1-minute load average {load0:.2f} >= --max-load {args.max_load} "
              f"after waiting {args.wait:.0f} s). Stop other jobs, or pass --allow-busy (results flagged).")
        return EXIT_REFUSED
    import pandas as pd

    data = make_data(max(16384, 2 * max(args.batches + args.scale_batch)), args.d)
    peer_ok = peers.peer_status()
    versions = peers.peer_versions()
    cpu = platform.processor() or platform.machine()
    device_desc = (torch.cuda.get_device_name(dev) if dev.type == "cuda" else f"{cpu} CPU, {os.cpu_count()} cores")
    print(f"device: {device_desc}; torch {torch.__version__}; load average at start {load0:.2f}")
    rows = []
    for th in args.threads:
        rows += measure(args, dev, th, data, peer_ok)
    df = add_ratios(pd.DataFrame(rows))
    sc = pd.DataFrame(scaling(args, dev, data)) if args.scaling else None
    pf = pd.DataFrame(profile(args, dev, data)) if args.profile else None
    load1 = load_avg()
    busy = bool(df.get("busy", pd.Series(dtype=bool)).fillna(False).astype(bool).any()) or (
        sc is not None and len(sc) and bool(sc.get("busy", pd.Series(dtype=bool)).fillna(False).astype(bool).any()))
    for t in (df, sc, pf):
        if t is not None and len(t):
            t["load_avg_start"], t["load_avg_end"] = load0, load1
            t["device_desc"], t["torch"] = device_desc, torch.__version__
    res = Path(args.results)
    res.mkdir(parents=True, exist_ok=True)
    df.to_csv(res / "benchmarks.csv", index=False)
    print(f"wrote {res / 'benchmarks.csv'}")
    if sc is not None:
        sc.to_csv(res / "benchmark_scaling.csv", index=False)
    if pf is not None:
        pf.to_csv(res / "benchmark_profile.csv", index=False)
    figure(df, sc, args.figures)
    peer_line = ", ".join(f"{k} {v}" for k, v in versions.items() if v) or "none installed"
    meta = dict(device=device_desc, load0=load0, load1=load1, m=args.m, k=args.k)
    cmd = "python scripts/benchmark.py " + " ".join(argv if argv is not None else sys.argv[1:])
    pk = df[df.method == "sgemm-peak"] if "method" in df else df.iloc[:0]
    peaks = ", ".join(f"{float(r.gflops):.0f} GFLOP/s on {int(r.threads)} thread(s)" for r in pk.itertuples()
                      if "gflops" in pk and "threads" in pk)
    device_desc = device_desc + (f" (sgemm peak {peaks}: every ratio below depends on the machine)" if peaks else "")
    header = (f"Measured by `{cmd}` on: {device_desc}; torch {torch.__version__}; shape d={args.d}, m={args.m}, "
              f"K={args.k}; peers: {peer_line}; OMP_WAIT_POLICY {os.environ.get('OMP_WAIT_POLICY', 'unset')}. "
              f"1-minute load average {load0:.2f} before the run and {load1:.2f} "
              f"after it (the run's own threads count in the second); other processes used at most "
              f"{np.nanmax(df.foreign_cores.astype(float)) if 'foreign_cores' in df else float('nan'):.2f} cores "
              f"during any timing. Medians of {args.repeats} timed repeats after a warm-up."
              + (" **BUSY: some timings ran beside other work; do not quote them.**" if busy else ""))
    body = header + "\n\n" + markdown_tables(df, sc, pf, meta)
    print(body)
    if busy and not args.allow_busy:
        print("not writing the markdown sections: the machine was busy during some timings (exit 3)")
        return EXIT_BUSY
    for md in args.markdown:
        write_markdown(Path(md), body)
    write_summaries(args.summary, header, df, pf, sc)
    return 0


def write_summaries(paths, header: str, df, pf, sc) -> None:
    """The short form (``--summary``): the header, the targets at a glance and the paper-scale extrapolation."""
    short = [header, "", *target_table(df, pf)] + (["", *paper_scale(sc)] if sc is not None and len(sc) else [])
    for md in paths:
        write_markdown(Path(md), "\n".join(short))


def recorded_header(df) -> str:
    """The header of a summary rebuilt from the recorded run (``--redraw``): its machine, torch, sgemm peaks and
    load average, as the run printed them."""
    r = df.iloc[0]
    pk = df[df.method == "sgemm-peak"]
    peaks = ", ".join(f"{float(q.gflops):.0f} GFLOP/s on {int(q.threads)} thread(s)" for q in pk.itertuples())
    return (f"From the run recorded in `results/benchmarks.csv` on: {r.device_desc}"
            + (f" (sgemm peak {peaks}: every ratio below depends on the machine)" if peaks else "")
            + f"; torch {r.torch}; shape d={int(r.d)}, m={int(r.m)}, K={int(r.k)}. 1-minute load average "
            f"{float(r.load_avg_start):.2f} before the run; other processes used at most "
            f"{np.nanmax(df.foreign_cores.astype(float)):.2f} cores during any timing. Medians of "
            f"{int(df.repeats.max())} timed repeats after a warm-up; every table in docs/performance.md.")


if __name__ == "__main__":
    raise SystemExit(main())
