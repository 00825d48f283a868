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
# # 04 · Split dictionaries, measured
#
# The paper's analysis on held-out pairs, for every model notebooks 02 and 03 trained: neuron
# categories (Fig. 3), the ladder of the recipe's ingredients, multimodal monosemanticity (Fig. 4),
# reconstruction, retrieval and zero-shot through the SAE (Table 1), recovery of the ground truth
# on synthetic data, latents in words, every method side by side, the ablations and the alpha
# sweep. Each table is built by one function of `mmsae.study.tables` (unit-tested) and written to
# `results/` (CSV + LaTeX); each figure to `figures/` (PDF + PNG). The notebook narrates.

# %% tags=["parameters"]
profile = "smoke"
data = "synthetic"
out_dir = ".."
models = None  # model names to analyse (default: every method of the profile trained for every seed)
mms_reference_path = None  # paired embeddings of the same val pairs from a second encoder (real data)
threshold = 0.0  # a latent "fires" when its activation exceeds this
min_count = "scaled"  # ... on at least this many held-out samples: an int (paper: 1) or "scaled" (stable in N)
min_frac = 0.2  # "scaled": the share of a latent's expected firings (N * K / m) it needs on a modality
split_sizes = None  # held-out pair counts for the "both"-vs-N figure (default: 100, 250, 500, 1000, ... all)
vocabulary_path = None  # real data: a text file of words to name latents with (one per line)
text_encoder = "ViT-B-16"  # open_clip model that embeds the vocabulary (must be the encoder of the data)
text_encoder_pretrained = "openai"  # its weights ("random" for a test)
umap_seed = 0
comparison_seeds = None  # seeds of the method comparison (profile default; smoke: 0, 1, 2)
sweep_seeds = None  # seeds of the ablations and the alpha sweep (profile default)
run_ablations = True
run_alpha_sweep = None  # None: only when data == "synthetic"

# %%
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from IPython.display import HTML, Markdown, display

from mmsae.data import load_paired
from mmsae.eval.analysis import mms_reference
from mmsae.models import load_model
from mmsae.models.registry import encodes_pairs
from mmsae.study import experiments as ex, findings, paper, plots, tables
from mmsae.study.methods import PAPER_METHODS
from mmsae.study.profiles import get_profile
from mmsae.study.runs import RunPaths, load_run_data, write_json

P = get_profile(profile, comparison_seeds=comparison_seeds, sweep_seeds=sweep_seeds)
SEEDS = P["comparison_seeds"]  # every table: mean and std over these seeds
paths = RunPaths(Path(out_dir).resolve(), profile, data).ensure()
train, val, truth, zero_shot = load_run_data(paths)
plots.set_style()
names = list(models or P["methods"])
ref = load_paired(mms_reference_path) if mms_reference_path else None
ref_x, ref_y, ref_kind = mms_reference(val, truth, ref)
zs_names = sorted(zero_shot)
display(Markdown(f"**{len(names)} models × {len(SEEDS)} seeds** on {len(val)} held-out pairs "
                 f"({findings.describe_data(data, profile)}); MMS reference: {ref_kind}."))

# %% [markdown]
# Each model is encoded once (`mmsae.study.experiments.evaluate_model`); every table derives from those codes.

# %%
analyses, per_seed = tables.evaluate_all(paths, names, SEEDS, val, ref_x, ref_y, zero_shot, truth, ref_kind,
                                         threshold=threshold, min_count=min_count, min_frac=min_frac)
tables.Table("per_seed_metrics", per_seed, latex=False).write(paths.results)
run = tables.RunInfo(profile, data, len(val), per_seed["category_rule"].iloc[0], ref_kind, SEEDS, P["sweep_seeds"])


def atoms(n, s, side):  # a model's decoder atoms of one side (0 image, 1 text)
    with torch.no_grad():
        return load_model(paths.model_dir(n, s)).decoder_atoms(side).detach().float().cpu().numpy()

# %% [markdown]
# ## 1 · Neuron categories
# A latent fires on a modality when its activation exceeds `threshold` on enough held-out
# samples of it. The paper counts any firing (the *any firing* columns; *never fires* is its
# dead count); that rule turns leakage into "both" as the held-out set grows, so the main columns
# ask for a fixed share `min_frac` of a latent's expected firings `N K / m`
# (`mmsae.eval.metrics.category_min_count`). On a few hundred pairs the two rules coincide. For
# the modality-specific SAEs "both" counts matched pairs, true by construction.

# %%
cats = tables.neuron_categories(per_seed, run)
cats.write(paths.results)
plots.save_figure(plots.plot_neuron_categories(cats.frame, paper_df=paper.neuron_categories(),
                                               title=findings.short_data_name(data, profile)), "neuron_categories",
                  paths.figures);
cats.show()

# %% [markdown]
# **The ladder: which ingredient makes the dictionary shared.** GSAE differs from the pooled SAE
# in two ways, one pre-bias per modality *and* the l2,1 penalty; MGSAE adds the shared mask.
# `CentredSAE` has the first alone and `MaskedSAE` the mask without the penalty, so each step adds
# one ingredient (`mmsae.study.ladder`: the change per seed, its mean and std, and its share of
# the whole SAE → MGSAE change).

# %%
from mmsae.study.ladder import ladder_sentences

lad = tables.ladder(per_seed, run)
if lad is None:
    display(Markdown("*The ladder is skipped: fewer than two of its rungs were trained (`models`).*"))
else:
    for t in lad:
        t.write(paths.results)
    shown = [c for c in lad[0].frame.columns if c not in ("model", "seeds") and not c.endswith("_std")]
    plots.save_figure(plots.plot_ladder(lad[0].frame, shown), "ladder", paths.figures);
    plots.save_figure(plots.plot_headline(lad[0].frame, paper.headline_values(shown)), "headline", paths.figures);
    display(Markdown("\n".join(f"* both (any firing), {line}" for line in ladder_sentences(lad[1].frame))))

# %% [markdown]
# **The split measure** (stable in N): the share of latents with enough firings whose modality
# score is ≤ 0.1 or ≥ 0.9; **where the firings go** (never, rarely, often, frequent one-sided);
# and "both" against the number of held-out pairs (SAE, GSAE, MGSAE, first seed): under the
# paper's fixed rule it drifts with N, under the scaled rule it does not.

# %%
tables.publish(paths.results, tables.split_measures(per_seed, run))
fprof = tables.firing_profile(analyses, names, SEEDS, run, threshold=threshold, truth=truth)
fprof.write(paths.results)
display(fprof.show(["never", "rare", "frequent", "frequent_unimodal"]))
sizes = split_sizes or [n for n in (100, 250, 500, 1000, 2000, 4000, 8000) if n < len(val)] + [len(val)]
vs_n, vs_n_tab = tables.split_vs_sample_size(analyses, [n for n in PAPER_METHODS if n in names], SEEDS[0], sizes,
                                             threshold=threshold, min_frac=min_frac)
tables.publish(paths.results, vs_n_tab, show=False)
plots.save_figure(plots.plot_split_vs_sample_size(vs_n), "split_vs_sample_size", paths.figures);

# %% [markdown]
# ## 2 · Multimodal monosemanticity and the geometry of the dictionary
# MMS: for a latent and two modalities, the activation-weighted mean similarity (under the
# reference embedding) of the samples it fires on. The modality score E_img[z] / (E_img[z] +
# E_txt[z]) is 1 for image-only, 0 for text-only; the UMAP places the decoder atoms (first seed).

# %%
one_side = [n for n in names if not encodes_pairs(n)]  # MMS and the modality score need codes of one modality
curves = {n: {k: [analyses[(n, s)].mms[k] for s in SEEDS] for k in tables.MMS_KEYS} for n in one_side}
plots.save_figure(plots.plot_mms_curves(curves), "mms_curves", paths.figures);
s0 = SEEDS[0]
plots.save_figure(plots.plot_modality_histogram({n: analyses[(n, s0)].modality_score for n in one_side}),
                  "modality_score_hist", paths.figures);
panels = {f"{n} (by decoder norms)" if encodes_pairs(n) else n:  # a pair code has no categories by firing
          (atoms(n, s0, 0)[: P["umap_max_atoms"]], analyses[(n, s0)].categories[: P["umap_max_atoms"]]) for n in names}
plots.save_figure(plots.plot_umap_grid(panels, seed=umap_seed), "umap_decoder_atoms", paths.figures);
tables.publish(paths.results, tables.mms_summary(per_seed, run))

# %% [markdown]
# ## 3 · Reconstruction, retrieval and zero-shot through the SAE
# Retrieval ranks each caption against all held-out images (and the reverse) by cosine, from the
# SAE's codes and its reconstructions (dense: the ceiling). Zero-shot is given both ways (the
# paper does not say which it uses), beside the paper's Table 1 with the binomial standard error
# on `n_test` items: other data at another scale, so compare the order of the methods.

# %%
zs, zvp = tables.zero_shot(per_seed), tables.zero_shot_vs_paper(per_seed, zero_shot, names, run)
tables.publish(paths.results, tables.reconstruction(per_seed), tables.retrieval(per_seed, val), zs, zvp,
               stale=[n for n, t in (("zero_shot", zs), ("zero_shot_vs_paper", zvp)) if t is None])
for set_name in zvp.frame["set"].unique() if zvp is not None else []:
    plots.save_figure(plots.plot_zero_shot_vs_paper(zvp.frame[zvp.frame["set"] == set_name],
                                                    title=findings.short_data_name(data, profile)),
                      f"zero_shot_vs_paper_{set_name}", paths.figures);
if zs is None:
    display(Markdown("*Zero-shot is skipped: this run's data have no labels or class prompts (notebook 01).*"))

# %% [markdown]
# ## 4 · Against the ground truth (synthetic data)
# *Recovery*: best cosine of each true atom to the model's atoms of its side. *Collapse*: shared
# concepts whose best image and text atoms are one column. *Alignment error*: shared concepts no
# single latent tracks in both modalities. *Naming*: a latent is named by the true concept closest
# to its text atom, right when its activations follow that concept. *Probe decomposition*: do a
# class probe's top named atoms expose the concept the generator ties to the class (the paper's
# "blond hair" and "woman")? On real data, naming needs `vocabulary_path`.

# %%
if truth is not None:
    tables.publish(paths.results, tables.ground_truth(per_seed),
                   *tables.synthetic_naming(analyses, names, SEEDS, truth, val, atoms))
elif vocabulary_path:
    from mmsae.embed.encoders import ClipEncoder

    enc = ClipEncoder(text_encoder, text_encoder_pretrained)
    tables.publish(paths.results, tables.vocabulary_names(analyses, names, s0, vocabulary_path, val.dim, atoms, enc,
                                                          f"{text_encoder}/{text_encoder_pretrained}", threshold))
else:
    display(Markdown("*No ground truth on real data and no `vocabulary_path`: recovery, naming and the probe "
                     "decomposition are skipped.*"))

# %% [markdown]
# ## 5 · Latents in words, and a browser of every latent
# Each latent is named per modality from the captions of what it fires on (`mmsae.eval.names`;
# on synthetic data, from the true concepts present). For a latent firing on both modalities,
# **agreement** is the share of its top image-side words among its top text-side words, against a
# chance level from mismatched latents. The **latent browser** (`results/.../browser/<model>.html`,
# one self-contained page per model) lists every latent with its counts, names and examples.

# %%
from mmsae.study.browser import inline_browser, write_latent_browser

records, agreement, doc_source = tables.latents_in_words(analyses, names, SEEDS, val, truth, threshold)
tables.publish(paths.results, tables.latent_names(records), agreement, show=False)
summary_rows, summary_cols = tables.browser_summary(per_seed, names, zs_names, agreement)
browser_dir = paths.results / "browser"
for n in names:
    write_latent_browser(
        browser_dir / f"{n}.html", title=f"{n} latents: {findings.describe_data(data, profile)} (seed {SEEDS[0]})", model=n,
        latents=records[n], comparison=summary_rows, comparison_columns=summary_cols,
        siblings={o: f"{o}.html" for o in names}, shows=findings.browser_shows(doc_source),
        comparison_note=f"Means over {len(SEEDS)} seeds; the list below is seed {SEEDS[0]}, so its counts can differ.",
        notes=f"{len(val)} held-out pairs; names from {doc_source}; category rule: {run.rule}.")
display(agreement.show(["agreement_mean", "agreement_any", "chance_mean"]) if agreement is not None else
        Markdown("*No captions and no ground truth: latents are listed by index, counts and category only.*"))
inline_browser(browser_dir / f"{'MGSAE' if 'MGSAE' in names else names[0]}.html")  # trusted notebooks run it

# %% [markdown]
# ## 6 · Every method side by side
# The same held-out pairs and metrics for every method of notebook 03, mean ± std over the
# seeds. Codes of one modality throughout (SharedSupport encodes a lone image or caption by its
# own pre-activations; the modality-specific SAEs use the text code re-indexed by their Hungarian
# matching, built once on training data). The crosscoder is the exception: it encodes an image and
# its caption together, so every metric built on the code of one modality is *n/a* for it; its own
# split, by the norms of its two decoder rows, is in `comparison_full.csv` (`decoder_*`). Every
# metric is in `comparison_full.csv`.

# %%
stability = tables.seed_stability(names, SEEDS, atoms)
cmp_full, cmp, md = tables.comparison(per_seed, zs_names, run, stability)
tables.publish(paths.results, cmp_full, cmp, stability, show=False)
(paths.results / "comparison.md").write_text(md)
write_json(tables.headline_record(per_seed, names, run, zero_shot, agreement, doc_source), paths.results / "headline.json")
cmp.show()

# %% [markdown]
# ## 7 · Ablations, and the alpha sweep
# Each ablation (trained by notebook 03 at `ablation_steps`: compare within a sweep): the l2,1
# weight λ, MGSAE's mask rate, one mask per pair or per batch, width × K, and K alone: the
# sparsity-fidelity trade-off (explained variance against L0) beside a PCA of the same size. The **alpha sweep**
# regenerates the synthetic data at each image-text cosine of the concept directions (the
# generator's `alpha`; notebook 05's steering strength is another quantity) and retrains every
# method: which design recovers the truth, and aligns it, where.

# %%
abl_metrics = {k: v for k, v in ex.SWEEP_METRICS.items() if truth is not None or not k.startswith("gt_")}
for sweep in tables.ABLATION_X if run_ablations else []:
    raw = ex.add_derived(ex.run_sweep(sweep, train, val, P, models_dir=paths.root / "models", truth=truth,
                                      zero_shot_sets=zero_shot, ref_x=ref_x, ref_y=ref_y, train=False,
                                      hint=f"(profile={profile!r}, data={data!r}, run_ablations=True)"))
    steps = ex.read_sweep_manifest(paths.root / "models", sweep)["steps"]
    per_seed_tab, with_timings, tab, agg = tables.ablation(raw, sweep, steps, zs_names, run)
    with_timings.write(paths.root)  # machine-dependent: the untracked run folder, never results/
    tables.publish(paths.results, per_seed_tab, tab, show=False)
    xcol, xlabel = tables.ABLATION_X[sweep]
    fig = ex.plot_sweep(agg, xcol, abl_metrics, hue="series" if sweep == "width_k" else "model", xlabel=xlabel)
    plots.save_figure(fig, f"ablation_{sweep}", paths.figures);
    display(Markdown(f"**{xlabel}**"), tab.show())
    if sweep == "k":  # the sparsity-fidelity trade-off, with the PCA baseline
        par = tables.pareto(raw, train, val, steps, run)
        tables.publish(paths.results, par, show=False)
        plots.save_figure(plots.plot_pareto(par.frame, findings.short_data_name(data, profile)), "pareto_k",
                          paths.figures);
if run_alpha_sweep or (run_alpha_sweep is None and data == "synthetic"):
    alpha_raw = ex.add_derived(ex.sweep_alpha(P, models_dir=paths.root / "models", train=False,
                                              hint=f"(profile={profile!r}, run_alpha_sweep=True)"))
    man = ex.read_sweep_manifest(paths.root / "models", "alpha")
    per_seed_tab, with_timings, alpha_tab, winners, alpha_agg = tables.alpha_sweep(alpha_raw, man["n_pairs"],
                                                                                   man["steps"], run)
    with_timings.write(paths.root)  # untracked
    tables.publish(paths.results, per_seed_tab, alpha_tab, show=False)
    tables.publish(paths.results, winners)
    plots.save_figure(ex.plot_sweep(alpha_agg, "alpha", ex.ALPHA_METRICS, xlabel="alpha = cos(image dir., text dir.)"),
                      "alpha_sweep", paths.figures);
if not run_ablations or not (run_alpha_sweep or (run_alpha_sweep is None and data == "synthetic")):
    display(Markdown(findings.skipped_sweeps(run_ablations, run_alpha_sweep, data)))

# %% [markdown]
# ## What this run shows

# %%
Markdown(findings.analysis(per_seed, run, zvp.frame if zvp is not None else None))
