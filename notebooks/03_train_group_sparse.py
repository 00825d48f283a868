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
# `mmsae.models.losses.group_l21`.
#
# **Training curves live:** with `tensorboard = True` (the paper profile's default; from the
# command line `./run_all.sh --param tensorboard=true`) every method and seed writes its loss,
# explained variance per modality, l2,1 term, dead latents, learning rate and throughput as
# TensorBoard events; run `tensorboard --logdir runs/<profile>-<slug>/tensorboard` (the setup
# cell below prints the exact command) and open the address it shows while the models train.

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
comparison_seeds = None  # seeds of every method in the comparison table (profile default; smoke: 0, 1, 2)
models = None  # methods of the comparison (default: every method of the profile); 04 and 05 read the same name
sweep_seeds = None  # seeds of the ablations and the alpha sweep (profile default)
ablation_steps = None  # training steps of each ablation model (profile default)
run_ablations = True  # lambda, mask rate, mask per pair/batch, width x K
run_alpha_sweep = None  # the synthetic alpha sweep (None: only when data == "synthetic")
tensorboard = None  # TensorBoard event files per method and seed (profile default: smoke off, paper on)

# %%
from pathlib import Path

from IPython.display import Markdown

from mmsae.study import findings, plots
from mmsae.study.experiments import tensorboard_dir, train_method
from mmsae.study.plots import plot_training_logs
from mmsae.study.profiles import get_profile
from mmsae.study.runs import RunPaths, load_run_data

P = get_profile(profile, seeds=seeds, steps=steps, m=m, k=k, group_lambda=group_lambda, mask_rate=mask_rate,
                mask_mode=mask_mode, comparison_seeds=comparison_seeds, sweep_seeds=sweep_seeds,
                ablation_steps=ablation_steps, tensorboard=tensorboard, methods=models)
paths = RunPaths(Path(out_dir).resolve(), profile, data).ensure()
train, val, truth, zero_shot = load_run_data(paths)
plots.set_style()
print(f"lambda = {P['group_lambda']}, mask rate = {P['mask_rate']} ({P['mask_mode']}), seeds {P['seeds']}")
tb_dir = tensorboard_dir(paths.root, P["tensorboard"])  # None: no TensorBoard logging

# %%
for name in ("GSAE", "MGSAE"):
    for s in P["seeds"]:
        train_method(name, train, P, seed=s, out_dir=paths.root / "models", device=device, tensorboard_dir=tb_dir)

# %%
fig = plot_training_logs(paths.root / "models", ["GSAE", "MGSAE"], P["seeds"])
plots.save_figure(fig, "training_group_sparse", paths.figures);

# %% [markdown]
# ## Every method on the same data
#
# The comparison of notebook 04 puts every method side by side, all trained by the same
# loop on the same pairs and saved the same way (`mmsae.study.experiments.METHODS`):
#
# | method | what couples an image to its caption |
# |---|---|
# | SAE | nothing (pooled TopK) |
# | CentredSAE | nothing but centring: the SAE with one pre-bias per modality (GSAE at lambda = 0) |
# | GSAE | shared dictionary + l2,1 group penalty over each latent's two activations |
# | MGSAE | GSAE + one cross-modal random mask per pair |
# | MaskedSAE | CentredSAE + the cross-modal mask (MGSAE at lambda = 0) |
# | BatchTopK | nothing (pooled; TopK over the whole batch, learned threshold at inference) |
# | Matryoshka | nothing (pooled BatchTopK; nested prefixes of the dictionary each reconstruct) |
# | ModalitySpecific | one TopK SAE per modality, latents matched after training (Pearson correlation on the training pairs, Hungarian algorithm) |
# | SharedSupport | one TopK over the summed pre-activations: both members use the same K latents |
# | USAE | an encoder and a decoder per modality around one code; each member's code decodes into both (Thasarathan et al. 2025) |
# | Crosscoder | one code per pair read from both members, each latent penalised by the sum of its two decoder norms (Lindsey et al. 2024); it needs both members to encode, so the single-modality metrics of notebook 04 are n/a for it |
#
# Every method is trained with `comparison_seeds` seeds (mean and spread in every table).
# Models already on disk with the same settings (the SAE of notebook 02, GSAE/MGSAE
# above) are reused, not retrained. The extra models run `sweep_jobs` at a time in worker
# processes with one torch thread each (`mmsae.study.experiments.run_jobs`).

# %%
import time

from mmsae.study.experiments import run_sweep, sweep_alpha, train_methods
from mmsae.study.runs import write_json

timings = {}
t0 = time.perf_counter()
trained = train_methods(P["methods"], P["comparison_seeds"], train, P, paths.root / "models", device=device,
                        tensorboard_dir=tb_dir)
timings["comparison"] = time.perf_counter() - t0
# wall times go to the untracked run folder (train_timings_methods.json, below), never into the notebook
print(f"{len(trained)} models: {len(P['methods'])} methods x seeds {P['comparison_seeds']}")

# %%
fig = plot_training_logs(paths.root / "models", P["methods"], P["comparison_seeds"])
plots.save_figure(fig, "training_all_methods", paths.figures);

# %% [markdown]
# ## Ablations
#
# As in the paper and its reviews, each on the main training pairs, `sweep_seeds` seeds,
# `ablation_steps` steps per model (fewer than the main runs at the smoke profile):
#
# * **lambda** (`lambda_grid`, `lambda_methods`): the weight of the l2,1 group penalty;
# * **mask rate** (`mask_grid`: 0, 0.1, 0.2, 0.4) of MGSAE; rate 0 is GSAE;
# * **mask per pair vs per batch** (`mask_modes`): the paper does not say which;
# * **width x K** (`expansion_grid` x `k_grid`, lambda = `width_k_lambda` as in the paper's
#   sweep): the paper's 4x/8x/16x and K 16/32/64, scaled down at the smoke profile;
# * **K alone** (`pareto_k_grid`, `pareto_methods`): the sparsity-fidelity trade-off SAE
#   evaluation reports (explained variance against L0), beside a PCA baseline in notebook 04.
#
# Ablation models are stored under `models/sweeps/main/<arch>-<hash>/seed<k>/`, keyed by
# their settings, so a setting shared by two sweeps (GSAE at the default lambda = MGSAE
# at mask rate 0) is trained once. Notebook 04 evaluates them.

# %%
if run_ablations:
    for sweep in ("lambda", "mask_rate", "mask_mode", "width_k", "k"):
        t0 = time.perf_counter()
        runs = run_sweep(sweep, train, None, P, models_dir=paths.root / "models", evaluate=False, device=device)
        timings[f"ablation_{sweep}"] = time.perf_counter() - t0
        print(f"{sweep}: {len(runs)} models")

# %% [markdown]
# ## The synthetic alpha sweep
#
# Where the two papers' claims meet. The competing paper argues that a concept's image
# and text directions differ (cosine alpha < 1), so one shared latent per concept must
# blur them; the group-sparse paper argues that shared latents are what make the
# dictionary multimodal. For each alpha in `alpha_grid` the synthetic generator is re-run
# (`alpha_n_pairs` pairs) and every method trained (`alpha_steps` steps, `sweep_seeds`);
# notebook 04 scores atom recovery, alignment error and collapse against the truth.

# %%
if run_alpha_sweep is None:
    run_alpha_sweep = data == "synthetic"
if run_alpha_sweep:
    t0 = time.perf_counter()
    runs = sweep_alpha(P, models_dir=paths.root / "models", evaluate=False, device=device)
    timings["alpha_sweep"] = time.perf_counter() - t0
    print(f"alpha sweep: {len(runs)} models")
write_json({"profile": profile, "data": data, "wall_time_s": timings}, paths.root / "train_timings_methods.json");  # untracked

# %% [markdown]
# ## What this run shows

# %%
Markdown(findings.training(paths.root / "models", P["methods"], P["comparison_seeds"], "every method of the comparison"))
