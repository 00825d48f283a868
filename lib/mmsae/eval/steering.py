"""Steering through an SAE: push one concept latent and decode (paper, metric 7).

For a code ``z = encode(u)`` of a sample *without* the concept, add
``alpha * sigma_i`` to the concept latent ``i`` (``sigma_i`` = std of latent i's
activation over a reference set of codes) and decode:

    u'(alpha) = normalize(decode(z + alpha * sigma_i * e_i))

and measure, per alpha,

* ``toward``: mean cosine of ``u'`` to the concept direction *of the same modality* minus
  the same cosine at ``alpha = 0`` (so the curve starts at 0). The concept direction is
  **centred**: the mean embedding of the samples that carry the concept minus the mean
  of all samples of that modality (:func:`concept_target`). In a CLIP-like space every
  embedding shares a large modality mean (norm ~0.73), so the uncentred mean of the
  carriers points mostly along it and a "gain" toward it measures how much of the mean a
  decoding keeps, not the concept;
* ``toward_captions``: the same gain toward the concept's *caption* direction (the
  paper's "move toward the concept's captions"), also centred on the caption mean;
* ``kept``: mean cosine of ``u'`` to the original embedding ``u`` (similarity kept).

Steering image codes and text codes with the same latent tells whether one latent
moves both modalities.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from ..data.caption_labels import CLASS_WORDS, caption_labels, class_mentions
from ..data.store import l2_normalize
from ..models.base import Dictionary
from .metrics import best_latent_by_activation

__all__ = ["latent_std", "steer", "steering_curve", "concept_target", "pick_latent_by_codes",
           "pick_latent_by_direction", "SteeringConcept", "text_clusters", "caption_concept", "choose_concept",
           "steering_samples"]


def latent_std(z: np.ndarray, latent: int) -> float:
    """Std of latent ``latent``'s activation over the rows of ``z`` (all rows, zeros included)."""
    s = float(np.asarray(z)[:, latent].std())
    return s if s > 0 else 1.0


@torch.no_grad()
def steer(model: Dictionary, u: np.ndarray, modality: int, latent: int, amount: float) -> np.ndarray:
    """Normalised decodings of ``u`` with ``amount`` added to ``latent`` in every code."""
    dev = next(model.parameters()).device
    ut = torch.as_tensor(np.asarray(u, np.float32), device=dev)
    z = model.encode(ut, modality)
    z[:, latent] += amount
    return l2_normalize(model.decode(z, modality).float().cpu().numpy())


def concept_target(emb: np.ndarray, has_concept: np.ndarray, center: bool = True) -> np.ndarray:
    """Unit direction of a concept in one modality: the mean embedding of the samples that
    have it minus the mean of all samples (``center=False``: the uncentred mean)."""
    has_concept = np.asarray(has_concept, bool)
    if not has_concept.any():
        raise ValueError("no sample carries the concept: cannot build a steering target")
    emb = np.asarray(emb, np.float64)
    t = emb[has_concept].mean(0, keepdims=True)
    if center:
        t = t - emb.mean(0, keepdims=True)
    return l2_normalize(t)[0].astype(np.float32)


def steering_curve(model: Dictionary, u: np.ndarray, modality: int, latent: int, strengths: Sequence[float],
                   sigma: float, target: np.ndarray, caption_target: np.ndarray | None = None) -> list[dict]:
    """One record per steering strength (in units of the latent's std ``sigma``): ``strength``, ``toward`` (cosine gain toward ``target``),
    ``toward_captions`` (gain toward ``caption_target``, when given) and ``kept``."""
    u = l2_normalize(u)
    targets = {"toward": target}
    if caption_target is not None:
        targets["toward_captions"] = caption_target
    T = l2_normalize(np.stack([np.asarray(t, np.float32) for t in targets.values()]))
    base = (steer(model, u, modality, latent, 0.0) @ T.T).mean(0)
    rows = []
    for a in strengths:
        us = steer(model, u, modality, latent, float(a) * sigma)
        gain = (us @ T.T).mean(0) - base
        rec = {"strength": float(a), **{k: float(g) for k, g in zip(targets, gain)}}
        rec["kept"] = float((us * u).sum(1).mean())
        rows.append(rec)
    return rows


def pick_latent_by_codes(z_x: np.ndarray, z_y: np.ndarray, c_x: np.ndarray, c_y: np.ndarray) -> int:
    """The latent whose activation correlates best with a known concept coefficient,
    images and captions pooled (the concept's latent for *both* modalities)."""
    z = np.concatenate([z_x, z_y])
    c = np.concatenate([np.asarray(c_x), np.asarray(c_y)])[:, None]
    i = int(best_latent_by_activation(c, z)[0])
    if i < 0:
        raise ValueError("no latent correlates positively with the concept")
    return i


def pick_latent_by_direction(atoms: np.ndarray, target: np.ndarray) -> int:
    """The dictionary atom closest (cosine) to a target direction (e.g. a class prompt)."""
    a = l2_normalize(np.asarray(atoms))
    return int(np.argmax(a @ l2_normalize(np.asarray(target)[None])[0]))


@dataclass
class SteeringConcept:
    """What notebook 05 steers toward, whatever the data.

    ``name``: a label for tables; ``source``: ``"ground_truth"`` (synthetic concept),
    ``"captions"`` (a class named in the held-out captions, :func:`caption_concept`),
    ``"zero_shot"`` (a class of a zero-shot set) or ``"text_cluster"`` (label-free: a
    k-means cluster of the held-out caption embeddings); ``targets``: per modality id the
    unit target direction (mean embedding of the samples that carry the concept, in that
    modality); ``caption_target``: the concept's captions (the paper's measure);
    ``c_x`` / ``c_y``: per held-out pair, the concept's strength in each modality (true
    coefficients, or 0/1 membership), used to pick the concept's latent by activation
    correlation; ``None`` when the latent is picked by direction instead
    (``pick_direction``: the zero-shot class prompt); ``free``: the held-out pairs known to be
    free of the concept, the ones to steer (default: those that do not carry it).
    """

    name: str
    source: str
    targets: dict
    caption_target: np.ndarray
    c_x: np.ndarray | None = None
    c_y: np.ndarray | None = None
    pick_direction: np.ndarray | None = None
    free: np.ndarray | None = None

    @property
    def carries(self) -> np.ndarray | None:
        """Held-out pairs that carry the concept (``None`` when decided per model)."""
        if self.c_x is None:
            return None
        return (np.asarray(self.c_x) > 0) | (np.asarray(self.c_y) > 0)

    def pick_latent(self, model: Dictionary, z_x: np.ndarray, z_y: np.ndarray) -> int:
        """The model's latent for this concept: best activation correlation over images and
        captions pooled (known membership), else the text atom closest to the class prompt."""
        if self.c_x is not None:
            return pick_latent_by_codes(z_x, z_y, self.c_x, self.c_y)
        with torch.no_grad():
            atoms = model.decoder_atoms(1).detach().float().cpu().numpy()
        return pick_latent_by_direction(atoms, self.pick_direction)


def text_clusters(y: np.ndarray, n_clusters: int = 8, seed: int = 0) -> np.ndarray:
    """Label-free concepts: k-means (scikit-learn, ``n_init=10``, seeded) on the unit caption
    embeddings after removing their mean (the mean is shared by every caption and says
    nothing about content). Returns an int cluster id per row."""
    from sklearn.cluster import KMeans

    y = np.asarray(y, np.float64)
    if len(y) < n_clusters:
        raise ValueError(f"{len(y)} captions cannot form {n_clusters} clusters")
    yc = l2_normalize(y - y.mean(0, keepdims=True))
    return KMeans(n_clusters=n_clusters, n_init=10, random_state=seed).fit_predict(yc).astype(np.int64)


def caption_concept(x: np.ndarray, y: np.ndarray, captions, class_names, concept: int | str | None = None,
                    min_captions: int = 3) -> SteeringConcept:
    """A named concept from the held-out captions: the items labelled with class ``concept``
    (an index into ``class_names`` or a name; ``None``: the class with the most labelled
    held-out items) by :func:`mmsae.data.caption_labels.caption_labels` carry it; the pairs
    to steer are those none of whose captions name it; its targets are the centred mean
    image and caption embeddings of the carriers."""
    words = {c: CLASS_WORDS.get(c, (c,)) for c in class_names}
    labels, names = caption_labels(captions, words, min_captions)
    counts = np.bincount(labels[labels >= 0], minlength=len(names))
    if concept is None:
        c = int(np.argmax(counts))
    elif isinstance(concept, str):
        if concept not in names:
            raise ValueError(f"concept {concept!r} is not one of the caption classes {names}")
        c = names.index(concept)
    else:
        if not 0 <= int(concept) < len(names):
            raise ValueError(f"concept {concept} is not a caption class index (0..{len(names) - 1}: {names})")
        c = int(concept)
    member = (labels == c).astype(np.float32)
    if not member.any():
        raise ValueError(f"no held-out pair is labelled {names[c]!r} by its captions")
    free = class_mentions(captions, {names[c]: words[names[c]]})[:, 0] == 0
    cap = concept_target(y, member > 0)
    return SteeringConcept(f"{names[c]} (captions: {int(member.sum())} held-out pairs)", "captions",
                           {0: concept_target(x, member > 0), 1: cap}, cap, member, member, free=free)


def choose_concept(x: np.ndarray, y: np.ndarray, truth=None, zero_shot=None, concept: int | str | None = 0,
                   n_clusters: int = 8, seed: int = 0, captions=None) -> SteeringConcept:
    """The concept to steer toward, from the best information the run has.

    1. ``truth`` (synthetic ground truth of the held-out pairs): true concept ``concept``
       (``None``: 0);
    2. else held-out ``captions`` and a zero-shot set built from captions (``meta["rule"]``,
       notebook 01): the named class ``concept`` of that set (``None``: the best-populated
       one), :func:`caption_concept`;
    3. else ``zero_shot`` (a dict of :class:`~mmsae.data.ZeroShotSet`): class ``concept`` of
       the first set (its prompt is the caption target);
    4. else label-free: cluster ``concept`` of :func:`text_clusters` on the held-out
       captions; a pair carries it when its caption is in the cluster.
    """
    x, y = np.asarray(x), np.asarray(y)
    named = [z for z in (zero_shot or {}).values() if "rule" in z.meta]
    if truth is None and captions is not None and named:
        return caption_concept(x, y, captions, named[0].class_names, concept,
                               int(named[0].meta.get("min_captions", 3)))
    concept = 0 if concept is None else concept
    if isinstance(concept, str):
        raise ValueError(f"concept={concept!r}: a class name needs held-out captions and a caption zero-shot set")
    if truth is not None:
        c_x, c_y = np.asarray(truth["codes_x"])[:, concept], np.asarray(truth["codes_y"])[:, concept]
        cap = concept_target(y, c_y > 0)
        return SteeringConcept(f"synthetic concept {concept}", "ground_truth",
                               {0: concept_target(x, c_x > 0), 1: cap}, cap, c_x, c_y)
    if zero_shot:
        zs = next(iter(zero_shot.values()))
        if not 0 <= concept < len(zs.class_emb):
            raise ValueError(f"concept {concept} is not a class of zero-shot set {zs.name} ({len(zs.class_emb)} classes)")
        raw_prompt = np.asarray(zs.class_emb[concept], np.float32)
        prompt = l2_normalize((raw_prompt - y.mean(0))[None])[0]  # centred on the caption mean, like the others
        in_class = np.asarray(zs.labels) == concept
        img = concept_target(zs.emb, in_class) if in_class.any() else prompt
        return SteeringConcept(f"{zs.name}: {zs.class_names[concept]}", "zero_shot", {0: img, 1: prompt}, prompt,
                               pick_direction=raw_prompt)
    k = max(2, min(n_clusters, len(y) // 5))  # at least ~5 captions per cluster on small data
    if k != n_clusters:
        print(f"note: {len(y)} held-out captions: using {k} caption clusters instead of {n_clusters}")
        n_clusters = k
    labels = text_clusters(y, n_clusters=n_clusters, seed=seed)
    if not 0 <= concept < n_clusters:
        raise ValueError(f"concept {concept} is not one of the {n_clusters} caption clusters")
    member = (labels == concept).astype(np.float32)
    cap = concept_target(y, member > 0)
    return SteeringConcept(f"caption cluster {concept} of {n_clusters} ({int(member.sum())} pairs)", "text_cluster",
                           {0: concept_target(x, member > 0), 1: cap}, cap, member, member)


def steering_samples(without: np.ndarray, n: int, seed: int = 0) -> np.ndarray:
    """Up to ``n`` indices, drawn without replacement (seeded), of the samples that do not
    carry the concept; an error when there are none."""
    idx = np.nonzero(np.asarray(without, bool))[0]
    if len(idx) == 0:
        raise ValueError("every held-out sample carries the concept: nothing to steer toward it")
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(idx, size=min(int(n), len(idx)), replace=False))
