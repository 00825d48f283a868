"""Run profiles shared by the notebooks and ``run_all.sh``.

``smoke``  small and fast: the default of ``./run_all.sh`` and what CI executes.
``paper``  the paper's settings: d = 512 (the encoder's width), 8192 latents, K = 32,
           batch 128 pairs, 25k steps (10k for CLAP), lambda 0.05, mask rate 0.2.

A profile is a flat dict; notebooks read it with :func:`get_profile` and any notebook
parameter that is not ``None`` overrides the profile's value.
"""

from __future__ import annotations

from copy import deepcopy
from typing import Any

from .methods import BATCHTOPK, CENTRED_SAE, GROUP_SPARSE_METHODS, GSAE, METHOD_ORDER, MGSAE, PAPER_METHODS, SAE

__all__ = ["PROFILES", "get_profile"]

PROFILES: dict[str, dict[str, Any]] = {
    "smoke": {
        # synthetic data (mmsae.data.synthetic): the generator is calibrated so that 500 pairs match the
        # embedding geometry of 500 real CLIP ViT-B/16 COCO pairs (tests/test_synthetic.py)
        "n_pairs": 12_000,
        "synthetic_d": 128,
        "n_shared": 128,
        "n_image_only": 48,
        "n_text_only": 48,
        "alpha": 0.5,
        "mean_shared": 6.3,  # Poisson mean of extra shared concepts per pair
        "mean_image_only": 2.5,
        "mean_text_only": 1.1,
        "n_classes": 10,
        "class_boost": 0.3,
        "offset_scale": 1.025,  # cone: mean vector norm relative to the unit per-sample variation
        "mean_cos": 0.31,  # cosine between the image and text mean directions
        "private_rank": 10,  # dense modality-private subspace per modality
        "private_scale": 1.7,
        "noise": 0.65,
        "concept_zipf": 0.0,  # uniform concept frequencies (d = 128 needs a flat spectrum)
        "atom_decay": 0.0,  # isotropic concept directions (frame layout)
        "modality_rank": 0,
        "offset_jitter": 0.0,
        "class_alpha": None,  # class concepts like the other shared ones
        "class_isotropic": False,
        "jitter": 0.3,
        # probe-decomposition experiment only (not the main data): pairs of class 0 ("woman")
        # also carry shared concept 127 ("blond hair", otherwise rare: ~5% of pairs) with probability 0.8;
        # [class, concept, p]: class 0 pairs also carry a concept with probability p (probe decomposition in
        # notebook 04); a negative concept counts from the end of the shared concepts (-1: the last one)
        "correlated_concept": [0, -1, 0.8],
        "val_fraction": 0.2,
        # models
        "m": 256,
        "k": 6,
        "group_lambda": 0.05,
        "mask_rate": 0.2,
        "mask_mode": "pair",
        "dead_after": 20_000,
        # training
        "steps": 1000,
        "batch_size": 128,
        "lr": 1e-3,
        "seeds": [0],
        # TensorBoard event files of each (method, seed) model under runs/<profile>-<slug>/tensorboard/
        # (notebooks 02/03; skipped with a note when the optional tensorboard package is missing)
        "tensorboard": False,
        # analysis
        "umap_max_atoms": 256,
        "steer_strengths": [0.0, 1.0, 2.0, 4.0, 8.0],
        "steer_samples": 256,
        # method comparison and sweeps (mmsae.study.experiments; notebooks 03/04). Sized so the whole
        # chain fits the smoke time budget on 2 CPU cores (see README "Time budget").
        "methods": list(METHOD_ORDER),
        "comparison_seeds": [0, 1, 2],  # seeds of the main comparison table
        "sweep_seeds": [0, 1],  # seeds of every ablation and of the alpha sweep
        "sweep_jobs": 2,  # worker processes, one torch thread each (2 cores)
        "ablation_steps": 200,  # training steps of each ablation model
        "sweep_lr": 3e-3,  # learning rate of the short ablation / alpha-sweep runs
        "lambda_grid": [0.0, 0.01, 0.05, 0.2],
        "lambda_methods": [GSAE],
        "mask_grid": [0.0, 0.1, 0.2, 0.4],
        "mask_modes": ["pair", "batch"],
        "mask_methods": [MGSAE],
        "expansion_grid": [1, 2, 4],  # m = expansion * d (d = 128: 128, 256, 512 latents; main run m = 256)
        "k_grid": [3, 6, 12],  # paper's 16/32/64 scaled by K_smoke / K_paper
        "width_k_methods": [MGSAE],
        "pareto_k_grid": [1, 2, 3, 6, 12, 24],  # the sparsity-fidelity sweep (K), with a PCA baseline
        "pareto_methods": [SAE, CENTRED_SAE, GSAE, MGSAE, BATCHTOPK],
        "width_k_lambda": 0.01,  # the paper's lambda in its width/K sweep
        "alpha_grid": [0.0, 0.25, 0.5, 0.75, 1.0],
        "alpha_methods": list(METHOD_ORDER),
        "alpha_steps": 200,
        "alpha_n_pairs": 3000,
    },
    "paper": {
        # synthetic data at the encoder's width in CLIP's regime for an 8192-latent SAE: far more concepts than
        # latents (24,576), ~27 of them in an embedding (K = 32 fills with them, not with noise), concept directions with a
        # decaying spectrum per modality, spread along the mean directions as real CLIP has, image-only and text-only
        # concepts in subspaces of their own, class concepts off the crowded directions with a lower image-text
        # cosine; calibrated on the pooled SAE (candidate k8 of scripts/calibrate_generator.py, docs/calibration.md)
        # and, on 500 pairs, to real CLIP's geometry (tests/test_synthetic.py)
        "n_pairs": 200_000,
        "synthetic_d": 512,
        "n_shared": 12288,
        "n_image_only": 6144,
        "n_text_only": 6144,
        "alpha": 0.6,
        "mean_shared": 16,
        "mean_image_only": 12,
        "mean_text_only": 7,
        "n_classes": 10,
        "class_boost": 3.0,
        "offset_scale": 0.945,
        "mean_cos": 0.30,
        "private_rank": 10,
        "private_scale": 3.0,
        "noise": 2.0,
        # uniform concept frequencies within each pool: with Zipfian ones (1.0, 0.5) and 190,000 training pairs the
        # SAE's latents specialise on concepts too rare to fire on 10,000 held-out pairs (docs/calibration.md)
        "concept_zipf": 0.0,
        "atom_decay": 1.15,  # concept directions with covariance eigenvalues (1 + i)^-1.15, one basis per modality
        "modality_rank": 48,  # image-only / text-only concepts in subspaces of rank 48 the other modality never excites
        "offset_jitter": 0.06,  # real CLIP: std 0.05 of the projection on the gap direction (0.03 here after normalising)
        "class_alpha": 0.35,  # a class concept's image-text cosine (CLIP's zero-shot: codes below dense)
        "class_isotropic": True,  # class directions spread over the whole space: dense zero-shot ~0.88 at a modest boost
        "jitter": 0.45,  # log-normal sigma of a shared concept's per-modality coefficient jitter
        # probe-decomposition experiment only: class 0 ("woman") with the last shared concept, among the
        # rarest ("blond hair"), with probability 0.8
        "correlated_concept": [0, -1, 0.8],
        "val_fraction": 0.05,
        "m": 8192,
        "k": 32,
        "group_lambda": 0.05,
        "mask_rate": 0.2,
        "mask_mode": "pair",
        "dead_after": 10_000_000 // 20,  # Gao et al.: 10M tokens; scaled to pair data
        "steps": 25_000,
        "batch_size": 128,
        "lr": 4e-4,
        "seeds": [0],
        "tensorboard": True,
        "umap_max_atoms": 8192,
        "steer_strengths": [0.0, 1.0, 2.0, 4.0, 8.0, 16.0],
        "steer_samples": 2048,
        "methods": list(METHOD_ORDER),
        "comparison_seeds": [0, 1, 2],
        "sweep_seeds": [0, 1, 2],
        "sweep_jobs": 1,  # one process (GPU)
        "ablation_steps": 10_000,
        "sweep_lr": 4e-4,
        "lambda_grid": [0.0, 0.01, 0.02, 0.05, 0.1, 0.2],
        "lambda_methods": list(GROUP_SPARSE_METHODS),
        "mask_grid": [0.0, 0.1, 0.2, 0.4],
        "mask_modes": ["pair", "batch"],
        "mask_methods": [MGSAE],
        "expansion_grid": [4, 8, 16],  # m = expansion * d (d = 512: 2048, 4096, 8192 latents)
        "k_grid": [16, 32, 64],
        "width_k_methods": list(PAPER_METHODS),
        "pareto_k_grid": [8, 16, 32, 64, 128],
        "pareto_methods": [SAE, CENTRED_SAE, GSAE, MGSAE, BATCHTOPK],
        "width_k_lambda": 0.01,
        "alpha_grid": [0.0, 0.25, 0.5, 0.75, 1.0],
        "alpha_methods": list(METHOD_ORDER),
        "alpha_steps": 10_000,
        "alpha_n_pairs": 100_000,
    },
}


def get_profile(name: str, **overrides: Any) -> dict[str, Any]:
    """The named profile with ``overrides`` applied (``None`` values are ignored)."""
    if name not in PROFILES:
        raise ValueError(f"unknown profile {name!r}; choose one of {sorted(PROFILES)}")
    prof = deepcopy(PROFILES[name])
    for k, v in overrides.items():
        if v is None:
            continue
        if k not in prof:
            raise ValueError(f"unknown profile setting {k!r}; known: {sorted(prof)}")
        prof[k] = v
    prof["profile"] = name
    return prof
