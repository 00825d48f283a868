"""Refresh the measured numbers in README.md and docs/ from results/ (never typed by hand).

Fills the sections between ``<!-- results:NAME:begin -->`` and ``<!-- results:NAME:end -->``
markers, wherever they stand in :data:`FILES` (the front page, ``docs/results.md``, ``docs/usage.md``). The Speed section's benchmark summary is written by ``scripts/benchmark.py --summary
README.md`` itself, when it measures (a quiet machine), and is left alone here.
Run by ./run_all.sh after the default run; safe to run by hand. The tables come from
``results/`` (synthetic default) and ``results/<slug>/`` (other data, :class:`mmsae.study.runs.RunPaths`).
The runtime line is rewritten only with ``--runtime``: wall times vary between identical runs,
so they are kept in the untracked ``runs/<profile>-<slug>/run_all.json`` and a plain rerun
leaves README.md unchanged.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "lib"))

from mmsae.study import paper  # noqa: E402
from mmsae.study import methods as M  # noqa: E402
from mmsae.study.claims import claims_table  # noqa: E402
from mmsae.study.ladder import ladder_rungs, ladder_steps  # noqa: E402
from mmsae.study.methods import PAPER_METHODS  # noqa: E402
from mmsae.data import atomic_write  # noqa: E402
from mmsae.study.runs import DEFAULT_DATA, REAL_CLIP_RUN, RunPaths  # noqa: E402

RES = RunPaths(ROOT, "smoke", DEFAULT_DATA).results  # tables of the synthetic default: results/
PAPER_RES = RunPaths(ROOT, "paper", DEFAULT_DATA).results  # the paper-scale run: results/paper-synthetic/
#: the files whose marked sections are generated
FILES = [ROOT / "README.md", ROOT / "docs" / "results.md", ROOT / "docs" / "usage.md"]


def _fmt(v, digits=3):
    if isinstance(v, float):
        if v != v:
            return "–"
        return f"{v:.{digits}f}"
    return str(v)


def _pm(df: pd.DataFrame, col: str, digits: int = 3) -> list[str]:
    std = df.get(f"{col}_std")
    out = []
    for i, v in enumerate(df[col]):
        s = std.iloc[i] if std is not None else float("nan")
        out.append(_fmt(float(v), digits) + ("" if s != s else f" ± {_fmt(float(s), digits)}"))
    return out


def _md(df: pd.DataFrame) -> str:
    cols = list(df.columns)
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    for _, r in df.iterrows():
        lines.append("| " + " | ".join(str(r[c]) for c in cols) + " |")
    return "\n".join(lines)


def _real_results() -> Path:
    """Where the default run's real-CLIP run (500 COCO pairs) writes its tables."""
    from mmsae.study.runs import REAL_CLIP_RUN, RunPaths  # noqa: E402

    return RunPaths(ROOT, "smoke", REAL_CLIP_RUN["data"]).results


def _headline(res: Path) -> dict | None:
    f = res / "headline.json"
    return json.loads(f.read_text()) if f.exists() else None


def _cell(h: dict | None, model: str, col: str, digits: int = 2, frac_of_m: bool = False) -> str:
    if h is None or model not in h["models"] or col not in h["models"][model]:
        return "–"
    v = h["models"][model][col]
    if v is None or (isinstance(v, float) and math.isnan(v)):  # a metric the model cannot have (a crosscoder's)
        return "n/a"
    if frac_of_m:
        v = v / h["models"][model]["m"]
    mark = "†" if col == "both" and h["models"][model].get("both_rule") == "matched" else ""
    return _fmt(float(v), digits) + mark


def _rule_note(h: dict | None, label: str) -> str:
    if h is None:
        return f"{label}: not generated yet (run `./run_all.sh`)"
    m = int(round(next(iter(h["models"].values()))["m"]))
    same = (" (at this size the scaled count is 1, so both rules give the same table)"
            if h.get("category_min_count") == 1 else "")
    return (f"{label}: `{h['profile']}` profile, `{Path(h['data'].split(':', 1)[-1]).name}`, {m} latents, "
            f"{h.get('n_val', '?')} held-out pairs, seeds {h.get('seeds')}; category rule: {h.get('category_rule', '?')}"
            + same)


def categories_section() -> str:
    syn, real = _headline(RES), _headline(_real_results())
    if syn is None:
        raise FileNotFoundError(2, "missing", str(RES / "headline.json"))
    pp = paper.neuron_categories().set_index("model")
    main, split = [], []
    for name in syn["models"]:
        inp = name in pp.index
        main.append({
            "model": name,
            "both: paper": _fmt(pp.loc[name, "both"] / 8192, 2) if inp else "–",
            "both, any firing: real CLIP": _cell(real, name, "both_min1", frac_of_m=True),
            "both, any firing: synthetic": _cell(syn, name, "both_min1", frac_of_m=True),
            "both, scaled rule: real CLIP": _cell(real, name, "both", frac_of_m=True),
            "both, scaled rule: synthetic": _cell(syn, name, "both", frac_of_m=True),
            "dead: paper": _fmt(pp.loc[name, "dead"] / 8192, 2) if inp else "–",
            "never fires: real CLIP": _cell(real, name, "dead_min1", frac_of_m=True),
            "never fires: synthetic": _cell(syn, name, "dead_min1", frac_of_m=True),
            "dead, scaled rule: real CLIP": _cell(real, name, "dead", frac_of_m=True),
            "dead, scaled rule: synthetic": _cell(syn, name, "dead", frac_of_m=True),
            "unimodal share: real CLIP": _cell(real, name, "unimodal_share"),
            "unimodal share: synthetic": _cell(syn, name, "unimodal_share"),
        })
        split.append({
            "model": name,
            "img-only / txt-only: paper": (f"{pp.loc[name, 'image_only'] / 8192:.2f} / "
                                           f"{pp.loc[name, 'text_only'] / 8192:.2f}" if inp else "–"),
            "img-only / txt-only: real CLIP": (_cell(real, name, "image_only", frac_of_m=True) + " / "
                                               + _cell(real, name, "text_only", frac_of_m=True)),
            "img-only / txt-only: synthetic": (_cell(syn, name, "image_only", frac_of_m=True) + " / "
                                               + _cell(syn, name, "text_only", frac_of_m=True)),
        })
    return ("Fractions of the dictionary. **Paper**: CLIP ViT-B/16 on CC3M validation, 8192 latents; a latent counts "
            "for a modality when it fires on it at all. " + _rule_note(real, "**Real CLIP (ours)**") + ". "
            + _rule_note(syn, "**Synthetic (ours)**") + ". *Any firing* is the paper's rule (min_count = 1), which "
            "grows with the number of held-out pairs (`figures/split_vs_sample_size`); the *scaled rule* asks for "
            "0.2 of a latent's expected firings N K / m and the *unimodal share* (the split measure) is the share of "
            "latents with enough firings whose modality score is <= 0.1 or >= 0.9; both are stable in N. *Never "
            "fires* is the paper's dead count (no firing on the held-out pairs); *dead, scaled rule* counts latents "
            "below the scaled count on both modalities. Image-/text-only use the scaled rule. † modality-specific SAEs: \"both\" counts Hungarian-matched "
            "latent pairs, true by construction. From `results/headline.json` and "
            "`results/clip_vitb16_coco500/headline.json`.\n\n" + _md(pd.DataFrame(main)) + "\n\n"
            + _md(pd.DataFrame(split)))


def headline_section() -> str:
    syn, real = _headline(RES), _headline(_real_results())
    if syn is None:
        raise FileNotFoundError(2, "missing", str(RES / "headline.json"))
    pz = paper.zero_shot_clip().set_index("model")
    zs = [k for k in next(iter(syn["models"].values())) if k.startswith("zs_") and k.endswith("_code")]
    zr = ([k for k in next(iter(real["models"].values())) if k.startswith("zs_") and k.endswith("_code")]
          if real else [])
    rows = []
    for name in syn["models"]:
        row = {"model": name,
               "R@1 img→txt (codes): real CLIP": _cell(real, name, "code_x2y_R@1", 3),
               "R@1 img→txt (codes): synthetic": _cell(syn, name, "code_x2y_R@1", 3),
               "MRR txt→img (codes): real CLIP": _cell(real, name, "code_y2x_MRR", 3),
               "MRR txt→img (codes): synthetic": _cell(syn, name, "code_y2x_MRR", 3),
               "zero-shot CIFAR-10: paper": _fmt(pz.loc[name, "cifar10"]) if name in pz.index else "–"}
        for k in zr:
            row[f"zero-shot {k[3:-5]} (codes): real CLIP"] = _cell(real, name, k, 3)
        for k in zs:
            row[f"zero-shot {k[3:-5]} (codes): synthetic"] = _cell(syn, name, k, 3)
        row["EV img / txt: real CLIP"] = (_cell(real, name, "explained_variance_x", 3) + " / "
                                          + _cell(real, name, "explained_variance_y", 3))
        row["EV img / txt: synthetic"] = (_cell(syn, name, "explained_variance_x", 3) + " / "
                                          + _cell(syn, name, "explained_variance_y", 3))
        rows.append(row)
    tail = []
    for label, res in (("real CLIP", _real_results()), ("synthetic", RES)):
        f = res / "data_summary.json"
        if f.exists():
            d = json.loads(f.read_text())
            tail.append(f"{label}: dense (no SAE) R@1 img→txt {_fmt(d['dense_x2y_R@1'])} on {d['retrieval_pool']} "
                        f"held-out pairs")
    for label, h in (("real CLIP", real), ("synthetic", syn)):
        dense = {k: v for k, v in next(iter(h["models"].values())).items() if k.endswith("_dense")} if h else {}
        if dense:
            tail.append(f"{label} dense zero-shot " + ", ".join(f"{k[3:-6]} {_fmt(v)}" for k, v in dense.items()))
    note = ("Retrieval ranks every held-out caption against every held-out image by cosine of SAE codes "
            "(both directions, ties counted against the correct item). Zero-shot through the SAE: on real CLIP the "
            "classes derived from the COCO captions (next section), on synthetic data the class concepts; the "
            "paper's CIFAR-10 column is its zero-shot through the SAE. From `headline.json` of each run.")
    return note + "\n\n" + _md(pd.DataFrame(rows)) + ("\n\n" + "; ".join(tail) + "." if tail else "")


def _order_holds(t: pd.DataFrame, order: list[str]) -> tuple[bool, bool]:
    """Whether the accuracy means follow ``order`` (increasing), and whether every step of it
    exceeds its combined uncertainty (seed std and binomial standard error of both)."""
    t = t.set_index("model")
    have = [m for m in order if m in t.index]
    u = lambda m: float(np.hypot(np.nan_to_num(t.loc[m, "code_std"]), t.loc[m, "code_binomial_se"]))  # noqa: E731
    steps = [(a, b) for a, b in zip(have, have[1:])]
    ordered = all(t.loc[a, "code"] < t.loc[b, "code"] for a, b in steps)
    clear = all(t.loc[b, "code"] - t.loc[a, "code"] > u(a) + u(b) for a, b in steps)
    return ordered, clear


def zeroshot_section() -> str:
    real_res = _real_results()
    f = real_res / "zero_shot_vs_paper.csv"
    if not f.exists():
        raise FileNotFoundError(2, "missing", str(f))
    t = pd.read_csv(f)
    real = _headline(real_res)
    syn_t = pd.read_csv(RES / "zero_shot_vs_paper.csv") if (RES / "zero_shot_vs_paper.csv").exists() else None
    rows = []
    for _, r in t.iterrows():
        sd = "" if r["code_std"] != r["code_std"] else f" ± {r['code_std']:.3f}"
        na = r["code"] != r["code"]  # no codes of one modality (the crosscoder encodes pairs): n/a
        row = {"model": r["model"], "real CLIP, codes (± seeds; ± binomial)":
               "n/a" if na else f"{r['code']:.3f}{sd} (± {r['code_binomial_se']:.3f})",
               "real CLIP, reconstructions": "n/a" if na else _fmt(float(r["recon"]))}
        if syn_t is not None:
            srow = syn_t[syn_t.model == r["model"]]
            row["synthetic classes, codes"] = ("n/a" if na else _fmt(float(srow["code"].iloc[0])) if len(srow)
                                               else "–")
        for c, lab in (("paper_cifar10", "paper CIFAR-10"), ("paper_cifar100", "paper CIFAR-100"),
                       ("paper_imagenet", "paper ImageNet")):
            row[lab] = _fmt(float(r[c]))
        rows.append(row)
    zmeta = (real or {}).get("zero_shot", {}).get(t["set"].iloc[0], {})
    n, k = int(t["n_test"].iloc[0]), int(t["n_classes"].iloc[0])
    ordered, clear = _order_holds(t, [*PAPER_METHODS, "dense"])
    text = (f"**Real CLIP** (`{t['set'].iloc[0]}`): {n} labelled held-out images of the 100, {k} classes "
            f"({', '.join(zmeta.get('classes', []))}; chance {1 / k:.3f}). Labelling rule: "
            f"{zmeta.get('rule', '?')}; classes with at least 8 such training pairs, chosen from the training "
            f"captions only; class prompt: {zmeta.get('prompts', '?')} (`mmsae.data.caption_labels`). "
            "Accuracy through codes: mean ± std over seeds, in brackets the binomial standard error of an accuracy "
            f"on {n} items. From `results/clip_vitb16_coco500/zero_shot_vs_paper.csv`.\n\n" + _md(pd.DataFrame(rows)))
    verdict = ("holds" if ordered else "does not hold") + (
        ", each step larger than its uncertainty" if ordered and clear else
        (", but not every step is larger than its uncertainty" if ordered else ""))
    text += (f"\n\nOn the real CLIP pairs the paper's order through the SAE's codes, SAE < GSAE < MGSAE < dense, "
             f"{verdict} (the paper: 0.657 < 0.808 < 0.842 < 0.916 on CIFAR-10).")
    syn_d, real_d = RES / "data_summary.json", real_res / "data_summary.json"
    if syn_t is not None and syn_d.exists() and real_d.exists():
        s_struct = json.loads(syn_d.read_text()).get("zero_shot_structure", {})
        r_struct = json.loads(real_d.read_text()).get("zero_shot_structure", {})
        ss, rs = next(iter(s_struct.values()), None), r_struct.get(t["set"].iloc[0])
        st = syn_t.set_index("model")
        if ss and rs:
            best = st.drop(index="dense")["code"].idxmax()
            text += (f" On the synthetic classes the dense embeddings score {st.loc['dense', 'code']:.3f}, below the "
                     f"best SAE's codes ({best}, {st.loc[best, 'code']:.3f}), which real CLIP never shows. The reason "
                     "is how weak the synthetic classes are (`mmsae.eval.geometry.class_structure`, notebook 01): the "
                     f"class means explain {ss['between_class_share_x']:.2f} of the image variance and "
                     f"{ss['between_class_share_y']:.2f} of the caption variance, against "
                     f"{rs['between_class_share_x']:.2f} and {rs['between_class_share_y']:.2f} for the real labelled "
                     f"items, while a class's image and caption directions agree about as well in both "
                     f"(centred class-mean cosine {ss['class_mean_cosine']:.2f} synthetic, "
                     f"{rs['class_mean_cosine']:.2f} real). A synthetic sample carries its class as one of about ten "
                     "concepts, plus private and noise components the dense cosine cannot ignore; a TopK code keeps "
                     "the few strongest concepts and drops the rest, so codes classify better than the raw space. "
                     "Real CLIP's labelled items are dominated by their class, so the dense space is already near "
                     "its ceiling and an SAE can only lose accuracy, least when its latents are shared.")
    return text


def names_section() -> str:
    real_res = _real_results()
    rows, parts = {}, []
    for label, res in (("real CLIP", real_res), ("synthetic", RES)):
        f = res / "name_agreement.csv"
        if not f.exists():
            continue
        parts.append(label)
        for _, r in pd.read_csv(f).iterrows():
            row = rows.setdefault(r["model"], {"model": r["model"]})
            row[f"agreement: {label}"] = f"{r['agreement_mean']:.3f} ± {r['agreement_mean_std']:.3f}"
            row[f"chance: {label}"] = _fmt(float(r["agreement_chance"]))
            row[f"shares a word: {label}"] = _fmt(float(r["agreement_any"]), 2)
            row[f"named 'both' latents: {label}"] = _fmt(float(r["n_named_both"]), 0)
    if not rows:
        raise FileNotFoundError(2, "missing", str(real_res / "name_agreement.csv"))
    verdicts = []
    for label, res in (("real CLIP", real_res), ("synthetic", RES)):
        f = res / "name_agreement.csv"
        if f.exists():
            a = pd.read_csv(f).sort_values("agreement_mean", ascending=False).reset_index(drop=True)
            top, nxt = a.iloc[0], a.iloc[1]
            gap = top["agreement_mean"] - nxt["agreement_mean"]
            clear = gap > top["agreement_mean_std"] + nxt["agreement_mean_std"]
            verdicts.append(f"{label}: {top['model']} agrees most ({top['agreement_mean']:.3f}; next {nxt['model']} "
                            f"{nxt['agreement_mean']:.3f}, " + ("a gap larger than their seed stds" if clear else
                                                               "within their seed stds: not separated") +
                            f"); the lowest method's mean is {a['agreement_mean'].min():.3f}, the chance level at most "
                            f"{a['agreement_chance'].max():.3f}")
    return ("Latents that fire on both modalities, named from their image side (the captions of the images they "
            "fire on) and their text side (the captions they fire on): the share of the top-5 image-side words "
            "that are also top-5 text-side words (mean ± std over seeds), its chance level (the two sides of "
            "different latents), and the share sharing at least one word. Real CLIP: the COCO captions; synthetic: "
            "the names of the true concepts. From `results/clip_vitb16_coco500/name_agreement.csv` and "
            "`results/name_agreement.csv`.\n\n" + _md(pd.DataFrame(list(rows.values())))
            + "\n\n" + "; ".join(verdicts) + ".")


def concepts_section() -> str:
    naming = pd.read_csv(RES / "concept_naming.csv")
    probe = pd.read_csv(RES / "probe_decomposition.csv")
    hit = probe.groupby("model", sort=False).agg(found=("watch_in_top5", "mean"), rank=("watch_rank", "median"))
    rows = []
    for i, r in naming.iterrows():
        row = {"model": r["model"], "naming accuracy": _pm(naming.iloc[[i]], "naming_accuracy")[0],
               "latents named": _fmt(float(r["n_named"]), 0)}
        if r["model"] in hit.index:
            row["probe: correlated concept in top 5"] = _fmt(float(hit.loc[r["model"], "found"]), 2)
            row["probe: its median rank"] = _fmt(float(hit.loc[r["model"], "rank"]), 1)
        rows.append(row)
    return (f"Synthetic data; vocabulary = the true concepts' text directions. A latent alive on the held-out pairs is "
            f"named correctly when its closest word is the concept its activations track. Probe: a logistic "
            f"regression for {probe['probe_class'].iloc[0]} on image embeddings, decomposed over each model's image "
            f"atoms; the generator makes {probe['correlated'].iloc[0]} co-occur with that class (the paper's "
            "\"blond hair\" / \"woman\"). Fraction of seeds whose 5 top named atoms include it, and its median rank "
            "(0: not among the candidates). From `results/concept_naming.csv`, `results/probe_decomposition.csv`."
            "\n\n" + _md(pd.DataFrame(rows)))


def comparison_section() -> str:
    f = RES / "comparison_full.csv"
    if not f.exists():
        return "_Not generated yet: run `./run_all.sh`._"
    from mmsae.study.tables import header

    df = pd.read_csv(f)
    paper_cols = [("both", 0), ("image_only", 0), ("text_only", 0), ("dead", 0), ("mms_img_txt_mean_alive", 3),
                  ("code_x2y_R@1", 3)] + [(c, 3) for c in df.columns if c.startswith("zs_") and c.endswith("_code")]
    field_cols = [("explained_variance_x", 3), ("explained_variance_y", 3), ("shrinkage_x", 3), ("shrinkage_y", 3),
                  ("dense_latents", 3), ("seed_stability_cos", 3), ("seed_stability_share", 3)]
    field_cols += [(c, 3) for c in ("gt_recovery_mean", "gt_collapse_rate") if c in df]
    tabs = []
    for cols in (paper_cols, field_cols):
        out = pd.DataFrame({"model": df["model"]})
        for c, dg in cols:
            if c in df:
                out[header(c)] = _pm(df, c, dg)
        tabs.append(_md(out))
    n = json.loads((RES / "comparison_meta.json").read_text()) if (RES / "comparison_meta.json").exists() else {}
    head = ("Mean ± std over seeds (from `results/comparison_full.csv`, which has every metric). The paper's "
            "metrics: categories (counts of latents), MMS, retrieval and zero-shot through the codes")
    if n:
        head += f"; {', '.join(f'{k}: {v}' for k, v in n.items())}"
    return (head + ".\n\n" + tabs[0] + "\n\nWhat SAE evaluation reports beside them (SAEBench): explained variance "
            "about the mean, shrinkage (relative reconstruction bias, 1 = none), dense latents (firing on more than a "
            "tenth of the inputs), seed stability (two seeds' decoder atoms matched one to one: mean cosine, share "
            "above 0.9) and, on synthetic data, recovery of the true atoms.\n\n" + tabs[1] + _disagreement(df)
            + ("\n\nThe sparsity-fidelity trade-off (synthetic study, K sweep, `results/pareto_k.csv`): explained "
               "variance against the active latents per input, beside a PCA with as many directions.\n\n"
               "![explained variance against L0, with the PCA baseline](../figures/pareto_k.png)"
               if (ROOT / "figures" / "pareto_k.png").exists() else ""))


def _disagreement(df: pd.DataFrame) -> str:
    """Where the field's metrics rank the methods otherwise than the paper's "both": generated sentences."""
    both = "both_min1" if "both_min1" in df else "both"
    if both not in df or "seed_stability_cos" not in df or df["seed_stability_cos"].isna().all():
        return ""
    d = df.set_index("model")
    n, top = len(d), d[both].idxmax()
    ev = (d["explained_variance_x"] + d["explained_variance_y"]) / 2
    stab = d["seed_stability_cos"].rank(ascending=False)
    shr = (d["shrinkage_x"] - 1).abs().rank() if "shrinkage_x" in d else None
    parts = [f"{int(stab[top])} of {n} in seed stability ({d.loc[top, 'seed_stability_cos']:.3f}; most stable "
             f"{d['seed_stability_cos'].idxmax()}, {d['seed_stability_cos'].max():.3f})"]
    if shr is not None:
        parts.append(f"{int(shr[top])} of {n} in shrinkage (image side {d.loc[top, 'shrinkage_x']:.3f}; nearest 1: "
                     f"{(d['shrinkage_x'] - 1).abs().idxmin()})")
    parts.append(f"{int(ev.rank(ascending=False)[top])} of {n} in explained variance (best {ev.idxmax()}, "
                 f"{ev.max():.3f}, images and captions averaged)")
    return (f"\n\nWhere the field's metrics and the paper's disagree: {top} has the most latents on both modalities "
            "but ranks " + ", ".join(parts) + ".")


def paperscale_section() -> str:
    """The paper-scale run (scripts/paper_scale.py): its tables beside the paper's Fig. 3 counts and the
    smoke run's, and its measured wall times and peak memory (docs/paper_scale.json)."""
    big_res = RunPaths(ROOT, "paper", DEFAULT_DATA).results
    big, syn = _headline(big_res), _headline(RES)
    if big is None:
        raise FileNotFoundError(2, "missing", str(big_res / "headline.json"))
    pp = paper.neuron_categories().set_index("model")
    gt = pd.read_csv(big_res / "ground_truth.csv").set_index("model") if (big_res / "ground_truth.csv").exists() else None
    rows = []
    for name in big["models"]:
        m = big["models"][name]["m"]
        row = {"model": name,
               "both / img-only / txt-only / dead: paper": ("{:.2f} / {:.2f} / {:.2f} / {:.2f}".format(
                   *(pp.loc[name, c] / 8192 for c in ("both", "image_only", "text_only", "dead")))
                   if name in pp.index else "–"),
               "both / img-only / txt-only / dead: paper scale (ours)": " / ".join(
                   _cell(big, name, c, frac_of_m=True) for c in ("both", "image_only", "text_only", "dead")),
               "both, any firing: paper scale": _cell(big, name, "both_min1", frac_of_m=True),
               "both / dead: smoke": (_cell(syn, name, "both", frac_of_m=True) + " / "
                                      + _cell(syn, name, "dead", frac_of_m=True)) if syn else "–",
               "unimodal share: paper scale / smoke": (_cell(big, name, "unimodal_share") + " / "
                                                       + _cell(syn, name, "unimodal_share")),
               "MMS img-txt": _cell(big, name, "mms_img_txt_mean_alive", 3),
               "R@1 img→txt (codes)": _cell(big, name, "code_x2y_R@1", 3)}
        for k in [c for c in big["models"][name] if c.startswith("zs_") and c.endswith("_code")]:
            row[f"zero-shot {k[3:-5]} (codes)"] = _cell(big, name, k, 3)
        if gt is not None and name in gt.index:
            row["atom recovery"] = _fmt(float(gt.loc[name, "gt_recovery_mean"]))
        rows.append(row)
    text = (f"{_rule_note(big, '**Paper scale (ours)**')}; {int(round(m))} latents, K = 32, 25,000 steps x 128 pairs, "
            "lambda 0.05, mask rate 0.2, one seed; fractions of the dictionary (the paper's counts / 8192). "
            "From `results/paper-synthetic/`.\n\n" + _md(pd.DataFrame(rows)))
    text += _firing_text(big_res, big)
    f = ROOT / "docs" / "paper_scale.json"
    if f.exists():
        rec = json.loads(f.read_text())
        nbs = rec["notebooks"]
        text += ("\n\nMeasured end to end on " + rec["machine"].split(", OMP_NUM_THREADS")[0]
                 + " (`scripts/paper_scale.py`, each notebook its own "
                 "process): " + ", ".join(f"{r['notebook']} {r['wall_s'] / 60:.1f} min (peak {r['peak_rss_gib']:.1f} GiB, "
                                          f"load {r['load_before']:.2f})" for r in nbs)
                 + f"; {sum(r['wall_s'] for r in nbs) / 60:.0f} min in all.")
        text += _step_text(rec)
    return text


def _firing_text(big_res: Path, big: dict) -> str:
    """What the paper-scale run shows: the generator's regime (``firing_profile.csv``: true concepts
    per embedding and in all, against K and m), the SAE's row against the calibration targets
    (``scripts/calibrate_generator.py``), and where each rung's firings go."""
    fb = big_res / "firing_profile.csv"
    if not fb.exists():
        return ""
    b = pd.read_csv(fb).set_index("model")
    names = list(b.index)
    if "true_per_sample" not in b:
        return ""
    pp = paper.neuron_categories().set_index("model")
    sae = big["models"].get(M.SAE)
    text = ("\n\n**What this run shows.** The calibrated generator puts "
            f"{b['true_per_sample'].iloc[0]:.1f} true concepts in an embedding on average, with "
            f"K = {int(round(b['firings_per_sample'].max()))} latents firing on each, and has "
            f"{int(b['n_true_concepts'].iloc[0])} true concepts for {int(b['m'].iloc[0])} latents (`firing_profile.csv`).")
    if sae is not None and "image_only_min1" in sae:  # (a run from before the any-firing columns has none)
        cg = _calibration()
        m = sae["m"]
        vals = {"never_fires": sae["dead_min1"] / m, "both_any": sae["both_min1"] / m,
                "image_only_any": sae["image_only_min1"] / m, "text_only_any": sae["text_only_min1"] / m}
        zsd = next((v for k, v in sae.items() if k.startswith("zs_") and k.endswith("_dense")), None)
        zsc = next((v for k, v in sae.items() if k.startswith("zs_") and k.endswith("_code")), None)
        if zsd is not None:
            vals["zs_dense"] = zsd
        paper_of = {"never_fires": pp.loc["SAE", "dead"] / 8192, "both_any": pp.loc["SAE", "both"] / 8192,
                    "image_only_any": pp.loc["SAE", "image_only"] / 8192, "text_only_any": pp.loc["SAE", "text_only"] / 8192,
                    "zs_dense": paper.zero_shot_clip().set_index("model").loc["dense CLIP", "cifar10"]}
        met, missed = [], []
        for k, v, ok in cg.target_verdicts({**vals, **({"zs_code": zsc} if zsc is not None and zsd is not None
                                                        else {})}):
            if k in cg.TARGETS:
                lo, hi = cg.TARGETS[k]
                item = f"{k.replace('_any', '').replace('_', ' ')} {v:.2f} (target {lo:g}-{hi:g}; paper {paper_of[k]:.2f})"
            else:
                item = f"codes {'below' if ok else 'above'} dense in zero-shot ({zsc:.2f} vs {zsd:.2f})"
            (met if ok else missed).append(item)
        text += (" The SAE against the calibration targets (the paper's SAE row; [docs/calibration.md]"
                 "(calibration.md)): " + ("met: " + "; ".join(met) if met else "none met")
                 + (". Missed: " + "; ".join(missed) if missed else "") + ".")
    never = ", ".join(f"{n} {100 * b.loc[n, 'never']:.0f}%" for n in names)
    top = ", ".join(f"{n} {100 * b.loc[n, 'top10_share']:.0f}%" for n in names)
    dead_paper = ", ".join(f"{n} {100 * pp.loc[n, 'dead'] / 8192:.0f}%" for n in names if n in pp.index)
    text += (f" Never firing on the held-out pairs: {never} (the paper: {dead_paper}). The 10% most-firing latents "
             f"take {top} of all firings.")
    return text


def _step_text(rec: dict) -> str:
    """The measured training time against scripts/benchmark.py's extrapolation, with the step
    check that tells why (``step_check`` of docs/paper_scale.json)."""
    if rec.get("pretrained_side_by_side"):
        return ("\n\nThe models were trained side by side (`scripts/paper_scale.py --pretrain`: one process and one "
                "thread each, " + rec["pretrained_side_by_side"] + "), so their wall times measure a shared machine, "
                "not a step: the step against its GEMM floor is `scripts/benchmark.py`'s.")
    tr = {k.split("/")[0]: v for k, v in rec.get("training", {}).items() if v.get("steps") == 25_000}
    sc = {r["threads"]: r for r in rec.get("step_check", [])}
    bench = ROOT / "results" / "benchmarks.csv"
    if "MGSAE" not in tr or 2 not in sc or not bench.exists():
        return ""
    b = pd.read_csv(bench)
    g = b[(b.threads == 2) & (b.batch_pairs == 128)]
    row = lambda meth: g[g.method == meth]  # noqa: E731
    if not len(row("mgsae")) or not len(row("encoder-gemm")):
        return ""
    b_step, b_gemm = float(row("mgsae").ms_per_step.iloc[0]), float(row("encoder-gemm").ms_per_step.iloc[0])
    b_gflops = float(row("encoder-gemm").gflops.iloc[0])
    ms = 1000 * tr["MGSAE"]["wall_s"] / 25_000
    r = sc[2]
    return (f"\n\nMGSAE's 25,000 steps took {tr['MGSAE']['wall_s'] / 60:.1f} min ({ms:.0f} ms a step), against "
            f"the {25_000 * b_step / 60_000:.1f} min that `scripts/benchmark.py` extrapolates from its 2-thread step "
            f"({b_step:.1f} ms). The step check (`scripts/paper_scale.py --step-check`, {r['date']}) times the loop's "
            f"step beside its encoder GEMM in one process: the GEMM ran at "
            f"{min(r['gemm_gflops_before'], r['gemm_gflops_after']):.0f}-"
            f"{max(r['gemm_gflops_before'], r['gemm_gflops_after']):.0f} GFLOP/s, against {b_gflops:.0f} GFLOP/s in the benchmark run, and the "
            f"loop's step was {r['step_over_gemm']:.2f}x that GEMM, against {b_step / b_gemm:.2f}x in the benchmark. "
            + ("So the loop adds nothing beyond the benchmarked step; the difference is this shared machine's matrix "
               "throughput, which changes between sessions: the extrapolation holds only at the benchmark run's "
               "throughput." if r["step_over_gemm"] <= 1.1 * b_step / b_gemm else
               "So the loop's step costs more than the benchmarked one relative to the same GEMM: the gap is not only "
               "the machine's throughput."))


def steering_section() -> str:
    parts = []
    for label, res in (("Synthetic", RES), ("Real CLIP", _real_results())):
        f = res / "steering_summary.json"
        if not f.exists():
            continue
        st = json.loads(f.read_text())
        gain = pd.DataFrame(st.get("toward_at_max_strength", st.get("toward_at_max_alpha")))
        lat = pd.DataFrame(st["latents"])
        rows = []
        for name in dict.fromkeys(lat["model"]):
            row = {"model": name,
                   "latent fires on images / texts (first seed)": "{} / {}".format(
                       *lat[lat.model == name][["fires_on_images", "fires_on_texts"]].iloc[0].tolist())}
            for _, g in gain[gain.model == name].iterrows():
                row[f"gain, {g['modality']}s"] = f"{g['mean']:.3f} ± {g['std']:.3f}"
            row["moves both"] = "yes" if st["moves_both"].get(name) else "no"
            rows.append(row)
        verdicts = []
        for mod, sep in st.get("separation", {}).items():
            verdicts.append(f"{mod}s: " + (f"{sep['best']} ahead of the methods outside "
                                           f"{{{', '.join(sep['not_separated_from_best'])}}}" if sep["separates"]
                                           else "the measure does not separate the methods"))
        parts.append(f"**{label}**: concept {st['concept']} (source: {st['concept_source']}); strength = {st.get('strength', st.get('alpha'))} "
                     f"activation stds; gain = cosine increase toward the concept in the steered modality, mean ± std "
                     f"over seeds {st.get('seeds')}. Methods within the sum of their seed stds of the best are not "
                     f"ranked: {'; '.join(verdicts)}.\n\n" + _md(pd.DataFrame(rows)))
    if not parts:
        raise FileNotFoundError(2, "missing", str(RES / "steering_summary.json"))
    return "\n\n".join(parts)


def speedmachine_section() -> str:
    """The machine the benchmark summary below it was measured on, read from the benchmark's own
    rows (``results/benchmarks.csv``: its device, torch and the sgemm peak it timed per thread count)."""
    f = ROOT / "results" / "benchmarks.csv"
    if not f.exists():
        raise FileNotFoundError(2, "missing", str(f))
    b = pd.read_csv(f)
    pk = b[b["method"] == "sgemm-peak"].sort_values("threads")
    peaks = ", ".join(f"{g:.0f} GFLOP/s on {int(t)} thread{'s' if t > 1 else ''}" for t, g in zip(pk["threads"], pk["gflops"]))
    return (f"The summary below was measured on {b['device_desc'].iloc[0]} (torch {b['torch'].iloc[0]}), whose sgemm "
            f"peak the same run timed at {peaks or 'an unrecorded rate'} (`results/benchmarks.csv`, rows `sgemm-peak`). "
            "Every ratio in it depends on that machine: the floor is a GEMM, the peers spend their time differently, "
            "so a machine with another sgemm rate gives other ratios. Rerun the script to get yours.")


def runtime_section() -> str:
    """Wall times of the last default run (synthetic study, then real CLIP), from the untracked
    ``runs/smoke-<slug>/run_all.json`` files; only complete chains (no ``--only``) count."""
    parts = []
    for label, data in (("synthetic study", DEFAULT_DATA), ("real-CLIP run (500 COCO pairs)", REAL_CLIP_RUN["data"])):
        f = RunPaths(ROOT, "smoke", data).run_log
        r = json.loads(f.read_text()) if f.exists() else None
        if r and not r.get("only"):
            parts.append(f"{label} **{r['wall_time_s'] / 60:.1f} min**")
    if not parts:
        return "_Not measured yet: run `./run_all.sh`, then `scripts/update_readme.py --runtime`._"
    return ("Last `./run_all.sh` (smoke profile) on this project's 2-core reference machine: " + ", ".join(parts)
            + " (from `runs/smoke-*/run_all.json`; refreshed by `scripts/update_readme.py --runtime`).")


def _per_seed(res: Path) -> pd.DataFrame | None:
    f = res / "per_seed_metrics.csv"
    return pd.read_csv(f) if f.exists() else None


def _runs() -> dict[str, pd.DataFrame]:
    """The per-seed metrics of the three runs the front page compares, those that exist."""
    runs = {"real CLIP": _per_seed(_real_results()), "synthetic": _per_seed(RES), "paper scale": _per_seed(PAPER_RES)}
    runs = {k: v for k, v in runs.items() if v is not None}
    if "real CLIP" not in runs:
        raise FileNotFoundError(2, "missing", str(_real_results() / "per_seed_metrics.csv"))
    return runs


def _run_note(runs) -> str:
    parts = []
    for name, ps in runs.items():
        seeds = sorted(set(ps["seed"]))
        m = int(ps["m"].iloc[0])
        n = int(ps["n_val"].iloc[0]) if "n_val" in ps else "?"
        parts.append(f"**{name}**: {m} latents, {n} held-out pairs, seeds {seeds}")
    return "; ".join(parts)


def claims_section() -> str:
    runs = _runs()
    t = claims_table(runs)
    t = t.rename(columns={"claim": "claim (metric)"})
    t["claim (metric)"] = [f"{c} ({m})" for c, m in zip(t["claim (metric)"], t["metric"])]
    t = t.drop(columns="metric")
    return ("Each cell: the lower model → the higher, the change and its std over seeds. *Holds*: the paper's "
            "sign and larger than the seed spread; *within noise*: the sign but not larger; *not reproduced*: the "
            "other sign.\n\n" + _md(t) + "\n\n" + _run_note(runs) + ". The paper: CLIP ViT-B/16 on CC3M, 8192 "
            "latents; its zero-shot is CIFAR-10 (ours: classes from the COCO captions; the synthetic class concepts). "
            "\"Both\" counts a latent that fires on a modality once, the paper's rule; "
            "[docs/results.md](docs/results.md) also has a rule stable in the number of held-out pairs.\n")


def ladder_section() -> str:
    runs = _runs()
    rungs = {k: ladder_rungs(v)[0] for k, v in runs.items()}
    adds = {M.SAE: "pooled: one pre-bias for both", **{b: w for a, b, w in M.LADDER_STEPS}}
    zs_cols = {k: next((c for c in r.columns if c.startswith("zero-shot") and not c.endswith("_std")), None)
               for k, r in rungs.items()}
    rows = []
    for model in M.LADDER:
        row = {"rung": model, "adds": adds[model]}
        for label, col in (("both, any firing", "both, any firing"), ("both, scaled rule", "both, scaled rule"),
                           ("never fires", "never fires")):
            row[f"{label}: " + " / ".join(runs)] = " / ".join(
                (_fmt(float(r.set_index("model").loc[model, col]), 2) if model in set(r["model"]) else "–")
                for r in rungs.values())
        row["zero-shot (codes): " + " / ".join(runs)] = " / ".join(
            (_fmt(float(r.set_index("model").loc[model, zs_cols[k]]), 2)
             if zs_cols[k] is not None and model in set(r["model"]) else "–") for k, r in rungs.items())
        rows.append(row)
    words = []
    for name, ps in runs.items():
        st, _ = ladder_steps(ps)
        if st.empty:
            continue
        st = st.set_index("to")
        m = "both, any firing"
        part = []
        for step in M.LADDER_STEPS:
            b = step[1]
            if b not in st.index:
                continue
            r = st.loc[b]
            sd = r[f"{m}_std"]
            share = r[f"{m}_share"]
            part.append(f"{r['adds']} {r[m]:+.2f}" + ("" if sd != sd or r["seeds"] < 2 else f" ± {sd:.2f}")
                        + ("" if share != share or b == M.MASKED_SAE else f" ({100 * share:.0f}%)"))
        words.append(f"**{name}**: " + "; ".join(part))
    return ("Shares of the dictionary and zero-shot accuracy through the codes, one number per run (mean over "
            "seeds). Below: the change in \"both\" each ingredient brings (± std over seeds of the per-seed change; "
            "in brackets its part of MGSAE's change over the SAE). From `ladder.csv` and `ladder_steps.csv` of each "
            "run's results.\n\n" + _md(pd.DataFrame(rows)) + "\n\n" + "  \n".join(words))


def paperbrief_section() -> str:
    h = _headline(PAPER_RES)
    if h is None:
        raise FileNotFoundError(2, "missing", str(PAPER_RES / "headline.json"))
    pp = paper.neuron_categories().set_index("model")
    rows = []
    for name, rec in h["models"].items():
        m = rec["m"]
        inp = name in pp.index
        rows.append({"model": name,
                     "both / img-only / txt-only / dead: paper": (" / ".join(f"{pp.loc[name, c] / 8192:.2f}" for c in (
                         "both", "image_only", "text_only", "dead")) if inp else "–"),
                     "both / img-only / txt-only / never fires: ours": " / ".join(
                         _fmt(rec.get(c, float("nan")) / m, 2) for c in ("both_min1", "image_only_min1", "text_only_min1", "dead_min1")),
                     "zero-shot (codes)": _fmt(next((v for k, v in rec.items() if k.startswith("zs_") and
                                                     k.endswith("_code")), float("nan")), 2)})
    dense = next((v for k, v in next(iter(h["models"].values())).items() if k.startswith("zs_") and
                  k.endswith("_dense")), float("nan"))
    return (f"The ladder at the paper's settings (m = 8192, K = 32, 25,000 steps of 128 pairs, one seed) on synthetic "
            f"data calibrated on the pooled SAE to behave like CLIP ({h['n_val']} held-out pairs; dense zero-shot "
            f"{dense:.2f}). {_calibration_verdict()} Categories by the paper's rule.\n\n"
            + _md(pd.DataFrame(rows)) + "\n\nMore: [docs/results.md](docs/results.md#the-papers-scale-run-here).")


def _calibration():
    """scripts/calibrate_generator.py as a module (its targets, verdicts and judge records)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("calibrate_generator", ROOT / "scripts" / "calibrate_generator.py")
    cg = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cg)
    return cg


def _calibration_verdict() -> str:
    """Which of the calibration targets the judged SAE meets, from the newest judge record."""
    cg = _calibration()
    judges = cg._judge_files()
    if not judges:
        return "[docs/calibration.md](docs/calibration.md) has how it was calibrated."
    j = json.loads(judges[-1].read_text())
    words = {"never_fires": "never fires", "both_any": "both", "image_only_any": "image-only",
             "text_only_any": "text-only", "zs_dense": "dense zero-shot"}
    met, missed = [], []
    for k, v, ok in cg.target_verdicts({**j["curve"][-1], "zs_dense": j["zs_dense"], "zs_code": j["zs_code"]}):
        if k in cg.TARGETS:
            lo, hi = cg.TARGETS[k]
            (met if ok else missed).append(words[k] if ok else f"{words[k]} {v:.2f} (target {lo:g}-{hi:g})")
        else:
            (met if ok else missed).append(k if ok else f"codes {v:.2f} above dense")
    return (f"Its SAE, judged at {j['steps']:,} steps, meets {len(met)} of {len(met) + len(missed)} targets"
            + (f" (missed: {'; '.join(missed)})" if missed else "") + ": [docs/calibration.md](docs/calibration.md).")


def recipe_section() -> str:
    """The centred SAE's recipe one ingredient at a time (scripts/centring_recipe.py), real CLIP and synthetic."""
    f_real, f_syn = _real_results() / "centring_recipe.csv", RES / "centring_recipe.csv"
    if not f_real.exists():
        raise FileNotFoundError(2, "missing", str(f_real))
    real = pd.read_csv(f_real).set_index("variant")
    syn = pd.read_csv(f_syn).set_index("variant") if f_syn.exists() else None
    cols = {"both": "both (of 256)", "dead": "never fires (of 256)", "zero-shot (codes)": "zero-shot (codes)",
            "R@1 image to text (codes)": "R@1 (codes)"}
    rows = []
    for v, r in real.iterrows():
        row = {"variant": v, "what changes": r["what changes"]}
        for c, lab in cols.items():
            sd = r.get(f"{c}_std", float("nan"))
            d = 0 if c in ("both", "dead") else 2
            cell = f"{r[c]:.{d}f}" + ("" if sd != sd else f" ± {sd:.{d}f}")
            if syn is not None and v in syn.index:
                cell += f" / {syn.loc[v, c]:.{d}f}"
            row[lab] = cell
        rows.append(row)
    sh, li, fr = real.loc["shipped"], real.loc["linear_init"], real.loc["frozen"]
    zs = "zero-shot (codes)"
    text = ("Real CLIP (mean ± std over 3 seeds) / synthetic (mean), m = 256, K = 6, 1000 steps, categories by the "
            "any-firing rule; from `results/clip_vitb16_coco500/centring_recipe.csv` and `results/centring_recipe.csv` "
            "(`scripts/centring_recipe.py`).\n\n" + _md(pd.DataFrame(rows)) + "\n\n")
    text += (f"Of the ingredients tried, the initialisation accounts for the zero-shot gap between the two centred "
             f"implementations on real CLIP: drawing the encoder like `nn.Linear` (independent of the decoder, "
             f"uniform weights and bias) takes zero-shot through the codes from {sh[zs]:.2f} to {li[zs]:.2f}, but "
             f"leaves {li['dead']:.0f} of 256 latents that never fire (shipped: {sh['dead']:.0f}) and fewer in both "
             f"({li['both']:.0f} against {sh['both']:.0f})")
    if syn is not None:
        text += (f"; on synthetic data the same draw kills {syn.loc['linear_init', 'dead']:.0f} of 256 latents and "
                 f"does not raise zero-shot ({syn.loc['shipped', zs]:.2f} → {syn.loc['linear_init', zs]:.2f})")
    if "untied_unit" in real.index:
        un = real.loc["untied_unit"]
        part = (un[zs] - sh[zs]) / (li[zs] - sh[zs]) if li[zs] != sh[zs] else float("nan")
        text += (f". On real CLIP, drawing the encoder apart from the decoder is {100 * part:.0f}% of that gain: unit "
                 f"rows drawn independently (`untied_unit`) give {un[zs]:.2f} ± {un[zs + '_std']:.2f} with "
                 f"{un['dead']:.0f} latents that never fire, but {un['both']:.0f} in both")
    within = abs(fr[zs] - sh[zs]) <= fr[zs + "_std"] + sh[zs + "_std"]
    text += (f". Keeping the pre-bias at the modality means (`frozen`) gives {fr['both']:.0f} latents in both "
             f"(shipped {sh['both']:.0f}) and zero-shot {fr[zs]:.2f} ± {fr[zs + '_std']:.2f}, "
             + ("within" if within else "outside") + f" the seed spread of the shipped {sh[zs]:.2f} ± "
             f"{sh[zs + '_std']:.2f}.")
    better = [v for v in real.index if v not in ("pooled SAE", "shipped") and real.loc[v, zs] > sh[zs]
              and real.loc[v, "dead"] <= sh["dead"] and real.loc[v, "both"] >= sh["both"]
              and (syn is None or v not in syn.index or syn.loc[v, zs] >= syn.loc["shipped", zs])]
    text += (" No variant is at least as good as the shipped recipe on zero-shot, dead latents and shared latents on "
             "both data sets, so the documented default stays the TopK recipe of Gao et al. (encoder = decoder "
             "transpose, pre-bias learned from the mean), this project's choice where the paper is silent; the "
             "trade-off is this table. Not tried: an untied decoder bias, AdamW and a cosine schedule (the second "
             "implementation's other differences)." if not better else
             f" {', '.join(better)} is at least as good on zero-shot, dead and shared latents on both data sets.")
    return text


SECTIONS = {"claims": claims_section, "ladder": ladder_section, "paperbrief": paperbrief_section,
            "recipe": recipe_section,
            "categories": categories_section, "headline": headline_section, "zeroshot": zeroshot_section,
            "names": names_section, "paperscale": paperscale_section, "concepts": concepts_section, "comparison": comparison_section,
            "steering": steering_section, "speedmachine": speedmachine_section, "runtime": runtime_section}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runtime", action="store_true",
                    help="also rewrite the runtime line from runs/smoke-*/run_all.json (wall times differ between runs)")
    args = ap.parse_args(argv)
    bodies: dict[str, str] = {}
    for doc in FILES:
        text = doc.read_text()
        for name, fn in SECTIONS.items():
            if name == "runtime" and not args.runtime:
                continue
            pat = re.compile(rf"(<!-- results:{name}:begin -->\n).*?(<!-- results:{name}:end -->)", re.S)
            if not pat.search(text):
                continue
            if name not in bodies:
                try:
                    bodies[name] = fn()
                except FileNotFoundError as e:
                    bodies[name] = f"_Not generated yet ({Path(e.filename).name} missing): run `./run_all.sh`._"
            text = pat.sub(lambda mt: mt.group(1) + bodies[name] + "\n" + mt.group(2), text)
        atomic_write(doc, lambda tmp: Path(tmp).write_text(text))
        print(f"updated {doc}")


if __name__ == "__main__":
    main()
