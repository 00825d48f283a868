"""Zero-shot accuracy through the SAE beside the paper's Table 1.

:func:`zero_shot_table` turns the per-seed ``zs_<set>_{dense,code,recon}`` columns of notebook
04 into one row per (set, model): the mean and std over seeds, and the **binomial standard
error** of an accuracy measured on ``n`` test items, ``sqrt(p (1 - p) / n)``: with 63
labelled held-out images it is about 0.06 at p = 0.5, larger than most seed spreads, so a
difference between two methods is only read as one when it exceeds both. The paper's
CIFAR-10 / CIFAR-100 / ImageNet accuracies (:func:`mmsae.study.paper.zero_shot_clip`) stand in
their own columns: they are another data set and encoder scale, to compare orderings, not
values.
"""

from __future__ import annotations

from typing import Mapping

import numpy as np
import pandas as pd

from ..data.store import ZeroShotSet
from . import paper

__all__ = ["binomial_se", "zero_shot_table", "PAPER_NAMES"]

#: our method name -> the paper's row name in its zero-shot table
PAPER_NAMES = {"dense": "dense CLIP"}


def binomial_se(p: float, n: int) -> float:
    """Standard error of an accuracy ``p`` measured on ``n`` items."""
    return float(np.sqrt(p * (1.0 - p) / n)) if n > 0 else float("nan")


def zero_shot_table(per_seed: pd.DataFrame, sets: Mapping[str, ZeroShotSet], names: list[str]) -> pd.DataFrame:
    """One row per zero-shot set and model (``dense`` first), with seed mean/std, binomial
    standard errors, chance level and the paper's accuracies for that model."""
    ref = paper.zero_shot_clip().set_index("model")
    rows = []
    for set_name, zs in sets.items():
        n, n_cls = int(len(zs.labels)), int(len(zs.class_names))
        col = f"zs_{set_name}"
        if f"{col}_code" not in per_seed:
            continue
        base = {"set": set_name, "n_test": n, "n_classes": n_cls, "chance": 1.0 / n_cls}
        dense = float(per_seed[f"{col}_dense"].mean())
        entries = [("dense", dense, np.nan, dense, np.nan)]
        for m in names:
            g = per_seed[per_seed.model == m]
            if g.empty:
                continue
            entries.append((m, float(g[f"{col}_code"].mean()), float(g[f"{col}_code"].std(ddof=0)),
                            float(g[f"{col}_recon"].mean()), float(g[f"{col}_recon"].std(ddof=0))))
        for m, code, code_sd, recon, recon_sd in entries:
            p = ref.loc[PAPER_NAMES.get(m, m)] if PAPER_NAMES.get(m, m) in ref.index else None
            rows.append({**base, "model": m, "code": code, "code_std": code_sd, "code_binomial_se": binomial_se(code, n),
                         "recon": recon, "recon_std": recon_sd, "recon_binomial_se": binomial_se(recon, n),
                         "paper_cifar10": np.nan if p is None else p["cifar10"],
                         "paper_cifar100": np.nan if p is None else p["cifar100"],
                         "paper_imagenet": np.nan if p is None else p["imagenet"]})
    return pd.DataFrame(rows)
