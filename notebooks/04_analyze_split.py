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
# The paper's analysis on held-out pairs, for every trained model:
#
# 1. **Neuron categories** (paper Fig. 3): image-only, text-only, both, dead.
# 2. **MMS** (multimodal monosemanticity, Fig. 4): per latent, how similar the samples it
#    fires on are under a *reference* embedding, within and across modalities.
# 3. **Modality score** histogram and a **UMAP** of decoder atoms coloured by category.
# 4. **Reconstruction**, **cross-modal retrieval** and **zero-shot** through the SAE
#    (Table 1 analogue), from codes and from reconstructions.
# 5. On synthetic data, **recovery of the ground truth**.
#
# Every number below comes from `mmsae.eval.analysis.analyze`; tables go to `results/` (CSV +
# LaTeX), figures to `figures/` (PDF + PNG).

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

from mmsae.study import paper, plots
from mmsae.eval.analysis import mms_reference
from mmsae.data import load_paired
from mmsae.models import load_model
from mmsae.study.profiles import get_profile
from mmsae.study.runs import RunPaths, load_run_data, write_json, write_table

P = get_profile(profile, comparison_seeds=comparison_seeds, sweep_seeds=sweep_seeds)
SEEDS = P["comparison_seeds"]  # every table: mean and std over these seeds
paths = RunPaths(Path(out_dir).resolve(), profile, data).ensure()
train, val, truth, zero_shot = load_run_data(paths)
plots.set_style()
names = list(models or P["methods"])
missing = sorted({f"{n} (seed {s})" for n in names for s in SEEDS
                  if not (paths.model_dir(n, s) / "config.json").exists()})
if missing:  # this notebook only analyses what 02 and 03 trained; it never trains
    raise FileNotFoundError(f"not trained in {paths.root / 'models'}: {', '.join(missing)}. Run notebooks "
                            f"02_train_baseline and 03_train_group_sparse first with profile={profile!r}, data={data!r} "
                            f"(./run_all.sh --only 02,03 with the same --profile/--data/--param comparison_seeds)")
ref = load_paired(mms_reference_path) if mms_reference_path else None
ref_x, ref_y, ref_kind = mms_reference(val, truth, ref)
print("models:", names, "| seeds:", SEEDS, "| MMS reference:", ref_kind)

# %% [markdown]
# Each model is encoded once; every metric below derives from those codes
# (`mmsae.study.experiments.evaluate_model` = `mmsae.eval.analysis.analyze` plus training-side
# counts).

# %%
from tqdm.auto import tqdm

from mmsae.study import experiments as ex

analyses, rows = {}, []
for name in tqdm(names, desc="models"):
    for s in SEEDS:
        det = {}
        r = ex.evaluate_model(load_model(paths.model_dir(name, s)), val, ref_x, ref_y, zero_shot, truth, details=det,
                              threshold=threshold, min_count=min_count, min_frac=min_frac)
        analyses[(name, s)] = det["analysis"]
        rows.append({"model": name, "seed": s, **r, "mms_reference": ref_kind})
per_seed = ex.add_derived(pd.DataFrame(rows))
write_table(per_seed, "per_seed_metrics", paths.results, latex=False)


def mean_std(df: pd.DataFrame, cols: list[str]) -> pd.DataFrame:
    """Mean and std over seeds per model for ``cols`` (``mmsae.study.experiments.aggregate_seeds``)."""
    return ex.aggregate_seeds(df[["model", "seed", *cols]], "model").drop(columns="n_seeds")


# %% [markdown]
# ## 1 · Neuron categories and the split measure
# A latent fires on a modality when its activation exceeds `threshold` on at least
# `min_count` held-out samples of that modality. The paper counts any firing
# (`min_count = 1`); that rule turns leakage into "both" as the number of held-out pairs
# grows, so by default we ask for a fixed *share* (`min_frac`) of a latent's expected
# firings `N K / m` (`min_count = "scaled"`, `mmsae.eval.metrics.category_min_count`). The rule
# is written into every table (`category_rule`). For the modality-specific SAEs, "both"
# counts matched latent pairs, true by construction (`both_rule = matched`). The paper's
# counts (CLIP ViT-B/16, CC3M validation, 8192 latents) are shown beside ours.

# %%
cat_cols = ["image_only", "text_only", "both", "dead", "image_only_min1", "text_only_min1", "both_min1", "dead_min1"]
RULE = per_seed["category_rule"].iloc[0]
cats = mean_std(per_seed, cat_cols)  # *_min1: the paper's rule (any firing); dead_min1: never fires on the held-out pairs
cats.insert(1, "category_rule", RULE)
cats.insert(2, "both_rule", [per_seed.loc[per_seed.model == n, "both_rule"].iloc[0] for n in cats["model"]])
write_table(cats, "neuron_categories", paths.results,
            caption=(f"Neuron categories on {len(val)} held-out pairs ({profile} profile, {data}; mean $\\pm$ std over "
                     f"seeds). Rule: {RULE}; columns *\\_min1: the paper's rule (any firing counts; dead\\_min1: never "
                     "fires on the held-out pairs)."))
fig = plots.plot_neuron_categories(cats, paper_df=paper.neuron_categories())
plots.save_figure(fig, "neuron_categories", paths.figures)
cats

# %% [markdown]
# **The ladder: which ingredient makes the dictionary shared.** GSAE differs from the pooled SAE
# in two ways: one pre-bias per modality (each modality centred on its own) *and* the l2,1
# penalty; MGSAE adds the shared mask. `CentredSAE` has the first alone and `MaskedSAE` the mask
# without the penalty, so that each step below adds one ingredient (`mmsae.study.ladder`: the
# change of each metric per seed, its mean and std over seeds, and its share of the whole SAE ->
# MGSAE change).

# %%
from mmsae.study.ladder import ladder_rungs, ladder_sentences, ladder_steps

rungs, rungs_caption = ladder_rungs(per_seed)
steps, steps_caption = ladder_steps(per_seed)
if len(rungs) >= 2:
    write_table(rungs, "ladder", paths.results, caption=f"{rungs_caption} {profile} profile, {data}.")
    write_table(steps, "ladder_steps", paths.results, caption=f"{steps_caption} {profile} profile, {data}.")
    shown = [c for c in rungs.columns if c not in ("model", "seeds") and not c.endswith("_std")]
    fig = plots.plot_ladder(rungs, shown)
    plots.save_figure(fig, "ladder", paths.figures)
    zs_label = next((c for c in shown if c.startswith("zero-shot")), None)
    paper_vals = {"both, any firing": {r.model: r.both / 8192 for r in paper.neuron_categories().itertuples()}}
    if zs_label is not None:  # the paper's CIFAR-10 column beside our zero-shot set (other data: compare orders)
        paper_vals[zs_label] = {r.model: r.cifar10 for r in paper.zero_shot_clip().itertuples()}
    fig = plots.plot_headline(rungs, paper_vals)
    plots.save_figure(fig, "headline", paths.figures)
    for line in ladder_sentences(steps):
        print("both (any firing),", line)
else:
    print("ladder skipped: fewer than two of its rungs were trained (models=...)")

# %% [markdown]
# **The split measure** (primary, stable in N): among latents with enough firings, the
# share whose modality score is <= 0.1 or >= 0.9 (`unimodal_share`), its two ends, and
# quantiles of the score distribution (`mmsae.eval.metrics.split_measures`).

# %%
split_cols = ["unimodal_share", "image_share", "text_share", "score_balance", "score_q10", "score_q50", "score_q90",
              "n_scored"]
split_tab = mean_std(per_seed, split_cols)
split_tab.insert(1, "category_rule", RULE)
write_table(split_tab, "split_measures", paths.results,
            caption=(f"Split measure on {len(val)} held-out pairs: share of scored latents with modality score "
                     f"$\\le 0.1$ or $\\ge 0.9$, and score quantiles ({profile} profile, {data}). Rule: {RULE}."))
split_tab.round(3)

# %% [markdown]
# **Where the firings go** (`mmsae.eval.metrics.firing_profile`): the share of latents that
# never fire on the held-out pairs, fire rarely (less than the average latent) or often, and
# how much of all firings the frequent *unimodal* latents (under 20% of their firings on the
# smaller modality) take. With many rare latents the categories above count them as dead or
# one-sided; this table says how much of the code that concerns. On synthetic data it also
# gives the true concepts per embedding beside the active latents per embedding (K).

# %%
from mmsae.eval.metrics import firing_profile

true_x, true_y = (truth["codes_x"], truth["codes_y"]) if truth is not None else (None, None)
fp_rows = [{"model": n, "seed": s, **firing_profile(analyses[(n, s)].codes_x, analyses[(n, s)].codes_y,
                                                    threshold=threshold, true_codes_x=true_x, true_codes_y=true_y)}
           for n in names for s in SEEDS]
fp_cols = [c for c in fp_rows[0] if c not in ("model", "seed")]
fp_tab = mean_std(pd.DataFrame(fp_rows), fp_cols)
write_table(fp_tab, "firing_profile", paths.results,
            caption=(f"Where each dictionary's firings go on {len(val)} held-out pairs: fractions of the latents that "
                     "never fire, fire less than the average latent (rare) or more (frequent), frequent latents with "
                     "under 20\\% of their firings on one modality (unimodal), and shares of all firings "
                     f"({profile} profile, {data}; mean $\\pm$ std over seeds)."))
fp_tab.round(3)

# %% [markdown]
# **How the rule depends on the number of held-out pairs.** For SAE, GSAE and MGSAE
# (first seed), random subsets of the held-out pairs: the fraction of "both" under the
# paper's fixed rule drifts with N, the scaled rule and the unimodal share do not.

# %%
from mmsae.eval.analysis import split_vs_sample_size
from mmsae.study.methods import PAPER_METHODS

sizes = split_sizes or [n for n in (100, 250, 500, 1000, 2000, 4000, 8000) if n < len(val)] + [len(val)]
vs_n = pd.concat([split_vs_sample_size(analyses[(n, SEEDS[0])].z_x, analyses[(n, SEEDS[0])].z_y, sizes,
                                       seed=SEEDS[0], threshold=threshold, min_frac=min_frac).assign(model=n)
                  for n in PAPER_METHODS if n in names], ignore_index=True)
vs_n_tab = vs_n.groupby(["model", "rule", "n_pairs"], sort=False)[["frac_both", "unimodal_share", "min_count"]] \
    .mean().reset_index()
write_table(vs_n_tab, "split_vs_sample_size", paths.results, mean_std=False,
            caption="Fraction of ``both'' latents and unimodal share against the number of held-out pairs, per rule "
                    "(mean over random subsets).")
fig = plots.plot_split_vs_sample_size(vs_n)
plots.save_figure(fig, "split_vs_sample_size", paths.figures)
vs_n_tab.round(3)

# %% [markdown]
# ## 2 · Multimodal monosemanticity (MMS)
# For latent *i* and modalities (m, n): the activation-weighted mean similarity, under the
# reference embedding, of the samples on which *i* fires (pairs of the same sample
# excluded within a modality). Sorted curves per model; higher is more monosemantic.

# %%
mms_keys = ["img_img", "txt_txt", "img_txt"]
curves = {n: {k: [analyses[(n, s)].mms[k] for s in SEEDS] for k in mms_keys} for n in names}
fig = plots.plot_mms_curves(curves)
plots.save_figure(fig, "mms_curves", paths.figures)
mms_cols = [f"mms_{k}_{stat}" for k in mms_keys for stat in ("mean_alive", "mean_all", "auc", "median", "frac_gt_0.5")]
mms_tab = mean_std(per_seed, mms_cols)
mms_tab.insert(1, "reference", ref_kind)
write_table(mms_tab, "mms_summary", paths.results, caption=f"MMS summary (reference: {ref_kind}).")
mms_tab

# %% [markdown]
# ## 3 · Modality score and the geometry of the dictionary
# Modality score of a latent = E_img[z] / (E_img[z] + E_txt[z]): 1 is image-only, 0
# text-only. A split dictionary piles up at the ends. The UMAP of decoder atoms (first
# seed) shows whether image-only and text-only atoms form separate regions.

# %%
s0 = SEEDS[0]
fig = plots.plot_modality_histogram({n: analyses[(n, s0)].modality_score for n in names})
plots.save_figure(fig, "modality_score_hist", paths.figures)

# %%
import torch

panels = {}
for n in names:
    model = load_model(paths.model_dir(n, s0))
    with torch.no_grad():
        atoms = model.decoder_atoms(0).detach().cpu().numpy()
    keep = np.arange(len(atoms))[: P["umap_max_atoms"]]
    panels[n] = (atoms[keep], analyses[(n, s0)].categories[keep])
fig = plots.plot_umap_grid(panels, seed=umap_seed)
plots.save_figure(fig, "umap_decoder_atoms", paths.figures)

# %% [markdown]
# ## 4 · Reconstruction, retrieval and zero-shot through the SAE
# Retrieval ranks each caption against all held-out images (and the reverse) by cosine,
# from SAE **codes** and from **reconstructions**. The dense embeddings are the ceiling.
# The paper reports zero-shot accuracy through the SAE; we report both codes and
# reconstructions (the paper's text does not settle which).

# %%
rec_cols = [f"{k}_{mod}" for mod in ("x", "y") for k in ("explained_variance", "nmse", "cosine")]
rec = mean_std(per_seed, rec_cols)
write_table(rec, "reconstruction", paths.results,
            caption="Reconstruction of held-out embeddings (x: image/audio, y: text).")

ret_cols = [f"{t}_{d}_{k}" for t in ("code", "recon") for d in ("x2y", "y2x") for k in ("R@1", "R@5", "R@10", "MRR")]
ret = mean_std(per_seed, ret_cols)
from mmsae.eval import metrics

n_pool = int(per_seed["retrieval_pool"].iloc[0])
dense = metrics.cross_modal_retrieval(np.asarray(val.x)[:n_pool], np.asarray(val.y)[:n_pool])
dense_row = {"model": "dense", **{f"{t}_{k}": v for t in ("code", "recon") for k, v in dense.items()}}
ret = pd.concat([ret, pd.DataFrame([dense_row])], ignore_index=True)
write_table(ret, "retrieval", paths.results,
            caption=f"Cross-modal retrieval through the SAE on {n_pool} held-out pairs (dense = raw embeddings).")

zs_cols = [c for c in per_seed.columns if c.startswith("zs_")]
if not zs_cols:
    print("zero-shot through the SAE is skipped: this run has no zero-shot set (no labels or class prompts in "
          "notebook 01's data); no zero_shot table is written")
    for ext in ("csv", "tex"):  # a table left by an earlier run on other data would be read as this run's
        (paths.results / f"zero_shot.{ext}").unlink(missing_ok=True)
if zs_cols:
    zs_tab = mean_std(per_seed, zs_cols)
    write_table(zs_tab, "zero_shot", paths.results, caption="Zero-shot accuracy through the SAE (dense = raw).")
    display_cols = ["model"] + [c for c in zs_cols if not c.endswith("_std")]
    print(zs_tab[display_cols].to_string(index=False))
rec.round(3)

# %%
ret[["model"] + [c for c in ret.columns if c.startswith("code_") and not c.endswith("_std")]].round(3)

# %% [markdown]
# ## 5 · Against the ground truth (synthetic data)
# *Recovery*: best cosine of each true atom to the model's dictionary (image-side atoms
# against the image decoder, text-side against the text decoder). *Collapse*: shared
# concepts whose best image atom and best text atom are the same column. *Single-latent
# fraction*: shared concepts that one latent captures in both modalities (by activation
# correlation); alignment error = 1 - that.

# %%
gt_cols = [c for c in per_seed.columns if c.startswith("gt_")]
if gt_cols:
    gt = mean_std(per_seed, gt_cols)
    write_table(gt, "ground_truth", paths.results, caption="Recovery of the synthetic ground truth.")
    gt.round(3)

# %% [markdown]
# ## 5b · Concept naming and probe decomposition (paper metrics 5 and 6)
#
# *Naming*: latent *i* is named by the vocabulary word whose text embedding is closest
# (cosine) to its text-side decoder atom. On synthetic data the vocabulary is the true
# concepts' text directions, so naming can be scored: an alive latent is named
# correctly when its word is the concept it encodes (the concept whose true coefficients
# correlate best with its activations, `mmsae.eval.concepts.latent_concepts`).
# *Probe decomposition*: a logistic-regression probe for one class, trained on the image
# embeddings only, is decomposed over the image-side atoms (NNLS over the 64 atoms most
# aligned with it); the generator correlates that class with another concept (the
# paper's "blond hair" and "woman"), and we ask whether the named top atoms expose it.
# On real data, naming runs when `vocabulary_path` is given (words embedded by
# `text_encoder`); without ground truth it is a table of names, not a score.

# %%
from mmsae.eval import concepts

naming_rows, probe_rows = [], []
if truth is not None:
    kind = np.asarray(truth["concept_kind"])
    vocab_concept = np.nonzero(kind != 1)[0]  # image-only concepts (kind 1) have no words
    vocab_emb = np.asarray(truth["atoms_y"])[vocab_concept]
    words = np.array([f"concept_{c}" for c in range(len(kind))])
    corr = truth["config"].get("correlated")  # [class concept, correlated concept, probability] or None
    for n in names:
        for s in SEEDS:
            a = analyses[(n, s)]
            model = load_model(paths.model_dir(n, s))
            with torch.no_grad():
                atoms_txt = model.decoder_atoms(1).detach().float().cpu().numpy()
                atoms_img = model.decoder_atoms(0).detach().float().cpu().numpy()
            lc, _ = concepts.latent_concepts(a.z_x, a.z_y, truth["codes_x"], truth["codes_y"])
            naming_rows.append({"model": n, "seed": s, **concepts.naming_accuracy(
                atoms_txt, vocab_emb, vocab_concept, lc, alive=a.categories != "dead")})
            if corr:
                latent_names, _ = concepts.name_latents(atoms_txt, vocab_emb, list(words[vocab_concept]))
                w = concepts.fit_probe(np.asarray(val.x), np.asarray(val.labels) == int(corr[0]), seed=s)
                r = concepts.probe_report(w, atoms_img, latent_names, watch=f"concept_{int(corr[1])}", top=5)
                probe_rows.append({"model": n, "seed": s, "probe_class": f"concept_{int(corr[0])}",
                                   "correlated": f"concept_{int(corr[1])}", "watch_in_top5": r["watch_in_top"],
                                   "watch_rank": r["watch_rank"], "top_names": " ".join(r["top_names"])})
    naming = ex.aggregate_seeds(pd.DataFrame(naming_rows), "model")
    write_table(naming, "concept_naming", paths.results,
                caption="Concept naming accuracy against the synthetic truth (alive latents whose concept has a word).")
    print(naming.round(3).to_string(index=False))
    if probe_rows:
        probe = pd.DataFrame(probe_rows)
        write_table(probe, "probe_decomposition", paths.results, mean_std=False,
                    caption="Probe decomposition: does a class probe's top named atom list expose the concept "
                            "correlated with the class? (rank 0: not among the candidates)")
        print(probe.to_string(index=False))
elif vocabulary_path:
    from mmsae.embed.encoders import ClipEncoder

    vocab_words = concepts.load_vocabulary(vocabulary_path)
    vocab_emb = concepts.encode_vocabulary(vocab_words, ClipEncoder(text_encoder, text_encoder_pretrained))
    if vocab_emb.shape[1] != val.dim:
        raise ValueError(f"{vocabulary_path}: {text_encoder}/{text_encoder_pretrained} embeds words in d = "
                         f"{vocab_emb.shape[1]}, the data has d = {val.dim}; use the data's encoder")
    for n in names:
        a = analyses[(n, SEEDS[0])]
        with torch.no_grad():
            atoms_txt = load_model(paths.model_dir(n, SEEDS[0])).decoder_atoms(1).detach().float().cpu().numpy()
        nm, cs = concepts.name_latents(atoms_txt, vocab_emb, vocab_words)
        fires = (a.z_x > threshold).sum(0) + (a.z_y > threshold).sum(0)
        for i in np.argsort(-fires)[:20]:
            naming_rows.append({"model": n, "latent": int(i), "name": nm[i], "cosine": float(cs[i]),
                                "category": a.categories[i], "firings": int(fires[i])})
    write_table(pd.DataFrame(naming_rows), "concept_names", paths.results, mean_std=False,
                caption=f"Names of each model's 20 most frequent latents (vocabulary: {Path(vocabulary_path).name}).")
else:
    print("concept naming skipped: no ground truth and no vocabulary_path")

# %% [markdown]
# ## 5c · Zero-shot through the SAE, beside the paper's Table 1
#
# For every zero-shot set of the run (synthetic: the class concepts; real data with
# captions: the classes derived from captions by notebook 01, `caption_classes`), the
# accuracy of the dense embeddings, through each SAE's codes and through its
# reconstructions: mean and std over seeds, and the binomial standard error of an accuracy
# on `n_test` items (`mmsae.study.zero_shot`). The paper's CIFAR-10 / CIFAR-100 / ImageNet
# accuracies through its SAEs stand beside ours: another data set at another scale, so
# compare the order of the methods, not the values.

# %%
from mmsae.study.zero_shot import zero_shot_table

zs_vs_paper = zero_shot_table(per_seed, zero_shot, names)
for ext in ("csv", "tex"):  # a table of an earlier run whose data had a zero-shot set must not stay behind
    (paths.results / f"zero_shot_vs_paper.{ext}").unlink(missing_ok=True)
for set_name in zs_vs_paper["set"].unique() if len(zs_vs_paper) else []:
    t = zs_vs_paper[zs_vs_paper["set"] == set_name]
    fig = plots.plot_zero_shot_vs_paper(t, title=f"{profile}, {paths.slug}")
    plots.save_figure(fig, f"zero_shot_vs_paper_{set_name}", paths.figures)
if len(zs_vs_paper):
    write_table(zs_vs_paper, "zero_shot_vs_paper", paths.results, label="tab:zero_shot_vs_paper",
                caption=(f"Zero-shot accuracy through the SAE ({profile} profile, {data}): mean $\\pm$ std over seeds "
                         "and the binomial standard error on n\\_test items; the paper's accuracies through its SAEs "
                         "(CLIP ViT-B/16) beside them."))
    print(zs_vs_paper[["set", "model", "n_test", "code", "code_std", "code_binomial_se", "recon",
                       "paper_cifar10"]].round(3).to_string(index=False))

# %% [markdown]
# ## 5d · Latents in words, and a browser of every latent
#
# Each latent is named from the captions of what it fires on, per modality
# (`mmsae.eval.names`): on the image side the captions of the images it fires on, on the
# text side the captions it fires on; words are ranked by a log-odds contrast with an
# informative Dirichlet prior against the rest of the held-out items. On synthetic data the
# "captions" are the names of the true concepts present in each sample. For latents that
# fire on both modalities, **agreement** is the share of the top image-side words that are
# also top text-side words: does a shared latent mean one concept in both modalities? Its
# chance level pairs the image-side words of one latent with the text-side words of
# another.
#
# The **latent browser** (`results/.../browser/<model>.html`, one self-contained file per
# model, first seed) lists every latent with its category, modality score, firing counts,
# names, strongest images (shown by their captions: the images are not shipped) and
# captions; sortable, filterable by category and searchable by word.

# %%
from IPython.display import HTML, display

from mmsae.eval import names as latent_names
from mmsae.eval.metrics import modality_score
from mmsae.study.browser import write_latent_browser

caps = val.caption_lists()
if caps is not None:
    docs_x, docs_y = latent_names.caption_documents(caps)
    image_texts, caption_texts, doc_source = caps, [c[0] if c else "" for c in caps], "captions"
elif truth is not None:
    docs_x, docs_y = latent_names.truth_documents(truth["codes_x"], truth["codes_y"])
    image_texts = [[f"true concepts: {d}"] for d in docs_x]
    caption_texts, doc_source = [f"true concepts: {d}" for d in docs_y], "ground-truth concepts"
else:
    docs_x = docs_y = image_texts = caption_texts = None
    doc_source = "none"
    print("no captions and no ground truth: latents are listed by index, counts and category only")

agree_rows, latent_tables, records = [], [], {}
for n in names:
    for s in SEEDS:
        a = analyses[(n, s)]
        z_x, z_y = a.z_x, a.z_y  # dense once per model and seed
        nm = (latent_names.name_latents(z_x, z_y, docs_x, docs_y, threshold=threshold)
              if docs_x is not None else None)
        if nm is not None:
            agree_rows.append({"model": n, "seed": s, **latent_names.agreement_summary(nm, a.categories, seed=s)})
        if s == SEEDS[0]:
            records[n] = latent_names.latent_records(a.categories, a.modality_score, z_x, z_y, nm, image_texts,
                                                     caption_texts, threshold=threshold)
            latent_tables.append(pd.DataFrame([{
                "model": n, "latent": r["id"], "category": r["category"], "fires_img": r["fires_img"],
                "fires_txt": r["fires_txt"], "modality_score": r["modality_score"], "name": r.get("name", ""),
                "names_img": " ".join(r.get("names_img", [])), "names_txt": " ".join(r.get("names_txt", [])),
                "agreement": r.get("agreement")} for r in records[n]]))
write_table(pd.concat(latent_tables, ignore_index=True), "latent_names", paths.results, latex=False)
agreement = None
if agree_rows:
    agreement = ex.aggregate_seeds(pd.DataFrame(agree_rows), "model")
    write_table(agreement, "name_agreement", paths.results, label="tab:name_agreement",
                caption=(f"Do a shared latent's two sides name the same concept? Latents firing on both modalities "
                         f"with names on both sides (from {doc_source}): mean share of the top-5 image-side words "
                         "among the top-5 text-side words, the share with at least one common word, and the chance "
                         "level of the mean (sides of different latents paired)."))
    print(agreement.round(3).to_string(index=False))

# the method comparison one click away in every browser file
cmp_cols = [("model", "model"), ("both", "both"), ("image_only", "image-only"), ("text_only", "text-only"),
            ("dead", "dead"), ("unimodal_share", "unimodal share"), ("code_x2y_R@1", "R@1 img→txt (codes)")]
summary_rows = []
for n in names:
    g = per_seed[per_seed.model == n]
    row = {"model": n, **{k: round(float(g[k].mean()), 3) for k, _ in cmp_cols[1:]}}
    for zs_name in sorted(zero_shot):
        row[f"zs_{zs_name}_code"] = round(float(g[f"zs_{zs_name}_code"].mean()), 3)
    if agreement is not None:
        row["agreement_mean"] = round(float(agreement.set_index("model").loc[n, "agreement_mean"]), 3)
    summary_rows.append(row)
cmp_cols += [(f"zs_{z}_code", f"zero-shot {z} (codes)") for z in sorted(zero_shot)]
if agreement is not None:
    cmp_cols.append(("agreement_mean", "name agreement"))
browser_dir = paths.results / "browser"
for n in names:
    write_latent_browser(
        browser_dir / f"{n}.html", title=f"{n} latents: {profile} profile, {paths.slug} (seed {SEEDS[0]})", model=n,
        latents=records[n], comparison=summary_rows, comparison_columns=cmp_cols,
        siblings={o: f"{o}.html" for o in names},
        notes=(f"{len(val)} held-out pairs; names from {doc_source}; category rule: {RULE}."
               + (" Images are shown by their captions: the images themselves are not included." if caps else "")))
print("latent browsers:", ", ".join(str((browser_dir / f"{n}.html").relative_to(paths.out_dir)) for n in names))
show = "MGSAE" if "MGSAE" in names else names[0]
both_named = [r for r in records[show] if r["category"] == "both" and r.get("name")]
pd.DataFrame(sorted(both_named, key=lambda r: -(r["fires_img"] + r["fires_txt"]))[:12])[
    ["id", "name", "fires_img", "fires_txt", "names_img", "names_txt", "agreement"]] if both_named else None

# %% [markdown]
# The browser of one model, inline (open the file itself for the full page; in JupyterLab
# the inline copy runs when the notebook is trusted):

# %%
import html as _html
import warnings

with warnings.catch_warnings():  # IPython suggests IFrame, which needs a served URL; srcdoc works from the file
    warnings.simplefilter("ignore", UserWarning)
    inline = HTML(f'<iframe srcdoc="{_html.escape((browser_dir / f"{show}.html").read_text(encoding="utf-8"))}" '
                  'style="width:100%;height:520px;border:1px solid #ccc"></iframe>')
display(inline)

# %%
from mmsae.eval.analysis import headline_summary

headline = headline_summary(per_seed, names)
write_json({"profile": profile, "data": data, "seeds": SEEDS, "mms_reference": ref_kind, "n_val": len(val),
            "category_rule": RULE, "category_min_count": int(per_seed["category_min_count"].max()), "models": headline,
            "zero_shot": {z: {"n_test": int(len(zero_shot[z].labels)), "n_classes": len(zero_shot[z].class_names),
                              "classes": list(zero_shot[z].class_names),
                              "rule": zero_shot[z].meta.get("rule"), "prompts": zero_shot[z].meta.get("prompts")}
                          for z in sorted(zero_shot)},
            "name_agreement": ({} if agreement is None else
                               agreement.set_index("model").drop(columns="n_seeds").to_dict(orient="index")),
            "names_from": doc_source}, paths.results / "headline.json")
pd.DataFrame(headline).T.round(3)

# %% [markdown]
# ## 6 · Every method side by side
#
# Every method of notebook 03 (`mmsae.study.experiments.METHODS`) on the same held-out
# pairs with the same metrics, mean $\pm$ std over `comparison_seeds` seeds
# (`mmsae.study.experiments.evaluate_model`, the metrics above plus the training-side dead
# count). Codes of a single modality are used throughout: the SharedSupport SAE encodes
# a lone image or caption with its own pre-activations (a query has no partner), the
# modality-specific SAEs use their text code re-indexed by the Hungarian matching, so
# latent *i* is "the matched pair" in both modalities. Retrieval here is from the
# reconstructions (the competing paper's choice; codes in `comparison_full.csv`),
# zero-shot both from codes and from reconstructions.
#
# Written: `results/comparison.csv` + `.tex` (the table), `results/comparison_full.csv`
# (every metric), `results/per_seed_metrics.csv`, `results/comparison.md` (for the
# README); the MMS curves of every method are `figures/mms_curves` above.

# %%
cmp_full = ex.comparison_table(per_seed)
write_table(cmp_full, "comparison_full", paths.results, latex=False)

zs_names = sorted(zero_shot)
table_cols = (["image_only", "text_only", "both", "dead", "mms_img_txt_mean_alive", "explained_variance_x",
               "explained_variance_y"]
              + [f"recon_{d}_{k}" for d in ("x2y", "y2x") for k in ("R@1", "R@10", "MRR")]
              + [f"zs_{z}_{w}" for z in zs_names for w in ("code", "recon")])
table_cols = [c for c in table_cols if c in cmp_full.columns]
cmp = cmp_full[["model"] + [c for col in table_cols for c in (col, f"{col}_std")] + ["n_seeds"]]
write_table(cmp, "comparison", paths.results, label="tab:comparison",
            caption=(f"Every method on held-out pairs ({profile} profile, {data}; mean $\\pm$ std over "
                     f"{len(P['comparison_seeds'])} seeds). Neuron categories; MMS image-text (reference: {ref_kind}); "
                     "explained variance per modality; retrieval from reconstructions; zero-shot through the SAE."))
headers = {"image_only": "img-only", "text_only": "txt-only", "mms_img_txt_mean_alive": "MMS img-txt",
           "explained_variance_x": "EV img", "explained_variance_y": "EV txt"}
md = ex.markdown_table(cmp_full, table_cols, headers=headers)
(paths.results / "comparison.md").write_text(md)
print(md)

# %%
if "gt_recovery_mean" in cmp_full:
    print(cmp_full[["model", "gt_recovery_mean", "gt_recovery_mean_std", "gt_alignment_error",
                    "gt_collapse_rate"]].round(3).to_string(index=False))

# %% [markdown]
# ## 7 · Ablations
#
# Each ablation model (trained by notebook 03, reused here) is evaluated on the same
# held-out pairs; tables give mean $\pm$ std over `sweep_seeds` seeds, figures the mean
# with $\pm 1$ std error bars. Notebook 03's `ablation_steps` training steps per model, so absolute
# numbers sit below the main table's at the smoke profile; compare within a sweep.
#
# * `ablation_lambda`: the l2,1 weight (0 = no group penalty);
# * `ablation_mask_rate`: MGSAE's drop rate (0 = GSAE);
# * `ablation_mask_mode`: one mask per pair vs one per batch;
# * `ablation_width_k`: dictionary width (expansion x d) x K, lambda = `width_k_lambda`.

# %%
abl_metrics = {k: v for k, v in ex.SWEEP_METRICS.items() if truth is not None or not k.startswith("gt_")}
abl_cols = (["both", "dead", "frac_both", "mms_img_txt_mean_alive", "explained_variance_x", "explained_variance_y",
             "recon_x2y_R@1", "recon_y2x_R@1"] + [f"zs_{z}_recon" for z in zs_names]
            + ["gt_recovery_mean", "gt_alignment_error"])
TIMING = ["wall_time_s"]  # machine-dependent: kept in the untracked run folder, never in results/
sweep_x = {"lambda": ("group_lambda", "$\\lambda$"), "mask_rate": ("mask_rate", "mask rate"),
           "mask_mode": ("mask_mode", "mask drawn per"), "width_k": ("expansion", "expansion (m / d)")}
ablations = {}
if run_ablations:
    for sweep, (xcol, xlabel) in sweep_x.items():
        raw = ex.add_derived(ex.run_sweep(sweep, train, val, P, models_dir=paths.root / "models", truth=truth,
                                          zero_shot_sets=zero_shot, ref_x=ref_x, ref_y=ref_y, train=False,
                                          hint=f"(profile={profile!r}, data={data!r}, run_ablations=True)"))
        abl_steps = ex.read_sweep_manifest(paths.root / "models", sweep)["steps"]
        write_table(raw.drop(columns=TIMING, errors="ignore"), f"ablation_{sweep}_per_seed", paths.results, latex=False)
        write_table(raw, f"ablation_{sweep}_per_seed_with_timings", paths.root, latex=False)
        by = ["model", "expansion", "k", "m"] if sweep == "width_k" else ["model", xcol]
        agg = ex.aggregate_seeds(raw, by)
        cols = [c for c in abl_cols if c in agg.columns]
        tab = agg[by + [c for col in cols for c in (col, f"{col}_std")] + ["n_seeds"]]
        write_table(tab, f"ablation_{sweep}", paths.results, label=f"tab:ablation_{sweep}",
                    caption=(f"Ablation: {xlabel} ({profile} profile, {data}, {abl_steps} steps; mean "
                             f"$\\pm$ std over {len(P['sweep_seeds'])} seeds)."))
        if sweep == "width_k":
            agg = agg.assign(series=[f"{mo} K={k}" if agg["model"].nunique() > 1 else f"K={k}"
                                     for mo, k in zip(agg["model"], agg["k"])])
            fig = ex.plot_sweep(agg, "expansion", abl_metrics, hue="series", xlabel=xlabel)
        else:
            fig = ex.plot_sweep(agg, xcol, abl_metrics, xlabel=xlabel)
        plots.save_figure(fig, f"ablation_{sweep}", paths.figures)
        ablations[sweep] = tab
        print(f"== {sweep}")
        print(tab[by + [c for c in ("frac_both", "mms_img_txt_mean_alive", "explained_variance_x", "recon_x2y_R@1",
                                    "gt_recovery_mean") if c in tab]].round(3).to_string(index=False))

# %% [markdown]
# ## 8 · The alpha sweep: where each design wins
#
# For each concept-direction cosine alpha the synthetic data are regenerated and every
# method retrained (notebook 03). Against the ground truth:
#
# * **atom recovery**: best cosine of each true image atom to the image-side decoder and of
#   each true text atom to the text-side decoder (mean of the two);
# * **alignment error**: 1 - the fraction of shared concepts tracked by one and the same
#   latent in both modalities (by activation correlation);
# * **collapse rate**: shared concepts whose best image atom and best text atom are the
#   same decoder column. For a shared dictionary at alpha < 1 this is the competing
#   paper's failure mode (one column for two directions); for the aligned
#   modality-specific SAEs "same column" means "matched to each other", so read it there
#   as alignment success.
#
# The modality-specific design should recover the separate directions when alpha is
# small; shared designs should align concepts (low alignment error) and lose nothing
# when alpha approaches 1. `results/alpha_sweep.csv`/`.tex`, `figures/alpha_sweep.pdf`.

# %%
if run_alpha_sweep is None:
    run_alpha_sweep = data == "synthetic"
if run_alpha_sweep:
    alpha_raw = ex.add_derived(ex.sweep_alpha(P, models_dir=paths.root / "models", train=False,
                                              hint=f"(profile={profile!r}, run_alpha_sweep=True)"))
    alpha_man = ex.read_sweep_manifest(paths.root / "models", "alpha")
    write_table(alpha_raw.drop(columns=TIMING, errors="ignore"), "alpha_sweep_per_seed", paths.results, latex=False)
    write_table(alpha_raw, "alpha_sweep_per_seed_with_timings", paths.root, latex=False)
    alpha_agg = ex.aggregate_seeds(alpha_raw, ["model", "alpha"])
    a_cols = ["gt_recovery_x_mean", "gt_recovery_y_mean", "gt_recovery_mean", "gt_alignment_error",
              "gt_collapse_rate", "explained_variance_x", "explained_variance_y", "recon_x2y_R@1", "both"]
    a_cols = [c for c in a_cols if c in alpha_agg]
    alpha_tab = alpha_agg[["model", "alpha"] + [c for col in a_cols for c in (col, f"{col}_std")] + ["n_seeds"]]
    write_table(alpha_tab, "alpha_sweep", paths.results, label="tab:alpha_sweep",
                caption=(f"Synthetic alpha sweep ({profile} profile, {alpha_man['n_pairs']} pairs, "
                         f"{alpha_man['steps']} steps; mean $\\pm$ std over {len(P['sweep_seeds'])} seeds)."))
    fig = ex.plot_sweep(alpha_agg, "alpha", ex.ALPHA_METRICS, xlabel="alpha = cos(image dir., text dir.)")
    plots.save_figure(fig, "alpha_sweep", paths.figures)
    best = []
    for a, g in alpha_agg.groupby("alpha"):
        best.append({"alpha": a,
                     "best_recovery": g.loc[g["gt_recovery_mean"].idxmax(), "model"],
                     "best_recovery_value": g["gt_recovery_mean"].max(),
                     "lowest_alignment_error": g.loc[g["gt_alignment_error"].idxmin(), "model"],
                     "lowest_alignment_error_value": g["gt_alignment_error"].min()})
    winners = pd.DataFrame(best)
    write_table(winners, "alpha_sweep_winners", paths.results, label="tab:alpha_winners",
                caption="Which method wins at each alpha (mean over seeds).")
    print(winners.round(3).to_string(index=False))
