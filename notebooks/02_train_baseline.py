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
# # 02 · The baseline: a TopK SAE on pooled embeddings
#
# The paper's baseline ("SAE") is a TopK sparse autoencoder (Gao et al. 2024)
#
# $$z = \mathrm{TopK}(\mathrm{ReLU}(W_{enc}(u - b_{pre}) + b_{enc})), \qquad \hat u = W_{dec} z + b_{pre}$$
#
# trained on image and text embeddings **pooled together**: nothing ties an image to its
# caption. Notebook 04 shows what that does: a *split dictionary*, most latents firing for
# one modality only.
#
# Model: `mmsae.models.TopKSAE`; loss: `mmsae.models.losses`; loop: `mmsae.train.train`.

# %% tags=["parameters"]
profile = "smoke"
data = "synthetic"
out_dir = ".."
seeds = None  # list of seeds (profile default)
steps = None  # training steps (profile default)
m = None  # number of latents (profile default; paper 8192)
k = None  # active latents per sample (profile default; paper 32)
device = "auto"
tensorboard = None  # TensorBoard event files per method and seed (profile default: smoke off, paper on)

# %%
from pathlib import Path

from IPython.display import Markdown

from mmsae.study import findings, plots
from mmsae.study.experiments import tensorboard_dir, train_method
from mmsae.study.profiles import get_profile
from mmsae.study.runs import RunPaths, load_run_data

P = get_profile(profile, seeds=seeds, steps=steps, m=m, k=k, tensorboard=tensorboard)
paths = RunPaths(Path(out_dir).resolve(), profile, data).ensure()
train, val, truth, zero_shot = load_run_data(paths)
plots.set_style()
print(f"{len(train)} training pairs, d = {train.dim}; m = {P['m']}, K = {P['k']}, {P['steps']} steps x "
      f"{P['batch_size']} pairs, seeds {P['seeds']}")
tb_dir = tensorboard_dir(paths.root, P["tensorboard"])  # None: no TensorBoard logging

# %%
models = {}
for s in P["seeds"]:
    models[s] = train_method("SAE", train, P, seed=s, out_dir=paths.root / "models", device=device,
                             tensorboard_dir=tb_dir)

# %% [markdown]
# ## Training curves
# Loss, explained variance per modality and dead latents, as logged by the loop
# (`train_log.csv` beside each checkpoint).

# %%
from mmsae.study.plots import plot_training_logs

fig = plot_training_logs(paths.root / "models", ["SAE"], P["seeds"])
plots.save_figure(fig, "training_SAE", paths.figures);

# %% [markdown]
# ## What this run shows

# %%
Markdown(findings.training(paths.root / "models", ["SAE"], P["seeds"], "the pooled TopK SAE"))
