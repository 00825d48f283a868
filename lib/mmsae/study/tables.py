"""Every results table of notebook 04, one function each: the frame written to ``results/`` and its caption.

Notebook 04 narrates; the tables are built here, so that each can be unit-tested on a few rows
(``tests/test_tables.py``). A function returns a :class:`Table` (its ``frame``, ``caption``, the
file ``name`` it is written under) or ``None`` where the run has nothing to put in it (no ground
truth, no zero-shot set). :meth:`Table.write` writes it (CSV, and LaTeX unless ``latex=False``);
:meth:`Table.show` gives the narrow, rounded view a notebook displays: ``mean ± std`` in one cell,
human column names (:data:`HEADERS`), only the columns asked for.

The per-seed frame every function starts from is ``results/per_seed_metrics.csv``: one row per
(model, seed) from :func:`mmsae.study.experiments.evaluate_model`.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import pandas as pd

from tqdm.auto import tqdm

from ..eval import concepts
from ..eval import metrics as eval_metrics
from ..eval import names as ln
from ..eval.analysis import headline_summary
from ..eval.analysis import split_vs_sample_size as split_vs_sample_size_rows
from ..models import load_model
from ..models.registry import encodes_pairs
from . import experiments as ex
from .ladder import ladder_rungs, ladder_steps
from .runs import write_table
from .zero_shot import zero_shot_table

__all__ = ["Table", "RunInfo", "HEADERS", "mean_std", "neuron_categories", "split_measures", "firing_profile",
           "split_vs_sample_size", "mms_summary", "reconstruction", "retrieval", "zero_shot", "ground_truth",
           "name_agreement", "latent_names", "browser_summary", "seed_stability", "comparison", "ablation", "pareto", "alpha_sweep",
           "concept_naming", "probe_decomposition", "concept_names", "TIMING"]

#: machine-dependent columns: kept in the untracked run folder, never in ``results/``
TIMING = ["wall_time_s"]

#: Human names of the per-seed columns, for what a reader sees (CSV files keep the identifiers).
HEADERS = {
    "model": "model", "image_only": "image-only", "text_only": "text-only", "both": "both", "dead": "dead",
    "image_only_min1": "image-only (any firing)", "text_only_min1": "text-only (any firing)",
    "both_min1": "both (any firing)", "dead_min1": "never fires",
    "unimodal_share": "unimodal share", "image_share": "image end", "text_share": "text end",
    "score_balance": "balance", "score_q10": "score q10", "score_q50": "score median", "score_q90": "score q90",
    "n_scored": "latents scored",
    "never": "never fires", "rare": "rare", "frequent": "frequent", "frequent_unimodal": "frequent, one-sided",
    "mms_img_txt_mean_alive": "MMS image-text", "mms_img_img_mean_alive": "MMS image-image",
    "mms_txt_txt_mean_alive": "MMS text-text",
    "explained_variance_x": "explained variance, image", "explained_variance_y": "explained variance, text",
    "nmse_x": "NMSE image", "nmse_y": "NMSE text", "cosine_x": "cosine image", "cosine_y": "cosine text",
    "gt_recovery_mean": "atom recovery", "gt_alignment_error": "alignment error",
    "gt_collapse_rate": "collapse rate", "frac_both": "both (share)",
    "shrinkage_x": "shrinkage, image", "shrinkage_y": "shrinkage, text", "dense_latents": "dense latents",
    "l0": "L0", "ev": "explained variance", "k": "K",
    "seed_stability_cos": "seed stability (cosine)", "seed_stability_share": "seed stability (share > 0.9)",
    "agreement_mean": "name agreement", "agreement_any": "one word in common", "chance_mean": "chance",
}
for _t, _w in (("code", "codes"), ("recon", "reconstructions")):
    for _d, _dw in (("x2y", "image→text"), ("y2x", "text→image")):
        for _k in ("R@1", "R@5", "R@10", "MRR"):
            HEADERS[f"{_t}_{_d}_{_k}"] = f"{_k} {_dw} ({_w})"


def header(col: str) -> str:
    """The human name of a column: :data:`HEADERS`, then zero-shot columns ``zs_<set>_<code|recon>``."""
    if col in HEADERS:
        return HEADERS[col]
    if col.startswith("zs_"):
        for suffix, word in (("_code", "codes"), ("_recon", "reconstructions")):
            if col.endswith(suffix):
                return f"zero-shot {col[3:-len(suffix)].replace('_', ' ')} ({word})"
        return f"zero-shot {col[3:].replace('_', ' ')}"
    return col.replace("_", " ")


@dataclass(frozen=True)
class RunInfo:
    """What a caption says about the run: profile, data, held-out pairs, category rule, seeds."""
    profile: str
    data: str
    n_val: int
    rule: str = ""
    ref_kind: str = ""
    seeds: Sequence[int] = (0,)
    sweep_seeds: Sequence[int] = (0,)

    @property
    def where(self) -> str:
        return f"{self.profile} profile, {self.data}"


@dataclass
class Table:
    """One results table: ``frame`` as written to ``<results>/<name>.csv`` (and ``.tex``)."""
    name: str
    frame: pd.DataFrame
    caption: str = ""
    label: str | None = None
    latex: bool = True
    mean_std: bool = True
    shown: Sequence[str] | None = field(default=None, repr=False)  # default columns of :meth:`show`

    def write(self, results_dir: str | Path):
        return write_table(self.frame, self.name, results_dir, caption=self.caption, label=self.label,
                           mean_std=self.mean_std, latex=self.latex)

    def show(self, columns: Sequence[str] | None = None, digits: int = 3) -> pd.DataFrame:
        """The columns that matter, each ``c`` with a ``c_std`` as one ``mean ± std`` cell, numbers rounded
        to ``digits`` (counts as integers), human column names."""
        df = self.frame
        keys = [c for c in df.columns if not str(c).endswith("_std") and c != "n_seeds"]
        lead = [c for c in keys if not pd.api.types.is_numeric_dtype(df[c])][:1]
        cols = list(columns or self.shown or keys)
        cols = lead + [c for c in cols if c in df.columns and c not in lead]
        out = pd.DataFrame(index=df.index)
        for c in cols:
            out[header(c)] = _cells(df, c, digits)
        return out.reset_index(drop=True)


def _fmt(v: Any, digits: int) -> str:
    if isinstance(v, (bool, np.bool_)):
        return str(v)
    if isinstance(v, (int, np.integer)):
        return str(int(v))
    if isinstance(v, (float, np.floating)):
        if np.isnan(v):
            return ""
        if float(v).is_integer() and abs(v) >= 10:
            return str(int(v))
        return f"{v:.{digits}f}"
    return str(v)


def _cells(df: pd.DataFrame, c: str, digits: int) -> list[str]:
    vals = df[c].tolist()
    std = df[f"{c}_std"].tolist() if f"{c}_std" in df.columns else [np.nan] * len(vals)
    count = pd.api.types.is_numeric_dtype(df[c]) and all(float(v).is_integer() for v in df[c].dropna())
    out = []
    for v, s in zip(vals, std):
        if isinstance(v, (float, np.floating)) and count and not np.isnan(v):
            m = f"{v:.1f}" if isinstance(s, (float, np.floating)) and not np.isnan(s) else str(int(v))
        else:
            m = _fmt(v, digits)
        if isinstance(s, (float, np.floating)) and not np.isnan(s):
            m += f" ± {s:.1f}" if count else f" ± {s:.{digits}f}"
        out.append(m)
    return out


def mean_std(per_seed: pd.DataFrame, cols: Sequence[str], by: str = "model") -> pd.DataFrame:
    """Mean and std over seeds per ``by`` of ``cols`` (:func:`mmsae.study.experiments.aggregate_seeds`)."""
    cols = [c for c in cols if c in per_seed.columns]
    return ex.aggregate_seeds(per_seed[[by, "seed", *cols]], by).drop(columns="n_seeds")


CATEGORY_COLUMNS = ["image_only", "text_only", "both", "dead", "image_only_min1", "text_only_min1", "both_min1",
                    "dead_min1"]


def neuron_categories(per_seed: pd.DataFrame, run: RunInfo) -> Table:
    """Latent categories per model (paper Fig. 3): the run's rule and the paper's any-firing rule (``*_min1``)."""
    cats = mean_std(per_seed, CATEGORY_COLUMNS)
    cats.insert(1, "category_rule", run.rule)
    cats.insert(2, "both_rule", [per_seed.loc[per_seed.model == n, "both_rule"].iloc[0] for n in cats["model"]])
    cap = (f"Neuron categories on {run.n_val} held-out pairs ({run.where}; mean $\\pm$ std over seeds). Rule: "
           f"{run.rule}; columns *\\_min1: the paper's rule (any firing counts; dead\\_min1: never fires on the "
           "held-out pairs).")
    return Table("neuron_categories", cats, cap, shown=["both", "image_only", "text_only", "dead", "both_min1",
                                                        "dead_min1"])


SPLIT_COLUMNS = ["unimodal_share", "image_share", "text_share", "score_balance", "score_q10", "score_q50",
                 "score_q90", "n_scored"]


def split_measures(per_seed: pd.DataFrame, run: RunInfo) -> Table:
    """The split measure: share of scored latents with modality score <= 0.1 or >= 0.9, and score quantiles."""
    tab = mean_std(per_seed, SPLIT_COLUMNS)
    tab.insert(1, "category_rule", run.rule)
    cap = (f"Split measure on {run.n_val} held-out pairs: share of scored latents with modality score "
           f"$\\le 0.1$ or $\\ge 0.9$, and score quantiles ({run.where}). Rule: {run.rule}.")
    return Table("split_measures", tab, cap, shown=["unimodal_share", "image_share", "text_share", "score_q50"])


def firing_profile(analyses: Mapping, names: Sequence[str], seeds: Sequence[int], run: RunInfo,
                   threshold: float = 0.0, truth: Mapping | None = None) -> Table:
    """Where each dictionary's firings go (:func:`mmsae.eval.metrics.firing_profile`), mean and std over seeds."""
    true_x, true_y = (truth["codes_x"], truth["codes_y"]) if truth is not None else (None, None)
    rows = [{"model": n, "seed": s, **eval_metrics.firing_profile(analyses[(n, s)].codes_x, analyses[(n, s)].codes_y, threshold=threshold,
                                         true_codes_x=true_x, true_codes_y=true_y)}
            for n in names for s in seeds]
    for r in rows:  # a pair code has no side: its one-sided shares do not exist
        if encodes_pairs(r["model"]):
            r.update(frequent_unimodal=np.nan, firings_frequent_unimodal=np.nan)
    cols = [c for c in rows[0] if c not in ("model", "seed")]
    cap = (f"Where each dictionary's firings go on {run.n_val} held-out pairs: fractions of the latents that never "
           "fire, fire less than the average latent (rare) or more (frequent), frequent latents with under 20\\% of "
           "their firings on one modality (unimodal), and shares of all firings "
           f"({run.where}; mean $\\pm$ std over seeds).")
    return Table("firing_profile", mean_std(pd.DataFrame(rows), cols), cap)


def split_vs_sample_size(analyses: Mapping, names: Sequence[str], seed: int, sizes: Sequence[int],
                         threshold: float = 0.0, min_frac: float = 0.2) -> tuple[pd.DataFrame, Table]:
    """"Both" and the unimodal share on random subsets of the held-out pairs, per rule (the raw rows for the
    figure, and their mean per size). With no ``names`` (none of the paper's three among the models analysed:
    a user's or another library's SAE), the first three models analysed."""
    if not names:
        names = list(dict.fromkeys(n for n, _ in analyses))[:3]
    vs_n = pd.concat([split_vs_sample_size_rows(analyses[(n, seed)].z_x, analyses[(n, seed)].z_y, sizes, seed=seed, threshold=threshold,
                          min_frac=min_frac).assign(model=n) for n in names], ignore_index=True)
    tab = vs_n.groupby(["model", "rule", "n_pairs"], sort=False)[["frac_both", "unimodal_share", "min_count"]] \
        .mean().reset_index()
    cap = ("Fraction of ``both'' latents and unimodal share against the number of held-out pairs, per rule "
           "(mean over random subsets).")
    return vs_n, Table("split_vs_sample_size", tab, cap, mean_std=False)


MMS_KEYS = ["img_img", "txt_txt", "img_txt"]


def mms_summary(per_seed: pd.DataFrame, run: RunInfo) -> Table:
    """Multimodal monosemanticity per model and modality pair (paper Fig. 4)."""
    cols = [f"mms_{k}_{stat}" for k in MMS_KEYS for stat in ("mean_alive", "mean_all", "auc", "median", "frac_gt_0.5")]
    tab = mean_std(per_seed, cols)
    tab.insert(1, "reference", run.ref_kind)
    return Table("mms_summary", tab, f"MMS summary (reference: {run.ref_kind}).",
                 shown=[f"mms_{k}_mean_alive" for k in MMS_KEYS])


def reconstruction(per_seed: pd.DataFrame) -> Table:
    cols = [f"{k}_{mod}" for mod in ("x", "y") for k in ("explained_variance", "nmse", "cosine")]
    return Table("reconstruction", mean_std(per_seed, cols),
                 "Reconstruction of held-out embeddings (x: image/audio, y: text).",
                 shown=["explained_variance_x", "explained_variance_y", "cosine_x", "cosine_y"])


def retrieval(per_seed: pd.DataFrame, val) -> Table:
    """Cross-modal retrieval from codes and reconstructions, with the dense embeddings as the last row."""
    cols = [f"{t}_{d}_{k}" for t in ("code", "recon") for d in ("x2y", "y2x") for k in ("R@1", "R@5", "R@10", "MRR")]
    ret = mean_std(per_seed, cols)
    n_pool = int(per_seed["retrieval_pool"].iloc[0])
    dense = eval_metrics.cross_modal_retrieval(np.asarray(val.x)[:n_pool], np.asarray(val.y)[:n_pool])
    dense_row = {"model": "dense", **{f"{t}_{k}": v for t in ("code", "recon") for k, v in dense.items()}}
    ret = pd.concat([ret, pd.DataFrame([dense_row])], ignore_index=True)
    return Table("retrieval", ret,
                 f"Cross-modal retrieval through the SAE on {n_pool} held-out pairs (dense = raw embeddings).",
                 shown=["code_x2y_R@1", "code_y2x_R@1", "recon_x2y_R@1", "recon_y2x_R@1"])


def zero_shot(per_seed: pd.DataFrame) -> Table | None:
    """Zero-shot accuracy through the SAE per zero-shot set (None: the run has no zero-shot set)."""
    cols = [c for c in per_seed.columns if c.startswith("zs_")]
    if not cols:
        return None
    tab = mean_std(per_seed, cols)
    return Table("zero_shot", tab, "Zero-shot accuracy through the SAE (dense = raw).",
                 shown=[c for c in cols if not c.endswith("_std")])


def ground_truth(per_seed: pd.DataFrame) -> Table | None:
    """Recovery of the synthetic ground truth (None without it)."""
    cols = [c for c in per_seed.columns if c.startswith("gt_")]
    if not cols:
        return None
    return Table("ground_truth", mean_std(per_seed, cols), "Recovery of the synthetic ground truth.",
                 shown=[c for c in ("gt_recovery_mean", "gt_alignment_error", "gt_collapse_rate") if c in cols]
                 or None)


def name_agreement(agree_rows: Sequence[Mapping], doc_source: str) -> Table | None:
    if not agree_rows:
        return None
    cap = (f"Do a shared latent's two sides name the same concept? Latents firing on both modalities with names on "
           f"both sides (from {doc_source}): mean share of the top-5 image-side words among the top-5 text-side "
           "words, the share with at least one common word, and the chance level of the mean (sides of different "
           "latents paired).")
    return Table("name_agreement", ex.aggregate_seeds(pd.DataFrame(agree_rows), "model"), cap,
                 label="tab:name_agreement")


def latent_names(records: Mapping[str, Sequence[Mapping]]) -> Table:
    """Every latent of each model's first seed: category, counts, score and names (CSV only)."""
    frames = [pd.DataFrame([{
        "model": n, "latent": r["id"], "category": r["category"], "fires_img": r["fires_img"],
        "fires_txt": r["fires_txt"], "modality_score": r["modality_score"], "name": r.get("name", ""),
        "names_img": " ".join(r.get("names_img", [])), "names_txt": " ".join(r.get("names_txt", [])),
        "agreement": r.get("agreement")} for r in recs]) for n, recs in records.items()]
    return Table("latent_names", pd.concat(frames, ignore_index=True), latex=False)


def browser_summary(per_seed: pd.DataFrame, names: Sequence[str], zero_shot_names: Sequence[str],
                    agreement: Table | None = None) -> tuple[list[dict], list[tuple[str, str]]]:
    """The method comparison every latent browser carries: rows (means over seeds) and (column, label)."""
    cols = [("model", "model"), ("both", "both"), ("image_only", "image-only"), ("text_only", "text-only"),
            ("dead", "dead"), ("unimodal_share", "unimodal share"), ("code_x2y_R@1", "R@1 img→txt (codes)")]
    rows = []
    for n in names:
        g = per_seed[per_seed.model == n]
        row = {"model": n, **{k: round(float(g[k].mean()), 3) for k, _ in cols[1:]}}
        for z in zero_shot_names:
            row[f"zs_{z}_code"] = round(float(g[f"zs_{z}_code"].mean()), 3)
        if agreement is not None:  # a crosscoder has none: its two sides name the same pairs
            agree = agreement.frame.set_index("model")["agreement_mean"]
            row["agreement_mean"] = round(float(agree[n]), 3) if n in agree.index else float("nan")
        rows.append(row)
    cols += [(f"zs_{z}_code", f"zero-shot {z} (codes)") for z in zero_shot_names]
    if agreement is not None:
        cols.append(("agreement_mean", "name agreement"))
    return rows, cols


def seed_stability(names: Sequence[str], seeds: Sequence[int], atoms: Callable[[str, int, int], np.ndarray],
                   threshold: float = 0.9) -> Table | None:
    """How alike two seeds' dictionaries are (SAEBench, Papadimitriou et al. 2025): for every pair of seeds, the
    Hungarian matching of the image-side decoder atoms (:func:`mmsae.eval.metrics.dictionary_agreement`); mean
    and std over the pairs. None with fewer than two seeds."""
    if len(seeds) < 2:
        return None
    rows = []
    for n in names:
        for a, b in itertools.combinations(seeds, 2):
            r = eval_metrics.dictionary_agreement(atoms(n, a, 0), atoms(n, b, 0), threshold=threshold)
            rows.append({"model": n, "seed": f"{a}-{b}", "seed_stability_cos": r["mean_cos"],
                         "seed_stability_share": r["share_above"]})
    df = pd.DataFrame(rows)
    tab = ex.aggregate_seeds(df, "model").rename(columns={"n_seeds": "n_seed_pairs"})
    cap = (f"Seed stability: the image-side decoder atoms of two seeds matched one to one (Hungarian, cosine); mean "
           f"cosine of the matched atoms and share above {threshold}, mean $\\pm$ std over {len(df) // len(names)} "
           "pairs of seeds.")
    return Table("seed_stability", tab, cap, shown=["seed_stability_cos", "seed_stability_share"])


COMPARISON_HEADERS = {"image_only": "img-only", "text_only": "txt-only", "mms_img_txt_mean_alive": "MMS img-txt",
                      "explained_variance_x": "EV img", "explained_variance_y": "EV txt",
                      "shrinkage_x": "shrink img", "shrinkage_y": "shrink txt", "dense_latents": "dense",
                      "seed_stability_cos": "stability", "seed_stability_share": "stable > 0.9"}


def comparison(per_seed: pd.DataFrame, zero_shot_names: Sequence[str], run: RunInfo,
               stability: Table | None = None) -> tuple[Table, Table, str]:
    """Every method side by side: the full table (every metric, CSV), the paper-facing table and its markdown.
    Beside the paper's metrics, what SAE evaluation reports (SAEBench): explained variance about the mean,
    shrinkage, dense latents and, with ``stability`` (:func:`seed_stability`), the seeds' agreement."""
    full = ex.comparison_table(per_seed)
    if stability is not None:
        full = full.merge(stability.frame.drop(columns="n_seed_pairs"), on="model", how="left")
    cols = (["image_only", "text_only", "both", "dead", "mms_img_txt_mean_alive", "explained_variance_x",
             "explained_variance_y", "shrinkage_x", "shrinkage_y", "dense_latents", "seed_stability_cos",
             "seed_stability_share"]
            + [f"recon_{d}_{k}" for d in ("x2y", "y2x") for k in ("R@1", "R@10", "MRR")]
            + [f"zs_{z}_{w}" for z in zero_shot_names for w in ("code", "recon")])
    cols = [c for c in cols if c in full.columns]
    cmp = full[["model"] + [c for col in cols for c in (col, f"{col}_std")] + ["n_seeds"]]
    cap = (f"Every method on held-out pairs ({run.where}; mean $\\pm$ std over {len(run.seeds)} seeds). Neuron "
           f"categories; MMS image-text (reference: {run.ref_kind}); explained variance about the mean per modality, "
           "shrinkage (relative reconstruction bias; 1: none), the share of dense latents (firing on more than a "
           "tenth of the inputs) and seed stability (matched decoder atoms of two seeds); retrieval from "
           "reconstructions; zero-shot through the SAE.")
    pairs = [n for n in full["model"] if encodes_pairs(n)]
    if pairs:
        cap += (f" {', '.join(pairs)} encodes a pair, not one modality: n/a (a dash in LaTeX) marks the metrics built on the code of one "
                "modality.")
    md = ex.markdown_table(full, cols, headers=COMPARISON_HEADERS)
    shown = ["both", "image_only", "text_only", "dead", "mms_img_txt_mean_alive", "recon_x2y_R@1"] + \
        [f"zs_{z}_code" for z in zero_shot_names] + ["shrinkage_x", "dense_latents", "seed_stability_cos"]
    return (Table("comparison_full", full, latex=False),
            Table("comparison", cmp, cap, label="tab:comparison", shown=[c for c in shown if c in cmp.columns]), md)


ABLATION_X = {"lambda": ("group_lambda", "$\\lambda$"), "mask_rate": ("mask_rate", "mask rate"),
              "mask_mode": ("mask_mode", "mask drawn per"), "width_k": ("expansion", "expansion (m / d)"),
              "k": ("k", "K (active latents)")}


def pareto(raw: pd.DataFrame, train, val, steps: int, run: RunInfo) -> Table:
    """The sparsity-fidelity trade-off (the K sweep): explained variance about the mean (images and captions
    averaged) against L0, the mean number of active latents per input, per method and K; and the PCA baseline,
    the top-L0 principal directions of the training pairs (per modality) as a dense code of the same size."""
    df = raw.assign(ev=(raw["explained_variance_x"] + raw["explained_variance_y"]) / 2)
    agg = ex.aggregate_seeds(df[["model", "k", "seed", "l0", "ev", "both_min1", "dead_min1"]], ["model", "k"])
    ks = sorted({int(k) for k in agg["k"]})
    pca = {m: eval_metrics.pca_explained_variance(np.asarray(getattr(train, m)), np.asarray(getattr(val, m)), ks) for m in "xy"}
    base = pd.DataFrame([{"model": "PCA", "k": k, "l0": float(k), "ev": (pca["x"][k] + pca["y"][k]) / 2,
                          "n_seeds": 1} for k in ks])
    tab = pd.concat([agg, base], ignore_index=True)
    cap = (f"Sparsity against fidelity ({run.where}, {steps} steps a model; mean $\\pm$ std over "
           f"{len(run.sweep_seeds)} seeds): L0 (active latents per input) and explained variance about the mean, "
           "images and captions averaged, per K; PCA: the top-L0 principal directions of the training pairs.")
    return Table("pareto_k", tab, cap, shown=["k", "l0", "ev", "both_min1"])


def ablation(raw: pd.DataFrame, sweep: str, steps: int, zero_shot_names: Sequence[str], run: RunInfo
             ) -> tuple[Table, Table, Table, pd.DataFrame]:
    """One ablation (:data:`ABLATION_X`) from its per-seed rows: the per-seed table for ``results/`` (no timings),
    the same with timings (for the untracked run folder), the table over its setting, and the per-setting means
    for the figure."""
    xcol, xlabel = ABLATION_X[sweep]
    cols = (["both", "dead", "frac_both", "mms_img_txt_mean_alive", "explained_variance_x", "explained_variance_y",
             "recon_x2y_R@1", "recon_y2x_R@1"] + [f"zs_{z}_recon" for z in zero_shot_names]
            + ["gt_recovery_mean", "gt_alignment_error"])
    by = ["model", "expansion", "k", "m"] if sweep == "width_k" else ["model", xcol]
    agg = ex.aggregate_seeds(raw, by)
    cols = [c for c in cols if c in agg.columns]
    tab = agg[by + [c for col in cols for c in (col, f"{col}_std")] + ["n_seeds"]]
    cap = (f"Ablation: {xlabel} ({run.where}, {steps} steps; mean $\\pm$ std over {len(run.sweep_seeds)} seeds).")
    shown = by[1:] + [c for c in ("frac_both", "mms_img_txt_mean_alive", "explained_variance_x", "recon_x2y_R@1",
                                  "gt_recovery_mean") if c in tab]
    if sweep == "width_k":
        agg = agg.assign(series=[f"{mo} K={k}" if agg["model"].nunique() > 1 else f"K={k}"
                                 for mo, k in zip(agg["model"], agg["k"])])
    return (Table(f"ablation_{sweep}_per_seed", raw.drop(columns=TIMING, errors="ignore"), latex=False),
            Table(f"ablation_{sweep}_per_seed_with_timings", raw, latex=False),
            Table(f"ablation_{sweep}", tab, cap, label=f"tab:ablation_{sweep}", shown=shown), agg)


ALPHA_COLUMNS = ["gt_recovery_x_mean", "gt_recovery_y_mean", "gt_recovery_mean", "gt_alignment_error",
                 "gt_collapse_rate", "explained_variance_x", "explained_variance_y", "recon_x2y_R@1", "both"]


def alpha_sweep(alpha_raw: pd.DataFrame, n_pairs: int, steps: int, run: RunInfo
                ) -> tuple[Table, Table, Table, Table, pd.DataFrame]:
    """The sweep over the concept-direction cosine: the per-seed rows (without and with timings), the table, the
    winner at each value, and the means for the figure."""
    agg = ex.aggregate_seeds(alpha_raw, ["model", "alpha"])
    cols = [c for c in ALPHA_COLUMNS if c in agg]
    tab = agg[["model", "alpha"] + [c for col in cols for c in (col, f"{col}_std")] + ["n_seeds"]]
    cap = (f"Synthetic alpha sweep ({run.profile} profile, {n_pairs} pairs, {steps} steps; mean $\\pm$ std over "
           f"{len(run.sweep_seeds)} seeds).")
    best = [{"alpha": a, "best_recovery": g.loc[g["gt_recovery_mean"].idxmax(), "model"],
             "best_recovery_value": g["gt_recovery_mean"].max(),
             "lowest_alignment_error": g.loc[g["gt_alignment_error"].idxmin(), "model"],
             "lowest_alignment_error_value": g["gt_alignment_error"].min()} for a, g in agg.groupby("alpha")]
    return (Table("alpha_sweep_per_seed", alpha_raw.drop(columns=TIMING, errors="ignore"), latex=False),
            Table("alpha_sweep_per_seed_with_timings", alpha_raw, latex=False),
            Table("alpha_sweep", tab, cap, label="tab:alpha_sweep",
                  shown=["alpha", "gt_recovery_mean", "gt_alignment_error", "gt_collapse_rate"]),
            Table("alpha_sweep_winners", pd.DataFrame(best), "Which method wins at each alpha (mean over seeds).",
                  label="tab:alpha_winners"), agg)


def concept_naming(naming_rows: Sequence[Mapping]) -> Table:
    return Table("concept_naming", ex.aggregate_seeds(pd.DataFrame(naming_rows), "model"),
                 "Concept naming accuracy against the synthetic truth (alive latents whose concept has a word).")


def probe_decomposition(probe_rows: Sequence[Mapping]) -> Table | None:
    if not probe_rows:
        return None
    return Table("probe_decomposition", pd.DataFrame(probe_rows),
                 "Probe decomposition: does a class probe's top named atom list expose the concept correlated with "
                 "the class? (rank 0: not among the candidates)", mean_std=False)


def concept_names(rows: Sequence[Mapping], vocabulary: str) -> Table:
    return Table("concept_names", pd.DataFrame(rows),
                 f"Names of each model's 20 most frequent latents (vocabulary: {vocabulary}).", mean_std=False)


def synthetic_naming(analyses: Mapping, names: Sequence[str], seeds: Sequence[int], truth: Mapping, val,
                     atoms: Callable[[str, int, int], np.ndarray]) -> tuple[Table, Table | None]:
    """Naming against the truth and the probe decomposition (paper metrics 5 and 6) on synthetic data.
    ``atoms(model, seed, side)`` gives a model's decoder atoms of one side (0 image, 1 text) as an array."""
    kind = np.asarray(truth["concept_kind"])
    vocab_concept = np.nonzero(kind != 1)[0]  # image-only concepts (kind 1) have no words
    vocab_emb = np.asarray(truth["atoms_y"])[vocab_concept]
    words = np.array([f"concept_{c}" for c in range(len(kind))])
    corr = truth["config"].get("correlated")  # [class concept, correlated concept, probability] or None
    naming_rows, probe_rows = [], []
    for n in names:
        for s in seeds:
            a = analyses[(n, s)]
            atoms_txt, atoms_img = atoms(n, s, 1), atoms(n, s, 0)
            lc, _ = concepts.latent_concepts(a.z_x, a.z_y, truth["codes_x"], truth["codes_y"])
            naming_rows.append({"model": n, "seed": s, **concepts.naming_accuracy(
                atoms_txt, vocab_emb, vocab_concept, lc, alive=a.categories != "dead")})
            if corr:
                nm, _ = concepts.name_latents(atoms_txt, vocab_emb, list(words[vocab_concept]))
                w = concepts.fit_probe(np.asarray(val.x), np.asarray(val.labels) == int(corr[0]), seed=s)
                r = concepts.probe_report(w, atoms_img, nm, watch=f"concept_{int(corr[1])}", top=5)
                probe_rows.append({"model": n, "seed": s, "probe_class": f"concept_{int(corr[0])}",
                                   "correlated": f"concept_{int(corr[1])}", "watch_in_top5": r["watch_in_top"],
                                   "watch_rank": r["watch_rank"], "top_names": " ".join(r["top_names"])})
    return concept_naming(naming_rows), probe_decomposition(probe_rows)


def vocabulary_names(analyses: Mapping, names: Sequence[str], seed: int, vocabulary_path: str | Path, dim: int,
                     atoms: Callable[[str, int, int], np.ndarray], encoder, encoder_name: str = "the text encoder",
                     threshold: float = 0.0) -> Table:
    """Real data with a vocabulary: each model's 20 most frequent latents named by the closest word to their text
    atom (words embedded by ``encoder``, e.g. :class:`mmsae.embed.encoders.ClipEncoder`, which must be the data's
    encoder)."""
    words = concepts.load_vocabulary(vocabulary_path)
    emb = concepts.encode_vocabulary(words, encoder)
    if emb.shape[1] != dim:
        raise ValueError(f"{vocabulary_path}: {encoder_name} embeds words in d = {emb.shape[1]}, the data has "
                         f"d = {dim}; use the data's encoder")
    rows = []
    for n in names:
        a = analyses[(n, seed)]
        nm, cs = concepts.name_latents(atoms(n, seed, 1), emb, words)
        fires = (a.z_x > threshold).sum(0) + (a.z_y > threshold).sum(0)
        rows += [{"model": n, "latent": int(i), "name": nm[i], "cosine": float(cs[i]), "category": a.categories[i],
                  "firings": int(fires[i])} for i in np.argsort(-fires)[:20]]
    return concept_names(rows, Path(vocabulary_path).name)


def latents_in_words(analyses: Mapping, names: Sequence[str], seeds: Sequence[int], val, truth: Mapping | None,
                     threshold: float = 0.0) -> tuple[dict, Table | None, str]:
    """Every latent of each model's first seed named per modality (:mod:`mmsae.eval.names`) from the captions, or
    on synthetic data from the true concepts: the browser records per model, the agreement table over seeds
    (None without words) and where the words came from."""
    caps = val.caption_lists()
    if caps is not None:
        docs_x, docs_y = ln.caption_documents(caps)
        image_texts, caption_texts, source = caps, [c[0] if c else "" for c in caps], "captions"
    elif truth is not None:
        docs_x, docs_y = ln.truth_documents(truth["codes_x"], truth["codes_y"])
        image_texts, caption_texts = [[f"true concepts: {d}"] for d in docs_x], [f"true concepts: {d}" for d in docs_y]
        source = "ground-truth concepts"
    else:
        docs_x = docs_y = image_texts = caption_texts = None
        source = "none"
    agree_rows, records = [], {}
    for n in names:
        for s in seeds:
            a = analyses[(n, s)]
            nm = ln.name_latents(a.z_x, a.z_y, docs_x, docs_y, threshold=threshold) if docs_x is not None else None
            if nm is not None and not encodes_pairs(n):  # a pair code's two sides name the same pairs
                agree_rows.append({"model": n, "seed": s, **ln.agreement_summary(nm, a.categories, seed=s)})
            if s == seeds[0]:
                records[n] = ln.latent_records(a.categories, a.modality_score, a.z_x, a.z_y, nm, image_texts,
                                               caption_texts, threshold=threshold)
    return records, name_agreement(agree_rows, source), source


def headline_record(per_seed: pd.DataFrame, names: Sequence[str], run: RunInfo, zero_shot_sets: Mapping,
                    agreement: Table | None, names_from: str) -> dict:
    """``results/headline.json``: the means over seeds the README and the front page read."""
    return {"profile": run.profile, "data": run.data, "seeds": list(run.seeds), "mms_reference": run.ref_kind,
            "n_val": run.n_val, "category_rule": run.rule,
            "category_min_count": int(per_seed["category_min_count"].max()),
            "models": headline_summary(per_seed, names),
            "zero_shot": {z: {"n_test": int(len(zs.labels)), "n_classes": len(zs.class_names),
                              "classes": list(zs.class_names), "rule": zs.meta.get("rule"),
                              "prompts": zs.meta.get("prompts")} for z, zs in sorted(zero_shot_sets.items())},
            "name_agreement": ({} if agreement is None else
                               agreement.frame.set_index("model").drop(columns="n_seeds").to_dict(orient="index")),
            "names_from": names_from}


def evaluate_all(paths, names: Sequence[str], seeds: Sequence[int], val, ref_x, ref_y, zero_shot_sets: Mapping,
                 truth: Mapping | None, ref_kind: str, **rule) -> tuple[dict, pd.DataFrame]:
    """Encode every trained (model, seed) of the run once: the analyses (codes, categories, MMS, ...) and the
    per-seed metrics (:func:`mmsae.study.experiments.evaluate_model`; ``rule``: threshold, min_count, min_frac).
    A model that notebooks 02 and 03 did not train is named in a :class:`FileNotFoundError` first."""
    missing = sorted({f"{n} (seed {s})" for n in names for s in seeds
                      if not (paths.model_dir(n, s) / "config.json").exists()})
    if missing:  # notebook 04 only analyses what 02 and 03 trained; it never trains
        raise FileNotFoundError(
            f"not trained in {paths.root / 'models'}: {', '.join(missing)}. Run notebooks 02_train_baseline and "
            f"03_train_group_sparse first with profile={paths.profile!r}, data={paths.data!r} (./run_all.sh --only "
            "02,03 with the same --profile/--data/--param comparison_seeds)")
    analyses, rows = {}, []
    for name in tqdm(names, desc="models"):
        for s in seeds:
            det: dict = {}
            r = ex.evaluate_model(load_model(paths.model_dir(name, s)), val, ref_x, ref_y, zero_shot_sets, truth,
                                  details=det, **rule)
            analyses[(name, s)] = det["analysis"]
            rows.append({"model": name, "seed": s, **r, "mms_reference": ref_kind})
    return analyses, ex.add_derived(pd.DataFrame(rows))


def ladder(per_seed: pd.DataFrame, run: RunInfo) -> tuple[Table, Table] | None:
    """The ladder's rungs and steps (:mod:`mmsae.study.ladder`); None with fewer than two rungs trained."""
    rungs, rungs_caption = ladder_rungs(per_seed)
    if len(rungs) < 2:
        return None
    steps, steps_caption = ladder_steps(per_seed)
    return (Table("ladder", rungs, f"{rungs_caption} {run.where}."),
            Table("ladder_steps", steps, f"{steps_caption} {run.where}."))


def zero_shot_vs_paper(per_seed: pd.DataFrame, zero_shot_sets: Mapping, names: Sequence[str], run: RunInfo
                       ) -> Table | None:
    """Zero-shot per set beside the paper's Table 1 (:func:`mmsae.study.zero_shot.zero_shot_table`); None without
    a zero-shot set."""
    df = zero_shot_table(per_seed, zero_shot_sets, names)
    if not len(df):
        return None
    cap = (f"Zero-shot accuracy through the SAE ({run.where}): mean $\\pm$ std over seeds and the binomial standard "
           "error on n\\_test items; the paper's accuracies through its SAEs (CLIP ViT-B/16) beside them.")
    return Table("zero_shot_vs_paper", df, cap, label="tab:zero_shot_vs_paper",
                 shown=["set", "n_test", "code", "recon", "paper_cifar10"])


def publish(results_dir: str | Path, *items: Table | None, stale: Sequence[str] = (), show: bool = True) -> None:
    """Write every table that is not None and, in a notebook, display its narrow view; ``stale``: names of tables
    this run does not produce, removed so that an earlier run's file is not read as this run's."""
    for name in stale:
        for ext in ("csv", "tex"):
            (Path(results_dir) / f"{name}.{ext}").unlink(missing_ok=True)
    for t in items:
        if t is None:
            continue
        t.write(results_dir)
        if show:
            from IPython.display import display

            display(t.show())
