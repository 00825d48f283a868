"""Calibrate the paper profile's synthetic generator on the SAE baseline: a scripted, recorded search.

The paper-scale stand-in must behave like CLIP where the paper measured CLIP: the pooled TopK SAE
(d = 512, m = 8192, K = 32, batch 128, lr 4e-4) should land near the paper's SAE row on held-out
pairs (never fires <= 0.10 of m; "both" under the any-firing rule 0.45-0.65; image-only and
text-only 0.10-0.30 each), dense zero-shot on the synthetic classes 0.85-0.95 with the SAE's codes
below dense, and 500 pairs within 15 % of real CLIP's geometry (``tests/test_synthetic.py``). Only
the SAE is used to calibrate; the other rungs of the ladder are the test.

    python scripts/calibrate_generator.py --geometry                 # every candidate's geometry (seconds)
    python scripts/calibrate_generator.py --train c3 --steps 4000    # one SAE, categories every --eval-every steps
    python scripts/calibrate_generator.py --report                   # the table of every recorded run

Candidates (:data:`CANDIDATES`) are overrides of the paper profile's generator keys. A training
run writes ``docs/calibration/<candidate>-<steps>.json``: its settings, the categories at every
evaluation step (the drift with training length) and the final zero-shot; ``--report`` collects
them into ``docs/calibration.md`` (and ``results/paper-synthetic/calibration.{csv,tex}``). Short
runs only rank candidates: the lr schedule decays over the last 20 % of whatever length is asked
for, and the categories drift as training goes on, so the chosen generator is judged at 25,000 steps.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "lib"))

import numpy as np  # noqa: E402

from mmsae.data.synthetic import GENERATOR_PROFILE_KEYS, config_from_profile, make_synthetic  # noqa: E402
from mmsae.study.profiles import PROFILES, get_profile  # noqa: E402

OUT = ROOT / "docs" / "calibration"

#: The targets (the paper's SAE row, CLIP ViT-B/16 on CC3M, 8192 latents), as ranges of shares of m.
TARGETS = {"never_fires": (0.0, 0.10), "both_any": (0.45, 0.65), "image_only_any": (0.10, 0.30),
           "text_only_any": (0.10, 0.30), "zs_dense": (0.85, 0.95)}

#: Generator settings tried, as overrides of the ``paper`` profile's generator keys (the profile's
#: own setting before this search is ``p0``). The search's reasoning is in docs/calibration.md.
CANDIDATES: dict[str, dict] = {
    "p0": {},
    "c1": dict(n_shared=16384, n_image_only=4096, n_text_only=4096, mean_shared=16, mean_image_only=5,
               mean_text_only=4, concept_zipf=1.0),
    "c2": dict(n_shared=12288, n_image_only=6144, n_text_only=6144, mean_shared=12, mean_image_only=8,
               mean_text_only=8, concept_zipf=1.0),
    "c3": dict(n_shared=8192, n_image_only=8192, n_text_only=8192, mean_shared=10, mean_image_only=10,
               mean_text_only=10, concept_zipf=1.0),
    "c4": dict(n_shared=12288, n_image_only=6144, n_text_only=6144, mean_shared=12, mean_image_only=8,
               mean_text_only=8, concept_zipf=0.8),
}
CANDIDATES["c6"] = {**CANDIDATES["c2"], "mean_shared": 16, "mean_image_only": 10, "mean_text_only": 10}
CANDIDATES["c5"] = {**CANDIDATES["c2"], "mean_shared": 8, "mean_image_only": 10, "mean_text_only": 10}
_GEO = dict(atom_decay=1.1, private_scale=2.0, noise=2.0)  # fit_geometry("c2")'s best
CANDIDATES["c2g"] = {**CANDIDATES["c2"], **_GEO}  # (screened with the first, asymmetric shared directions)
CANDIDATES["c1g"] = {**CANDIDATES["c1"], **_GEO}
# symmetric shared directions (each side a private part): fit_geometry("c2")'s best again
_GEO_S = dict(atom_decay=1.1, private_scale=2.5, noise=1.6)
CANDIDATES["c2s"] = {**CANDIDATES["c2"], **_GEO_S}
CANDIDATES["c6s"] = {**CANDIDATES["c6"], **_GEO_S}
# c2s and c6s at 4,000 steps: never fires ~0.005, "both" falling with training (0.83 -> 0.60), text-only
# rising (0.15 -> 0.36), image-only ~0.03. CLIP's images carry more of their own content than captions
# (the paper: image-only 0.22 > text-only 0.16): give the images more modality-only concepts (c7); a
# closer image and text direction per shared concept (alpha 0.7) to hold "both" up (c9)
CANDIDATES["c7"] = {**CANDIDATES["c6s"], "mean_image_only": 14, "mean_text_only": 6}
CANDIDATES["c9"] = {**CANDIDATES["c7"], "alpha": 0.7}
for _b in (2, 3, 4, 6):
    CANDIDATES[f"c6b{_b}"] = {**CANDIDATES["c6s"], "class_boost": float(_b)}
# c7, c9 at 4,000 steps: the same one-sidedness (text-only 0.31-0.34, image-only 0.03). The pooled pre-bias
# drifts to one modality's mean (seed 0: the text mean, 0.29 from it and 0.60 from the image mean after
# 1,000 steps); that modality's latents can gate the other by its offset, the other's cannot. Image-only and
# text-only concepts in subspaces of their own (modality_rank) give each side latents the other never
# excites, as CLIP's image and text principal subspaces overlap little; class_boost 4 brings dense
# zero-shot to ~0.9 (c6b4)
CANDIDATES["c11"] = {**CANDIDATES["c6b4"], "modality_rank": 48}
CANDIDATES["c12"] = {**CANDIDATES["c11"], "mean_image_only": 14, "mean_text_only": 8}
# c11, c12: class_boost 4 makes the SAE spend latents on the ten heavy class concepts: by 3,000 steps "never
# fires" 0.12-0.15 and "both" 0.30, image-only still 0.08-0.10. Real CLIP spreads each modality along its mean
# directions (std of the projection on the gap direction: 0.048 images, 0.057 texts, on the 500 COCO pairs);
# the generator put none there (0.015), so a latent can gate a modality by its offset without error.
# offset_jitter 0.07 (before normalisation) gives ~0.05 (c13); c14 with class_boost 2.
CANDIDATES["c13"] = {**CANDIDATES["c6s"], "offset_jitter": 0.07}
CANDIDATES["c14"] = {**CANDIDATES["c13"], "class_boost": 2.0}
# c13, c14 at 4,000 steps: "both" 0.71 / 0.72, image-only 0.035 / 0.069, text-only 0.26 / 0.21, never fires
# 0.002 / 0.005; c14 closest. Its geometry, refitted (fit_geometry("c14")), is the paper profile's generator:
for _nz in (0.5, 0.6, 0.7):
    CANDIDATES[f"c15n{_nz:g}"] = {**CANDIDATES["c14"], "atom_decay": 1.0, "private_scale": 2.5, "noise": _nz}
for _j in (0.05, 0.06):
    CANDIDATES[f"c15j{_j:g}"] = {**CANDIDATES["c15n0.6"], "offset_jitter": _j}
# c15j0.06 (noise 0.6) judged at 25,000 steps went wrong from the start: at step 2,500 "both" 0.30 and never
# fires 0.20 (c14, noise 1.6: 0.75 and 0.01 at 2,000). The isotropic noise is what the SAE's K slots beyond a
# sample's concepts fire on, and it keeps latents alive: keep c14's noise, reach the geometry by the jitter
for _j in (0.03, 0.04, 0.05):
    for _nz in (1.4, 1.6):
        CANDIDATES[f"c16j{_j:g}n{_nz:g}"] = {**CANDIDATES["c14"], "offset_jitter": _j, "noise": _nz}
for _p in (2.7, 3.0):
    CANDIDATES[f"c17p{_p:g}"] = {**CANDIDATES["c16j0.05n1.6"], "private_scale": _p}
# c17p2.7 judged at full length also went wrong from the start (step 2,500: "both" 0.27, never fires 0.21), like
# c15: the screening runs trained on 60,000 pairs, the paper-scale run on 190,000. The same SAE, 2,000 steps, on
# the run's own data cut to 60,000 pairs: "both" 0.72, never fires 0.004; on all 190,000: 0.50 and 0.064
# (docs/calibration/diag_run*.log). With more distinct training pairs the latents specialise on the rare
# concepts of the Zipfian tail, which 10,000 held-out pairs hardly contain. At 190,000 pairs (diag_z*.log):
# Zipf 0.5 -> 0.68 / 0.006 at 3,000 steps, uniform frequencies -> 0.76 / 0.004 with image-only 0.05. The paper
# profile takes uniform frequencies; atom_decay 1.15 restores the geometry.
CANDIDATES["z05"] = {**CANDIDATES["c17p2.7"], "concept_zipf": 0.5}
CANDIDATES["z0d1.15"] = {**CANDIDATES["c17p2.7"], "concept_zipf": 0.0, "atom_decay": 1.15}
# The judge of the profile (z0d1.15's settings, on the run's own 190,000 pairs) at 25,000 steps: never fires 0.027 and
# image-only 0.20 met, but "both" 0.41, text-only 0.37, dense zero-shot 0.72 and codes 0.98 above dense. The categories
# settle after ~7,500 steps (docs/calibration.md), so the next round is screened at 7,500 steps on 190,000 pairs.
# Dense zero-shot: a class concept drawn like the others lies in the directions every concept crowds, and a stronger
# class (class_boost 4-5) to lift it shrinks the effective rank below CLIP's. Class directions spread over all of
# R^510 (class_isotropic) separate the classes at a modest boost; a lower image-text cosine for the class concepts
# (class_alpha 0.3) lets the SAE give a class one latent per modality, as it does on CLIP, where its codes fall
# below dense. Images carry more of their own content than captions (c7's shift of modality-only concepts).
CANDIDATES["k1"] = {**CANDIDATES["z0d1.15"], "class_isotropic": True, "class_alpha": 0.3, "class_boost": 3.0}
CANDIDATES["k2"] = {**CANDIDATES["k1"], "mean_image_only": 12, "mean_text_only": 7}
# k1, k2 refitted to the geometry (fit_geometry with alpha, noise, private_scale, class_alpha and the coefficient
# jitter): the isotropic classes raise retrieval above CLIP's unless a shared concept's two coefficients differ more
CANDIDATES["k3"] = {**CANDIDATES["k2"], "alpha": 0.55, "jitter": 0.45, "noise": 1.8, "private_scale": 3.0, "class_alpha": 0.4}
CANDIDATES["k4"] = {**CANDIDATES["k2"], "alpha": 0.6, "jitter": 0.45, "noise": 2.0, "private_scale": 3.0, "class_alpha": 0.35}
# k3, k4 at 7,500 steps on 190,000 pairs: dense zero-shot 0.91 / 0.88 (met) with the codes at 0.93 (still above), "both"
# 0.46 / 0.54, never fires 0.04 / 0.03, but image-only 0.07 and text-only 0.43 / 0.37. The judged SAE's pooled pre-bias
# ends nearer the text mean (0.43 against 0.50), and 60 % of its encoder rows point away from the image offset: those
# latents can fire on captions only. Fewer caption-only concepts and more image-only ones (k5), or image-only and
# text-only concepts in subspaces of their own, which the other modality never excites (k6)
CANDIDATES["k5"] = {**CANDIDATES["k4"], "mean_image_only": 14, "mean_text_only": 4}
CANDIDATES["k6"] = {**CANDIDATES["k4"], "modality_rank": 48}
# k5 at 7,500 steps: the same one-sidedness (image-only 0.06, text-only 0.38). k6: image-only 0.15, never fires 0.08,
# dense zero-shot 0.88 with the codes below it (0.81), the paper's pattern; "both" 0.41 and text-only 0.37 still
# outside. k6's larger private parts and noise shrink the spread along the gap direction after normalisation to under
# half of CLIP's (0.024 against 0.048): offset_jitter 0.06 restores it (k8, not screened). k8 is the paper profile's
# generator (within CLIP's geometry on the 500-pair draw of tests/test_synthetic.py; a 500-pair subset of 2,000
# pairs puts text-to-image R@1 at 0.61, 20 % above CLIP's), judged at 25,000 steps
CANDIDATES["k8"] = {**CANDIDATES["k6"], "offset_jitter": 0.06}
for _n, _d in [("c1", 0.5), ("c1", 1.0), ("c2", 0.5), ("c2", 1.0), ("c2", 1.5), ("c3", 1.0)]:
    CANDIDATES[f"{_n}d{_d:g}"] = {**CANDIDATES[_n], "atom_decay": _d}


def candidate_profile(name: str) -> dict:
    if name in CANDIDATES:
        return get_profile("paper", **CANDIDATES[name])
    if name == "profile":  # the paper profile as committed
        return get_profile("paper")
    raise SystemExit(f"unknown candidate {name!r}; choose from {sorted(CANDIDATES)} or 'profile'")


def geometry(names) -> list[dict]:
    from mmsae.eval.geometry import compare_geometry, embedding_geometry, real_clip_geometry

    ref = real_clip_geometry()
    rows = []
    for name in names:
        P = candidate_profile(name)
        s = make_synthetic(config_from_profile(P, n_pairs=2000, seed=0))
        zs = s.zero_shot_set()
        zs_dense = float(((zs.emb @ zs.class_emb.T).argmax(1) == zs.labels).mean())
        s = s.subset(np.arange(500))
        df = compare_geometry(embedding_geometry(s.pairs.x, s.pairs.y), ref)
        bad = df[~df["within"]]
        row = {"candidate": name, "within": int(df["within"].sum()), "of": len(df), "zs_dense": zs_dense,
               **{r.statistic: round(r.ours, 3) for r in df.itertuples()},
               "outside": ", ".join(f"{r.statistic} {r.ours:.3f} (ref {r.reference:.3f})" for r in bad.itertuples())}
        rows.append(row)
        print(f"{name}: dense zero-shot {zs_dense:.3f}; geometry {row['within']}/{row['of']} within; outside: "
              f"{row['outside'] or 'none'}", flush=True)
    return rows


def fit_geometry(name: str, grid: dict | None = None) -> dict:
    """Grid search of the geometry knobs (``atom_decay``, ``private_scale``, ``noise``) for one
    candidate's concept structure: the setting with the most statistics within tolerance, ties
    broken by the summed relative miss. Prints the best few; the chosen values go into a new entry
    of :data:`CANDIDATES` by hand (so that each trained candidate is a fixed, named setting)."""
    import itertools

    from mmsae.eval.geometry import compare_geometry, embedding_geometry, real_clip_geometry

    grid = grid or {"atom_decay": [1.0, 1.1], "private_scale": [2.0, 2.5], "noise": [0.8, 1.2, 1.6]}
    ref = real_clip_geometry()
    base = CANDIDATES[name]
    scored = []
    for values in itertools.product(*grid.values()):
        ov = dict(zip(grid, values))
        s = make_synthetic(config_from_profile(get_profile("paper", **{**base, **ov}), n_pairs=500, seed=0))
        df = compare_geometry(embedding_geometry(s.pairs.x, s.pairs.y), ref)
        miss = float(np.clip(df["rel_diff"] - 0.15, 0, None).sum())
        scored.append((int(df["within"].sum()), -miss, ov, df))
    scored.sort(key=lambda t: (t[0], t[1]), reverse=True)
    for within, miss, ov, df in scored[:5]:
        bad = df[~df["within"]]
        print(f"{name} + {ov}: {within}/{len(df)} within, miss {-miss:.3f}; outside: "
              + (", ".join(f"{r.statistic} {r.ours:.3f}" for r in bad.itertuples()) or "none"), flush=True)
    return scored[0][2]


def categories(model, vx: np.ndarray, vy: np.ndarray) -> dict:
    """Shares of m under the paper's any-firing rule on the held-out pairs."""
    from mmsae.eval import metrics

    model.eval()
    zx, zy = model.encode_numpy(vx, 0), model.encode_numpy(vy, 1)
    model.train()
    cx, cy = (zx > 0).sum(0), (zy > 0).sum(0)
    m = zx.shape[1]
    fx, fy = cx >= 1, cy >= 1
    out = {"both_any": float((fx & fy).sum() / m), "image_only_any": float((fx & ~fy).sum() / m),
           "text_only_any": float((~fx & fy).sum() / m), "never_fires": float((~fx & ~fy).sum() / m)}
    sc = metrics.neuron_categories(zx, zy, min_count="scaled")
    out.update({f"{k}_scaled": sc[k] / m for k in ("both", "image_only", "text_only", "dead")})
    return out


def train_candidate(name: str, steps: int, n_pairs: int, n_val: int, eval_every: int, seed: int = 0) -> dict:
    import torch

    from mmsae.eval import metrics
    from mmsae.models.base import build_model
    from mmsae.study.experiments import method_config
    from mmsae.study.methods import SAE
    from mmsae.train.loop import TrainConfig, train

    P = candidate_profile(name)
    t0 = time.time()
    s = make_synthetic(config_from_profile(P, n_pairs=n_pairs + n_val, seed=seed))
    perm = np.random.default_rng(seed).permutation(n_pairs + n_val)
    tr, va = np.sort(perm[n_val:]), np.sort(perm[:n_val])
    x, y = np.asarray(s.pairs.x), np.asarray(s.pairs.y)
    vx, vy = x[va], y[va]
    zs = s.subset(va).zero_shot_set()
    gen_s = time.time() - t0
    cx_val = s.subset(va).codes_x
    concepts_per_image = float((cx_val > 0).sum() / len(va)) if not hasattr(cx_val, "nnz") else cx_val.nnz / len(va)
    model = build_model(method_config(SAE, P, d=x.shape[1]), seed=seed)
    curve = []

    def cb(step, rec):
        if step % eval_every == 0 or step == steps:
            c = categories(model, vx, vy)
            curve.append({"step": step, **{k: round(v, 4) for k, v in c.items()}, "ev_x": rec.get("ev_x"),
                          "ev_y": rec.get("ev_y"), "train_dead": rec.get("dead")})
            print(f"{name} step {step}: " + ", ".join(f"{k} {v:.3f}" for k, v in c.items()), flush=True)

    tc = TrainConfig(steps=steps, batch_size=int(P["batch_size"]), lr=float(P["lr"]), seed=seed, progress=False,
                     log_every=min(eval_every, 500), device="cpu")
    t1 = time.time()
    train(model, (x[tr], y[tr]), tc, callback=cb)
    train_s = time.time() - t1
    model.eval()
    emb, ce = np.asarray(zs.emb, np.float32), np.asarray(zs.class_emb, np.float32)
    with torch.no_grad():
        zs_code = metrics.zero_shot_accuracy(model.encode_numpy(emb, 0), zs.labels, model.encode_numpy(ce, 1))
        zs_recon = metrics.zero_shot_accuracy(model.reconstruct_numpy(emb, 0), zs.labels,
                                              model.reconstruct_numpy(ce, 1))
    rec = {"candidate": name, "overrides": CANDIDATES.get(name, {}),
           "generator": {k: P[k] for k in GENERATOR_PROFILE_KEYS}, "steps": steps, "n_train": int(len(tr)),
           "n_val": int(len(va)), "seed": seed, "concepts_per_image": round(concepts_per_image, 2),
           "zs_dense": metrics.zero_shot_accuracy(emb, zs.labels, ce), "zs_code": zs_code, "zs_recon": zs_recon,
           "curve": curve, "generate_s": round(gen_s, 1), "train_s": round(train_s, 1),
           "threads": torch.get_num_threads(), "date": time.strftime("%Y-%m-%d %H:%M")}
    OUT.mkdir(parents=True, exist_ok=True)
    path = OUT / f"{name}-{steps}.json"
    path.write_text(json.dumps(rec, indent=1) + "\n")
    print(f"{name}: wrote {path.relative_to(ROOT)} (zero-shot dense {rec['zs_dense']:.3f}, codes {zs_code:.3f})")
    return rec


def judge(eval_every: int = 2500, seed: int = 0) -> dict:
    """The calibrated generator judged at the paper's full length, on the paper-scale run's own data: the
    SAE of ``scripts/paper_scale.py`` (notebook 02 reuses it: same settings, same data, same folder),
    trained here so that its categories on the 10,000 held-out pairs are recorded every ``eval_every``
    steps (the drift with training length). Needs notebook 01 of the paper profile first
    (``scripts/paper_scale.py --only 1``). Writes ``docs/calibration/judge-25000.json``."""
    import torch

    from mmsae.eval import metrics
    from mmsae.study.experiments import train_method
    from mmsae.study.methods import SAE
    from mmsae.study.runs import RunPaths, load_run_data

    paths = RunPaths(ROOT, "paper", "synthetic")
    train_pairs, val, _, zero_shot = load_run_data(paths)
    P = get_profile("paper")
    vx, vy = np.asarray(val.x, np.float32), np.asarray(val.y, np.float32)
    curve = []

    def cb(model, step, rec):
        if step % eval_every == 0 or step == P["steps"]:
            c = categories(model, vx, vy)
            curve.append({"step": step, **{k: round(v, 4) for k, v in c.items()}, "ev_x": rec.get("ev_x"),
                          "ev_y": rec.get("ev_y"), "train_dead": rec.get("dead")})
            print(f"judge step {step}: " + ", ".join(f"{k} {v:.3f}" for k, v in c.items()), flush=True)

    t0 = time.time()
    model = train_method(SAE, train_pairs, P, seed=seed, out_dir=paths.root / "models", callback=cb, progress=False,
                         device="cpu").eval()
    if not curve:
        raise SystemExit(f"judge: {paths.root / 'models'} already holds this SAE (reused, not trained): remove it to judge")
    zs = next(iter(zero_shot.values()))
    emb, ce = np.asarray(zs.emb, np.float32), np.asarray(zs.class_emb, np.float32)
    with torch.no_grad():
        zs_code = metrics.zero_shot_accuracy(model.encode_numpy(emb, 0), zs.labels, model.encode_numpy(ce, 1))
    rec = {"candidate": "judge (the paper profile)", "overrides": {}, "generator": {k: P[k] for k in GENERATOR_PROFILE_KEYS},
           "steps": int(P["steps"]), "n_train": len(train_pairs), "n_val": len(val), "seed": seed,
           "concepts_per_image": None, "zs_dense": metrics.zero_shot_accuracy(emb, zs.labels, ce), "zs_code": zs_code,
           "zs_recon": None, "curve": curve, "train_s": round(time.time() - t0, 1), "threads": torch.get_num_threads(),
           "date": time.strftime("%Y-%m-%d %H:%M")}
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / f"judge-{P['steps']}.json").write_text(json.dumps(rec, indent=1) + "\n")
    print(f"judge: zero-shot dense {rec['zs_dense']:.3f}, codes {zs_code:.3f}; " + ("meets" if meets(
        {**curve[-1], "zs_dense": rec["zs_dense"], "zs_code": zs_code}) else "misses") + " the targets")
    return rec


def target_verdicts(row: dict) -> list[tuple[str, float, bool]]:
    """``(target, value, met)`` for each of :data:`TARGETS` the row has, then ``("codes below dense", zs_code,
    met)`` when it has both zero-shot accuracies: what every report of the calibration words."""
    out = [(k, row[k], lo <= row[k] <= hi) for k, (lo, hi) in TARGETS.items() if k in row]
    if "zs_code" in row and "zs_dense" in row:
        out.append(("codes below dense", row["zs_code"], row["zs_code"] < row["zs_dense"]))
    return out


def meets(row: dict) -> bool:
    v = target_verdicts(row)
    return len(v) == len(TARGETS) + 1 and all(ok for _, _, ok in v)


INTRO = """# Calibrating the paper-scale stand-in on the SAE

The paper profile's synthetic data (`mmsae.data.synthetic`, `paper` in `mmsae.study.profiles`) stands in
for CLIP ViT-B/16 on CC3M at the paper's settings (d = 512, m = 8192, K = 32, 25,000 steps of 128 pairs,
200,000 pairs of which 10,000 are held out). It was calibrated on the pooled TopK SAE only, by
`scripts/calibrate_generator.py`, which wrote every record this page is made of (`docs/calibration/*.json`);
the other rungs of the ladder were trained once afterwards and are the test, not the target.

**Targets** (the paper's SAE row, shares of the 8192 latents, held-out pairs, a latent counting for a
modality when it fires on it once): never fires <= 0.10; both 0.45-0.65; image-only and text-only
0.10-0.30 each; dense zero-shot on the class concepts 0.85-0.95 with the SAE's codes below dense; and 500
pairs within 15 % of real CLIP's geometry (`tests/test_synthetic.py`).

**The search.** The generator before it (3,072 concepts, about 8 in an embedding, steeply Zipfian) let
latents specialise on rare concepts as training went on: at 25,000 steps 56 % of the SAE's latents never
fired on the held-out pairs. The candidates below (their settings and the reasoning between rounds are in
`CANDIDATES` of the script) added, in turn: far more concepts than latents (24,576) and more of them in an
embedding (about 27, against K = 32); concept directions with a decaying spectrum, one basis per modality, so
that so many concepts keep CLIP's effective rank; shared concepts whose image and text directions each have a
private part (`_decaying` in `mmsae.data.synthetic`); a stronger class concept (`class_boost`); and per-sample
spread along the mean directions, which real CLIP has and the generator had not (`offset_jitter`). Screening
runs (4,000 steps on 60,000 pairs, one thread) ranked them. Two judges at full length then went wrong from
their first evaluation, and the diagnosis (`diag_*.log`) was the size of the training set, not the settings
that had changed: on 190,000 pairs, with Zipfian concept frequencies, the SAE spends latents on concepts too
rare to show in 10,000 held-out pairs, which 60,000 training pairs hid. The paper profile therefore draws the
concepts of each pool with uniform frequencies; a first judge, trained on the paper-scale run's own data,
met two of the six targets (never fires, image-only). The second round (k3-k6, screened at 7,500
steps on the 190,000 pairs, where the first judge's categories had settled) moved the class concepts off the
directions every other concept crowds (`class_isotropic`) with a lower image-text cosine (`class_alpha`), which
brings dense zero-shot to CLIP's level with the SAE's codes below it, and put image-only and text-only concepts
in subspaces of their own (`modality_rank`), which the other modality never excites: k6 balanced image-only and
text-only latents. Its geometry, refitted (a little more spread along the gap direction, `offset_jitter`), is
the paper profile's generator (k8), judged below at the full length on the run's own data; that SAE is the one
the paper-scale run reports. Runs stopped before their end (abandoned candidates, the two first judges) are
kept as their evaluation lines, `docs/calibration/*-stopped.log` and `*-aborted.log`; the first judge's record
is `judge-25000-z0d1.15.json`.
"""


def _judge_files():
    """Every judge's record, oldest first (by the date it records): the last is the profile's generator."""
    return sorted(OUT.glob("judge-*.json"), key=lambda f: json.loads(f.read_text()).get("date", ""))


def report(markdown: Path | None = None) -> list[dict]:
    import pandas as pd

    from mmsae.study.runs import write_table

    rows = []
    candidates = sorted((f for f in OUT.glob("*.json") if not f.name.startswith("judge-")),
                        key=lambda f: json.loads(f.read_text()).get("date", ""))
    for f in candidates + _judge_files():
        r = json.loads(f.read_text())
        last = r["curve"][-1]
        rows.append({"candidate": r["candidate"], "steps": r["steps"], "train pairs": r["n_train"],
                     **{k: last[k] for k in ("never_fires", "both_any", "image_only_any", "text_only_any")},
                     "zs_dense": round(r["zs_dense"], 3), "zs_code": round(r["zs_code"], 3)})
        rows[-1]["meets targets"] = meets(rows[-1])
    df = pd.DataFrame(rows)
    print(df.to_string(index=False))
    if markdown is None or df.empty:
        return rows
    write_table(df, "calibration", ROOT / "results" / "paper-synthetic",
                caption="Calibration runs of the paper profile's generator: the SAE's categories on held-out pairs "
                        "(any-firing rule) at the end of each run.")
    text = [INTRO, "## Every run", "",
            "Shares of the dictionary at the end of each run (`results/paper-synthetic/calibration.csv`):", "",
            _md(df), ""]
    judges = _judge_files()
    if judges:
        j = json.loads(judges[-1].read_text())
        curve = pd.DataFrame(j["curve"])[["step", "never_fires", "both_any", "image_only_any", "text_only_any"]]
        last = {**j["curve"][-1], "zs_dense": j["zs_dense"], "zs_code": j["zs_code"]}
        verdicts = [f"{k.replace('_', ' ')} {v:.3f} ({'met' if ok else 'missed'}: {TARGETS[k][0]}-{TARGETS[k][1]})"
                    for k, v, ok in target_verdicts(last) if k in TARGETS]
        verdicts.append(f"codes {j['zs_code']:.3f} {'below' if j['zs_code'] < j['zs_dense'] else 'above'} dense")
        fig = _drift_figure(curve)
        from mmsae.study.plots import save_figure

        save_figure(fig, "calibration_drift", ROOT / "figures" / "paper-synthetic")
        text += ["## The chosen generator at 25,000 steps", "",
                 f"Judged on the paper-scale run's data ({j['n_train']} training pairs, {j['n_val']} held out), the "
                 "SAE's categories every 2,500 steps:", "", _md(curve.round(3)), "",
                 "![never fires and both against the step](../figures/paper-synthetic/calibration_drift.png)", "",
                 "Against the targets at the last step: " + "; ".join(verdicts) + ".", ""]
    markdown.write_text("\n".join(text))
    print(f"wrote {markdown.relative_to(ROOT)}")
    return rows


def _md(df) -> str:
    cols = list(df.columns)
    out = ["| " + " | ".join(map(str, cols)) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    for r in df.itertuples(index=False):
        out.append("| " + " | ".join(f"{v:.3f}" if isinstance(v, float) else str(v) for v in r) + " |")
    return "\n".join(out)


def _drift_figure(curve):
    import matplotlib.pyplot as plt

    from mmsae.study.plots import CATEGORY_COLORS, set_style

    set_style()
    fig, ax = plt.subplots(figsize=(6.4, 3.2))
    for col, cat, label in (("both_any", "both", "both"), ("image_only_any", "image_only", "image-only"),
                            ("text_only_any", "text_only", "text-only"), ("never_fires", "dead", "never fires")):
        ax.plot(curve["step"], curve[col], marker="o", color=CATEGORY_COLORS[cat], label=label)
    for lo, hi in (TARGETS["both_any"], TARGETS["image_only_any"]):
        ax.axhspan(lo, hi, color="0.9", zorder=0)
    ax.set_xlabel("training step")
    ax.set_ylabel("share of the 8192 latents")
    ax.set_ylim(0, 1)
    ax.legend(loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False)
    ax.set_title("The pooled SAE on the calibrated data (grey: target bands)", fontsize=9)
    fig.tight_layout()
    return fig


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--geometry", nargs="*", help="candidates whose 500-pair geometry to check (none: all)")
    ap.add_argument("--fit-geometry", help="grid-search the geometry knobs for this candidate")
    ap.add_argument("--train", help="candidate to train the SAE on")
    ap.add_argument("--steps", type=int, default=25_000)
    ap.add_argument("--n-pairs", type=int, default=190_000, help="training pairs (the paper profile: 190,000)")
    ap.add_argument("--n-val", type=int, default=10_000, help="held-out pairs (the paper profile: 10,000)")
    ap.add_argument("--eval-every", type=int, default=2500)
    ap.add_argument("--judge", action="store_true",
                    help="train the paper-scale run's SAE (after its notebook 01), recording the categories")
    ap.add_argument("--report", action="store_true")
    args = ap.parse_args(argv)
    if args.geometry is not None:
        geometry(args.geometry or list(CANDIDATES))
    if args.fit_geometry:
        fit_geometry(args.fit_geometry)
    if args.train:
        train_candidate(args.train, args.steps, args.n_pairs, args.n_val, args.eval_every)
    if args.judge:
        judge(args.eval_every)
    if args.report:
        report(ROOT / "docs" / "calibration.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
