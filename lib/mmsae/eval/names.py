"""Latents named in words, from the captions of what they fire on.

For every latent and each modality, the **firing set** is the held-out items on which its
activation exceeds ``threshold``: on the image side the images it fires on, described by
*all* their captions (the images themselves are not at hand); on the text side the captions
it fires on (the embedded caption of each pair). A word's **contrast** between the firing
set and the rest of the items is the log-odds ratio with an informative Dirichlet prior
(Monroe, Colaresi & Quinn 2008), divided by its standard error (a z-score):

    delta_w = log((f_w + a_w) / (n_f + a0 - f_w - a_w)) - log((r_w + a_w) / (n_r + a0 - r_w - a_w))
    z_w     = delta_w / sqrt(1 / (f_w + a_w) + 1 / (r_w + a_w))

with ``f_w`` / ``r_w`` the number of firing / other documents containing ``w`` (each
document counts a word once), ``n_f`` / ``n_r`` their totals, and the prior ``a_w = a0 *
p_w`` spreading ``a0`` (``prior``, 100) pseudo-counts by each word's share of the corpus, so
that a word seen once in a small firing set does not top the list. A latent's **names** on a
side are its ``top`` words by ``z`` among words in at least ``min_docs`` firing documents
with ``z > 0``. Words come from scikit-learn's ``CountVectorizer`` (lower case, its English
stop-word list, tokens of two or more word characters).

**Agreement** of a latent that fires on both modalities: the share of its ``top`` image-side
names that are also among its text-side names (``|W_x & W_y| / top``): the paper's claim
that a shared latent means one concept in both modalities, measured in words.
:func:`agreement_summary` sets a model's mean agreement beside the same measure with the
two sides' names drawn from *different* latents (a shuffled pairing: the chance level).

On synthetic data the documents are the names of the true concepts present in each
sample (:func:`truth_documents`), so the same machinery names latents by ground truth.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import scipy.sparse as sp

__all__ = ["LatentNames", "caption_documents", "truth_documents", "name_latents", "agreement_summary",
           "top_items", "latent_records"]


@dataclass
class LatentNames:
    """Per latent: ``words_x`` / ``words_y`` (top names on the image / text side, best first),
    their z-scores, and ``agreement`` (NaN unless both sides have names)."""

    words_x: list[list[str]]
    words_y: list[list[str]]
    z_x: list[list[float]]
    z_y: list[list[float]]
    agreement: np.ndarray
    top: int

    def name(self, i: int) -> str:
        """A short label: the words both sides share, else the side with names (text first)."""
        wx, wy = self.words_x[i], self.words_y[i]
        shared = [w for w in wy if w in wx]
        return ", ".join((shared or wy or wx)[:3])


def caption_documents(captions: Sequence[Sequence[str]]) -> tuple[list[str], list[str]]:
    """``(image documents, text documents)``: all captions of an item, and its first (embedded) caption."""
    return [" ".join(c) for c in captions], [c[0] if c else "" for c in captions]


def truth_documents(codes_x: np.ndarray, codes_y: np.ndarray, prefix: str = "concept_") -> tuple[list[str], list[str]]:
    """Synthetic data: each sample's document lists the true concepts present in it (per modality)."""
    def docs(c):
        c = np.asarray(c)
        return [" ".join(f"{prefix}{j}" for j in np.nonzero(row > 0)[0]) for row in c]
    return docs(codes_x), docs(codes_y)


def _contrast(fires: sp.csc_matrix, docs: sp.csr_matrix, vocab: np.ndarray, top: int, min_docs: int, prior: float,
              block: int = 1024):
    """Top words (and z) of every latent's firing set against the rest, blocked over latents."""
    n_docs_w = np.asarray(docs.sum(0)).ravel().astype(np.float64)  # documents containing each word
    total = n_docs_w.sum()
    alpha = prior * n_docs_w / max(total, 1.0)
    words, scores = [], []
    docs_t = docs.T.tocsr()
    for s in range(0, fires.shape[1], block):
        f = np.asarray((docs_t @ fires[:, s:s + block]).todense()).T.astype(np.float64)  # (block, V)
        r = n_docs_w[None, :] - f
        nf, nr = f.sum(1, keepdims=True), r.sum(1, keepdims=True)
        with np.errstate(divide="ignore", invalid="ignore"):
            delta = (np.log((f + alpha) / np.maximum(nf + prior - f - alpha, 1e-12))
                     - np.log((r + alpha) / np.maximum(nr + prior - r - alpha, 1e-12)))
            z = delta / np.sqrt(1.0 / (f + alpha) + 1.0 / (r + alpha))
        n_fire = np.asarray(fires[:, s:s + block].sum(0)).ravel()
        need = np.minimum(min_docs, np.maximum(n_fire, 1))[:, None]
        z = np.where((f >= need) & (z > 0) & np.isfinite(z), z, -np.inf)
        k = min(top, z.shape[1])
        idx = np.argsort(-z, axis=1, kind="stable")[:, :k]
        for row, cols in zip(z, idx):
            keep = cols[np.isfinite(row[cols])]
            words.append(vocab[keep].tolist())
            scores.append([round(float(v), 4) for v in row[keep]])
    return words, scores


def name_latents(z_x: np.ndarray, z_y: np.ndarray, docs_x: Sequence[str], docs_y: Sequence[str], top: int = 5,
                 threshold: float = 0.0, min_docs: int = 2, prior: float = 100.0) -> LatentNames:
    """Names of every latent on each side (module docstring). ``z_x`` / ``z_y``: ``(N, m)``
    codes of the held-out images / captions; ``docs_x`` / ``docs_y``: their ``N`` documents."""
    from sklearn.feature_extraction.text import CountVectorizer

    z_x, z_y = np.asarray(z_x), np.asarray(z_y)
    if not (len(docs_x) == len(docs_y) == len(z_x) == len(z_y)):
        raise ValueError(f"{len(docs_x)} / {len(docs_y)} documents for {len(z_x)} / {len(z_y)} coded samples")
    cv = CountVectorizer(binary=True, stop_words="english", token_pattern=r"(?u)\b\w\w+\b")
    try:
        cv.fit(list(docs_x) + list(docs_y))
    except ValueError:  # every document empty or stop words only
        empty = [[] for _ in range(z_x.shape[1])]
        return LatentNames(empty, empty, empty, empty, np.full(z_x.shape[1], np.nan), top)
    vocab = cv.get_feature_names_out()
    out = []
    for z, docs in ((z_x, docs_x), (z_y, docs_y)):
        fires = sp.csc_matrix((z > threshold).astype(np.float32))
        out.append(_contrast(fires, cv.transform(docs).astype(np.float32).tocsr(), vocab, top, min_docs, prior))
    (wx, sx), (wy, sy) = out
    agree = np.array([len(set(a) & set(b)) / top if a and b else np.nan for a, b in zip(wx, wy)])
    return LatentNames(wx, wy, sx, sy, agree, top)


def agreement_summary(names: LatentNames, categories: np.ndarray, seed: int = 0) -> dict:
    """Over the latents of category ``both`` with names on both sides: their number, the mean
    agreement, the share sharing at least one word, and the chance level of the mean (each
    latent's image-side names against the text-side names of another such latent, a seeded
    shuffle)."""
    idx = np.array([i for i in np.nonzero(np.asarray(categories) == "both")[0]
                    if names.words_x[i] and names.words_y[i]], np.int64)
    if len(idx) == 0:
        return {"n_named_both": 0, "agreement_mean": np.nan, "agreement_any": np.nan, "agreement_chance": np.nan}
    a = names.agreement[idx]
    chance = np.nan
    if len(idx) > 1:
        order = np.random.default_rng(seed).permutation(len(idx))
        partner = np.empty(len(idx), np.int64)  # a shuffled cycle: no latent is paired with itself
        partner[order] = np.roll(order, 1)
        chance = float(np.mean([len(set(names.words_x[i]) & set(names.words_y[idx[j]])) / names.top
                                for i, j in zip(idx, partner)]))
    return {"n_named_both": int(len(idx)), "agreement_mean": float(a.mean()), "agreement_any": float((a > 0).mean()),
            "agreement_chance": chance}


def top_items(z: np.ndarray, k: int = 5, threshold: float = 0.0) -> list[list[tuple[int, float]]]:
    """Per latent, its ``k`` strongest activations above ``threshold`` as ``(row, activation)``, strongest first."""
    z = np.asarray(z)
    k = min(k, z.shape[0])
    part = np.argpartition(-z, k - 1, axis=0)[:k]  # (k, m)
    out = []
    for j in range(z.shape[1]):
        rows = part[:, j]
        rows = rows[np.lexsort((rows, -z[rows, j]))]
        out.append([(int(r), float(z[r, j])) for r in rows if z[r, j] > threshold])
    return out


def latent_records(categories: np.ndarray, modality_score: np.ndarray, z_x: np.ndarray, z_y: np.ndarray,
                   names: LatentNames | None = None, image_texts: Sequence[Sequence[str]] | None = None,
                   caption_texts: Sequence[str] | None = None, threshold: float = 0.0, k: int = 5) -> list[dict]:
    """One dict per latent for :func:`mmsae.study.browser.write_latent_browser` (and the names
    table): category, modality score, firing counts, names, and the ``k`` strongest activating
    images (each shown by ``image_texts[row]``, e.g. all its captions) and captions
    (``caption_texts[row]``)."""
    z_x, z_y = np.asarray(z_x), np.asarray(z_y)
    fx, fy = (z_x > threshold).sum(0), (z_y > threshold).sum(0)
    tx = top_items(z_x, k, threshold) if image_texts is not None else None
    ty = top_items(z_y, k, threshold) if caption_texts is not None else None
    recs = []
    for j in range(z_x.shape[1]):
        ms = float(modality_score[j])
        r = {"id": j, "category": str(categories[j]), "modality_score": None if np.isnan(ms) else round(ms, 4),
             "fires_img": int(fx[j]), "fires_txt": int(fy[j])}
        if names is not None:
            ag = names.agreement[j]
            r.update(name=names.name(j), names_img=names.words_x[j], names_txt=names.words_y[j],
                     agreement=None if np.isnan(ag) else round(float(ag), 4))
        if tx is not None:
            r["top_images"] = [{"row": i, "act": round(a, 4), "captions": list(image_texts[i])} for i, a in tx[j]]
        if ty is not None:
            r["top_captions"] = [{"row": i, "act": round(a, 4), "text": caption_texts[i]} for i, a in ty[j]]
        recs.append(r)
    return recs
