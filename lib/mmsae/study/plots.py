"""One figure style for the paper and talks.

* seaborn ``ticks`` style with a light grid, Okabe-Ito (colour-blind-safe) palette;
* a fixed colour per model name (:data:`MODEL_COLORS`); unknown names get a palette colour
  chosen deterministically from the name (stable across runs and processes);
* fonts embedded as TrueType in PDF/PS (``pdf.fonttype = ps.fonttype = 42``);
* :func:`save_figure` writes ``<name>.pdf`` and ``<name>.png`` (dpi 200) atomically and
  reproducibly: no creation date or software version in the files (:data:`FIGURE_METADATA`),
  so the same figure gives the same bytes on every run.

Every plotting function returns a :class:`matplotlib.figure.Figure` and never calls
``plt.show``.
"""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
from pathlib import Path
from typing import Mapping, Sequence

import matplotlib

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns

from . import methods as M
from . import paper
from ..models import registry
from .palette import CATEGORY_COLORS, CATEGORY_LABELS, MODALITY_COLORS, PALETTE

#: each method's colour, from its record (:mod:`mmsae.models.registry`), and the paper's rows in black
MODEL_COLORS = {**registry.model_colors(), "paper": "#000000"}

__all__ = [
    "MAX_ASPECT",
    "panel_grid",
    "legend_outside",
    "PALETTE",
    "MODEL_COLORS",
    "CATEGORY_COLORS",
    "MMS_TITLES",
    "set_style",
    "model_color",
    "save_figure",
    "plot_neuron_categories",
    "plot_ladder",
    "plot_headline",
    "plot_mms_curves",
    "plot_modality_histogram",
    "plot_umap",
    "plot_umap_grid",
    "plot_steering",
    "plot_metric_vs_param",
    "plot_pareto",
    "plot_split_vs_sample_size",
    "plot_zero_shot_vs_paper",
]

CATEGORIES = ("image_only", "text_only", "both", "dead")
MMS_TITLES = {"img_img": "image-image", "txt_txt": "text-text", "img_txt": "image-text"}
MODALITY_LINESTYLES = ["-", "--", ":", "-."]

_SLUG = re.compile(r"^[A-Za-z0-9_-]+$")

# Metadata that matplotlib would otherwise fill with the time of writing (PDF CreationDate,
# SVG Date) or its version (PNG Software, PDF Producer/Creator, SVG Creator); None leaves the
# field out, so a rerun with the same numbers rewrites identical bytes.
FIGURE_METADATA = {
    "pdf": {"CreationDate": None, "Creator": None, "Producer": None},
    "png": {"Software": None},
    "svg": {"Date": None, "Creator": None},
}


def set_style(context: str = "paper", font_scale: float = 1.0) -> None:
    """Apply the project style (seaborn ``ticks`` + light grid, Okabe-Ito colours,
    TrueType fonts in vector output).  ``context`` is a seaborn context ("paper", "talk")."""
    sns.set_theme(context=context, style="ticks", palette=PALETTE, font_scale=font_scale)
    matplotlib.rcParams.update({
        "pdf.fonttype": 42,
        "ps.fonttype": 42,
        "axes.grid": True,
        "grid.alpha": 0.35,
        "grid.linewidth": 0.6,
        "axes.spines.top": False,
        "axes.spines.right": False,
        "legend.frameon": False,
        "figure.dpi": 100,
        "savefig.bbox": "tight",
        "savefig.dpi": 200,
    })


def model_color(name: str) -> str:
    """Fixed colour of a model; unknown names map deterministically (md5 of the name) onto
    :data:`PALETTE`."""
    if name in registry.REGISTRY:  # live: a method registered after import has its colour too
        return registry.REGISTRY[name].color
    if name in MODEL_COLORS:
        return MODEL_COLORS[name]
    h = int(hashlib.md5(str(name).encode("utf-8")).hexdigest(), 16)
    return PALETTE[h % len(PALETTE)]


#: the widest a figure may be against its height (slides and paper columns): every figure keeps to it
MAX_ASPECT = 3.0


def panel_grid(n: int, panel_w: float = 3.2, panel_h: float = 2.8, max_cols: int = 3, legend_w: float = 0.0,
               **kw):
    """``n`` panels on a grid of at most ``max_cols`` columns (rows as needed), so that a figure of many panels
    stays within :data:`MAX_ASPECT`; unused cells are hidden. ``legend_w``: inches kept on the right for a legend
    outside the data. Returns ``(fig, axes)`` with ``axes`` flat (length ``n``)."""
    cols = max(1, min(n, max_cols))
    while cols > 1 and (panel_w * cols + legend_w) / (panel_h * -(-n // cols)) > MAX_ASPECT:
        cols -= 1  # one row of many panels would be a strip: wrap onto more rows
    rows = -(-n // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(panel_w * cols + legend_w, panel_h * rows), squeeze=False, **kw)
    flat = list(axes.ravel())
    for ax in flat[n:]:
        ax.set_visible(False)
    return fig, flat[:n]


def legend_outside(fig, ax=None, **kw):
    """One legend for the figure, right of the panels (never over the data)."""
    handles, labels = (ax or fig.axes[0]).get_legend_handles_labels()
    if ax is None:
        seen = {}
        for a in fig.axes:
            for h, lab in zip(*a.get_legend_handles_labels()):
                seen.setdefault(lab, h)
        handles, labels = list(seen.values()), list(seen)
    if handles:
        fig.legend(handles, labels, loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False, **kw)


def save_figure(fig, name: str, figures_dir="figures") -> list[Path]:
    """Save ``fig`` as ``<figures_dir>/<name>.pdf`` (vector) and ``<name>.png`` (dpi 200).

    Each file is first written to a temporary file in the same directory and moved in place
    with :func:`os.replace`, so readers never see a half-written figure.  ``name`` must be a
    slug (letters, digits, ``_``, ``-``); otherwise :class:`ValueError`.  Returns the two
    paths ``[pdf, png]``.  Files carry no date or version (:data:`FIGURE_METADATA`): the
    same figure is saved as the same bytes every time.
    """
    if not isinstance(name, str) or not _SLUG.match(name):
        raise ValueError(f"figure name must match [A-Za-z0-9_-]+, got {name!r}")
    d = Path(figures_dir)
    d.mkdir(parents=True, exist_ok=True)
    matplotlib.rcParams["pdf.fonttype"] = 42
    matplotlib.rcParams["ps.fonttype"] = 42
    paths = []
    for ext, kw in (("pdf", {}), ("png", {"dpi": 200})):
        kw = {**kw, "metadata": dict(FIGURE_METADATA[ext])}
        final = d / f"{name}.{ext}"
        fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=f".{ext}.tmp", dir=d)
        try:
            with os.fdopen(fd, "wb") as fh:
                fig.savefig(fh, format=ext, bbox_inches="tight", **kw)
            os.replace(tmp, final)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise
        paths.append(final)
    return paths


# --------------------------------------------------------------------------- helpers
def _category_bars(ax, df: pd.DataFrame, title: str | None, fraction: bool) -> None:
    models = list(df["model"])
    x = np.arange(len(models))
    width = 0.8 / len(CATEGORIES)
    total = sum(df[c].to_numpy(dtype=float) for c in CATEGORIES if c in df) if fraction else 1.0
    for j, cat in enumerate(CATEGORIES):
        vals = df[cat].to_numpy(dtype=float) / total if cat in df else np.zeros(len(df))
        err = df[f"{cat}_std"].to_numpy(dtype=float) / total if f"{cat}_std" in df else None
        ax.bar(x + (j - (len(CATEGORIES) - 1) / 2) * width, vals, width,
               yerr=err, capsize=2 if err is not None else 0,
               color=CATEGORY_COLORS[cat], label=CATEGORY_LABELS[cat],
               edgecolor="white", linewidth=0.5)
    if "both_rule" in df:  # "both" true by construction (the modality-specific SAEs' matched pairs): hatched
        for i, rule in enumerate(df["both_rule"]):
            if str(rule).startswith("matched"):
                j = CATEGORIES.index("both")
                v = df["both"].to_numpy(dtype=float)[i] / (total[i] if fraction else 1.0)
                ax.bar(x[i] + (j - (len(CATEGORIES) - 1) / 2) * width, v, width, color=CATEGORY_COLORS["both"],
                       edgecolor="white", hatch="///", linewidth=0, label="both by construction (matched pairs)")
                ax.annotate("†", (x[i] + (j - (len(CATEGORIES) - 1) / 2) * width, v), ha="center", va="bottom",
                            fontsize=9)
    for i, cat_vals in enumerate(zip(*(df[c].to_numpy(dtype=float) for c in ("both", "image_only", "text_only")))):
        if all(np.isnan(cat_vals)):  # a model that encodes pairs only: it has no categories by firing
            ax.annotate("n/a\n(pairs)", (x[i], 0), ha="center", va="bottom", fontsize=7, color="0.35")
    ax.set_xticks(x)
    ax.set_xticklabels(models, rotation=30 if len(models) > 4 else 0, ha="right" if len(models) > 4 else "center")
    ax.set_ylabel("fraction of latents" if fraction else "number of latents")
    ax.grid(axis="x", visible=False)
    if title:
        ax.set_title(title)


def plot_neuron_categories(df: pd.DataFrame, paper_df: pd.DataFrame | None = None,
                           title: str = "this work", paper_title: str = "paper", fraction: bool = True):
    """Grouped bars of image-only / text-only / both / dead latents per model.

    ``df`` has columns ``model, image_only, text_only, both, dead`` and optionally
    ``<category>_std`` (error bars).  With ``fraction=True`` (default) each model's counts
    are divided by its dictionary size, so dictionaries of different widths (ours and the
    paper's 8192 latents) share one y axis.  If ``paper_df`` (same columns) is given, a
    second panel shows the paper's numbers side by side.
    """
    ncols = 1 if paper_df is None else 2
    widths = [max(len(df), 2)] + ([max(len(paper_df), 2)] if paper_df is not None else [])
    fig, axes = plt.subplots(1, ncols, figsize=(0.55 * sum(widths) + 1.2, 4.3), sharey=fraction, squeeze=False,
                             gridspec_kw={"width_ratios": widths})
    _category_bars(axes[0, 0], df, title if paper_df is not None else None, fraction)
    if paper_df is not None:
        _category_bars(axes[0, 1], paper_df, paper_title, fraction)
        axes[0, 1].set_ylabel("")
    fig.tight_layout()
    legend_outside(fig)
    return fig


def plot_ladder(rungs: pd.DataFrame, metrics: Sequence[str], title: str | None = None):
    """The ladder (:func:`mmsae.study.ladder.ladder_rungs`): one small panel per metric, one bar per
    rung in the ladder's order, error bars the std over seeds. At most four panels a row."""
    n = len(metrics)
    cols = min(n, 4)
    rows = -(-n // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(2.6 * cols + 0.4, 2.7 * rows + 0.5), squeeze=False)
    models = list(rungs["model"])
    x = np.arange(len(models))
    for ax, metric in zip(axes.ravel(), metrics):
        err = rungs[f"{metric}_std"] if f"{metric}_std" in rungs else None
        ax.bar(x, rungs[metric], yerr=err, capsize=2, color=[model_color(m) for m in models], edgecolor="white")
        ax.set_xticks(x)
        ax.set_xticklabels(models, rotation=35, ha="right", fontsize=8)
        ax.set_title(metric, fontsize=9)
        ax.grid(axis="x", visible=False)
    for ax in axes.ravel()[n:]:
        ax.set_visible(False)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def plot_headline(rungs: pd.DataFrame, paper_values: Mapping[str, Mapping[str, float]], title: str | None = None):
    """The front page's figure: for each metric of ``paper_values`` (a column of ``rungs``, from
    :func:`mmsae.study.ladder.ladder_rungs`), one panel of bars over the ladder's rungs (mean and std
    over seeds) with the paper's value for the models it reports drawn as a black diamond on the same
    bar. ``paper_values[metric][model]``."""
    metrics = list(paper_values)
    fig, axes = plt.subplots(1, len(metrics), figsize=(3.6 * len(metrics) + 0.6, 3.3), squeeze=False)
    models = list(rungs["model"])
    x = np.arange(len(models))
    for ax, metric in zip(axes[0], metrics):
        err = rungs[f"{metric}_std"] if f"{metric}_std" in rungs else None
        ax.bar(x, rungs[metric], yerr=err, capsize=2, color=[model_color(m) for m in models], edgecolor="white",
               label="ours")
        px = [i for i, m in enumerate(models) if m in paper_values[metric]]
        if px:
            ax.scatter(px, [paper_values[metric][models[i]] for i in px], marker="D", color="black", s=22, zorder=3,
                       label="the paper")
        ax.set_xticks(x)
        ax.set_xticklabels(models, rotation=30, ha="right", fontsize=8)
        ax.set_title(metric, fontsize=9)
        ax.set_ylim(0, 1)
        ax.grid(axis="x", visible=False)
    axes[0, 0].legend(loc="upper left", fontsize=8, frameon=False)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def _as_runs(v) -> np.ndarray:
    """Array ``(n_seeds, m)`` from one array or a list of arrays (truncated to the shortest)."""
    if isinstance(v, (list, tuple)) and len(v) and np.ndim(v[0]) == 1:
        runs = [np.asarray(a, dtype=float) for a in v]
    else:
        a = np.asarray(v, dtype=float)
        runs = [a] if a.ndim == 1 else list(a)
    n = min(len(r) for r in runs)
    return np.stack([r[:n] for r in runs])


def plot_mms_curves(curves: Mapping[str, Mapping[str, object]],
                    keys: Sequence[str] = ("img_img", "txt_txt", "img_txt"),
                    band: str = "std"):
    """MMS per latent, sorted in decreasing order, one panel per key.

    ``curves[model][key]`` is an ``(m,)`` array or a list of arrays over seeds.  Each seed's
    scores are sorted (NaN dropped) in decreasing order; x is the latent rank.  With several
    seeds the line is the mean over seeds at each rank and the band +-1 std
    (``band="std"``) or min-max (``band="minmax"``).
    """
    fig, axes = plt.subplots(1, len(keys), figsize=(2.5 * len(keys), 3.6), sharey=True,
                             squeeze=False)
    for ax, key in zip(axes[0], keys):
        for model, d in curves.items():
            if key not in d:
                continue
            runs = [np.sort(r[~np.isnan(r)])[::-1] for r in _as_runs(d[key])]
            runs = _as_runs(runs)
            x = np.arange(1, runs.shape[1] + 1)
            mean = runs.mean(0)
            c = model_color(model)
            ax.plot(x, mean, color=c, label=model, lw=1.5)
            if runs.shape[0] > 1:
                if band == "minmax":
                    lo, hi = runs.min(0), runs.max(0)
                else:
                    s = runs.std(0)
                    lo, hi = mean - s, mean + s
                ax.fill_between(x, lo, hi, color=c, alpha=0.25, lw=0)
        ax.set_title(MMS_TITLES.get(key, key))
        ax.set_xlabel("latent rank")
    axes[0, 0].set_ylabel("MMS")
    fig.tight_layout()
    legend_outside(fig, axes[0, -1])
    return fig


def plot_modality_histogram(scores: Mapping[str, np.ndarray], bins: int = 50,
                            density: bool = False):
    """Histogram of the modality score (0 = text-only, 1 = image-only), one step line per
    model; NaN (never-firing latents) dropped."""
    fig, ax = plt.subplots(figsize=(4.5, 3.0))
    edges = np.linspace(0.0, 1.0, bins + 1)
    for model, s in scores.items():
        a = np.asarray(s, dtype=float).ravel()
        a = a[~np.isnan(a)]
        ax.hist(a, bins=edges, histtype="step", lw=1.5, color=model_color(model),
                label=model, density=density)
    ax.set_xlabel("modality score  (0 = text only, 1 = image only)")
    ax.set_ylabel("density" if density else "number of latents")
    ax.set_xlim(0, 1)
    ax.legend(loc="upper center")
    fig.tight_layout()
    return fig


def _umap_embed(atoms, seed: int, n_neighbors: int) -> np.ndarray:
    a = np.asarray(atoms, dtype=np.float32)
    m = a.shape[0]
    if m < 3:  # UMAP cannot embed 1-2 points: place them on a line
        return np.stack([np.arange(m, dtype=float), np.zeros(m)], axis=1)
    import umap  # heavy import, only when needed

    nn = int(max(2, min(n_neighbors, m - 1)))
    reducer = umap.UMAP(n_neighbors=nn, n_components=2, metric="cosine", random_state=seed, n_jobs=1,
                        init="random" if m < 10 else "spectral")
    return reducer.fit_transform(a)


def _umap_scatter(ax, emb, categories, title) -> None:
    cats = np.asarray(categories).astype(str)
    order = [c for c in CATEGORIES if c in set(cats)] + sorted(set(cats) - set(CATEGORIES))
    for c in order:
        sel = cats == c
        ax.scatter(emb[sel, 0], emb[sel, 1], s=6, alpha=0.75, linewidths=0,
                   color=CATEGORY_COLORS.get(c, model_color(c)),
                   label=CATEGORY_LABELS.get(c, c))
    ax.set_title(title)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.grid(False)


def plot_umap(atoms, categories, title: str = "", seed: int = 0, n_neighbors: int = 15):
    """UMAP (cosine metric) of dictionary atoms ``(m, d)``, points coloured by category
    (e.g. from :func:`mmsae.eval.metrics.neuron_categories`).  ``n_neighbors`` is clipped to
    ``m - 1``."""
    fig, ax = plt.subplots(figsize=(4.0, 4.0))
    _umap_scatter(ax, _umap_embed(atoms, seed, n_neighbors), categories, title)
    ax.legend(loc="best", markerscale=3)
    fig.tight_layout()
    return fig


def plot_umap_grid(panels: Mapping[str, tuple], seed: int = 0, n_neighbors: int = 15):
    """Row of UMAP panels: ``panels[model] = (atoms, categories)``, titled by model."""
    n = len(panels)
    fig, axes = panel_grid(n, 2.8, 2.8, max_cols=3 if n <= 9 else 4, legend_w=1.2)
    for ax, (model, (atoms, cats)) in zip(axes, panels.items()):
        _umap_scatter(ax, _umap_embed(atoms, seed, n_neighbors), cats, model)
        ax.set_box_aspect(1)
    fig.tight_layout()
    legend_outside(fig, markerscale=4)
    return fig


def plot_steering(df: pd.DataFrame, title: str | None = None):
    """Steering as small multiples: one panel per model with the cosine move toward the concept against the
    steering strength, image and text codes in the modality colours (:data:`MODALITY_COLORS`), shaded +-1 std
    over seeds (``toward_std``); a last panel gives the similarity each model keeps to the original
    (``kept``, the image side solid, the text side dashed), in the model colours."""
    models = list(dict.fromkeys(df["model"]))
    n = len(models) + 1
    fig, axes = panel_grid(n, 2.5, 2.3, max_cols=4 if n > 6 else 3, sharex=True, legend_w=1.3)
    lo = np.nanmin(df["toward"] - df.get("toward_std", 0).fillna(0) if "toward_std" in df else df["toward"])
    hi = np.nanmax(df["toward"] + df.get("toward_std", 0).fillna(0) if "toward_std" in df else df["toward"])
    pad = 0.05 * max(hi - lo, 1e-6)
    mods = list(dict.fromkeys(df["modality"])) if "modality" in df else [None]
    for ax, model in zip(axes, models):
        g = df[df["model"] == model]
        for mod in mods:
            h = (g[g["modality"] == mod] if mod is not None else g).sort_values("strength")
            color = MODALITY_COLORS.get(str(mod), model_color(model))
            x, y = h["strength"].to_numpy(float), h["toward"].to_numpy(float)
            ax.plot(x, y, marker="o", ms=2.5, color=color, label=f"{mod} codes" if mod else "toward")
            if "toward_std" in h:
                sd = h["toward_std"].to_numpy(float)
                ax.fill_between(x, y - sd, y + sd, color=color, alpha=0.2, lw=0)
        ax.set_title(model, color=model_color(model), fontsize=9)
        ax.set_ylim(lo - pad, hi + pad)
        ax.axhline(0, color="0.6", lw=0.6)
    ax = axes[-1]
    for model in models:
        g = df[df["model"] == model]
        for k, mod in enumerate(mods):
            h = (g[g["modality"] == mod] if mod is not None else g).sort_values("strength")
            ax.plot(h["strength"], h["kept"], ls="-" if k == 0 else "--", color=model_color(model), lw=1,
                    label=model if k == 0 else None)
    ax.set_title("similarity kept to the original", fontsize=9)
    for i, a in enumerate(axes):
        if i % (4 if n > 6 else 3) == 0:
            a.set_ylabel("move toward concept" if a is not axes[-1] else "cosine")
        a.set_xlabel(r"strength (latent std)")
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    h1, l1 = axes[0].get_legend_handles_labels()
    h2, l2 = axes[-1].get_legend_handles_labels()
    fig.legend(h1 + h2, l1 + l2, loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False, fontsize=8)
    return fig


def plot_pareto(tab: pd.DataFrame, title: str | None = None):
    """The sparsity-fidelity trade-off (:func:`mmsae.study.tables.pareto`): explained variance against L0 (log),
    one line per method with +-1 std over seeds, the PCA baseline dashed black. Up and to the left is better."""
    fig, ax = plt.subplots(figsize=(5.2, 3.6))
    for model, g in tab.groupby("model", sort=False):
        g = g.sort_values("l0")
        pca = model == "PCA"
        ax.errorbar(g["l0"], g["ev"], yerr=None if pca or "ev_std" not in g else g["ev_std"], marker="" if pca else "o",
                    ms=3, capsize=2, ls="--" if pca else "-", color="black" if pca else model_color(model),
                    label="PCA (dense, L0 directions)" if pca else model)
    ax.set_xscale("log", base=2)
    ax.set(xlabel="L0: active latents per input", ylabel="explained variance")
    if title:
        ax.set_title(title, fontsize=9)
    fig.tight_layout()
    legend_outside(fig, ax, fontsize=8)
    return fig


def plot_metric_vs_param(df: pd.DataFrame, x: str, y: str, hue: str = "model",
                         yerr: str | None = None, xlabel: str | None = None,
                         ylabel: str | None = None, logx: bool = False, ax=None):
    """Line plot of ``df[y]`` against ``df[x]``, one line per ``df[hue]`` value (model colours
    when ``hue == "model"``), optional error bars from column ``yerr``."""
    if ax is None:
        fig, ax = plt.subplots(figsize=(4.2, 3.0))
    else:
        fig = ax.figure
    groups = df.groupby(hue, sort=False) if hue in df else [(y, df)]
    for i, (name, g) in enumerate(groups):
        g = g.sort_values(x)
        color = model_color(name) if hue == "model" else PALETTE[i % len(PALETTE)]
        err = g[yerr].to_numpy(float) if yerr and yerr in g else None
        ax.errorbar(g[x].to_numpy(float), g[y].to_numpy(float), yerr=err, marker="o", ms=3,
                    capsize=2, color=color, label=str(name))
    if logx:
        ax.set_xscale("log")
    ax.set_xlabel(xlabel or x)
    ax.set_ylabel(ylabel or y)
    ax.legend(loc="best")
    fig.tight_layout()
    return fig


def plot_training_logs(models_dir, names, seeds, metrics=("loss", "ev_x", "ev_y", "dead")):
    """Training curves from ``<models_dir>/<name>/seed<k>/**/train_log.csv`` (one line per model and seed)."""
    models_dir = Path(models_dir)
    fig, axes = panel_grid(len(metrics), 3.2, 2.6, max_cols=2, legend_w=1.3)
    found = 0
    for name in names:
        for s in seeds:
            logs = sorted((models_dir / name / f"seed{s}").rglob("train_log.csv"))
            if not logs:
                continue
            h = pd.read_csv(logs[0])
            found += 1
            for ax, key in zip(axes, metrics):
                if key in h:
                    ax.plot(h["step"], h[key], color=model_color(name), alpha=0.8,
                            label=name if s == seeds[0] else None)
    if found == 0:
        plt.close(fig)
        raise FileNotFoundError(f"{models_dir}: no train_log.csv for models {list(names)} and seeds {list(seeds)}")
    titles = {"loss": "training loss", "ev_x": "explained variance (image)", "ev_y": "explained variance (text)",
              "dead": "dead latents"}
    for ax, key in zip(axes, metrics):
        ax.set(title=titles.get(key, key), xlabel="step")
    axes[0].set_yscale("log")
    fig.tight_layout()
    legend_outside(fig, axes[0])
    return fig


def plot_split_vs_sample_size(df: pd.DataFrame):
    """"Both" and unimodal share against the number of held-out pairs, per model and rule.

    ``df``: rows of :func:`mmsae.eval.analysis.split_vs_sample_size` with a ``model`` column.
    Left: fraction of "both" latents under the fixed rule (dashed) and the scaled rule
    (solid); right: the unimodal share (scaled rule). Mean over repeats, log-x.
    """
    fig, axes = plt.subplots(1, 2, figsize=(7.5, 3.0))
    g = df.groupby(["model", "rule", "n_pairs"], sort=False)[["frac_both", "unimodal_share"]].mean().reset_index()
    for (model, rule), d in g.groupby(["model", "rule"], sort=False):
        ls = "--" if rule.startswith("fixed") else "-"
        axes[0].plot(d["n_pairs"], d["frac_both"], ls, marker="o", ms=3, color=model_color(model),
                     label=f"{model}, {rule}")
        if not rule.startswith("fixed"):
            axes[1].plot(d["n_pairs"], d["unimodal_share"], ls, marker="o", ms=3, color=model_color(model),
                         label=model)
    axes[0].set(xscale="log", xlabel="held-out pairs", ylabel='fraction "both"', ylim=(0, 1.02),
                title='"both" (dashed: min_count=1)')
    axes[1].set(xscale="log", xlabel="held-out pairs", ylabel="unimodal share", ylim=(0, 1.02),
                title="unimodal share (score <= 0.1 or >= 0.9)")
    axes[0].legend(frameon=False, fontsize=6)
    axes[1].legend(frameon=False, fontsize=7)
    fig.tight_layout()
    return fig


def plot_zero_shot_vs_paper(tab: pd.DataFrame, title: str = "this work"):
    """Zero-shot accuracy through each SAE's codes beside the paper's CIFAR-10 column.

    ``tab``: :func:`mmsae.study.zero_shot.zero_shot_table` (one zero-shot set). Left: our
    accuracy per model, error bars ``sqrt(std_seeds^2 + se_binomial^2)``, the dense
    embeddings as a dashed line and chance as a dotted one; right: the paper's CIFAR-10
    accuracy through the SAE for the models it reports, dense CLIP dashed.
    """
    models = [m for m in tab["model"] if m != "dense"]
    ours = tab.set_index("model")
    fig, axes = plt.subplots(1, 2, figsize=(0.55 * len(models) + 3.6, 3.8), sharey=True,
                             gridspec_kw={"width_ratios": [max(len(models), 2), 4]})
    ax = axes[0]
    x = np.arange(len(models))
    err = np.sqrt(np.nan_to_num(ours.loc[models, "code_std"].to_numpy(float)) ** 2
                  + ours.loc[models, "code_binomial_se"].to_numpy(float) ** 2)
    ax.bar(x, ours.loc[models, "code"], yerr=err, capsize=2, color=[model_color(m) for m in models],
           edgecolor="white", linewidth=0.5)
    ax.axhline(float(ours.loc["dense", "code"]), ls="--", color="0.3", lw=1, label="dense embeddings")
    ax.axhline(float(tab["chance"].iloc[0]), ls=":", color="0.5", lw=1, label="chance")
    ax.set_xticks(x)
    ax.set_xticklabels(models, rotation=30 if len(models) > 4 else 0, ha="right" if len(models) > 4 else "center")
    ax.set_ylabel("zero-shot accuracy (codes)")
    ax.set_title(f"{title}\n{str(tab['set'].iloc[0]).replace('_', ' ')}, {int(tab['n_test'].iloc[0])} items",
                 fontsize=9)
    ax.grid(axis="x", visible=False)
    p = paper.zero_shot_clip()
    pm = [m for m in p["model"] if m != "dense CLIP"]
    ax = axes[1]
    ax.bar(np.arange(len(pm)), p.set_index("model").loc[pm, "cifar10"], color=[model_color(m) for m in pm],
           edgecolor="white", linewidth=0.5)
    ax.axhline(float(p.set_index("model").loc["dense CLIP", "cifar10"]), ls="--", color="0.3", lw=1)
    ax.axhline(0.1, ls=":", color="0.5", lw=1)
    ax.set_xticks(np.arange(len(pm)))
    ax.set_xticklabels(pm, rotation=30, ha="right")
    ax.set_title("the paper\nCIFAR-10, CLIP ViT-B/16", fontsize=9)
    ax.grid(axis="x", visible=False)
    ax.set_ylim(0, 1.02)
    fig.tight_layout()
    legend_outside(fig, axes[0], fontsize="small")
    return fig
