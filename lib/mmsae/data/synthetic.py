"""Synthetic aligned multimodal embeddings with ground truth, calibrated to real CLIP.

The generator mimics what the paper says about CLIP/CLAP spaces and what the competing
paper ("Same Concept, Different Directions") argues, so that both designs can be scored
against a known truth, and it reproduces the measured geometry of real CLIP ViT-B/16
(:mod:`mmsae.eval.geometry`). An image row is

    v_x = sum_c codes_x[c] * atoms_x[c]  +  P_x g_x  +  n_x        (per-sample variation)
    x   = normalise(offset_scale * m_x  +  v_x / |v_x|)

and a caption row ``y`` the same with ``m_y``, ``atoms_y``, ``P_y``, where

* **cone and modality offsets**: ``m_x``, ``m_y`` are unit vectors built from a common
  "cone" direction ``u`` and a modality-offset direction ``o``:
  ``m_x = sqrt((1 + mean_cos) / 2) u + sqrt((1 - mean_cos) / 2) o`` and ``m_y`` with ``-o``,
  so ``cos(m_x, m_y) = mean_cos`` exactly. All per-sample variation lies in the
  ``(d - 2)``-dimensional complement of the plane of ``u`` and ``o`` and is rescaled to unit
  norm, so every row sits at the same angle from its modality mean: a narrow cone
  (``|mean(x)|`` 0.73 on CLIP) whose axes are far apart (the modality gap, 0.85 on CLIP).
  Without this, the varying norm of the variation would make the mean direction the top
  principal component and give some captions a high cosine with every image (hubs),
  which real CLIP does not show;
* **concepts** (the ground truth): **shared concepts** (kind 0) have an image direction
  ``a_c`` and a text direction ``b_c`` whose cosine is exactly ``alpha`` (``alpha = 1``:
  one direction per concept); **image-only** (kind 1) and **text-only** (kind 2) concepts
  appear in one modality. Each pair draws a sparse set of concepts; a shared concept is
  active in *both* members (shared support) with correlated non-negative coefficients
  ``c_x = s * e_x``, ``c_y = s * e_y`` where ``s ~ Exp(1)`` and ``e`` is a log-normal jitter;
  modality-only concepts get ``Exp(1)`` coefficients. With ``atom_layout="frame"`` (default)
  the image directions are stacked random orthonormal bases of the complement and each
  block of text directions is the same block rotated by ``arccos(alpha)`` (a different
  rotation per block), so neither modality favours any direction; ``"random"`` draws
  independent Gaussian directions (their random overlaps concentrate the spectrum). With
  ``concept_zipf > 0`` concept frequencies follow ``(1 + rank)^-concept_zipf`` inside each
  pool, as word and object frequencies do;
* **dense private subspaces**: ``P_x``, ``P_y`` are orthonormal ``(d, private_rank)``
  bases (orthogonal to each other and to ``u``, ``o``) and ``g ~ N(0, I / private_rank)``
  scaled by ``private_scale``, drawn independently per modality: variation that one
  modality has and the other does not (style, phrasing), dense and not a concept. They
  carry the top principal components of each modality, which is why the top principal
  subspaces of image and text overlap little (0.17 on CLIP);
* isotropic Gaussian noise of norm about ``noise`` (in the complement);
* with ``atom_decay > 0`` the concept directions have a decaying spectrum instead of the frame
  (:func:`_decaying`: one basis for what a shared concept's two sides have in common, one per
  modality for the rest, so each side keeps a private part), which keeps CLIP's effective rank with
  tens of thousands of concepts; ``modality_rank > 0`` puts the image-only and the text-only concepts
  in subspaces of their own; ``offset_jitter`` spreads each row along the plane of the two mean
  directions (real CLIP: a std of about 0.05 along the gap direction; without it a latent can tell
  the modalities apart by their offset without error).

``private_scale`` and ``noise`` are relative to the concept part (whose norm is a few
units); ``offset_scale`` is relative to the unit-norm variation.

Each pair also carries a class label: exactly one of the first ``n_classes`` shared
concepts is active with a boosted coefficient. Class "prompts" for zero-shot are text
embeddings of the class concept alone (text mean + text direction), the analogue of
"a photo of a {class}".

**Correlated concepts** (``correlated=(class_index, concept_index, p)``, off by default):
pairs whose class is ``class_index`` also carry concept ``concept_index`` (a non-class
concept) with probability ``p``, on top of its ordinary rare background rate; the option
draws from its own random stream, so everything else is the same as without it. This is
the paper's probe-decomposition setting: "blond hair" co-occurs with "woman", so a linear
probe for one picks up the other. The profiles carry such a setting under the key
``correlated_concept``; :func:`config_from_profile` passes it on, so the default run's data
carry it and notebook 04 runs the probe decomposition on them (``None`` in a profile turns
it off).

**Calibration.** The defaults (``d = 128``, equal to the smoke profile) and the ``paper``
profile (``d = 512``) are set so that every statistic of
:func:`mmsae.eval.geometry.embedding_geometry` on 500 pairs is within 15 % (0.05 absolute where
the real value is below 0.3) of the 500 real CLIP ViT-B/16 COCO pairs shipped in ``data/``
(mean norms 0.73 / 0.72, cosine of the means 0.31, gap 0.85, pair cosine 0.31, random-pair
cosine 0.16, centred pair cosine 0.31, top-20 subspace overlap 0.17, per-sample variance
0.47, effective ranks 105 / 97, R@1 0.55 / 0.51); ``tests/test_synthetic.py`` checks both.
The paper profile (``d = 512``, 24,576 concepts, ~27 in an embedding) is also calibrated on the
pooled SAE at the paper's settings (``scripts/calibrate_generator.py``, ``docs/calibration.md``).
The width changes how this is reached: effective rank and retrieval depend on ``d``. At
``d = 128`` an effective rank of ~100 is close to the maximum (an isotropic Gaussian gives
112 on 500 samples), so concepts are uniform (``concept_zipf = 0``) on a tight frame; at
``d = 512`` the same value needs a concentrated spectrum (Zipfian concepts), and
retrieval is easier in more dimensions, so the paper profile has more noise. R@1 is set by
how much of the per-sample variation is shared concept content (``alpha``, concept counts,
class structure) against private variation and noise. On 500 pairs the top-20 overlap of
two unrelated subspaces is about ``20 / d`` (0.16 at d = 128, 0.04 at d = 512).

``make_synthetic`` returns a :class:`SyntheticData` with the pairs, the true atoms and
each sample's true concept code (used as MMS reference similarity and by the
ground-truth metrics in :mod:`mmsae.eval.metrics`). Profiles: :func:`config_from_profile`.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import scipy.sparse as sp

from .store import PairedEmbeddings, ZeroShotSet, atomic_write, l2_normalize

__all__ = ["SyntheticConfig", "SyntheticData", "make_synthetic", "load_truth", "config_from_profile",
           "concept_frequencies", "GENERATOR_PROFILE_KEYS"]

SHARED, IMAGE_ONLY, TEXT_ONLY = 0, 1, 2


@dataclass
class SyntheticConfig:
    """Generator settings; the defaults are the calibrated smoke setting (d = 128, see the
    module docstring); the ``paper`` profile holds the d = 512 calibration."""
    n_pairs: int = 20_000
    d: int = 128
    n_shared: int = 128
    n_image_only: int = 48
    n_text_only: int = 48
    alpha: float = 0.5  # cosine between a shared concept's image and text direction
    mean_shared: float = 6.3  # extra shared concepts per pair (Poisson mean)
    mean_image_only: float = 2.5
    mean_text_only: float = 1.1
    jitter: float = 0.3  # log-normal sigma of per-modality coefficient jitter
    n_classes: int = 10
    class_boost: float = 0.3  # added to the class concept's coefficient
    offset_scale: float = 1.025  # norm of the mean vectors m_x, m_y; the per-sample variation has norm 1
    mean_cos: float = 0.31  # cosine between the image and text mean directions m_x, m_y
    private_rank: int = 10  # rank of each modality's dense private subspace
    private_scale: float = 1.7  # norm (rms) of the private component, relative to the concept part
    noise: float = 0.65  # norm of the isotropic noise vector, relative to the concept part
    concept_zipf: float = 0.0  # concept frequency ~ (1 + rank)^-concept_zipf in each pool (0: uniform)
    atom_layout: str = "frame"  # "frame": concept directions from stacked orthonormal bases; "random"
    atom_decay: float = 0.0  # > 0: concept directions drawn with covariance eigenvalues (1 + i)^-atom_decay
    modality_rank: int = 0  # > 0 (with atom_decay): image-only / text-only concepts in their own subspaces of this rank
    offset_jitter: float = 0.0  # std of per-sample Gaussian variation inside the plane of the two mean directions
    class_alpha: float | None = None  # cosine between a class concept's image and text direction (None: alpha)
    class_isotropic: bool = False  # class concepts' directions drawn isotropically (own stream), off the dominant ones
    correlated: tuple | None = None  # (class_index, concept_index, p): see the module docstring
    seed: int = 0

    @property
    def n_concepts(self) -> int:
        return self.n_shared + self.n_image_only + self.n_text_only


#: Profile keys read by :func:`config_from_profile` -> SyntheticConfig field.
GENERATOR_PROFILE_KEYS = {
    "synthetic_d": "d", "n_shared": "n_shared", "n_image_only": "n_image_only", "n_text_only": "n_text_only",
    "alpha": "alpha", "mean_shared": "mean_shared", "mean_image_only": "mean_image_only",
    "mean_text_only": "mean_text_only", "n_classes": "n_classes", "class_boost": "class_boost",
    "offset_scale": "offset_scale", "mean_cos": "mean_cos", "private_rank": "private_rank",
    "private_scale": "private_scale", "noise": "noise", "concept_zipf": "concept_zipf",
    "atom_decay": "atom_decay", "modality_rank": "modality_rank", "offset_jitter": "offset_jitter",
    "class_alpha": "class_alpha", "class_isotropic": "class_isotropic", "jitter": "jitter",
}


def config_from_profile(profile: Mapping[str, Any], **overrides: Any) -> SyntheticConfig:
    """A :class:`SyntheticConfig` from a profile's generator keys (:data:`GENERATOR_PROFILE_KEYS`;
    missing keys keep the dataclass default) and ``n_pairs``, with ``overrides`` (config field
    names, e.g. ``seed``, ``alpha``, ``correlated``) applied last."""
    kw = {field_: profile[key] for key, field_ in GENERATOR_PROFILE_KEYS.items() if key in profile}
    if profile.get("correlated_concept") is not None:
        ci, cj, p = profile["correlated_concept"]
        if int(cj) < 0:  # counted from the end of the shared concepts, whatever n_shared is
            cj = int(overrides.get("n_shared", kw.get("n_shared", SyntheticConfig.n_shared))) + int(cj)
        kw["correlated"] = (int(ci), int(cj), float(p))
    if "n_pairs" in profile:
        kw["n_pairs"] = int(profile["n_pairs"])
    kw.update(overrides)
    return SyntheticConfig(**kw)


@dataclass
class SyntheticData:
    config: SyntheticConfig
    pairs: PairedEmbeddings
    atoms_x: np.ndarray  # (C, d) image direction per concept (zeros for text-only)
    atoms_y: np.ndarray  # (C, d) text direction per concept (zeros for image-only)
    concept_kind: np.ndarray  # (C,) 0 shared, 1 image-only, 2 text-only
    codes_x: np.ndarray | sp.csr_matrix  # (N, C) true coefficients of each image (CSR when N * C is large)
    codes_y: np.ndarray | sp.csr_matrix  # (N, C) true coefficients of each caption
    offsets: np.ndarray  # (2, d) unit mean directions m_x, m_y (cosine mean_cos)
    class_emb: np.ndarray  # (n_classes, d) class-prompt text embeddings
    private_x: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), np.float32))  # (d, r) basis P_x
    private_y: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), np.float32))  # (d, r) basis P_y

    def subset(self, index: np.ndarray) -> "SyntheticData":
        return SyntheticData(self.config, self.pairs.subset(index), self.atoms_x, self.atoms_y,
                             self.concept_kind, _dense_if_small(self.codes_x[index]),
                             _dense_if_small(self.codes_y[index]),
                             self.offsets, self.class_emb, self.private_x, self.private_y)

    def zero_shot_set(self, name: str = "synthetic_classes") -> ZeroShotSet:
        """Images of these pairs labelled by their class concept, with class prompts."""
        names = [f"concept_{c}" for c in range(self.config.n_classes)]
        return ZeroShotSet(name, np.asarray(self.pairs.x), np.asarray(self.pairs.labels),
                           self.class_emb, names, {"source": "synthetic"}).validate()

    def save_truth(self, path: str | Path) -> Path:
        """Ground truth (atoms, kinds, codes, mean directions, private bases) as one ``.npz``
        written atomically."""
        def _w(tmp: str) -> None:
            with open(tmp, "wb") as f:
                np.savez_compressed(
                    f, atoms_x=self.atoms_x, atoms_y=self.atoms_y, concept_kind=self.concept_kind,
                    codes_x=_dense(self.codes_x), codes_y=_dense(self.codes_y), offsets=self.offsets,
                    class_emb=self.class_emb, private_x=self.private_x, private_y=self.private_y,
                    config=np.array(json.dumps(asdict(self.config))))
        return atomic_write(path, _w)


def load_truth(path: str | Path) -> dict:
    """Inverse of :meth:`SyntheticData.save_truth` (a dict of arrays plus ``config``)."""
    with np.load(path, allow_pickle=False) as z:
        out = {k: z[k] for k in z.files if k != "config"}
        out["config"] = json.loads(str(z["config"]))
    return out


#: true-code matrices up to this many values (1 GiB of float32) are dense arrays; larger ones (the
#: paper profile's 200,000 pairs x tens of thousands of concepts) stay CSR, and a subset that fits
#: (the 10,000 held-out pairs of notebook 01) is dense again
DENSE_CODES_MAX = 2 ** 28


def _dense(codes) -> np.ndarray:
    return codes.toarray() if sp.issparse(codes) else np.asarray(codes)


def _dense_if_small(codes):
    if sp.issparse(codes) and codes.shape[0] * codes.shape[1] <= DENSE_CODES_MAX:
        return codes.toarray()
    return codes


def _unit(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v, axis=-1, keepdims=True)


def _unit_rows(v: np.ndarray) -> np.ndarray:
    return v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12)


def _check(cfg: SyntheticConfig) -> None:
    if not -1.0 <= cfg.alpha <= 1.0:
        raise ValueError(f"alpha must be a cosine in [-1, 1], got {cfg.alpha}")
    if not -1.0 <= cfg.mean_cos <= 1.0:
        raise ValueError(f"mean_cos must be a cosine in [-1, 1], got {cfg.mean_cos}")
    if cfg.n_classes > cfg.n_shared:
        raise ValueError("n_classes must not exceed n_shared")
    if cfg.class_alpha is not None and not -1.0 <= cfg.class_alpha <= 1.0:
        raise ValueError(f"class_alpha must be a cosine in [-1, 1] or None, got {cfg.class_alpha}")
    if (cfg.class_alpha is not None or cfg.class_isotropic) and cfg.atom_decay <= 0:
        raise ValueError("class_alpha and class_isotropic need atom_decay > 0 (the decaying layout); "
                         "the frame and random layouts give classes alpha like every shared concept")
    if cfg.d < 4:
        raise ValueError(f"d must be at least 4 (the mean plane plus variation), got {cfg.d}")
    if cfg.private_rank < 0 or 2 + 2 * cfg.private_rank > cfg.d:
        raise ValueError(f"private_rank must be in [0, (d - 2) / 2] = [0, {(cfg.d - 2) // 2}] "
                         f"(two private subspaces and the mean plane must fit in d = {cfg.d}), got {cfg.private_rank}")
    if cfg.concept_zipf < 0:
        raise ValueError(f"concept_zipf must be >= 0, got {cfg.concept_zipf}")
    if cfg.atom_decay < 0:
        raise ValueError(f"atom_decay must be >= 0, got {cfg.atom_decay}")
    if cfg.modality_rank < 0 or 2 + 2 * cfg.private_rank + 2 * cfg.modality_rank > cfg.d:
        raise ValueError(f"modality_rank must be in [0, (d - 2) / 2 - private_rank] = "
                         f"[0, {(cfg.d - 2) // 2 - cfg.private_rank}], got {cfg.modality_rank}")
    if cfg.modality_rank > 0 and cfg.atom_decay <= 0:
        raise ValueError("modality_rank needs atom_decay > 0 (the decaying layout places the concepts)")
    if cfg.atom_layout not in ("frame", "random"):
        raise ValueError(f"atom_layout must be 'frame' or 'random', got {cfg.atom_layout!r}")
    if min(cfg.offset_scale, cfg.private_scale, cfg.noise, cfg.offset_jitter) < 0:
        raise ValueError("offset_scale, private_scale, noise and offset_jitter must be >= 0")
    if cfg.correlated is not None:
        try:
            ci, cj, p = cfg.correlated
        except (TypeError, ValueError):
            raise ValueError(f"correlated must be (class_index, concept_index, p), got {cfg.correlated!r}") from None
        if not (0 <= int(ci) < cfg.n_classes):
            raise ValueError(f"correlated: class_index {ci} is not a class (0 <= class_index < n_classes = {cfg.n_classes})")
        if not (cfg.n_classes <= int(cj) < cfg.n_concepts):
            raise ValueError(f"correlated: concept_index {cj} must be a non-class concept "
                             f"(n_classes = {cfg.n_classes} <= concept_index < {cfg.n_concepts})")
        if not 0.0 <= float(p) <= 1.0:
            raise ValueError(f"correlated: probability p must be in [0, 1], got {p}")


def _frame(rng: np.random.Generator, n: int, d: int) -> np.ndarray:
    """``n`` unit vectors in R^d: stacked random orthonormal bases (the last one cut short),
    so that the directions are as spread as possible (exactly isotropic when ``d`` divides ``n``)."""
    blocks = [np.linalg.qr(rng.standard_normal((d, d)))[0].T for _ in range(-(-n // d))]
    return np.concatenate(blocks)[:n] if blocks else np.zeros((0, d))


def _rotate_frame(rng: np.random.Generator, a: np.ndarray, alpha: float) -> np.ndarray:
    """Text directions ``b`` with ``cos(a_c, b_c) = alpha`` exactly and, block by block of
    ``d`` rows, ``b = a R^T`` for a rotation ``R = alpha I + sqrt(1 - alpha^2) M`` (``M`` a random
    antisymmetric orthogonal matrix, so ``a_c . M a_c = 0`` and ``R`` is orthogonal): each
    block of text directions is an orthonormal basis again, a different rotation per block.
    (For odd ``d``, ``M`` has a null direction; ``b`` then keeps the exact cosine but the
    blocks are only nearly orthonormal.)"""
    n, d = a.shape
    beta = np.sqrt(max(0.0, 1.0 - alpha ** 2))
    j = np.zeros((d, d))
    for i in range(0, d - 1, 2):
        j[i, i + 1], j[i + 1, i] = 1.0, -1.0
    w = np.empty_like(a)
    for s in range(0, n, d):
        q = np.linalg.qr(rng.standard_normal((d, d)))[0]
        w[s:s + d] = a[s:s + d] @ (q @ j @ q.T).T  # M a_c: orthogonal to a_c (M antisymmetric)
    # odd d: M has a null direction, so w_c is shorter than 1 (rarely ~0: use any orthogonal w_c)
    short = np.linalg.norm(w, axis=1) < 1e-3
    if short.any():
        w[short] = rng.standard_normal((int(short.sum()), d))
        w[short] -= np.sum(w[short] * a[short], axis=1, keepdims=True) * a[short]
    return alpha * a + beta * _unit(w)


def _random_pair(rng: np.random.Generator, n: int, d: int, alpha: float) -> tuple[np.ndarray, np.ndarray]:
    a = _unit(rng.standard_normal((n, d)))
    w = rng.standard_normal((n, d))
    w = _unit(w - np.sum(w * a, axis=1, keepdims=True) * a)  # orthogonal to a
    return a, alpha * a + np.sqrt(max(0.0, 1.0 - alpha ** 2)) * w  # cos(a, b) = alpha


def _decaying(rng: np.random.Generator, sizes, k: int, alpha: float, decay: float,
              n_classes: int = 0, class_alpha: float | None = None, class_rng: np.random.Generator | None = None):
    """Concept directions in R^k with a decaying spectrum, each modality with its own dominant
    directions (CLIP's image and text principal subspaces overlap little).

    Draws come from ``N(0, Q diag((1 + i)^-decay) Q^T)``, normalised, with three random rotations:
    ``Q_s`` for what a shared concept's two directions have in common, ``Q_x`` for the image side,
    ``Q_y`` for the text side. A shared concept is ``a = sqrt(|alpha|) s + sqrt(1 - |alpha|) u_x``
    (image) and ``b = sign(alpha) sqrt(|alpha|) s + sqrt(1 - |alpha|) u_y`` (text), with ``s``,
    ``u_x``, ``u_y`` made orthonormal per concept, so ``cos(a_c, b_c) = alpha`` exactly and neither
    side is a part of the other (each has a private part of the same size). Image-only concepts
    come from ``Q_x``, text-only from ``Q_y``. Real concept directions are not isotropic: tens of
    thousands of isotropic ones fill the space evenly (effective rank ~220 at d = 512 against
    CLIP's ~100); a decaying spectrum keeps CLIP's geometry however many concepts there are.
    ``class_alpha`` (not None) gives the first ``n_classes`` shared concepts (the classes) that
    cosine instead, from the same ``s``, ``u_x``, ``u_y`` (no extra draws); with ``class_rng`` their
    three parts are orthonormal draws from that stream instead, spread over all of ``R^k``: a class
    is then not in the directions every other concept crowds (zero-shot prompts in real CLIP
    separate their classes; dense zero-shot on CIFAR-10 0.92)."""
    ns, ni, nt = sizes
    scale = (1.0 + np.arange(k)) ** (-decay / 2)
    q_s, q_x, q_y = (np.linalg.qr(rng.standard_normal((k, k)))[0] for _ in range(3))

    def draw(n, q):
        return _unit_rows((rng.standard_normal((n, k)) * scale) @ q.T) if n else np.zeros((0, k))

    def orth(v, *others):
        for o in others:
            v = v - np.sum(v * o, axis=1, keepdims=True) * o
        return _unit_rows(v)

    sh = draw(ns, q_s)
    ux = orth(draw(ns, q_x), sh)
    uy = orth(draw(ns, q_y), sh, ux)
    c, p = np.sqrt(abs(alpha)), np.sqrt(max(0.0, 1.0 - abs(alpha)))
    a = c * sh + p * ux
    b = np.sign(alpha) * c * sh + p * uy if alpha != 0 else uy
    if n_classes > 0 and (class_alpha is not None or class_rng is not None):
        ca = alpha if class_alpha is None else float(class_alpha)
        cs, cx_, cy_ = sh[:n_classes], ux[:n_classes], uy[:n_classes]
        if class_rng is not None:  # isotropic: three orthonormal sets, none in the dominant directions
            q = np.linalg.qr(class_rng.standard_normal((k, 3 * n_classes)))[0].T
            cs, cx_, cy_ = q[:n_classes], q[n_classes:2 * n_classes], q[2 * n_classes:]
        c, p = np.sqrt(abs(ca)), np.sqrt(max(0.0, 1.0 - abs(ca)))
        a[:n_classes] = c * cs + p * cx_
        b[:n_classes] = (np.sign(ca) * c * cs + p * cy_) if ca != 0 else cy_
    return a, b, draw(ni, q_x), draw(nt, q_y)


def _directions(cfg: SyntheticConfig, rng: np.random.Generator):
    d, r = cfg.d, cfg.private_rank
    # one random orthonormal basis: cone u, offset o, and the (d - 2)-dim complement of the
    # mean plane, which holds all per-sample variation (concepts, private subspaces)
    basis = np.linalg.qr(rng.standard_normal((d, d)))[0]
    u, o, comp = basis[:, 0], basis[:, 1], basis[:, 2:]
    px, py = comp[:, :r], comp[:, r:2 * r]
    c = cfg.mean_cos
    m_x = np.sqrt((1 + c) / 2) * u + np.sqrt((1 - c) / 2) * o
    m_y = np.sqrt((1 + c) / 2) * u - np.sqrt((1 - c) / 2) * o  # cos(m_x, m_y) = c
    ns, ni, nt, k = cfg.n_shared, cfg.n_image_only, cfg.n_text_only, d - 2
    if cfg.atom_decay > 0:  # anisotropic: a concentrated spectrum however many concepts there are
        a_sh, b_sh, a_img, a_txt = _decaying(
            rng, (ns, ni, nt), k, cfg.alpha, cfg.atom_decay, cfg.n_classes, cfg.class_alpha,
            np.random.default_rng([cfg.seed, 3]) if cfg.class_isotropic else None)  # own stream: the rest unchanged
        rm = cfg.modality_rank
        if rm > 0:  # modality-only concepts in their own subspaces, past the private ones (complement coordinates)
            a_img = np.zeros((ni, k))
            a_txt = np.zeros((nt, k))
            a_img[:, 2 * r:2 * r + rm] = _decaying(rng, (0, ni, 0), rm, 0.0, cfg.atom_decay)[2]
            a_txt[:, 2 * r + rm:2 * r + 2 * rm] = _decaying(rng, (0, 0, nt), rm, 0.0, cfg.atom_decay)[3]
    elif cfg.atom_layout == "frame":
        a_sh = _frame(rng, ns, k)
        b_sh = _rotate_frame(rng, a_sh, cfg.alpha)
        a_img, a_txt = _frame(rng, ni, k), _frame(rng, nt, k)
    else:  # "random": independent Gaussian directions
        a_sh, b_sh = _random_pair(rng, ns, k, cfg.alpha)
        a_img, a_txt = _unit(rng.standard_normal((ni, k))), _unit(rng.standard_normal((nt, k)))
    kind = np.zeros(ns + ni + nt, np.int64)
    kind[ns:ns + ni] = IMAGE_ONLY
    kind[ns + ni:] = TEXT_ONLY
    z_i, z_t = np.zeros((ni, k)), np.zeros((nt, k))
    atoms_x = np.concatenate([a_sh, a_img, z_t]) @ comp.T  # complement coordinates -> R^d
    atoms_y = np.concatenate([b_sh, z_i, a_txt]) @ comp.T
    return np.stack([m_x, m_y]), comp, px, py, atoms_x, atoms_y, kind


def _pick_distinct(rng: np.random.Generator, counts: np.ndarray, weights: np.ndarray,
                   chunk: int = 8192) -> tuple[np.ndarray, np.ndarray]:
    """For each row ``i`` draw ``counts[i]`` distinct items of a pool without replacement,
    item ``c`` with weight ``weights[c]`` (exponential race: the ``k`` smallest of
    ``Exp(1) / w_c``). Returns ``(rows, items)`` of all draws. Works in row chunks so that
    the ``(rows, pool)`` key matrix stays small."""
    rows_out, items_out = [], []
    chunk = max(1, min(chunk, 2 ** 24 // max(1, len(weights))))  # keys of at most 128 MiB
    for s in range(0, len(counts), chunk):
        cnt = np.minimum(counts[s:s + chunk], len(weights))
        kmax = int(cnt.max()) if len(cnt) else 0
        if kmax == 0:
            continue
        keys = rng.exponential(1.0, (len(cnt), len(weights))) / weights
        part = np.argpartition(keys, kmax - 1, axis=1)[:, :kmax] if kmax < len(weights) else \
            np.broadcast_to(np.arange(len(weights)), keys.shape)
        part = np.take_along_axis(part, np.argsort(np.take_along_axis(keys, part, 1), axis=1), 1)
        r, j = np.nonzero(np.arange(kmax)[None, :] < cnt[:, None])
        rows_out.append(r + s)
        items_out.append(part[r, j])
    if not rows_out:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    return np.concatenate(rows_out), np.concatenate(items_out)


def concept_frequencies(cfg: SyntheticConfig) -> np.ndarray:
    """Relative selection weight of each concept inside its pool (non-class shared,
    image-only, text-only): ``(1 + rank)^-concept_zipf``, rank = position in the pool
    (``concept_zipf = 0``: uniform). Class concepts get weight 1 (classes are uniform)."""
    w = np.ones(cfg.n_concepts)
    for lo, hi in ((cfg.n_classes, cfg.n_shared), (cfg.n_shared, cfg.n_shared + cfg.n_image_only),
                   (cfg.n_shared + cfg.n_image_only, cfg.n_concepts)):
        w[lo:hi] = (1.0 + np.arange(hi - lo)) ** -float(cfg.concept_zipf)
    return w


def _draw_codes(cfg: SyntheticConfig, rng: np.random.Generator, n: int):
    """Each pair's true concept coefficients, as two CSR matrices ``(n, C)`` (the image's and the
    caption's; a shared concept is stored in both, with its two jittered coefficients)."""
    C = cfg.n_concepts
    labels = rng.integers(0, cfg.n_classes, size=n)
    rows = np.arange(n)
    # class concept: always present in both members, boosted
    s = cfg.class_boost + rng.exponential(1.0, n)
    parts_x = [(rows, labels, s * rng.lognormal(0.0, cfg.jitter, n))]
    parts_y = [(rows, labels, s * rng.lognormal(0.0, cfg.jitter, n))]
    weights = concept_frequencies(cfg)
    pools = [
        (np.arange(cfg.n_classes, cfg.n_shared), cfg.mean_shared, "both"),
        (np.arange(cfg.n_shared, cfg.n_shared + cfg.n_image_only), cfg.mean_image_only, "x"),
        (np.arange(cfg.n_shared + cfg.n_image_only, C), cfg.mean_text_only, "y"),
    ]
    for pool, mean, where in pools:
        if len(pool) == 0 or mean <= 0:
            continue
        counts = np.minimum(rng.poisson(mean, n), len(pool))
        r, j = _pick_distinct(rng, counts, weights[pool])  # counts[i] distinct concepts per row
        cidx = pool[j]
        base = rng.exponential(1.0, len(r))
        if where in ("both", "x"):
            jit = rng.lognormal(0.0, cfg.jitter, len(r)) if where == "both" else 1.0
            parts_x.append((r, cidx, base * jit))
        if where in ("both", "y"):
            jit = rng.lognormal(0.0, cfg.jitter, len(r)) if where == "both" else 1.0
            parts_y.append((r, cidx, base * jit))

    def csr(parts):
        r, c, v = (np.concatenate(a) for a in zip(*parts))
        m = sp.csr_matrix((v.astype(np.float32), (r, c)), shape=(n, C))
        m.sum_duplicates()  # a class concept is never drawn again (pools start after the classes)
        return m

    return csr(parts_x), csr(parts_y), labels


def _add_correlated(cfg: SyntheticConfig, rng: np.random.Generator, cx, cy, labels):
    """Turn concept ``concept_index`` on (where it is off) in a fraction ``p`` of the pairs of
    class ``class_index``, with a fresh coefficient drawn like its ordinary ones (returns the
    two code matrices, CSR)."""
    ci, cj, p = int(cfg.correlated[0]), int(cfg.correlated[1]), float(cfg.correlated[2])
    n = len(labels)
    hit = (labels == ci) & (rng.random(n) < p)
    base = rng.exponential(1.0, n)
    kind = SHARED if cj < cfg.n_shared else IMAGE_ONLY if cj < cfg.n_shared + cfg.n_image_only else TEXT_ONLY
    if kind == SHARED:
        jx, jy = rng.lognormal(0.0, cfg.jitter, n), rng.lognormal(0.0, cfg.jitter, n)
    else:
        jx = jy = np.ones(n)
    col_x, col_y = cx[:, cj].toarray().ravel(), cy[:, cj].toarray().ravel()
    off = np.flatnonzero(hit & (col_x <= 0) & (col_y <= 0))

    def add(m, vals):
        extra = sp.csr_matrix((vals[off].astype(np.float32), (off, np.full(len(off), cj))), shape=m.shape)
        return (m + extra).tocsr()

    if kind in (SHARED, IMAGE_ONLY):
        cx = add(cx, base * jx)
    if kind in (SHARED, TEXT_ONLY):
        cy = add(cy, base * jy)
    return cx, cy


def make_synthetic(config: SyntheticConfig | None = None, **overrides) -> SyntheticData:
    """Generate aligned multimodal embeddings with ground truth (deterministic per seed)."""
    cfg = config or SyntheticConfig()
    if overrides:
        cfg = SyntheticConfig(**{**asdict(cfg), **overrides})
    _check(cfg)
    rng = np.random.default_rng(cfg.seed)
    means, comp, px, py, atoms_x, atoms_y, kind = _directions(cfg, rng)
    cx, cy, labels = _draw_codes(cfg, rng, cfg.n_pairs)
    corr_rng = np.random.default_rng([cfg.seed, 1])  # own stream: the option leaves the rest unchanged
    if cfg.correlated is not None:
        cx, cy = _add_correlated(cfg, corr_rng, cx, cy, labels)
    n, d, r = cfg.n_pairs, cfg.d, cfg.private_rank
    if r > 0:
        gx = rng.standard_normal((n, r)) * (cfg.private_scale / np.sqrt(r))
        gy = rng.standard_normal((n, r)) * (cfg.private_scale / np.sqrt(r))
    else:
        gx = gy = np.zeros((n, 0))
    sigma = cfg.noise / np.sqrt(d - 2)  # noise vector norm is about cfg.noise
    nx = rng.standard_normal((n, d - 2)) @ comp.T * sigma  # noise also orthogonal to the mean plane
    ny = rng.standard_normal((n, d - 2)) @ comp.T * sigma
    # per-sample variation, rescaled to unit norm: every row sits at the same angle from its
    # modality mean (a cone), as in CLIP, instead of a radial spread that would make the mean
    # direction the top principal component
    # (dense codes when they fit: the same products, to the bit, as before the CSR form existed)
    vx = _unit_rows(_dense_if_small(cx) @ atoms_x + gx @ px.T + nx)
    vy = _unit_rows(_dense_if_small(cy) @ atoms_y + gy @ py.T + ny)
    x = cfg.offset_scale * means[0] + vx
    y = cfg.offset_scale * means[1] + vy
    if cfg.offset_jitter > 0:  # per-sample spread along the cone and gap directions (own stream: the rest unchanged)
        plane = means.T  # (d, 2): spans the plane of u and o
        jit = np.random.default_rng([cfg.seed, 2])
        x = x + jit.standard_normal((n, 2)) @ plane.T * cfg.offset_jitter
        y = y + jit.standard_normal((n, 2)) @ plane.T * cfg.offset_jitter
    class_vec = cfg.offset_scale * means[1] + atoms_y[: cfg.n_classes]  # the class concept alone
    meta = {
        "encoder": "synthetic", "dataset": "synthetic", "normalized": True,
        "modalities": ["image", "text"], "generator": asdict(cfg),
    }
    pairs = PairedEmbeddings(l2_normalize(x), l2_normalize(y), labels.astype(np.int64), None, meta,
                             source=f"synthetic(seed={cfg.seed})")
    return SyntheticData(cfg, pairs, atoms_x.astype(np.float32), atoms_y.astype(np.float32), kind,
                         _dense_if_small(cx), _dense_if_small(cy), means.astype(np.float32),
                         l2_normalize(class_vec), px.astype(np.float32), py.astype(np.float32))
