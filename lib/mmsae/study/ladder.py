"""The paper's recipe taken apart: what each ingredient adds, with its spread over seeds.

The ladder (:data:`mmsae.study.methods.LADDER`) goes from the pooled SAE to MGSAE one ingredient
at a time: one pre-bias per modality (``CentredSAE``), the l2,1 group penalty (``GSAE``), the
shared cross-modal mask (``MGSAE``); ``MaskedSAE`` is the mask without the penalty. From the
per-seed metrics of notebook 04 (``results/per_seed_metrics.csv``):

* :func:`ladder_rungs` gives each rung's mean and standard deviation over seeds of the
  :data:`LADDER_METRICS` (category counts as shares of the dictionary);
* :func:`ladder_steps` gives each step of :data:`mmsae.study.methods.LADDER_STEPS`: the change a
  metric undergoes when the ingredient is added, mean and std over seeds of the per-seed
  differences (the two models of a seed share their data order and initial weights), and the
  share of the whole SAE -> MGSAE change that the step carries.

Both return ``(frame, caption)``; the README's words come from :func:`ladder_sentences`.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np
import pandas as pd

from .methods import LADDER, LADDER_STEPS, MASKED_SAE, MGSAE, SAE

__all__ = ["LADDER_METRICS", "ladder_metrics", "ladder_rungs", "ladder_steps", "ladder_sentences", "pct"]

#: per-seed column -> label, in the order of the tables; counts of latents are divided by ``m``.
#: ``zs_<set>_code`` columns (zero-shot through the codes) are added by :func:`ladder_metrics`.
LADDER_METRICS = {
    "both_min1": "both, any firing",
    "dead_min1": "never fires",
    "both": "both, scaled rule",
    "unimodal_share": "unimodal share",
    "code_x2y_R@1": "R@1 image to text (codes)",
}
_COUNTS = {"both_min1", "dead_min1", "both", "dead", "image_only", "text_only"}


def ladder_metrics(per_seed: pd.DataFrame) -> dict[str, str]:
    """:data:`LADDER_METRICS` present in ``per_seed``, plus each zero-shot set through the codes."""
    out = {k: v for k, v in LADDER_METRICS.items() if k in per_seed.columns}
    for c in per_seed.columns:
        if c.startswith("zs_") and c.endswith("_code"):
            out[c] = f"zero-shot (codes, {c[3:-5].replace('_', ' ')})"
    return out


def _values(per_seed: pd.DataFrame, metrics: Mapping[str, str]) -> pd.DataFrame:
    """One row per (model, seed), the ladder's metrics with counts as shares of ``m``."""
    df = per_seed[["model", "seed", *metrics]].copy()
    for c in metrics:
        if c in _COUNTS:
            df[c] = df[c] / per_seed["m"]
    return df


def _present(per_seed: pd.DataFrame, rungs: Sequence[str]) -> list[str]:
    have = set(per_seed["model"])
    return [r for r in rungs if r in have]


def ladder_rungs(per_seed: pd.DataFrame, rungs: Sequence[str] = LADDER) -> tuple[pd.DataFrame, str]:
    """Each rung's metrics: mean and ``<metric>_std`` over seeds (labels as column names)."""
    metrics = ladder_metrics(per_seed)
    v = _values(per_seed, metrics)
    rows = []
    for r in _present(per_seed, rungs):
        g = v[v.model == r]
        rec = {"model": r, "seeds": len(g)}
        for c, label in metrics.items():
            rec[label] = float(g[c].mean())
            rec[f"{label}_std"] = float(g[c].std(ddof=0))
        rows.append(rec)
    caption = ("The ladder from the pooled SAE to MGSAE, one ingredient a rung (mean and std over seeds; counts of "
               "latents as shares of the dictionary).")
    return pd.DataFrame(rows), caption


def ladder_steps(per_seed: pd.DataFrame, steps=LADDER_STEPS) -> tuple[pd.DataFrame, str]:
    """What each ingredient adds: per step, the mean and std over seeds of the per-seed change of
    every metric, and (``<metric>_share``) the step's part of the SAE -> MGSAE change (the mean
    change over the mean total change; NaN where the total is under 1e-9)."""
    metrics = ladder_metrics(per_seed)
    v = _values(per_seed, metrics).set_index(["model", "seed"])
    have = set(per_seed["model"])
    total = None
    if {SAE, MGSAE} <= have:
        total = (v.loc[MGSAE] - v.loc[SAE]).mean()
    rows = []
    for a, b, what in steps:
        if not {a, b} <= have:
            continue
        diff = (v.loc[b] - v.loc[a]).dropna()
        rec = {"from": a, "to": b, "adds": what, "seeds": len(diff)}
        for c, label in metrics.items():
            rec[label] = float(diff[c].mean())
            rec[f"{label}_std"] = float(diff[c].std(ddof=0))
            t = None if total is None else float(total[c])
            rec[f"{label}_share"] = rec[label] / t if t is not None and abs(t) > 1e-9 else float("nan")
        rows.append(rec)
    caption = ("What each ingredient adds: the change of each metric from one rung to the next (mean and std over "
               "seeds of the per-seed differences) and, as share, that change over the whole change from the pooled "
               "SAE to MGSAE.")
    return pd.DataFrame(rows), caption


def pct(x: float) -> str:
    """A share as a whole percentage (n/a when undefined)."""
    return "n/a" if not np.isfinite(x) else f"{100 * x:.0f}%"


def ladder_sentences(steps: pd.DataFrame, metric: str = "both, any firing") -> list[str]:
    """One sentence per step about ``metric``: its change with seed spread and, for the steps from the
    SAE to MGSAE, its share of that change, e.g. ``"centring each modality: +0.27 ± 0.02 (81% of
    MGSAE's change over the SAE)"`` (the side rung, the mask alone, is not a part of that path)."""
    out = []
    for rec in steps.to_dict("records"):
        share = rec.get(f"{metric}_share", float("nan")) if rec["to"] != MASKED_SAE else float("nan")
        out.append(f"{rec['adds']}: {rec[metric]:+.2f} ± {rec[f'{metric}_std']:.2f}"
                   + (f" ({pct(share)} of MGSAE's change over the SAE)" if np.isfinite(share) else ""))
    return out
