#!/usr/bin/env python
"""Time and memory of every analysis step of notebook 04, per model.

Notebook 04 analyses every trained model with ``mmsae.study.experiments.evaluate_model``
(= ``mmsae.eval.analysis.analyze``) and then draws, per model, the split-vs-N figure, the
UMAP of the decoder atoms and the concept naming. This script measures each of those steps
on one model at given shapes (held-out pairs N, width d, latents m, K), and checks them
against the bound of the issue: no step may cost more per model than a tenth of that
model's training (the paper profile's 25k-step MGSAE run as measured end to end by
``scripts/paper_scale.py``, from ``docs/paper_scale.json``; without that file, the issue's
quoted "about 7 minutes"), and memory must fit a 16 GB laptop.

Data: the synthetic generator (``mmsae.data.synthetic``) at the shape's profile (``paper``
for d = 512, ``smoke`` for d = 128) with ``n_pairs = N`` (the held-out pairs). Model: an
untrained MGSAE (``mgsae_config(d, m, k)``, pre-bias at the data mean); its codes are
K-sparse like a trained model's, which is what the costs depend on.

How: each (shape, step) runs in a fresh Python process (``--worker``) that loads the shape's
prepared inputs (made once per shape by a ``--prepare`` process: data, model, codes and
reconstructions), then runs the step once. Reported: wall time, and the peak resident-size
increase over the process's size at the start of the step (``/proc/self/statm`` sampled
every 2 ms in a thread, combined with ``getrusage``'s high-water mark so that a short peak
that the sampler misses is still seen when it sets a new high-water mark); and the
process's peak resident size (data and model included). UMAP runs twice in its process:
the first call includes numba's compilation (once per notebook process, whatever the
number of models), the second is the per-model cost.

    python scripts/analysis_cost.py                    # smoke + paper shapes, growth in N and m
    python scripts/analysis_cost.py --markdown docs/performance.md
    python scripts/analysis_cost.py --quick            # tiny shapes, seconds (the test)
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT / "lib") not in sys.path:
    sys.path.insert(0, str(ROOT / "lib"))

BEGIN, END = "<!-- analysis-cost:begin -->", "<!-- analysis-cost:end -->"
MARK = "@@analysis-cost@@"
#: The paper profile's MGSAE training time per model on this machine (25k steps, batch 128):
#: "about 7 minutes" (the issue); the bound is a tenth of it.
QUOTED_TRAIN_S = 420.0
PAPER_SCALE_JSON = ROOT / "docs" / "paper_scale.json"


def measured_train_seconds(path: Path = PAPER_SCALE_JSON) -> float | None:
    """MGSAE's own training wall time in the paper-scale run (``training`` of docs/paper_scale.json,
    from the model's ``train_summary.json``), or None when that run has not been measured."""
    if not path.exists():
        return None
    tr = json.loads(path.read_text()).get("training", {})
    runs = [v["wall_s"] for k, v in tr.items() if k.split("/")[0] == "MGSAE" and v.get("steps") == 25_000]
    return float(min(runs)) if runs else None
MEMORY_LIMIT_MB = 16 * 1024

SHAPES: dict[str, dict[str, Any]] = {
    "smoke": {"profile": "smoke", "n_val": 2400, "d": 128, "m": 256, "k": 6},
    "paper": {"profile": "paper", "n_val": 10_000, "d": 512, "m": 8192, "k": 32},
    "quick": {"profile": "smoke", "n_val": 300, "d": 128, "m": 64, "k": 4},
}
GROWTH_N = (2500, 5000, 10_000)
GROWTH_M = (2048, 4096, 8192)
QUICK_GROWTH_N = (150, 300)
QUICK_GROWTH_M = (32, 64)


# --------------------------------------------------------------------------- inputs
def _shape_key(shape: dict[str, Any]) -> str:
    return "{profile}-N{n_val}-d{d}-m{m}-k{k}".format(**shape)


def prepare(shape: dict[str, Any], out: Path) -> Path:
    """Data, model, codes and reconstructions of one shape, written to ``out`` (not timed)."""
    import numpy as np
    import scipy.sparse as sp
    import torch

    from mmsae.data.synthetic import config_from_profile, make_synthetic
    from mmsae.models import build_model, mgsae_config
    from mmsae.study.profiles import get_profile

    P = get_profile(shape["profile"])
    if int(P["synthetic_d"]) != int(shape["d"]):
        raise ValueError(f"profile {shape['profile']!r} generates d = {P['synthetic_d']}, not {shape['d']}")
    out.mkdir(parents=True, exist_ok=True)
    syn = make_synthetic(config_from_profile(P, n_pairs=int(shape["n_val"]), seed=0))
    model = build_model(mgsae_config(d=int(shape["d"]), m=int(shape["m"]), k=int(shape["k"])), seed=0)
    x, y = np.asarray(syn.pairs.x, np.float32), np.asarray(syn.pairs.y, np.float32)
    model.init_from_data(torch.as_tensor(x), torch.as_tensor(y))
    model.eval()
    model.save(out / "model")
    z_x, z_y = model.encode_numpy(x, 0), model.encode_numpy(y, 1)
    for name, a in (("z_x", z_x), ("z_y", z_y), ("codes_x", syn.codes_x), ("codes_y", syn.codes_y)):
        sp.save_npz(out / f"{name}.npz", sp.csr_matrix(a))
    np.savez(out / "arrays.npz", x=x, y=y, labels=np.asarray(syn.pairs.labels),
             x_hat=model.reconstruct_numpy(x, 0), y_hat=model.reconstruct_numpy(y, 1),
             atoms_x=syn.atoms_x, atoms_y=syn.atoms_y, concept_kind=syn.concept_kind, class_emb=syn.class_emb)
    cfg = {"shape": shape, "correlated": list(syn.config.correlated) if syn.config.correlated else None,
           "umap_max_atoms": int(P["umap_max_atoms"])}
    (out / "shape.json").write_text(json.dumps(cfg))
    return out


def load_context(cache: Path) -> dict[str, Any]:
    """Everything a step needs, as notebook 04 holds it: dense float32 codes, the truth dict."""
    import numpy as np
    import scipy.sparse as sp

    from mmsae.data.store import PairedEmbeddings, ZeroShotSet
    from mmsae.eval import metrics
    from mmsae.models import load_model
    from mmsae.study.profiles import get_profile

    cfg = json.loads((cache / "shape.json").read_text())
    a = dict(np.load(cache / "arrays.npz"))
    dense = {n: sp.load_npz(cache / f"{n}.npz").toarray().astype(np.float32)
             for n in ("z_x", "z_y", "codes_x", "codes_y")}
    val = PairedEmbeddings(a["x"], a["y"], a["labels"], None, {"encoder": "synthetic"}, source="analysis_cost")
    truth = {"atoms_x": a["atoms_x"], "atoms_y": a["atoms_y"], "concept_kind": a["concept_kind"],
             "codes_x": dense["codes_x"], "codes_y": dense["codes_y"], "config": {"correlated": cfg["correlated"]}}
    n_cls = len(a["class_emb"])
    zs = ZeroShotSet("synthetic_classes", a["x"], a["labels"], a["class_emb"],
                     [f"concept_{c}" for c in range(n_cls)], {"source": "synthetic"}).validate()
    cats = metrics.neuron_categories(dense["z_x"], dense["z_y"], min_count="scaled")["categories"]
    return {"cfg": cfg, "P": get_profile(cfg["shape"]["profile"]), "model": load_model(cache / "model"),
            "val": val, "truth": truth, "zs": zs, "z_x": dense["z_x"], "z_y": dense["z_y"],
            "x_hat": a["x_hat"], "y_hat": a["y_hat"], "categories": cats,
            "modality_score": metrics.modality_score(dense["z_x"], dense["z_y"])}


def _truth_docs(c):
    """Notebook 04 §5d's documents on synthetic data (made once per notebook, not per model)."""
    if "docs" not in c:
        from mmsae.eval import names

        dx, dy = names.truth_documents(c["truth"]["codes_x"], c["truth"]["codes_y"])
        c["docs"] = (dx, dy, [[f"true concepts: {d}"] for d in dx], [f"true concepts: {d}" for d in dy])
    return c["docs"]


# --------------------------------------------------------------------------- steps
def _encode(c):
    m, x, y = c["model"], c["val"].x, c["val"].y
    m.encode_numpy(x, 0), m.encode_numpy(y, 1), m.reconstruct_numpy(x, 0), m.reconstruct_numpy(y, 1)


def _categories(c):
    from mmsae.eval import metrics

    metrics.neuron_categories(c["z_x"], c["z_y"], min_count="scaled")
    metrics.split_measures(c["z_x"], c["z_y"], min_count="scaled")
    metrics.modality_score(c["z_x"], c["z_y"])


def _split_vs_n(c):
    from mmsae.eval.analysis import split_vs_sample_size

    n = len(c["z_x"])  # the notebook's default sizes
    sizes = [s for s in (100, 250, 500, 1000, 2000, 4000, 8000) if s < n] + [n]
    split_vs_sample_size(c["z_x"], c["z_y"], sizes)


def _mms(c):
    from mmsae.eval import metrics

    s = metrics.mms_scores(c["z_x"], c["z_y"], c["truth"]["codes_x"], c["truth"]["codes_y"])
    metrics.mms_summary(s, alive=c["categories"] == "both")


def _reconstruction(c):
    from mmsae.eval import metrics

    metrics.reconstruction_metrics(c["val"].x, c["x_hat"])
    metrics.reconstruction_metrics(c["val"].y, c["y_hat"])


def _retrieval(c):
    from mmsae.eval import metrics

    n = min(len(c["z_x"]), 5000)  # analyze's retrieval_pool
    metrics.cross_modal_retrieval(c["z_x"][:n], c["z_y"][:n])
    metrics.cross_modal_retrieval(c["x_hat"][:n], c["y_hat"][:n])


def _zero_shot(c):
    from mmsae.eval import metrics

    m, zs = c["model"], c["zs"]
    metrics.zero_shot_accuracy(zs.emb, zs.labels, zs.class_emb)
    metrics.zero_shot_accuracy(m.encode_numpy(zs.emb, 0), zs.labels, m.encode_numpy(zs.class_emb, 1))
    metrics.zero_shot_accuracy(m.reconstruct_numpy(zs.emb, 0), zs.labels, m.reconstruct_numpy(zs.class_emb, 1))


def _ground_truth(c):
    import torch

    from mmsae.eval import metrics

    t, m = c["truth"], c["model"]
    with torch.no_grad():
        dx = m.decoder_atoms(0).detach().float().cpu().numpy()
        dy = m.decoder_atoms(1).detach().float().cpu().numpy()
    metrics.ground_truth_report(t["atoms_x"], t["atoms_y"], t["concept_kind"], t["codes_x"], t["codes_y"],
                                c["z_x"], c["z_y"], dx, dy)


def _umap(c):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import torch

    from mmsae.study import plots

    with torch.no_grad():
        atoms = c["model"].decoder_atoms(0).detach().cpu().numpy()
    keep = slice(0, c["cfg"]["umap_max_atoms"])
    fig = plots.plot_umap_grid({"MGSAE": (atoms[keep], c["categories"][keep])}, seed=0)
    plt.close(fig)


def _concepts(c):
    import numpy as np
    import torch

    from mmsae.eval import concepts

    t, m = c["truth"], c["model"]
    kind = np.asarray(t["concept_kind"])
    vocab_concept = np.nonzero(kind != 1)[0]
    vocab_emb = np.asarray(t["atoms_y"])[vocab_concept]
    words = np.array([f"concept_{i}" for i in range(len(kind))])
    with torch.no_grad():
        atoms_txt = m.decoder_atoms(1).detach().float().cpu().numpy()
        atoms_img = m.decoder_atoms(0).detach().float().cpu().numpy()
    lc, _ = concepts.latent_concepts(c["z_x"], c["z_y"], t["codes_x"], t["codes_y"])
    concepts.naming_accuracy(atoms_txt, vocab_emb, vocab_concept, lc, alive=c["categories"] != "dead")
    corr = t["config"]["correlated"]
    if corr:
        names, _ = concepts.name_latents(atoms_txt, vocab_emb, list(words[vocab_concept]))
        w = concepts.fit_probe(np.asarray(c["val"].x), np.asarray(c["val"].labels) == int(corr[0]), seed=0)
        concepts.probe_report(w, atoms_img, names, watch=f"concept_{int(corr[1])}", top=5)


def _latent_names(c):
    from mmsae.eval import names

    dx, dy, _, _ = _truth_docs(c)
    nm = names.name_latents(c["z_x"], c["z_y"], dx, dy)
    names.agreement_summary(nm, c["categories"], seed=0)
    c["names"] = nm


def _browser(c):
    from mmsae.eval import names
    from mmsae.study.browser import write_latent_browser

    _, _, image_texts, caption_texts = _truth_docs(c)
    recs = names.latent_records(c["categories"], c["modality_score"], c["z_x"], c["z_y"], c["names"], image_texts,
                                caption_texts)
    with tempfile.TemporaryDirectory() as tmp:
        write_latent_browser(Path(tmp) / "MGSAE.html", title="MGSAE latents", model="MGSAE", latents=recs,
                             comparison=[{"model": "MGSAE"}], comparison_columns=[("model", "model")],
                             siblings={"MGSAE": "MGSAE.html"}, notes="analysis_cost")


def _browser_inputs(c):
    """The browser's inputs (not timed): the documents and the latents' names."""
    _truth_docs(c)
    if "names" not in c:
        _latent_names(c)


def _analyze(c):
    from mmsae.eval.analysis import analyze

    t = c["truth"]
    analyze(c["model"], c["val"], t["codes_x"], t["codes_y"], {"synthetic_classes": c["zs"]}, t)


#: name -> (what it measures, function, runs twice in its process (first call reported apart)
#: [, untimed setup of its inputs])
STEPS: dict[str, tuple] = {
    "encode": ("analyze: codes and reconstructions of the held-out pairs (both modalities)", _encode, False),
    "categories": ("analyze: neuron categories, split measure, modality score", _categories, False),
    "split_vs_sample_size": ("notebook 04 §1: categories on random subsets, notebook sizes x 3 repeats x 2 rules",
                             _split_vs_n, False),
    "mms": ("analyze: MMS of every latent (reference: the true concept codes) + summary", _mms, False),
    "reconstruction": ("analyze: reconstruction metrics (both modalities)", _reconstruction, False),
    "retrieval": ("analyze: cross-modal retrieval from codes and reconstructions, 5000-pair pool", _retrieval, False),
    "zero_shot": ("analyze: zero-shot accuracy, dense / codes / reconstructions", _zero_shot, False),
    "ground_truth": ("analyze: ground_truth_report (recovery, collapse, activation correlation x3)",
                     _ground_truth, False),
    "umap": ("notebook 04 §3: UMAP of the decoder atoms (plot_umap_grid, one panel)", _umap, True),
    "concept_naming": ("notebook 04 §5b: latent_concepts, naming accuracy, probe fit and decomposition",
                       _concepts, False),
    "latent_names": ("notebook 04 §5d: latents named from the true-concept documents, agreement", _latent_names,
                     False, _truth_docs),
    "latent_browser": ("notebook 04 §5d: latent_records (top items) and the HTML latent browser", _browser, False,
                       _browser_inputs),
    "analyze": ("the whole analyze() call (encode ... ground_truth), for reference", _analyze, False),
}
FIRST_CALL = "umap (first call in a process)"


def step_names() -> list[str]:
    """Every row of the table, in order (a step run twice gives its first call its own row)."""
    out = []
    for name, (_, _, twice, *_) in STEPS.items():
        if twice:
            out.append(f"{name} (first call in a process)")
        out.append(name)
    return out


# --------------------------------------------------------------------------- measuring
def _rss_bytes() -> int:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):  # not Linux: the high-water mark only
        return _maxrss_bytes()


def _maxrss_bytes() -> int:
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(r) if sys.platform == "darwin" else int(r) * 1024


class _PeakSampler:
    """Samples the resident size in a thread while a step runs."""

    def __init__(self, every_s: float = 0.002):
        self.every_s, self.peak, self._stop = every_s, 0, threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, _rss_bytes())
            time.sleep(self.every_s)

    def __enter__(self):
        self.peak = _rss_bytes()
        self._t.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._t.join()
        self.peak = max(self.peak, _rss_bytes())


def measure(fn: Callable[[], Any], collect_garbage: bool = True) -> dict[str, float]:
    """Wall time of ``fn()`` and the peak increase of the resident size while it ran (MB).
    ``collect_garbage``: run the garbage collector first (0.1-0.2 s with torch loaded)."""
    if collect_garbage:
        gc.collect()
    base, hw0 = _rss_bytes(), _maxrss_bytes()
    with _PeakSampler() as s:
        t0 = time.perf_counter()
        fn()
        wall = time.perf_counter() - t0
    hw1 = _maxrss_bytes()
    peak = max(s.peak, hw1 if hw1 > hw0 else 0)  # a new high-water mark is a peak the sampler may have missed
    return {"time_s": wall, "rss_increase_mb": max(0.0, (peak - base) / 2**20),
            "process_peak_mb": max(hw1, peak) / 2**20}


def run_step(cache: Path, step: str, ctx: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """Load a prepared shape (unless ``ctx`` is given) and measure one step (twice for
    UMAP); one record per row."""
    fresh = ctx is None
    ctx = load_context(cache) if fresh else ctx
    _, fn, twice, *setup = STEPS[step]
    for f in setup:
        f(ctx)
    out = []
    if twice:
        out.append({"step": f"{step} (first call in a process)", **measure(lambda: fn(ctx), fresh)})
    out.append({"step": step, **measure(lambda: fn(ctx), fresh)})
    return out


def _run_worker(args: list[str], timeout: float) -> tuple[list[dict[str, Any]], str]:
    env = {**os.environ, "MPLBACKEND": "Agg", "PYTHONPATH": os.pathsep.join(
        [str(ROOT / "lib")] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p])}
    try:
        r = subprocess.run([sys.executable, str(Path(__file__).resolve()), *args], capture_output=True, text=True,
                           timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        return [], f"timed out after {timeout:g} s"
    recs = [json.loads(line[len(MARK):]) for line in r.stdout.splitlines() if line.startswith(MARK)]
    if r.returncode != 0:
        return recs, f"exit {r.returncode}: {r.stderr.strip()[-400:]}"
    return recs, ""


def collect(shapes: dict[str, dict[str, Any]], steps: list[str], workdir: Path, isolate: bool = True,
            timeout: float = 900.0, log=print) -> list[dict[str, Any]]:
    """Measure ``steps`` at every shape of ``shapes`` (label -> shape); identical shapes are
    measured once. Returns one record per (label, row): step, time_s, rss_increase_mb,
    process_peak_mb (NaN and ``error`` when a step failed or timed out)."""
    done: dict[str, list[dict[str, Any]]] = {}
    records = []
    for label, shape in shapes.items():
        key = _shape_key(shape)
        if key not in done:
            cache = workdir / key
            log(f"[analysis_cost] preparing {label}: {key}")
            if (cache / "shape.json").exists():  # prepared by an earlier run with this --workdir
                pass
            elif isolate:
                _, err = _run_worker(["--prepare", json.dumps(shape), str(cache)], timeout)
                if err:
                    raise RuntimeError(f"preparing {key} failed: {err}")
            else:
                prepare(shape, cache)
            res = []
            ctx = None if isolate else load_context(cache)
            for step in steps:
                if isolate:
                    recs, err = _run_worker(["--worker", str(cache), step], timeout)
                else:
                    recs, err = run_step(cache, step, ctx), ""
                rows = [r for r in step_names() if r == step or r.startswith(step + " (")]
                got = {r["step"] for r in recs}
                recs += [{"step": r, "time_s": float("nan"), "rss_increase_mb": float("nan"),
                          "process_peak_mb": float("nan"), "error": err or "no result"} for r in rows if r not in got]
                for r in recs:
                    log(f"[analysis_cost]   {label:>8s} {r['step']:<34s} {r['time_s']:8.2f} s "
                        f"{r['rss_increase_mb']:8.0f} MB" + (f"  ({r['error']})" if r.get("error") else ""))
                res += recs
            done[key] = res
        records += [{**r, "shape": label, **shape} for r in done[key]]
    return records


def train_seconds(steps: int, profile: str = "paper") -> float:
    """Wall time of ``steps`` MGSAE training steps at the profile's shape and batch,
    extrapolated to the profile's step count (25k for the paper)."""
    import numpy as np

    from mmsae.data.synthetic import config_from_profile, make_synthetic
    from mmsae.models import build_model, mgsae_config
    from mmsae.study.profiles import get_profile
    from mmsae.train import train

    P = get_profile(profile)
    syn = make_synthetic(config_from_profile(P, n_pairs=20_000, seed=0))
    model = build_model(mgsae_config(d=int(P["synthetic_d"]), m=int(P["m"]), k=int(P["k"])), seed=0)
    x, y = np.asarray(syn.pairs.x, np.float32), np.asarray(syn.pairs.y, np.float32)
    train(model, (x, y), steps=20, batch_size=int(P["batch_size"]), progress=False)  # compile, warm caches
    model = build_model(mgsae_config(d=int(P["synthetic_d"]), m=int(P["m"]), k=int(P["k"])), seed=0)
    t0 = time.perf_counter()
    train(model, (x, y), steps=steps, batch_size=int(P["batch_size"]), progress=False)
    return (time.perf_counter() - t0) * int(P["steps"]) / steps


# --------------------------------------------------------------------------- report
def machine_info() -> dict[str, Any]:
    import torch

    cpu = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {"cores": cores, "cpu": cpu, "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
            "python": platform.python_version()}


def _fmt_t(v: float) -> str:
    if v != v:
        return "failed"
    return f"{v:.3f}" if v < 0.1 else f"{v:.2f}" if v < 10 else f"{v:.1f}"


def _fmt_mb(v: float) -> str:
    return "failed" if v != v else f"{v:.0f}"


def render(records: list[dict[str, Any]], meta: dict[str, Any]) -> str:
    """The markdown section (between the markers) for ``records`` of :func:`collect`."""
    bound = meta["train_s"] / 10.0
    rows = [s for s in step_names() if any(r["step"] == s for r in records)]
    main = [s for s in meta["main_shapes"]]
    by = {(r["shape"], r["step"]): r for r in records}
    mi = meta["machine"]
    lines = [
        f"Measured by `{meta['command']}` on {meta['date']}: {mi['cores']} cores ({mi['cpu']}), "
        f"torch {mi['torch']} ({mi['torch_threads']} threads), Python {mi['python']}. "
        f"1-minute load average {meta['load_before']:.2f} before, {meta['load_after']:.2f} after (the "
        "script's own steps count in the latter)"
        + (": **other work was running, the times are inflated**" if meta["load_before"] >= 1.0 else "") + ".",
        "",
        f"**Bound**: a tenth of one model's training time, {meta['train_s']:.0f} s / 10 = **{bound:.0f} s per step "
        f"per model** ({meta['train_source']}); memory within a 16 GB laptop. Each step runs in a fresh process "
        "on one model; \"+RSS\" is the peak resident-size increase during the step, \"peak RSS\" the process's "
        "peak with the data, codes and model loaded (as notebook 04 holds them for one model).",
        "",
    ]
    if main:
        sh = SHAPES.get(main[-1]) or next(r for r in records if r["shape"] == main[-1])
        dense_mb = 2 * sh["n_val"] * sh["m"] * 4 / 2**20
        sparse_mb = 2 * sh["n_val"] * sh["k"] * 12 / 2**20  # CSR: a float32 value and an int64 index per entry
        lines += [f"Held per model after the steps: notebook 04 keeps each model's `ModelAnalysis` in its `analyses` "
                  f"dict with the codes sparse (`codes_x`, `codes_y`: {sh['k']} non-zeros a row, about "
                  f"{sparse_mb:.0f} MB per model at the {main[-1]} shape; x 7 methods x 3 seeds = "
                  f"{21 * sparse_mb / 1024:.2f} GB), densified one model at a time ({dense_mb:.0f} MB) where a step "
                  "needs them.", ""]
    head = "| step | " + " | ".join(f"{s} s | {s} +RSS MB" for s in main) + \
        (f" | {main[-1]} peak RSS MB | {main[-1]} within bound |" if main else " |")
    lines += [head, "|" + "---|" * (1 + 2 * len(main) + (2 if main else 0))]
    for s in rows:
        cells = []
        for sh in main:
            r = by.get((sh, s))
            cells += [_fmt_t(r["time_s"]), _fmt_mb(r["rss_increase_mb"])] if r else ["", ""]
        if main:
            r = by.get((main[-1], s))
            ok = "" if r is None or r["time_s"] != r["time_s"] else (
                "yes" if r["time_s"] <= bound and r["process_peak_mb"] <= MEMORY_LIMIT_MB else "**NO**")
            if s == FIRST_CALL and ok:
                ok += " (once per process)"
            cells += ["" if r is None else _fmt_mb(r["process_peak_mb"]), ok]
        lines.append(f"| {s} | " + " | ".join(cells) + " |")
    for title, axis in (("held-out pairs N", "growth_n"), ("latents m", "growth_m")):
        labels = meta.get(axis) or []
        if not labels:
            continue
        lines += ["", f"Growth in {title} (d = {meta['growth_d']}, K = {meta['growth_k']}"
                  + (f", m = {meta['growth_fixed_m']}" if axis == "growth_n" else f", N = {meta['growth_fixed_n']}")
                  + "): seconds / +RSS MB", "",
                  "| step | " + " | ".join(labels) + " |", "|" + "---|" * (1 + len(labels))]
        for s in rows:
            cells = []
            for lab in labels:
                r = by.get((lab, s))
                cells.append("" if r is None else f"{_fmt_t(r['time_s'])} / {_fmt_mb(r['rss_increase_mb'])}")
            lines.append(f"| {s} | " + " | ".join(cells) + " |")
    lines += ["", "Steps:", ""] + [f"* `{n}`: {STEPS[n][0]}" for n in STEPS if any(r.startswith(n) for r in rows)]
    errs = [r for r in records if r.get("error")]
    if errs:
        lines += ["", "Failed: " + "; ".join(f"{r['shape']} {r['step']}: {r['error']}" for r in errs)]
    return "\n".join(lines) + "\n"


def write_markdown(path: Path, body: str, title: str = "## Analysis cost (notebook 04, per model)") -> None:
    """Put ``body`` between the markers of ``path``; append a titled section with the markers
    when the file has none."""
    text = path.read_text() if path.exists() else ""
    block = f"{BEGIN}\n{body}{END}"
    if BEGIN in text and END in text:
        pre, rest = text.split(BEGIN, 1)
        post = rest.split(END, 1)[1]
        text = pre + block + post
    else:
        text = text.rstrip("\n") + ("\n\n" if text else "") + f"{title}\n\n{block}\n"
    path.write_text(text)


def plan(quick: bool, shapes: list[str], growth: bool) -> tuple[dict[str, dict], dict[str, Any]]:
    """The shapes to measure (label -> shape) and the table layout."""
    main = ["quick"] if quick else shapes
    out = {s: SHAPES[s] for s in main}
    meta: dict[str, Any] = {"main_shapes": main, "growth_n": [], "growth_m": []}
    if growth:
        base = SHAPES["quick"] if quick else SHAPES["paper"]
        gn, gm = (QUICK_GROWTH_N, QUICK_GROWTH_M) if quick else (GROWTH_N, GROWTH_M)
        for n in gn:
            out[f"N={n}"] = {**base, "n_val": n}
            meta["growth_n"].append(f"N={n}")
        for m in gm:
            out[f"m={m}"] = {**base, "m": m}
            meta["growth_m"].append(f"m={m}")
        meta.update(growth_d=base["d"], growth_k=base["k"], growth_fixed_m=base["m"], growth_fixed_n=base["n_val"])
    return out, meta


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="tiny shapes (N=300, d=128, m=64, K=4): seconds")
    ap.add_argument("--shapes", default="smoke,paper", help="main shapes, of: " + ", ".join(SHAPES))
    ap.add_argument("--no-growth", action="store_true", help="skip the growth tables in N and m")
    ap.add_argument("--steps", default=",".join(STEPS), help="steps to measure (default: all)")
    ap.add_argument("--markdown", type=Path, help=f"write the tables into this file between {BEGIN} / {END}")
    ap.add_argument("--json", type=Path, help="write the raw records here")
    ap.add_argument("--train-seconds", type=float, default=None,
                    help="one model's training time at the paper profile (default: MGSAE's in docs/paper_scale.json, "
                         "else the quoted 7 min)")
    ap.add_argument("--measure-train-steps", type=int, default=0,
                    help="measure the training time instead: this many MGSAE steps, extrapolated to 25k")
    ap.add_argument("--in-process", action="store_true", help="no fresh process per step (memory less exact)")
    ap.add_argument("--timeout", type=float, default=900.0, help="seconds per step process")
    ap.add_argument("--workdir", type=Path, help="where prepared inputs go (default: a temporary folder)")
    ap.add_argument("--prepare", nargs=2, metavar=("SHAPE_JSON", "DIR"), help=argparse.SUPPRESS)
    ap.add_argument("--worker", nargs=2, metavar=("DIR", "STEP"), help=argparse.SUPPRESS)
    a = ap.parse_args(argv)

    if a.prepare:
        prepare(json.loads(a.prepare[0]), Path(a.prepare[1]))
        return 0
    if a.worker:
        for rec in run_step(Path(a.worker[0]), a.worker[1]):
            print(MARK + json.dumps(rec), flush=True)
        return 0

    steps = [s.strip() for s in a.steps.split(",") if s.strip()]
    bad = [s for s in steps if s not in STEPS]
    if bad:
        ap.error(f"unknown steps {bad}; choose from {list(STEPS)}")
    shapes = [s.strip() for s in a.shapes.split(",") if s.strip()]
    if any(s not in SHAPES for s in shapes):
        ap.error(f"unknown shapes in {shapes}; choose from {list(SHAPES)}")
    todo, meta = plan(a.quick, shapes, not a.no_growth)
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="analysis_cost_") as tmp:
        workdir = a.workdir or Path(tmp)
        records = collect(todo, steps, workdir, isolate=not a.in_process, timeout=a.timeout)
    if a.measure_train_steps > 0:
        train_s, src = train_seconds(a.measure_train_steps), (
            f"measured: {a.measure_train_steps} MGSAE steps at d = 512, m = 8192, K = 32, batch 128, "
            "extrapolated to 25k steps")
    elif a.train_seconds is not None:
        train_s, src = a.train_seconds, "given with --train-seconds"
    elif (measured := measured_train_seconds()) is not None:
        train_s, src = measured, ("measured: the paper-scale run's 25k-step MGSAE training on this machine "
                                  "(docs/paper_scale.json, scripts/paper_scale.py)")
    else:
        train_s, src = QUOTED_TRAIN_S, "quoted: a 25k-step MGSAE run at the paper profile takes about 7 minutes on this machine"
    meta.update(machine=machine_info(), load_before=load_before, load_after=os.getloadavg()[0], train_s=train_s,
                train_source=src, date=time.strftime("%Y-%m-%d"),
                command="python scripts/analysis_cost.py " + " ".join(argv if argv is not None else sys.argv[1:]))
    body = render(records, meta)
    print(body)
    if a.json:
        a.json.write_text(json.dumps({"meta": meta, "records": records}, indent=1, default=str))
    if a.markdown:
        write_markdown(a.markdown, body)
        print(f"[analysis_cost] wrote {a.markdown}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
