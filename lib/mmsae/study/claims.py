"""The paper's claims beside our measurements, with a verdict computed from the seeds.

Each claim is an ordering of two models on one metric (GSAE above the SAE in latents firing for
both modalities, ...). :func:`compare` measures it on one run's per-seed metrics (notebook 04's
``per_seed_metrics.csv``): the mean change from the first model to the second, its standard
deviation over seeds (the two models of a seed share their data order and initial weights), and a
verdict:

* ``holds``: the change has the paper's sign and exceeds its seed spread (and, with one seed, is
  simply of that sign: ``holds (1 seed)``);
* ``within noise``: the paper's sign, but smaller than the spread;
* ``not reproduced``: the other sign.

:func:`claims_table` applies :data:`CLAIMS` to every run given and returns one row per claim, a
cell per run, the paper's value, and a verdict in words. The README's front page is rendered from
it (``scripts/update_readme.py``); nothing in it is typed by hand.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import numpy as np
import pandas as pd

from . import methods as M
from . import paper

__all__ = ["Claim", "CLAIMS", "compare", "claims_table", "zero_shot_column"]


@dataclass(frozen=True)
class Claim:
    text: str  # the claim in words
    low: str  # the model the paper puts lower
    high: str  # the model the paper puts higher
    metric: str  # per-seed column ("zs_code": the run's zero-shot-through-codes column)
    label: str  # what the cell shows
    share_of_m: bool = False  # a count of latents, shown as a share of the dictionary
    lower_is_better: bool = False  # the paper's claim is that `high` has *less* of it
    paper_low: float | None = None
    paper_high: float | None = None
    via: str | None = None  # a rung between low and high: the table gives its share of the change


def _pc(model: str, col: str) -> float:
    t = paper.neuron_categories().set_index("model")
    return float(t.loc[model, col] / 8192)


def _pz(model: str) -> float:
    t = paper.zero_shot_clip().set_index("model")
    return float(t.loc[model, "cifar10"])


CLAIMS = [
    Claim("GSAE has more latents firing for both modalities than the SAE", M.SAE, M.GSAE, "both_min1",
          "both, any firing", True, False, _pc("SAE", "both"), _pc("GSAE", "both"), via=M.CENTRED_SAE),
    Claim("MGSAE has more than GSAE", M.GSAE, M.MGSAE, "both_min1", "both, any firing", True, False,
          _pc("GSAE", "both"), _pc("MGSAE", "both")),
    Claim("GSAE above the SAE in both, counting a latent on a modality when it reaches a fifth of its expected "
          "firings there", M.SAE, M.GSAE, "both", "both, scaled rule", True, via=M.CENTRED_SAE),
    Claim("MGSAE above GSAE, the same count", M.GSAE, M.MGSAE, "both", "both, scaled rule", True),
    Claim("GSAE leaves fewer latents dead than the SAE", M.SAE, M.GSAE, "dead_min1", "never fires", True, True,
          _pc("SAE", "dead"), _pc("GSAE", "dead"), via=M.CENTRED_SAE),
    Claim("Zero-shot through the codes: GSAE above the SAE", M.SAE, M.GSAE, "zs_code", "zero-shot (codes)",
          paper_low=_pz("SAE"), paper_high=_pz("GSAE"), via=M.CENTRED_SAE),
    Claim("Zero-shot through the codes: MGSAE above GSAE", M.GSAE, M.MGSAE, "zs_code", "zero-shot (codes)",
          paper_low=_pz("GSAE"), paper_high=_pz("MGSAE")),
    Claim("Centring each modality alone (no penalty, no mask) gives more latents in both than the SAE "
          "(not tested by the paper)", M.SAE, M.CENTRED_SAE, "both_min1", "both, any firing", True),
    Claim("The l2,1 penalty adds latents in both beyond centring (not separated by the paper)", M.CENTRED_SAE,
          M.GSAE, "both_min1", "both, any firing", True),
]


def zero_shot_column(per_seed: pd.DataFrame) -> str | None:
    """The run's zero-shot-through-codes column (``zs_<set>_code``; the first, sorted), or None."""
    cols = sorted(c for c in per_seed.columns if c.startswith("zs_") and c.endswith("_code"))
    return cols[0] if cols else None


def compare(per_seed: pd.DataFrame, claim: Claim) -> dict | None:
    """The claim on one run: ``low``, ``high`` (means), ``change``, ``spread`` (std over seeds of the
    per-seed change), ``seeds``, ``verdict`` and, with ``claim.via`` trained, ``via_share`` (the mean
    change from ``low`` to ``via`` over the mean change from ``low`` to ``high``); None when a model or
    the metric is missing."""
    col = zero_shot_column(per_seed) if claim.metric == "zs_code" else claim.metric
    if col is None or col not in per_seed.columns:
        return None
    v = per_seed[per_seed.model.isin([claim.low, claim.high, claim.via])][["model", "seed", col, "m"]].copy()
    if claim.share_of_m:
        v[col] = v[col] / v["m"]
    w = v.pivot_table(index="seed", columns="model", values=col)
    if claim.low not in w or claim.high not in w:
        return None
    w = w.dropna(subset=[claim.low, claim.high])
    d = w[claim.high] - w[claim.low]
    change, spread = float(d.mean()), float(d.std(ddof=0)) if len(d) > 1 else float("nan")
    sign = -1.0 if claim.lower_is_better else 1.0
    if sign * change <= 0:
        verdict = "not reproduced"
    elif len(d) == 1:
        verdict = "holds (1 seed)"
    elif sign * change > spread:
        verdict = "holds"
    else:
        verdict = "within noise"
    via_share = float("nan")
    if claim.via is not None and claim.via in w and abs(change) > 1e-9:
        via_share = float((w[claim.via] - w[claim.low]).mean()) / change
    return {"low": float(w[claim.low].mean()), "high": float(w[claim.high].mean()), "change": change,
            "spread": spread, "seeds": int(len(d)), "verdict": verdict, "via_share": via_share}


def _cell(r: dict | None, digits: int = 2) -> str:
    if r is None:
        return "–"
    f = f"{{:.{digits}f}}"
    sp = "" if not np.isfinite(r["spread"]) else f" ± {f.format(r['spread'])}"
    return f"{f.format(r['low'])} → {f.format(r['high'])} ({r['change']:+.{digits}f}{sp})"


def _words(verdicts: Mapping[str, str]) -> str:
    """One verdict in words from the per-run verdicts (runs without the claim left out)."""
    if not verdicts:
        return "not measured"
    groups: dict[str, list[str]] = {}
    for run, v in verdicts.items():
        groups.setdefault(v.replace(" (1 seed)", ""), []).append(run + (" (1 seed)" if "1 seed" in v else ""))
    if len(groups) == 1:
        v = next(iter(groups))
        return f"{v} on {'all runs' if len(verdicts) > 1 else next(iter(verdicts))}"
    return "; ".join(f"{v} on {', '.join(runs)}" for v, runs in groups.items())


def claims_table(runs: Mapping[str, pd.DataFrame], claims=CLAIMS) -> pd.DataFrame:
    """One row per claim: the claim, the paper's two values, one cell per run (``low → high (change ±
    spread)``), and the verdict in words over the runs."""
    rows = []
    for c in claims:
        res = {name: compare(ps, c) for name, ps in runs.items()}
        row = {"claim": c.text, "metric": c.label,
               "the paper": "–" if c.paper_low is None else f"{c.paper_low:.2f} → {c.paper_high:.2f}"}
        row.update({name: _cell(r) for name, r in res.items()})
        row["verdict"] = _words({name: r["verdict"] for name, r in res.items() if r is not None})
        if c.via is not None:
            row[f"part carried by {c.via}"] = " / ".join(  # a share of a change the paper's way round only
                "–" if r is None or not np.isfinite(r["via_share"]) or r["verdict"] == "not reproduced"
                else f"{100 * r['via_share']:.0f}%" for r in res.values())
        else:
            row[f"part carried by {M.CENTRED_SAE}"] = ""
        rows.append(row)
    return pd.DataFrame(rows)
