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
# # 03 · Group-sparse SAEs: GSAE and MGSAE
#
# **GSAE** shares $W_{enc}$, $W_{dec}$, $b_{enc}$ between modalities, keeps one pre-bias
# per modality, and is trained on *pairs* with a group-sparse penalty: the two activations
# of a latent on an image and on its caption form one group,
#
# $$L = \|x - \hat x\|^2 + \|y - \hat y\|^2 + \lambda \sum_i \sqrt{z_{x,i}^2 + z_{y,i}^2}.$$
#
# **MGSAE** adds *cross-modal random masking*: during training one random mask over the
# latents (drop rate 0.2) is applied to the pre-TopK activations of both members of a pair,
# so both choose their top K among the same surviving latents.
#
# Model: `mmsae.models.GroupSparseSAE` (`gsae_config`, `mgsae_config`); penalty:
# `mmsae.losses.group_l21`.

# %% tags=["parameters"]
profile = "smoke"
data = "synthetic"
out_dir = ".."
seeds = None
steps = None
m = None
k = None
group_lambda = None  # paper: 0.05 (0.01 in the width/K sweep)
mask_rate = None  # paper: 0.2
mask_mode = None  # "pair" (default) or "batch"
device = "auto"

# %%
from pathlib import Path

from mmsae import plots
from mmsae.experiments import train_method
from mmsae.plots import plot_training_logs
from mmsae.profiles import get_profile
from mmsae.runs import RunPaths, load_run_data

P = get_profile(profile, seeds=seeds, steps=steps, m=m, k=k, group_lambda=group_lambda, mask_rate=mask_rate,
                mask_mode=mask_mode)
paths = RunPaths(Path(out_dir).resolve(), profile, data).ensure()
train, val, truth, zero_shot = load_run_data(paths)
plots.set_style()
print(f"lambda = {P['group_lambda']}, mask rate = {P['mask_rate']} ({P['mask_mode']}), seeds {P['seeds']}")

# %%
for name in ("GSAE", "MGSAE"):
    for s in P["seeds"]:
        train_method(name, train, P, seed=s, out_dir=paths.root / "models", device=device)

# %%
fig = plot_training_logs(paths.root / "models", ["GSAE", "MGSAE"], P["seeds"])
plots.save_figure(fig, "training_group_sparse", paths.figures)
