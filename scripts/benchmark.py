#!/usr/bin/env python
"""Training throughput: this project's loop vs overcomplete and SAELens TopK SAEs vs the
encoder-matmul floor, on the same embeddings and shapes.

    python scripts/benchmark.py --device cpu --repeats 3 --markdown docs/performance.md

Settings: ``topk`` = the pooled TopK SAE (a step on B pairs encodes 2B embeddings;
throughput in embeddings/s, the peers get the same 2B embeddings per step) and
``mgsae`` = MGSAE on pairs (pairs/s; the peers have no paired / group-sparse / masked
objective and are reported as "n/a" there). The floor is one bare ``(2B x d) @ (d x m)``
encoder matmul per step, timed the same way. Each figure: ``--repeats`` timed runs of a
few steps after one untimed warm-up run; min / median / max over the repeats; ratios use
the medians. Writes ``results/benchmarks.csv`` and ``figures/benchmark_throughput.{pdf,png}``.

Rows: ``mmsae-fast`` is this project's training loop (the objectives as the models define
them, evaluated K-sparse; the row keeps its name for older ``benchmarks.csv`` files). The
former ``mmsae-reference`` row is gone: the dense form of the objectives exists only as a
check in ``tests/test_fast_path.py`` and is not a training path, so it is not timed.

Peers (optional ``bench`` extra: ``pip install overcomplete sae-lens``): a peer that cannot
be imported or driven is listed as unavailable with the reason, never silently skipped.
"""

from __future__ import annotations

import argparse
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

from mmsae.models import GroupSparseSAE, SAEConfig, TopKSAE, mgsae_config  # noqa: E402
from mmsae.train import TrainConfig, train  # noqa: E402

METHODS = ["mmsae-fast", "overcomplete", "saelens", "floor-matmul"]


def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize()


def make_data(n: int, d: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Unit-norm paired embeddings with a shared component (CLIP-like geometry)."""
    rng = np.random.default_rng(seed)
    shared = rng.standard_normal((n, d)).astype(np.float32)
    x = shared + 0.7 * rng.standard_normal((n, d)).astype(np.float32) + 2.0
    y = shared + 0.7 * rng.standard_normal((n, d)).astype(np.float32) - 2.0
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    y /= np.linalg.norm(y, axis=1, keepdims=True)
    return x, y


# --------------------------------------------------------------------------- runners
def run_mmsae(setting, B, steps, data, args, dev):
    cfg = SAEConfig(d=args.d, m=args.m, k=args.k) if setting == "topk" else mgsae_config(d=args.d, m=args.m, k=args.k)
    torch.manual_seed(0)
    model = TopKSAE(cfg) if setting == "topk" else GroupSparseSAE(cfg)
    res = train(model, data, TrainConfig(steps=steps, batch_size=B, progress=False, log_every=10 ** 9,
                                         warmup_steps=1, device=str(dev)))
    return res.wall_time_s  # the loop only (data upload and init excluded)


def _peer_batches(data, B, steps, dev):
    x, y = data
    g = torch.Generator().manual_seed(0)
    xt, yt = torch.as_tensor(x, device=dev), torch.as_tensor(y, device=dev)
    out = []
    for _ in range(steps):
        i = torch.randint(0, len(x), (B,), generator=g).to(dev)
        out.append(torch.cat([xt[i], yt[i]]))  # pooled: the 2B embeddings of B pairs
    return out


def _import_overcomplete():
    import matplotlib
    import matplotlib.cm

    if not hasattr(matplotlib.cm, "get_cmap"):  # overcomplete 0.3 calls the removed cm.get_cmap at import
        matplotlib.cm.get_cmap = matplotlib.colormaps.get_cmap
    from overcomplete.sae import TopKSAE as OCTopK
    from overcomplete.sae.losses import top_k_auxiliary_loss
    from overcomplete.sae.train import train_sae
    return OCTopK, top_k_auxiliary_loss, train_sae


def run_overcomplete(setting, B, steps, data, args, dev):
    OCTopK, crit, train_sae = _import_overcomplete()
    torch.manual_seed(0)
    # a plain linear encoder (the default adds a BatchNorm) for equal shapes/work
    model = OCTopK(args.d, args.m, top_k=args.k, encoder_module="linear", device=str(dev))
    opt = torch.optim.Adam(model.parameters(), lr=4e-4)
    batches = _peer_batches(data, B, steps, dev)
    _sync(dev)
    t = time.perf_counter()
    train_sae(model, batches, crit, opt, nb_epochs=1, clip_grad=None, monitoring=0, device=str(dev))
    _sync(dev)
    return time.perf_counter() - t


def run_saelens(setting, B, steps, data, args, dev):
    import logging

    from sae_lens.config import SAETrainerConfig
    from sae_lens.saes.topk_sae import TopKTrainingSAE, TopKTrainingSAEConfig
    from sae_lens.training.sae_trainer import SAETrainer

    logging.disable(logging.WARNING)
    torch.manual_seed(0)
    sae = TopKTrainingSAE(TopKTrainingSAEConfig(d_in=args.d, d_sae=args.m, k=args.k, dtype="float32",
                                                device=str(dev)))
    batches = _peer_batches(data, B, steps, dev)
    cfg = SAETrainerConfig(total_training_samples=steps * 2 * B, train_batch_size_samples=2 * B, lr=4e-4, lr_end=4e-4,
                           device=str(dev))
    trainer = SAETrainer(cfg=cfg, sae=sae, data_provider=iter(batches))
    import contextlib
    import io

    _sync(dev)
    t = time.perf_counter()
    with contextlib.redirect_stderr(io.StringIO()):  # its tqdm bar
        trainer.fit()
    _sync(dev)
    return time.perf_counter() - t


def run_floor(setting, B, steps, data, args, dev):
    u = _peer_batches(data, B, 1, dev)[0]
    W = torch.randn(args.m, args.d, device=dev)
    _sync(dev)
    t = time.perf_counter()
    for _ in range(steps):
        u @ W.t()
    _sync(dev)
    return time.perf_counter() - t


RUNNERS = {
    "mmsae-fast": lambda s, B, n, data, a, dev: run_mmsae(s, B, n, data, a, dev),
    "overcomplete": run_overcomplete,
    "saelens": run_saelens,
    "floor-matmul": run_floor,
}


def peer_status() -> dict[str, str | None]:
    """None if the peer can be used, else why not."""
    out: dict[str, str | None] = {}
    try:
        _import_overcomplete()
        out["overcomplete"] = None
    except Exception as e:  # noqa: BLE001
        out["overcomplete"] = f"unavailable: {type(e).__name__}: {e}"[:160]
    try:
        import sae_lens  # noqa: F401
        from sae_lens.training.sae_trainer import SAETrainer  # noqa: F401
        out["saelens"] = None
    except Exception as e:  # noqa: BLE001
        out["saelens"] = f"unavailable: {type(e).__name__}: {e}"[:160]
    return out


# --------------------------------------------------------------------------- main
def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--quick", action="store_true", help="batch 128 only, d=256 m=2048 k=16, 1 repeat")
    p.add_argument("--batches", default="128,4096", help="pairs per step")
    p.add_argument("--settings", default="topk,mgsae")
    p.add_argument("--methods", default=",".join(METHODS))
    p.add_argument("--d", type=int, default=512)
    p.add_argument("--m", type=int, default=8192)
    p.add_argument("--k", type=int, default=32)
    p.add_argument("--steps-small", type=int, default=8, help="steps per timed run at batch <= 512")
    p.add_argument("--steps-large", type=int, default=1, help="steps per timed run at larger batches")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    p.add_argument("--csv", default=str(ROOT / "results" / "benchmarks.csv"))
    p.add_argument("--figures", default=str(ROOT / "figures"))
    p.add_argument("--markdown", action="append", default=[],
                   help="write the results section (between benchmark markers) of this markdown file; repeatable "
                        "(e.g. docs/performance.md and README.md)")
    p.add_argument("--from-csv", default=None, help="no measurement: re-render figure/markdown from this CSV")
    args = p.parse_args(argv)
    if args.from_csv:
        import pandas as pd

        df = pd.read_csv(args.from_csv)
        _figure(df, args.figures)
        table = _markdown_table(df)
        print(table)
        for md in args.markdown:
            _write_markdown(Path(md), df, table, str(df["device"].iloc[0]), float(df["load_avg_start"].iloc[0]),
                            args, argv)
        return 0
    if args.quick:
        args.batches, args.d, args.m, args.k, args.repeats = "128", 256, 2048, 16, 1
    if args.threads:
        torch.set_num_threads(args.threads)
    dev = torch.device(args.device)
    batches = [int(b) for b in args.batches.split(",")]
    settings = args.settings.split(",")
    methods = args.methods.split(",")
    status = peer_status()
    data = make_data(max(8192, 2 * max(batches)), args.d)

    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    device_desc = (torch.cuda.get_device_name(dev) if dev.type == "cuda" else
                   f"{platform.processor() or platform.machine()} CPU, {os.cpu_count()} cores, "
                   f"{torch.get_num_threads()} torch threads")
    print(f"device: {device_desc}; torch {torch.__version__}; load average at start {load:.1f}")
    rows = []
    for setting in settings:
        for B in batches:
            steps = args.steps_small if B <= 512 else args.steps_large
            for meth in methods:
                note = ""
                if meth in ("overcomplete", "saelens") and status.get(meth):
                    note = status[meth]
                elif meth in ("overcomplete", "saelens") and setting == "mgsae":
                    note = "n/a: no paired objective / l2,1 group loss / cross-modal mask"
                if note:
                    rows.append(dict(setting=setting, batch_pairs=B, method=meth, note=note))
                    print(f"{setting:6s} B={B:5d} {meth:16s} {note}")
                    continue
                try:
                    RUNNERS[meth](setting, B, 1, data, args, dev)  # warm-up (untimed)
                    times = [RUNNERS[meth](setting, B, steps, data, args, dev) for _ in range(args.repeats)]
                except Exception as e:  # noqa: BLE001
                    note = f"failed: {type(e).__name__}: {e}"[:160]
                    traceback.print_exc()
                    rows.append(dict(setting=setting, batch_pairs=B, method=meth, note=note))
                    print(f"{setting:6s} B={B:5d} {meth:16s} {note}")
                    continue
                per = (2 * B if setting == "topk" else B) * steps  # embeddings (topk) or pairs (mgsae)
                rates = sorted(per / t for t in times)
                row = dict(setting=setting, batch_pairs=B, method=meth, steps=steps, repeats=args.repeats,
                           unit="embeddings/s" if setting == "topk" else "pairs/s",
                           min=rates[0], median=statistics.median(rates), max=rates[-1],
                           ms_per_step=1e3 * statistics.median(times) / steps, note="")
                rows.append(row)
                print(f"{setting:6s} B={B:5d} {meth:16s} {row['median']:10.0f} {row['unit']} "
                      f"(min {row['min']:.0f}, max {row['max']:.0f}; {row['ms_per_step']:.1f} ms/step)", flush=True)

    import pandas as pd

    df = pd.DataFrame(rows)
    # ratios (medians): ours-fast vs each peer / the floor, per setting and batch
    for (s, B), g in df.groupby(["setting", "batch_pairs"]):
        med = dict(zip(g.method, g["median"]))
        fast = med.get("mmsae-fast", np.nan)
        for meth in g.method:
            v = med.get(meth, np.nan)
            df.loc[(df.setting == s) & (df.batch_pairs == B) & (df.method == meth), "fast_speedup_vs"] = \
                fast / v if v == v and v else np.nan
    df["device"] = device_desc
    df["torch"] = torch.__version__
    df["load_avg_start"] = load
    df["shape"] = f"d={args.d} m={args.m} k={args.k}"
    Path(args.csv).parent.mkdir(parents=True, exist_ok=True)
    df.to_csv(args.csv, index=False)
    print(f"wrote {args.csv}")
    _figure(df, args.figures)
    table = _markdown_table(df)
    print(table)
    for md in args.markdown:
        _write_markdown(Path(md), df, table, device_desc, load, args, argv)
    return 0


def _figure(df, figures_dir) -> None:
    try:
        import matplotlib.pyplot as plt

        from mmsae.study.plots import save_figure, set_style

        set_style()
        settings = list(dict.fromkeys(df.setting))
        fig, axes = plt.subplots(1, len(settings), figsize=(4.2 * len(settings), 3.2), squeeze=False)
        for ax, s in zip(axes[0], settings):
            g = df[(df.setting == s) & df["median"].notna()] if "median" in df else df.iloc[0:0]
            for meth in METHODS:
                h = g[g.method == meth].sort_values("batch_pairs")
                if len(h):
                    ax.errorbar(h.batch_pairs, h["median"], yerr=[h["median"] - h["min"], h["max"] - h["median"]],
                                marker="o", capsize=2, label=meth, ls="--" if meth == "floor-matmul" else "-")
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            ax.set_xlabel("batch (pairs)")
            ax.set_ylabel("embeddings/s" if s == "topk" else "pairs/s")
            ax.set_title("pooled TopK SAE" if s == "topk" else "MGSAE (pairs)")
        axes[0][-1].legend(fontsize=7)
        fig.tight_layout()
        for path in save_figure(fig, "benchmark_throughput", figures_dir):
            print(f"wrote {path}")
        plt.close(fig)
    except Exception as e:  # noqa: BLE001
        print(f"figure not written: {type(e).__name__}: {e}")


def _fmt(v) -> str:
    return "" if v != v else f"{v:,.0f}"


def _markdown_table(df) -> str:
    lines = ["| setting | batch (pairs) | method | median | min | max | unit | ms/step | fast path speed-up |",
             "|---|---:|---|---:|---:|---:|---|---:|---:|"]
    for _, r in df.iterrows():
        if isinstance(r.get("note"), str) and r["note"]:
            lines.append(f"| {r.setting} | {r.batch_pairs} | {r.method} | {r['note']} | | | | | |")
            continue
        sp = r.get("fast_speedup_vs", np.nan)
        if r.get("method") == "mmsae-fast":
            sp = np.nan
        lines.append(f"| {r.setting} | {r.batch_pairs} | {r.method} | {_fmt(r['median'])} | {_fmt(r['min'])} | "
                     f"{_fmt(r['max'])} | {r['unit']} | {r['ms_per_step']:.1f} | "
                     f"{'' if sp != sp else f'{sp:.2f}x'} |")
    return "\n".join(lines)


def _targets(df) -> list[str]:
    out = []
    for (s, B), g in df.groupby(["setting", "batch_pairs"]):
        med = {m: v for m, v in zip(g.method, g.get("median", [np.nan] * len(g))) if v == v}
        fast = med.get("mmsae-fast")
        if fast is None:
            continue
        peers = [med[p] for p in ("overcomplete", "saelens") if p in med]
        if peers:
            r = fast / max(peers)
            out.append(f"- {s}, batch {B}: fast path / faster peer = **{r:.2f}x** "
                       f"(target >= 3x: {'met' if r >= 3 else 'NOT met'})")
        if "floor-matmul" in med:
            r = med["floor-matmul"] / fast
            extra = f" (target <= 1.5x at batch 4096: {'met' if r <= 1.5 else 'NOT met'})" if B >= 4096 else ""
            out.append(f"- {s}, batch {B}: step time / encoder-matmul floor = **{r:.2f}x**{extra}")
        if "mmsae-reference" in med:  # only in benchmarks.csv files written before that row was dropped
            out.append(f"- {s}, batch {B}: fast / reference path = {fast / med['mmsae-reference']:.2f}x")
    return out


def _write_markdown(path: Path, df, table, device_desc, load, args, argv) -> None:
    begin, end = "<!-- benchmark:begin -->", "<!-- benchmark:end -->"
    cmd = "python scripts/benchmark.py " + " ".join(argv if argv is not None else sys.argv[1:])
    how = (f"Rendered from `{Path(args.from_csv).name}` (no new measurement); measured"
           if args.from_csv else f"Measured by `{cmd}`")
    body = "\n".join([
        begin,
        f"{how} on: {device_desc}; torch {df['torch'].iloc[0] if 'torch' in df else torch.__version__}; "
        f"shape d={args.d}, m={args.m}, K={args.k}; load average at start {load:.1f}. "
        f"{args.repeats} timed repeats after one warm-up; ratios use medians.",
        "",
        table,
        "",
        "Targets (computed from the table):",
        "",
        *_targets(df),
        end,
    ])
    text = path.read_text() if path.exists() else "# Performance\n\n"
    if begin in text and end in text:
        text = text[:text.index(begin)] + body + text[text.index(end) + len(end):]
    else:
        text = text.rstrip() + "\n\n" + body + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    print(f"wrote {path}")


if __name__ == "__main__":
    raise SystemExit(main())
