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
# # 05 · Steering with one latent
#
# Take samples that do **not** carry a concept, add $s\,\sigma_i$ to the concept's latent $i$
# in their codes ($s$: the steering strength; $\sigma_i$: the latent's activation std on held-out codes),
# decode, and measure
#
# * **toward**: the gain in cosine, relative to $s = 0$, to the concept's embeddings
#   *in the same modality* (mean image embedding of the pairs that carry the concept when
#   steering images, mean caption embedding when steering captions);
# * **toward_captions**: the gain toward the concept's captions, the paper's measure (for
#   images it also rewards crossing the modality gap, so we report both);
# * **kept**: cosine of the steered embedding to the original.
#
# We steer image codes and text codes with the *same* latent. In a split dictionary the
# concept's latent belongs to one modality, so steering the other modality with it does
# little; a shared latent (GSAE/MGSAE) should move both. On synthetic data the concept is
# known (class concept `concept`); on real data with captions it is a **named** class
# (by default the class with the most labelled held-out pairs, labelled from the captions
# as in notebook 01); with labels only, the class prompt `concept` of the first zero-shot
# set; on data without either, a cluster of the caption embeddings. Every trained seed is
# steered, so a difference between methods is only called one when it exceeds the spread
# over seeds.

# %% tags=["parameters"]
profile = "smoke"
data = "synthetic"
out_dir = ".."
models = None
comparison_seeds = None  # seeds trained by notebooks 02 and 03 (profile default; smoke: 0, 1, 2)
seeds = None  # trained seeds to steer (default: every comparison seed)
concept = None  # synthetic: concept index (None: 0); captions: class name or index (None: best-populated class);
# zero-shot set: class index (None: 0); otherwise caption cluster index (None: 0)
n_clusters = 8  # label-free data (no truth, no zero-shot set): k-means clusters of the held-out captions
strengths = None  # steering strengths s, in units of the latent's std (profile default)
n_samples = None  # samples without the concept to steer (profile default)

# %%
from pathlib import Path

import numpy as np
import pandas as pd

from IPython.display import Markdown, display

from mmsae.study import findings, plots
from mmsae.eval import steering
from mmsae.models import load_model
from mmsae.models.registry import encodes_pairs
from mmsae.study.profiles import get_profile
from mmsae.study.runs import RunPaths, load_run_data, write_json, write_table

P = get_profile(profile, comparison_seeds=comparison_seeds, steer_strengths=strengths, steer_samples=n_samples)
SEEDS = list(seeds if seeds is not None else P["comparison_seeds"])
paths = RunPaths(Path(out_dir).resolve(), profile, data).ensure()
train, val, truth, zero_shot = load_run_data(paths)
plots.set_style()
names = list(models or P["methods"])
pair_only = [n for n in names if encodes_pairs(n)]  # a crosscoder has no code of a lone image or caption
names = [n for n in names if n not in pair_only]
missing = [f"{n} (seed {s})" for n in names for s in SEEDS if not (paths.model_dir(n, s) / "config.json").exists()]
if missing:
    raise FileNotFoundError(f"not trained in {paths.root / 'models'}: {', '.join(missing)}. Run notebooks "
                            f"02_train_baseline and 03_train_group_sparse first with profile={profile!r}, "
                            f"data={data!r} (./run_all.sh --only 02,03 with the same --profile/--data)")
x, y = np.asarray(val.x), np.asarray(val.y)

# %% [markdown]
# ## The concept: who carries it, and where it points
#
# `mmsae.eval.steering.choose_concept` uses the best information the run has: the synthetic
# ground truth (true concept `concept`); else, with held-out captions and notebook 01's
# caption classes, a named class (`mmsae.eval.steering.caption_concept`: the pairs labelled
# with it carry it, the pairs none of whose captions name it are steered); else class
# `concept` of the first zero-shot set; else, for a user's embeddings without labels, a
# **label-free concept**: cluster `concept` of a k-means clustering (`n_clusters`) of the
# held-out caption embeddings (after removing their mean).

# %%
if pair_only:
    display(Markdown(f"*Not steered: {', '.join(pair_only)} (it encodes an image and its caption together, so a "
                     "lone embedding has no code to steer).*"))
C = steering.choose_concept(x, y, truth=truth, zero_shot=zero_shot, concept=concept, n_clusters=n_clusters,
                            seed=SEEDS[0], captions=val.caption_lists())
Markdown(f"The concept: **{C.name}** ({C.source}).")

# %%
rows, chosen = [], []
for name in names:
    for s in SEEDS:
        model = load_model(paths.model_dir(name, s))
        z_x, z_y = model.encode_numpy(x, 0), model.encode_numpy(y, 1)
        latent = C.pick_latent(model, z_x, z_y)
        if C.free is not None:
            without = C.free
        elif C.carries is not None:
            without = ~C.carries
        else:
            without = (z_x[:, latent] <= 0) & (z_y[:, latent] <= 0)
        idx = steering.steering_samples(without, P["steer_samples"], seed=s)
        sigma = steering.latent_std(np.concatenate([z_x, z_y]), latent)
        chosen.append({"model": name, "seed": s, "latent": latent, "sigma": sigma,
                       "fires_on_images": int((z_x[:, latent] > 0).sum()),
                       "fires_on_texts": int((z_y[:, latent] > 0).sum()), "n_steered": int(len(idx))})
        for modality, u in ((0, x), (1, y)):
            for r in steering.steering_curve(model, u[idx], modality, latent, P["steer_strengths"], sigma,
                                             C.targets[modality], caption_target=C.caption_target):
                rows.append({"model": name, "seed": s, "modality": val.modalities[modality], **r})
per_seed_curves = pd.DataFrame(rows)
curves = per_seed_curves.groupby(["model", "modality", "strength"], sort=False)[["toward", "toward_captions", "kept"]] \
    .agg(["mean", "std"]).reset_index()
curves.columns = [a if b in ("", "mean") else f"{a}_{b}" for a, b in curves.columns]
chosen = pd.DataFrame(chosen)
chosen[["model", "seed", "latent", "fires_on_images", "fires_on_texts", "n_steered"]].query("seed == @SEEDS[0]")

# %% [markdown]
# ## Steering curves
# Mean over seeds (bands: $\pm 1$ std over seeds).

# %%
write_table(curves, "steering", paths.results, caption=f"Steering toward {C.name}: cosine gain toward the "
            "concept (same modality; and toward its captions) and similarity kept to the original, per modality "
            f"and steering strength; mean $\\pm$ std over seeds {SEEDS}.")
write_table(per_seed_curves, "steering_per_seed", paths.results, latex=False)
title = f"Steering toward {C.name}: {findings.short_data_name(data, profile)}"
plots.save_figure(plots.plot_steering(curves, title=title), "steering", paths.figures);

# %% [markdown]
# ## Does one latent move both modalities, and does the measure separate the methods?
# At the largest strength, the cosine gain toward the concept (same modality) for image codes
# and for text codes. We call a latent one that "moves both" when both gains exceed 0.05.
# Two methods are **separated** on a modality when their mean gains differ by more than
# the sum of their standard deviations over seeds; methods not separated from the best are
# listed with it, and no ranking is claimed among them.

# %%
top = per_seed_curves[per_seed_curves.strength == max(P["steer_strengths"])]
gain = top.groupby(["model", "modality"])["toward"].agg(["mean", "std"]).reset_index()
both = gain.pivot(index="model", columns="modality", values="mean").loc[names]
both["moves_both"] = both.min(axis=1) > 0.05
separation, lines = {}, []
for mod, g in gain.groupby("modality"):
    g = g.set_index("model").loc[names].sort_values("mean", ascending=False)
    best = g.index[0]
    tied = [m for m in g.index if g.loc[best, "mean"] - g.loc[m, "mean"] <= g.loc[best, "std"] + g.loc[m, "std"]]
    separation[mod] = {"best": best, "not_separated_from_best": tied,
                       "separates": len(tied) < len(g),
                       "spread_of_means": float(g["mean"].max() - g["mean"].min()),
                       "mean_seed_std": float(g["std"].mean())}
    verdict = (f"{best} is ahead of {', '.join(m for m in g.index if m not in tied)}" if len(tied) < len(g)
               else "the measure does not separate the methods")
    lines.append(f"* steering {mod}s toward {C.name} at strength {max(P['steer_strengths'])}: gains "
          + ", ".join(f"{m} {g.loc[m, 'mean']:.3f} ± {g.loc[m, 'std']:.3f}" for m in g.index)
          + f"; not separated from the best: {', '.join(tied)}; {verdict}")
write_json({"concept": C.name, "concept_source": C.source, "strength": max(P["steer_strengths"]), "seeds": SEEDS,
            "latents": chosen.to_dict(orient="records"),
            "toward_at_max_strength": gain.to_dict(orient="records"),
            "moves_both": both["moves_both"].to_dict(), "separation": separation},
           paths.results / "steering_summary.json")
display(Markdown("\n".join(lines)))
both.round(3)

# %% [markdown]
# ## What this run shows

# %%
Markdown(findings.steering(gain, separation, C.name, max(P["steer_strengths"]), data, profile))
