"""What a run shows, in words written from its own numbers: the closing cell of each notebook.

Each notebook ends with a "what this run shows" cell whose text comes from here, so that the
synthetic and the real-CLIP chains read differently and no number in the prose is typed in.
Every function returns Markdown; :func:`describe_data` names the data in words for titles.
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import pandas as pd

from . import methods as M
from .claims import zero_shot_column
from .ladder import pct

__all__ = ["describe_data", "short_data_name", "browser_shows", "skipped_sweeps", "analysis", "extract", "training", "steering"]

_KNOWN = {"clip_vitb16_coco500": "500 COCO image-caption pairs embedded by CLIP ViT-B/16 (real)",
          "clip_random_coco500": "500 COCO pairs embedded by a random-weights CLIP (control)"}


def describe_data(data: str, profile: str | None = None) -> str:
    """The run's data in words: ``synthetic`` (with the profile's scale), a shipped real data set, or the user's
    embeddings by file name."""
    if data == "synthetic":
        return {"paper": "synthetic data at the paper's scale (d = 512, 200,000 pairs)",
                "smoke": "synthetic data (d = 128)"}.get(profile or "", "synthetic data")
    if data.startswith("embeddings:"):
        stem = Path(data.split(":", 1)[1].rstrip("/")).stem
        return _KNOWN.get(stem, f"your embeddings ({Path(data.split(':', 1)[1]).name})")
    return {"clip": "CLIP embeddings", "clap": "CLAP embeddings"}.get(data, data)


def short_data_name(data: str, profile: str | None = None) -> str:
    """A figure title's name for the run's data (a few words)."""
    if data == "synthetic":
        return "synthetic data, paper scale" if profile == "paper" else "synthetic data"
    stem = Path(data.split(":", 1)[1].rstrip("/")).stem if data.startswith("embeddings:") else data
    return {"clip_vitb16_coco500": "real CLIP, 500 COCO pairs",
            "clip_random_coco500": "random-weights CLIP (control)"}.get(stem, stem.replace("_", " "))


def browser_shows(doc_source: str) -> str:
    """What a latent browser's examples are, in one sentence for its header."""
    return {"captions": "Each image is shown by its captions (the images themselves are not included); names come "
                        "from the captions of what a latent fires on.",
            "ground-truth concepts": "Synthetic data: there are no images or words. Each item is shown by the true "
                                     "concepts it carries (concept ids of the generator), and a latent is named by "
                                     "the concepts of what it fires on.",
            }.get(doc_source, "No captions and no ground truth: each latent is listed by its index, its firing "
                              "counts and its category.")


def skipped_sweeps(run_ablations: bool, run_alpha_sweep: bool | None, data: str) -> str:
    out = []
    if not run_ablations:
        out.append("*The ablations are skipped (`run_ablations = False`): they are a synthetic-data study.*")
    if not (run_alpha_sweep or (run_alpha_sweep is None and data == "synthetic")):
        out.append("*The alpha sweep is skipped: it regenerates synthetic data, and this run is on "
                   f"{describe_data(data)}.*")
    return "\n\n".join(out)


def _mean(per_seed: pd.DataFrame, model: str, col: str, share: bool = False) -> float:
    g = per_seed[per_seed.model == model]
    if not len(g) or col not in g:
        return float("nan")
    v = g[col].astype(float)
    return float((v / g["m"]).mean() if share else v.mean())


def analysis(per_seed: pd.DataFrame, run, zero_shot_vs_paper: pd.DataFrame | None = None) -> str:
    """Notebook 04's closing cell: the split of the pooled SAE, what each rung of the ladder changes, zero-shot and
    retrieval through the codes, and the ground truth where there is one."""
    have = [n for n in M.METHOD_ORDER if n in set(per_seed.model)] + \
        [n for n in dict.fromkeys(per_seed.model) if n not in M.METHOD_ORDER]
    seeds = per_seed["seed"].nunique()
    lines = [f"On {run.n_val} held-out pairs of {describe_data(run.data, run.profile)}, mean over {seeds} "
             f"seed{'s' if seeds > 1 else ''}:", ""]
    ladder = [n for n in (M.SAE, M.CENTRED_SAE, M.GSAE, M.MGSAE, M.MASKED_SAE) if n in have]
    if ladder:
        both = {n: _mean(per_seed, n, "both_min1", share=True) for n in ladder}
        never = {n: _mean(per_seed, n, "dead_min1", share=True) for n in ladder}
        lines.append("* **Latents firing on both modalities** (any firing, share of the dictionary): "
                     + ", ".join(f"{n} {pct(both[n])}" for n in ladder)
                     + "; never firing: " + ", ".join(f"{n} {pct(never[n])}" for n in ladder) + ".")
        if {M.SAE, M.CENTRED_SAE, M.MGSAE} <= set(ladder):
            total = both[M.MGSAE] - both[M.SAE]
            part = both[M.CENTRED_SAE] - both[M.SAE]
            if abs(total) > 1e-9:
                share = part / total
                rest = ("little is left for the penalty and the mask" if share >= 0.9 else
                        "the penalty and the mask add the rest" if share >= 0 else "the penalty and the mask do all")
                lines.append(f"* Centring each modality alone (CentredSAE) takes \"both\" from {pct(both[M.SAE])} "
                             f"to {pct(both[M.CENTRED_SAE])}: {pct(share)} of the way from the SAE to "
                             f"MGSAE ({pct(both[M.MGSAE])}); {rest}.")
    zs = zero_shot_column(per_seed)
    if zs is not None:
        names = [n for n in (M.SAE, M.CENTRED_SAE, M.GSAE, M.MGSAE) if n in have] or have[:4]
        dense = None
        if zero_shot_vs_paper is not None and "dense" in set(zero_shot_vs_paper.model):
            dense = float(zero_shot_vs_paper[zero_shot_vs_paper.model == "dense"]["code"].iloc[0])
        lines.append("* **Zero-shot through the codes** (" + zs[3:-5].replace("_", " ") + "): "
                     + ", ".join(f"{n} {_mean(per_seed, n, zs):.2f}" for n in names)
                     + (f"; the dense embeddings {dense:.2f}." if dense is not None else "."))
    if "code_x2y_R@1" in per_seed:
        names = [n for n in (M.SAE, M.GSAE, M.MGSAE) if n in have] or have[:3]
        lines.append("* **Retrieval through the codes** (R@1 image→text): "
                     + ", ".join(f"{n} {_mean(per_seed, n, 'code_x2y_R@1'):.2f}" for n in names) + ".")
    if M.CROSSCODER in have and "decoder_both" in per_seed:
        n = M.CROSSCODER
        split = ", ".join(f"{pct(_mean(per_seed, n, f'decoder_{c}', share=True))} {w}" for c, w in
                          (("both", "into both"), ("image_only", "into images only"), ("text_only", "into captions only")))
        lines.append(f"* **The crosscoder** reads an image and its caption together, so the firing categories, "
                     "retrieval and zero-shot through its codes do not apply. By its decoder norms, its latents write "
                     f"{split}; from the pair's code it explains {_mean(per_seed, n, 'explained_variance_x'):.2f} of "
                     f"the images' variance and {_mean(per_seed, n, 'explained_variance_y'):.2f} of the captions'.")
    if "gt_recovery_mean" in per_seed:
        rec = {n: _mean(per_seed, n, "gt_recovery_mean") for n in have}
        best = max(rec, key=lambda n: rec[n])
        lines.append(f"* **Against the truth**: {best} recovers the true atoms best (mean best cosine "
                     f"{rec[best]:.2f}; the pooled SAE {rec.get(M.SAE, float('nan')):.2f}).")
    return "\n".join(lines)


def extract(n_train: int, n_val: int, d: int, data: str, profile: str | None, zero_shot_sets: Mapping,
            geometry: pd.DataFrame | None = None, summary: Mapping | None = None) -> str:
    """Notebook 01's closing cell: what was extracted, its modality gap and dense retrieval, and how its geometry
    compares with real CLIP (``geometry``: the notebook's table with a ``within`` column)."""
    desc = describe_data(data, profile)
    desc += "" if f"d = {d}" in desc else f", d = {d}"
    lines = [f"* **{n_train + n_val} pairs** of {desc}: {n_train} to train on, {n_val} held out for every "
             "measurement."]
    if summary:
        lines.append(f"* Modality gap (distance between the two means) {summary['modality_gap']:.2f}; a caption's "
                     f"cosine to its own image {summary['pair_cosine']:.2f}, to a random image "
                     f"{summary['random_pair_cosine']:.2f}; dense retrieval R@1 image→text "
                     f"{summary.get('dense_R@1_x2y', summary.get('dense_x2y_R@1', float('nan'))):.2f} "
                     f"among {summary.get('retrieval_pool')} pairs.")
    for name, zs in sorted(zero_shot_sets.items()):
        lines.append(f"* Zero-shot set *{name.replace('_', ' ')}*: {len(zs.labels)} held-out items in "
                     f"{len(zs.class_names)} classes.")
    if not zero_shot_sets:
        lines.append("* No labels or class prompts: zero-shot through the SAE will be skipped in notebook 04.")
    if geometry is not None and "within" in geometry:
        outside = list(geometry.loc[~geometry["within"].astype(bool), "statistic"])
        lines.append(f"* Beside 500 real CLIP ViT-B/16 pairs: {int(geometry['within'].sum())} of {len(geometry)} "
                     "geometry statistics within tolerance" + (f"; outside: {', '.join(outside)}." if outside else "."))
    return "\n".join(lines)


def training(models_dir: str | Path, names: Sequence[str], seeds: Sequence[int], what: str) -> str:
    """Notebooks 02 and 03's closing cell, from the last line of each model's ``train_log.csv``: explained
    variance per modality on the training batches and the latents that did not fire in the loop's last window
    (mean over seeds). Wall times are in the log but never in the notebook."""
    rows = []
    for n in names:
        for s in seeds:
            logs = sorted((Path(models_dir) / n / f"seed{s}").rglob("train_log.csv"))
            if logs:
                last = pd.read_csv(logs[0]).iloc[-1]
                rows.append({"model": n, "seed": s, "step": int(last["step"]), "ev_x": float(last["ev_x"]),
                             "ev_y": float(last["ev_y"]), "dead": float(last.get("dead", np.nan))})
    if not rows:
        return f"*No training log of {what} in this run.*"
    df = pd.DataFrame(rows)
    lines = [f"At the end of training ({what}, {int(df['step'].max())} steps; training batches, mean over "
             f"{df['seed'].nunique()} seed{'s' if df['seed'].nunique() > 1 else ''}):", ""]
    for n, d in df.groupby("model", sort=False):
        lines.append(f"* **{n}**: explained variance {d['ev_x'].mean():.2f} on images, {d['ev_y'].mean():.2f} on "
                     f"text; {d['dead'].mean():.0f} latents without a firing in the last window.")
    ev = df.groupby("model", sort=False)[["ev_x", "ev_y"]].mean().mean(axis=1)
    if len(ev) > 1:
        lines.append(f"* Best reconstruction: {ev.idxmax()} ({ev.max():.2f}); weakest: {ev.idxmin()} ({ev.min():.2f}). "
                     "Whether the dictionary is shared is notebook 04's question.")
    return "\n".join(lines)


def steering(gain: pd.DataFrame, separation: Mapping, concept: str, strength: float, data: str,
             profile: str | None = None) -> str:
    """Notebook 05's closing cell: at the largest strength, which models move image and text codes toward the
    concept with one latent, and whether the measure separates them (``gain``: model, modality, mean, std over
    seeds of the cosine gain; ``separation``: per modality, the best model and those within noise of it)."""
    if gain is None or not len(gain):
        return "*Nothing was steered in this run.*"
    piv = gain.pivot(index="model", columns="modality", values="mean")
    both = [m for m in piv.index if (piv.loc[m] > 0.05).all()]
    lines = [f"Steering toward *{concept}* on {describe_data(data, profile)}, one latent at strength {strength:g} (its std):",
             ""]
    lines.append("* **Moves both modalities** (gain above 0.05 on images and on captions): "
                 + (", ".join(both) if both else "no model") + ".")
    for mod, sep in separation.items():
        g = piv[mod].sort_values(ascending=False)
        lines.append(f"* **{mod}s**: largest gain {sep['best']} ({g.iloc[0]:+.3f}), smallest {g.index[-1]} "
                     f"({g.iloc[-1]:+.3f}); "
                     + (f"{len(sep['not_separated_from_best'])} model(s) within the seed spread of the best."
                        if sep["separates"] else "the seeds' spread does not separate the methods."))
    return "\n".join(lines)
