# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 05 · Steering with one latent
#
# Take samples that do **not** carry a concept, add $\alpha\,\sigma_i$ to the concept's
# latent $i$ in their codes ($\sigma_i$: the latent's activation std on held-out codes),
# decode, and measure
#
# * **toward**: the gain in cosine, relative to $\alpha = 0$, to the concept's embeddings
#   *in the same modality* (mean image embedding of the pairs that carry the concept when
#   steering images, mean caption embedding when steering captions);
# * **toward_captions**: the gain toward the concept's captions, the paper's measure (for
#   images it also rewards crossing the modality gap, so we report both);
# * **kept**: cosine of the steered embedding to the original.
#
# We steer image codes and text codes with the *same* latent. In a split dictionary the
# concept's latent belongs to one modality, so steering the other modality with it does
# little; a shared latent (GSAE/MGSAE) should move both. On synthetic data the concept is
# known (class concept `concept`); on real data it is the class prompt `concept` of the
# first zero-shot set, and on data without labels a cluster of the caption embeddings.

# %% tags=["parameters"]
profile = "smoke"
data = "synthetic"
out_dir = ".."
models = None
seed = 0  # which trained seed to steer
concept = 0  # synthetic: concept index; real data: class index of the first zero-shot set, else caption cluster
n_clusters = 8  # label-free data (no truth, no zero-shot set): k-means clusters of the held-out captions
alphas = None  # steering strengths in units of the latent's std (profile default)
n_samples = None  # samples without the concept to steer (profile default)

# %%
from pathlib import Path

import numpy as np
import pandas as pd

from mmsae.study import plots
from mmsae.eval import steering
from mmsae.models import load_model
from mmsae.study.profiles import get_profile
from mmsae.study.runs import RunPaths, load_run_data, write_json, write_table

P = get_profile(profile, steer_alphas=alphas, steer_samples=n_samples)
paths = RunPaths(Path(out_dir).resolve(), profile, data).ensure()
train, val, truth, zero_shot = load_run_data(paths)
plots.set_style()
names = list(models or P["methods"])
missing = [n for n in names if not (paths.model_dir(n, seed) / "config.json").exists()]
if missing:
    raise FileNotFoundError(f"models {missing} (seed {seed}) are not trained in {paths.root / 'models'}: run "
                            f"notebooks 02_train_baseline and 03_train_group_sparse first with profile={profile!r}, "
                            f"data={data!r} (./run_all.sh --only 02,03 with the same --profile/--data)")
x, y = np.asarray(val.x), np.asarray(val.y)

# %% [markdown]
# ## The concept: who carries it, and where it points
#
# `mmsae.eval.steering.choose_concept` uses the best information the run has: the synthetic
# ground truth (true concept `concept`), else class `concept` of the first zero-shot set,
# else, for a user's embeddings without labels, a **label-free concept**: cluster
# `concept` of a k-means clustering (`n_clusters`) of the held-out caption embeddings
# (after removing their mean); a pair carries it when its caption is in the cluster.

# %%
C = steering.choose_concept(x, y, truth=truth, zero_shot=zero_shot, concept=concept, n_clusters=n_clusters,
                            seed=seed)
print("concept:", C.name, "| source:", C.source)

# %%
rows, chosen = [], {}
for name in names:
    model = load_model(paths.model_dir(name, seed))
    z_x, z_y = model.encode_numpy(x, 0), model.encode_numpy(y, 1)
    latent = C.pick_latent(model, z_x, z_y)
    carries = C.carries
    without = ~carries if carries is not None else (z_x[:, latent] <= 0) & (z_y[:, latent] <= 0)
    idx = steering.steering_samples(without, P["steer_samples"], seed=seed)
    sigma = steering.latent_std(np.concatenate([z_x, z_y]), latent)
    chosen[name] = {"latent": latent, "sigma": sigma, "fires_on_images": int((z_x[:, latent] > 0).sum()),
                    "fires_on_texts": int((z_y[:, latent] > 0).sum()), "n_steered": int(len(idx))}
    for modality, u in ((0, x), (1, y)):
        for r in steering.steering_curve(model, u[idx], modality, latent, P["steer_alphas"], sigma,
                                         C.targets[modality], caption_target=C.caption_target):
            rows.append({"model": name, "modality": val.modalities[modality], **r})
curves = pd.DataFrame(rows)
pd.DataFrame(chosen).T

# %% [markdown]
# ## Steering curves

# %%
write_table(curves, "steering", paths.results, caption=f"Steering toward {C.name}: cosine gain toward the "
            "concept (same modality; and toward its captions) and similarity kept to the original, per modality "
            "and alpha.")
fig = plots.plot_steering(curves)
plots.save_figure(fig, "steering", paths.figures)

# %% [markdown]
# ## Does one latent move both modalities?
# At the largest alpha, the cosine gain toward the concept (same modality) for image codes
# and for text codes. We call a latent one that "moves both" when both gains exceed 0.05.

# %%
top = curves[curves.alpha == max(P["steer_alphas"])]
both = top.pivot(index="model", columns="modality", values="toward")
both["moves_both"] = (both.min(axis=1) > 0.05)
write_json({"concept": C.name, "concept_source": C.source, "alpha": max(P["steer_alphas"]), "latents": chosen,
            "toward_at_max_alpha": both.drop(columns="moves_both").to_dict(orient="index"),
            "moves_both": both["moves_both"].to_dict()}, paths.results / "steering_summary.json")
both
