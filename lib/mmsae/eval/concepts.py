"""Concept naming and probe decomposition (paper, metrics 5 and 6).

* :func:`name_latents`: latent ``i`` is named by the vocabulary entry maximising
  ``cos(W_dec[i], text_embedding(word))``.
* :func:`decompose_probe`: a linear probe's weight vector ``w`` (e.g. CelebA "blond
  hair") is expressed over the dictionary: atoms ranked by ``cos(W_dec[i], w)``, and a
  non-negative least-squares fit ``w ~ sum_i c_i W_dec[i]`` over the top candidates.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
from scipy.optimize import nnls

from ..data.store import EmbeddingError, l2_normalize
from .metrics import activation_correlation_best

__all__ = ["name_latents", "decompose_probe", "latent_concepts", "naming_accuracy", "fit_probe", "probe_report",
           "load_vocabulary", "encode_vocabulary"]


def name_latents(atoms: np.ndarray, vocab_emb: np.ndarray, vocab: Sequence[str]) -> tuple[list[str], np.ndarray]:
    """Name each atom by its most similar vocabulary embedding; returns names and cosines."""
    if len(vocab) != len(vocab_emb):
        raise ValueError(f"{len(vocab)} words but {len(vocab_emb)} vocabulary embeddings")
    sims = l2_normalize(np.asarray(atoms)) @ l2_normalize(np.asarray(vocab_emb)).T
    best = sims.argmax(1)
    return [vocab[j] for j in best], sims[np.arange(len(best)), best]


def decompose_probe(w: np.ndarray, atoms: np.ndarray, top: int = 10, candidates: int = 64,
                    names: Sequence[str] | None = None) -> list[dict]:
    """Top atoms of a probe direction: cosine ranking plus NNLS weights over the candidates."""
    w = np.asarray(w, np.float64).ravel()
    A = l2_normalize(np.asarray(atoms)).astype(np.float64)
    cos = A @ (w / max(np.linalg.norm(w), 1e-12))
    cand = np.argsort(-cos)[: min(candidates, len(cos))]
    coef, _ = nnls(A[cand].T, w)
    order = np.argsort(-coef)[:top]
    out = []
    for j in order:
        i = int(cand[j])
        out.append({"latent": i, "name": names[i] if names is not None else str(i),
                    "cosine": float(cos[i]), "nnls_weight": float(coef[j])})
    return out


def latent_concepts(z_x: np.ndarray, z_y: np.ndarray, codes_x: np.ndarray, codes_y: np.ndarray):
    """The true concept each latent encodes (synthetic data): for latent ``i``, the concept
    whose coefficients correlate best (Pearson, images and captions pooled) with ``z_i``.
    Returns ``(concept index (m,), correlation (m,))``; index ``-1`` when no concept
    correlates positively (a dead or noise latent)."""
    z = np.concatenate([np.asarray(z_x), np.asarray(z_y)])
    c = np.concatenate([np.asarray(codes_x), np.asarray(codes_y)])
    return activation_correlation_best(z, c)


def naming_accuracy(text_atoms: np.ndarray, vocab_emb: np.ndarray, vocab_concept: np.ndarray,
                    latent_concept: np.ndarray, alive: np.ndarray) -> dict:
    """Concept naming scored against the truth (paper metric 5, on synthetic data).

    Each latent is named by :func:`name_latents` with the text-side decoder atoms
    ``text_atoms`` against ``vocab_emb`` (one embedding per vocabulary word;
    ``vocab_concept[j]`` is the true concept word ``j`` stands for). A latent counts when
    it is ``alive`` and the concept it encodes (``latent_concept``, e.g. from
    :func:`latent_concepts`) has a vocabulary word; it is named correctly when its best
    word is that concept. Returns ``naming_accuracy`` (NaN when nothing counts),
    ``n_named`` (latents that count) and ``named_correctly``.
    """
    vocab_concept = np.asarray(vocab_concept)
    if len(vocab_concept) != len(vocab_emb):
        raise ValueError(f"{len(vocab_concept)} vocabulary concepts but {len(vocab_emb)} vocabulary embeddings")
    named, _ = name_latents(text_atoms, vocab_emb, list(vocab_concept))
    named = np.asarray(named)
    latent_concept = np.asarray(latent_concept)
    counts = np.asarray(alive, bool) & np.isin(latent_concept, vocab_concept)
    ok = counts & (named == latent_concept)
    n = int(counts.sum())
    return {"naming_accuracy": float(ok.sum() / n) if n else float("nan"), "n_named": n,
            "named_correctly": int(ok.sum())}


def fit_probe(emb: np.ndarray, target: np.ndarray, seed: int = 0, C: float = 1.0) -> np.ndarray:
    """A linear probe (scikit-learn logistic regression, L2, ``C``) for a binary attribute
    on embeddings; returns its unit weight vector (the paper's "blond hair" probe)."""
    from sklearn.linear_model import LogisticRegression

    target = np.asarray(target).astype(int)
    if len(np.unique(target)) != 2:
        raise ValueError("a probe needs samples with and without the attribute")
    clf = LogisticRegression(C=C, max_iter=2000, random_state=seed).fit(np.asarray(emb, np.float64), target)
    w = clf.coef_.ravel()
    return w / max(np.linalg.norm(w), 1e-12)


def probe_report(w: np.ndarray, atoms: np.ndarray, names: list[str], watch: str, top: int = 5,
                 candidates: int = 64) -> dict:
    """Decompose probe ``w`` over ``atoms`` (:func:`decompose_probe`) and say whether the
    named top atoms expose the concept ``watch`` (the paper's Fig. 5: a "blond hair"
    probe whose top atoms include "woman"). Returns ``top_names`` (the names of the
    ``top`` atoms by NNLS weight), ``watch_in_top`` and ``watch_rank`` (1-based rank of the
    first atom named ``watch``, 0 if none among the candidates)."""
    parts = decompose_probe(w, atoms, top=candidates, candidates=candidates, names=names)
    ranked = [p["name"] for p in parts if p["nnls_weight"] > 0]
    rank = next((i + 1 for i, nme in enumerate(ranked) if nme == watch), 0)
    return {"top_names": ranked[:top], "watch_in_top": bool(0 < rank <= top), "watch_rank": rank,
            "top_parts": parts[:top]}


def load_vocabulary(path) -> list[str]:
    """A vocabulary file: one word or phrase per line (blank lines and ``#`` comments
    skipped); an error naming the file when it is missing or empty."""
    p = Path(path)
    if not p.is_file():
        raise EmbeddingError(f"{p}: vocabulary file not found")
    words = [ln.strip() for ln in p.read_text().splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    if not words:
        raise EmbeddingError(f"{p}: the vocabulary file has no words")
    return words


def encode_vocabulary(words: list[str], encoder, template: str = "a photo of {}.") -> np.ndarray:
    """Text embeddings of the vocabulary through ``encoder`` (anything with
    ``encode_texts(list[str]) -> (n, d)``, e.g. :class:`mmsae.embed.encoders.ClipEncoder`), one
    prompt per word from ``template``; unit rows."""
    emb = np.asarray(encoder.encode_texts([template.format(w) for w in words]), np.float32)
    return l2_normalize(emb)
