# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     notebook_metadata_filter: -jupytext.text_representation.jupytext_version,-jupytext.text_representation.format_version
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 01 · Paired embeddings
#
# Every analysis in this project starts from **paired embeddings**: row *i* of `x` is an
# image (or audio clip) and row *i* of `y` its caption, both embedded by the same
# contrastive model (CLIP, CLAP) and L2-normalised.
#
# Sources (`data` parameter):
#
# * `synthetic` (default, offline): aligned multimodal embeddings with a known ground truth
#   (shared concepts whose image and text directions have cosine `alpha`, image-only and
#   text-only concepts, a CLIP-sized modality gap). See `mmsae.data.synthetic`.
# * `embeddings:PATH`: precomputed pairs (`.npy` of shape `(2, N, d)`, `.safetensors`,
#   `.npz` or an embedding-cache folder).
# * `clip` / `clap`: encode an image/audio-caption data set with open_clip or LAION-CLAP
#   (see `docs/real_data.md`; needs weights and data on disk).
#
# The notebook writes the train/validation split under `runs/<profile>-<data>/embeddings/`
# and a short data summary to `results/data_summary.json`.

# %% tags=["parameters"]
profile = "smoke"  # "smoke" (fast, CI) or "paper" (the paper's settings)
data = "synthetic"  # synthetic | embeddings:PATH | clip | clap
out_dir = ".."  # project root: runs/, results/, figures/ are created below it
seed = 0
alpha = None  # synthetic: cosine between a concept's image and text direction (profile default)
n_pairs = None  # synthetic: number of pairs (profile default)
val_fraction = None  # held-out fraction when the source has no validation split
extract_options = {}  # clip/clap: train_source, val_source, zeroshot_cifar10, clip_model, ... (docs/real_data.md)
caption_classes_min_train = 8  # real data with captions: a class needs this many single-label training pairs
caption_prompts = "train"  # "train": mean text embedding of a class's training pairs; "templates": "a photo of a
# {class}." through the data's CLIP text encoder (extract_options clip_model / clip_pretrained; weights on disk)

# %%
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from IPython.display import Markdown, display

from mmsae.eval import metrics
from mmsae.study import findings, plots
from mmsae.data import load_paired
from mmsae.study.profiles import get_profile
from mmsae.study.runs import RunPaths, write_json
from mmsae.data.synthetic import config_from_profile, make_synthetic

P = get_profile(profile, alpha=alpha, n_pairs=n_pairs, val_fraction=val_fraction)
paths = RunPaths(Path(out_dir).resolve(), profile, data).ensure()
plots.set_style()

# %% [markdown]
# ## Build or load the pairs

# %%
if data == "synthetic":
    cfg = config_from_profile(P, seed=seed)  # every generator key of the profile, incl. its correlated concept
    synth = make_synthetic(cfg)
    perm = np.random.default_rng(seed).permutation(cfg.n_pairs)
    n_val = int(round(cfg.n_pairs * P["val_fraction"]))
    tr_idx, va_idx = np.sort(perm[n_val:]), np.sort(perm[:n_val])
    train, val = synth.pairs.subset(tr_idx), synth.pairs.subset(va_idx)
    train.save(paths.train_pairs)
    val.save(paths.val_pairs)
    synth_val = synth.subset(va_idx)
    synth_val.save_truth(paths.truth)  # ground truth of the held-out pairs (MMS reference, recovery)
    zs = synth_val.zero_shot_set("synthetic_classes")
    zs.save(paths.embeddings / "zeroshot_synthetic_classes.safetensors")
    paths.write_sources(paths.train_pairs, paths.val_pairs, truth=paths.truth)
elif data.startswith("embeddings:") or data in ("clip", "clap"):
    from mmsae.embed.extract import extract_from_params

    got = extract_from_params(data, {**dict(extract_options), "seed": seed}, paths.embeddings / "cache")
    train, val = got["train"].validate(expect_normalized=True), got["val"]
    from mmsae.data import check_validation_pairs

    check_validation_pairs(train, val)  # val_source: same d as the training pairs, unit norm, finite
    if val is None:  # no validation source given: hold out a seeded random split
        train, val = train.split(P["val_fraction"], seed=seed)
        train.save(paths.train_pairs)
        val.save(paths.val_pairs)
        paths.write_sources(paths.train_pairs, paths.val_pairs)
    else:
        paths.write_sources(train.source, val.source)
    for name, zs in got["zeroshot"].items():
        zs.save(paths.embeddings / f"zeroshot_{name}.safetensors")
else:
    raise ValueError(f"unknown data source {data!r}: use synthetic, embeddings:PATH, clip or clap")

MIN_PAIRS = 50  # below this no SAE comparison is meaningful (and 05's label-free clusters need ~5 captions each)
if len(train) + len(val) < MIN_PAIRS or len(val) < 10:
    from mmsae.data import EmbeddingError

    raise EmbeddingError(f"{train.source}: {len(train)} training and {len(val)} held-out pairs; the notebooks need at "
                         f"least {MIN_PAIRS} pairs in all and 10 held-out pairs (pass more pairs, or a larger "
                         f"val_fraction)")
print(f"train: {len(train)} pairs, val: {len(val)} pairs, d = {train.dim}")
print("captions:", "none (names, the caption zero-shot set and named steering are skipped)" if val.captions is None
      else f"{sum(map(len, val.caption_lists()))} for the {len(val)} held-out pairs "
      f"({Path(str(val.meta.get('captions_file'))).name})")

# %% [markdown]
# ## Zero-shot classes from captions (real data)
#
# Real pairs carry captions, not labels. `mmsae.data.caption_labels` derives them: an item
# is labelled with a class when at least 3 of its captions (COCO: 5 per image) name that
# class (COCO's 80 object classes with plurals and synonyms, plus a few scene words) and no
# other class reaches 3; the classes are those with at least `caption_classes_min_train`
# such *training* pairs. Each class's prompt is the normalised mean text embedding of its
# training pairs (no held-out caption builds a class; no text encoder is needed offline),
# or, with `caption_prompts="templates"`, the paper's "a photo of a {class}." through the
# CLIP text encoder. The test items are the labelled held-out images. Notebook 04 measures
# zero-shot accuracy through every SAE on this set (`zs_caption_classes_*`).

# %%
from mmsae.data.caption_labels import CAPTION_ZERO_SHOT, caption_zero_shot_set, template_class_embeddings

cap_zs_file = paths.embeddings / f"zeroshot_{CAPTION_ZERO_SHOT}.safetensors"
cap_zs_file.unlink(missing_ok=True)  # a set left by an earlier run with other captions must not be read as this one's
if data != "synthetic":
    emb_fn = None
    if caption_prompts == "templates":
        from mmsae.embed.extract import make_encoder

        enc = make_encoder("clip", **{k: v for k, v in dict(extract_options).items() if k.startswith("clip_")})
        emb_fn = lambda names: template_class_embeddings(names, enc.encode_texts)  # noqa: E731
    elif caption_prompts != "train":
        raise ValueError(f"caption_prompts={caption_prompts!r}: use 'train' or 'templates'")
    cap_zs = caption_zero_shot_set(train, val, min_train=caption_classes_min_train, class_emb_fn=emb_fn)
    if cap_zs is not None:
        cap_zs.save(cap_zs_file)
        print(f"{cap_zs.name}: {len(cap_zs.class_names)} classes, {len(cap_zs.labels)} labelled held-out images "
              f"({cap_zs.meta['prompts']})")
        display(pd.DataFrame({"train pairs": cap_zs.meta["n_train_per_class"],
                              "held-out images": cap_zs.meta["n_val_per_class"]}).sort_values("held-out images",
                                                                                              ascending=False).head(12))

# %% [markdown]
# ## What the space looks like
#
# Two numbers characterise an aligned multimodal space: the **modality gap** (distance
# between the modality means; 0.85 for CLIP ViT-B/16 on COCO) and how well a caption
# retrieves its image by plain cosine (the dense ceiling every SAE is compared to).
#
# `mmsae.eval.geometry.embedding_geometry` adds the rest of the picture: how far each modality
# sits in its cone (norm of its mean), the cosine between the two means, matched- and
# random-pair cosines before and after centring, the overlap of the top-20 principal
# subspaces of image and text, the per-sample variance and the effective rank. The table
# `geometry` sets these beside the same statistics of 500 real CLIP ViT-B/16 COCO pairs
# (`data/clip_vitb16_coco500.npy`), on the same number of pairs (the first `n` of each):
# the synthetic default is calibrated so that every statistic is within 15 % (0.05
# absolute below 0.3) of real CLIP.

# %%
from mmsae.eval.geometry import COUNT_KEYS, GEOMETRY_LABELS, REAL_CLIP_REFERENCE, compare_geometry, embedding_geometry, \
    real_clip_geometry
from mmsae.study.runs import write_table

xv, yv = np.asarray(val.x), np.asarray(val.y)
n_ret = min(len(val), 1000)
geometry = embedding_geometry(xv, yv, top=min(20, len(val) - 1, train.dim), retrieval_pool=n_ret)
summary = {
    "profile": profile, "data": data, "n_train": len(train), "n_val": len(val), "d": train.dim,
    "modality_gap": float(np.linalg.norm(xv.mean(0) - yv.mean(0))),
    "pair_cosine": float((xv * yv).sum(1).mean()),
    "random_pair_cosine": float((xv * np.roll(yv, 1, axis=0)).sum(1).mean()),
    **{f"dense_{k}": v for k, v in metrics.cross_modal_retrieval(xv[:n_ret], yv[:n_ret]).items()},
    "retrieval_pool": n_ret,
    "geometry": geometry,  # every held-out pair (R@1 on the first retrieval_pool)
}

# beside real CLIP on the same number of pairs (statistics such as R@1 and effective rank depend on it)
n_cmp = min(len(val), 500)
ours_cmp = embedding_geometry(xv[:n_cmp], yv[:n_cmp], top=min(20, n_cmp - 1, train.dim))
if REAL_CLIP_REFERENCE.is_file():
    cmp = compare_geometry(ours_cmp, real_clip_geometry(top=ours_cmp["top"], n=n_cmp))
    geo_table = pd.DataFrame({"statistic": cmp["statistic"].map(GEOMETRY_LABELS), "this data": cmp["ours"],
                              "real CLIP": cmp["reference"], "rel. difference": cmp["rel_diff"],
                              "tolerance": cmp["tolerance"], "within": cmp["within"]})
    summary["geometry_vs_real_clip"] = {
        "n_pairs": n_cmp, "n_within": int(cmp["within"].sum()), "n_statistics": len(cmp),
        "all_within": bool(cmp["within"].all()), "outside": cmp.loc[~cmp["within"], "statistic"].tolist()}
    caption = (f"Embedding geometry of the first {n_cmp} held-out pairs beside {n_cmp} real CLIP ViT-B/16 "
               "COCO pairs; within: 15\\% relative difference (0.05 absolute where the real value is below 0.3).")
else:
    print(f"{REAL_CLIP_REFERENCE.name}: not found, so the geometry is shown without the real-CLIP reference")
    keys = [k for k in ours_cmp if k not in COUNT_KEYS]
    geo_table = pd.DataFrame({"statistic": [GEOMETRY_LABELS[k] for k in keys], "this data": [ours_cmp[k] for k in keys]})
    caption = f"Embedding geometry of the first {n_cmp} held-out pairs."
write_table(geo_table, "geometry", paths.results, caption=caption)

# what zero-shot accuracy rests on: how much of each modality's variance the classes explain, and how well a
# class's image and caption directions agree (mmsae.eval.geometry.class_structure), per zero-shot set
from mmsae.data import ZeroShotSet
from mmsae.eval.geometry import class_structure

summary["zero_shot_structure"] = {}
for f in sorted(paths.embeddings.glob("zeroshot_*.safetensors")):
    zs = ZeroShotSet.load(f)
    rows = zs.meta.get("val_rows", list(range(len(val))) if len(zs.emb) == len(val) else None)
    if rows is not None:
        summary["zero_shot_structure"][zs.name] = class_structure(zs.emb, yv[np.asarray(rows, int)], zs.labels)
write_json(summary, paths.results / "data_summary.json")
if summary["zero_shot_structure"]:
    display(pd.DataFrame(summary["zero_shot_structure"]).T.round(3))
geo_table.round(3)

# %%
from sklearn.decomposition import PCA

pcs = PCA(2, random_state=seed).fit_transform(np.concatenate([xv[:2000], yv[:2000]]))
n = min(len(xv), 2000)
fig, axes = plt.subplots(1, 2, figsize=(7.5, 3.2))
axes[0].scatter(*pcs[:n].T, s=3, alpha=0.5, label=val.modalities[0], color=plots.model_color("SAE"))
axes[0].scatter(*pcs[n:].T, s=3, alpha=0.5, label=val.modalities[1], color=plots.model_color("MGSAE"))
axes[0].set(title="PCA of the embeddings", xlabel="PC1", ylabel="PC2")
axes[0].legend(markerscale=4, frameon=False)
axes[1].hist((xv * yv).sum(1), bins=50, alpha=0.7, label="matched pairs")
axes[1].hist((xv * np.roll(yv, 1, axis=0)).sum(1), bins=50, alpha=0.7, label="random pairs")
axes[1].set(title="image-text cosine", xlabel="cosine", ylabel="count")
axes[1].legend(frameon=False)
fig.tight_layout()
plots.save_figure(fig, "data_overview", paths.figures);

# %% [markdown]
# ## What this run shows

# %%
zs_sets = {f.stem[len("zeroshot_"):]: ZeroShotSet.load(f) for f in sorted(paths.embeddings.glob("zeroshot_*.safetensors"))}
Markdown(findings.extract(len(train), len(val), train.dim, data, profile, zs_sets,
                          geo_table if "within" in geo_table else None, summary))
