"""Synthetic aligned multimodal embeddings with ground truth (the embedded default data).

The generator mimics what the paper says about CLIP/CLAP spaces and what the competing
paper ("Same Concept, Different Directions") argues, so that both designs can be scored
against a known truth:

* **shared concepts** (kind 0) have an image direction ``a_c`` and a text direction
  ``b_c`` whose cosine is exactly ``alpha`` (``alpha = 1``: one direction per concept);
* **image-only** (kind 1) and **text-only** (kind 2) concepts appear in one modality;
* each pair draws a sparse set of concepts; a shared concept is active in *both*
  members (shared support) with correlated non-negative coefficients
  ``c_x = s * e_x``, ``c_y = s * e_y`` where ``s ~ Exp(1)`` and ``e`` is a log-normal
  jitter; modality-only concepts get ``Exp(1)`` coefficients;
* a per-modality offset ``o_x``, ``o_y`` (unit, orthogonal) times ``offset_scale``
  produces a modality gap; the default scale gives a gap ``|mean(x) - mean(y)|`` of
  about 0.8 after normalisation, like CLIP ViT-B/16 (0.85 on COCO);
* isotropic Gaussian noise, then unit L2 normalisation.

Each pair also carries a class label: exactly one of the first ``n_classes`` shared
concepts is active with a boosted coefficient. Class "prompts" for zero-shot are text
embeddings of the class concept alone (offset + text direction), the analogue of
"a photo of a {class}".

``make_synthetic`` returns a :class:`SyntheticData` with the pairs, the true atoms and
each sample's true concept code (used as MMS reference similarity and by the
ground-truth metrics in :mod:`mmsae.metrics`).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from .data import PairedEmbeddings, ZeroShotSet, atomic_write, l2_normalize

__all__ = ["SyntheticConfig", "SyntheticData", "make_synthetic"]

SHARED, IMAGE_ONLY, TEXT_ONLY = 0, 1, 2


@dataclass
class SyntheticConfig:
    n_pairs: int = 20_000
    d: int = 256
    n_shared: int = 192
    n_image_only: int = 64
    n_text_only: int = 64
    alpha: float = 0.7  # cosine between a shared concept's image and text direction
    mean_shared: float = 3.0  # extra shared concepts per pair (Poisson mean)
    mean_image_only: float = 1.5
    mean_text_only: float = 1.5
    jitter: float = 0.3  # log-normal sigma of per-modality coefficient jitter
    n_classes: int = 10
    class_boost: float = 1.0  # added to the class concept's coefficient
    offset_scale: float = 2.2  # modality offset size (sets the modality gap)
    noise: float = 0.2  # norm of the Gaussian noise vector before normalisation
    seed: int = 0

    @property
    def n_concepts(self) -> int:
        return self.n_shared + self.n_image_only + self.n_text_only


@dataclass
class SyntheticData:
    config: SyntheticConfig
    pairs: PairedEmbeddings
    atoms_x: np.ndarray  # (C, d) image direction per concept (zeros for text-only)
    atoms_y: np.ndarray  # (C, d) text direction per concept (zeros for image-only)
    concept_kind: np.ndarray  # (C,) 0 shared, 1 image-only, 2 text-only
    codes_x: np.ndarray  # (N, C) true coefficients of each image
    codes_y: np.ndarray  # (N, C) true coefficients of each caption
    offsets: np.ndarray  # (2, d) modality offsets (unit vectors)
    class_emb: np.ndarray  # (n_classes, d) class-prompt text embeddings

    def subset(self, index: np.ndarray) -> "SyntheticData":
        return SyntheticData(self.config, self.pairs.subset(index), self.atoms_x, self.atoms_y,
                             self.concept_kind, self.codes_x[index], self.codes_y[index],
                             self.offsets, self.class_emb)

    def zero_shot_set(self, name: str = "synthetic_classes") -> ZeroShotSet:
        """Images of these pairs labelled by their class concept, with class prompts."""
        names = [f"concept_{c}" for c in range(self.config.n_classes)]
        return ZeroShotSet(name, np.asarray(self.pairs.x), np.asarray(self.pairs.labels),
                           self.class_emb, names, {"source": "synthetic"}).validate()

    def save_truth(self, path: str | Path) -> Path:
        """Ground truth (atoms, kinds, codes) as one ``.npz`` written atomically."""
        def _w(tmp: str) -> None:
            with open(tmp, "wb") as f:
                np.savez_compressed(
                    f, atoms_x=self.atoms_x, atoms_y=self.atoms_y, concept_kind=self.concept_kind,
                    codes_x=self.codes_x, codes_y=self.codes_y, offsets=self.offsets,
                    class_emb=self.class_emb, config=np.array(json.dumps(asdict(self.config))))
        return atomic_write(path, _w)


def load_truth(path: str | Path) -> dict:
    """Inverse of :meth:`SyntheticData.save_truth` (a dict of arrays plus ``config``)."""
    with np.load(path, allow_pickle=False) as z:
        out = {k: z[k] for k in z.files if k != "config"}
        out["config"] = json.loads(str(z["config"]))
    return out


def _unit(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v, axis=-1, keepdims=True)


def _directions(cfg: SyntheticConfig, rng: np.random.Generator):
    d, C = cfg.d, cfg.n_concepts
    offsets = np.linalg.qr(rng.standard_normal((d, 2)))[0].T.astype(np.float64)  # orthonormal
    a = _unit(rng.standard_normal((C, d)))
    w = rng.standard_normal((C, d))
    w = _unit(w - np.sum(w * a, axis=1, keepdims=True) * a)  # orthogonal to a
    b = cfg.alpha * a + np.sqrt(max(0.0, 1.0 - cfg.alpha ** 2)) * w  # cos(a, b) = alpha
    kind = np.zeros(C, np.int64)
    kind[cfg.n_shared:cfg.n_shared + cfg.n_image_only] = IMAGE_ONLY
    kind[cfg.n_shared + cfg.n_image_only:] = TEXT_ONLY
    atoms_x = np.where((kind == TEXT_ONLY)[:, None], 0.0, a)
    atoms_y = np.where((kind == IMAGE_ONLY)[:, None], 0.0, np.where((kind == SHARED)[:, None], b, a))
    return offsets, atoms_x, atoms_y, kind


def _draw_codes(cfg: SyntheticConfig, rng: np.random.Generator, n: int):
    C = cfg.n_concepts
    cx = np.zeros((n, C))
    cy = np.zeros((n, C))
    labels = rng.integers(0, cfg.n_classes, size=n)
    rows = np.arange(n)
    # class concept: always present in both members, boosted
    s = cfg.class_boost + rng.exponential(1.0, n)
    cx[rows, labels] = s * rng.lognormal(0.0, cfg.jitter, n)
    cy[rows, labels] = s * rng.lognormal(0.0, cfg.jitter, n)
    pools = [
        (np.arange(cfg.n_classes, cfg.n_shared), cfg.mean_shared, "both"),
        (np.arange(cfg.n_shared, cfg.n_shared + cfg.n_image_only), cfg.mean_image_only, "x"),
        (np.arange(cfg.n_shared + cfg.n_image_only, C), cfg.mean_text_only, "y"),
    ]
    for pool, mean, where in pools:
        if len(pool) == 0 or mean <= 0:
            continue
        counts = np.minimum(rng.poisson(mean, n), len(pool))
        # choose counts[i] distinct concepts per row via random keys
        keys = rng.random((n, len(pool)))
        order = np.argsort(keys, axis=1)
        take = np.arange(len(pool))[None, :] < counts[:, None]
        r, j = np.nonzero(take)
        cidx = pool[order[r, j]]
        base = rng.exponential(1.0, len(r))
        if where in ("both", "x"):
            jit = rng.lognormal(0.0, cfg.jitter, len(r)) if where == "both" else 1.0
            cx[r, cidx] = base * jit
        if where in ("both", "y"):
            jit = rng.lognormal(0.0, cfg.jitter, len(r)) if where == "both" else 1.0
            cy[r, cidx] = base * jit
    return cx, cy, labels


def make_synthetic(config: SyntheticConfig | None = None, **overrides) -> SyntheticData:
    """Generate aligned multimodal embeddings with ground truth (deterministic per seed)."""
    cfg = config or SyntheticConfig()
    if overrides:
        cfg = SyntheticConfig(**{**asdict(cfg), **overrides})
    if not -1.0 <= cfg.alpha <= 1.0:
        raise ValueError(f"alpha must be a cosine in [-1, 1], got {cfg.alpha}")
    if cfg.n_classes > cfg.n_shared:
        raise ValueError("n_classes must not exceed n_shared")
    rng = np.random.default_rng(cfg.seed)
    offsets, atoms_x, atoms_y, kind = _directions(cfg, rng)
    cx, cy, labels = _draw_codes(cfg, rng, cfg.n_pairs)
    sigma = cfg.noise / np.sqrt(cfg.d)  # noise vector norm is about cfg.noise
    nx = rng.standard_normal((cfg.n_pairs, cfg.d)) * sigma
    ny = rng.standard_normal((cfg.n_pairs, cfg.d)) * sigma
    x = cfg.offset_scale * offsets[0] + cx @ atoms_x + nx
    y = cfg.offset_scale * offsets[1] + cy @ atoms_y + ny
    class_vec = cfg.offset_scale * offsets[1] + (cfg.class_boost + 1.0) * atoms_y[: cfg.n_classes]
    meta = {
        "encoder": "synthetic", "dataset": "synthetic", "normalized": True,
        "modalities": ["image", "text"], "generator": asdict(cfg),
    }
    pairs = PairedEmbeddings(l2_normalize(x), l2_normalize(y), labels.astype(np.int64), None, meta,
                             source=f"synthetic(seed={cfg.seed})")
    return SyntheticData(cfg, pairs, atoms_x.astype(np.float32), atoms_y.astype(np.float32), kind,
                         cx.astype(np.float32), cy.astype(np.float32), offsets.astype(np.float32),
                         l2_normalize(class_vec))
