"""Modality-specific SAEs with post-hoc alignment (Lee et al., "Same Concept, Different
Directions"; docs/paper.md section 2), the competing design to GSAE.

One TopK SAE per modality (two :class:`~mmsae.models.topk.TopKSAE` submodules
``sae_x``, ``sae_y``, each with its own pre-bias, encoder and decoder), trained in the
one loop: ``training_loss`` is the sum of each SAE's own reconstruction objective (+ AuxK)
on its own modality; the parameters are disjoint, so this is two independent trainings
sharing batches. Nothing ties an image latent to a text latent during training.

**Equal atoms.** ``config.m`` is the *total* number of dictionary atoms, as for every
other method; each side gets ``m_per_side = extra["m_per_side"]`` latents, default
``m // 2`` (as in Lee et al., who give each modality half the budget). The aligned code
therefore has ``m_per_side`` latents (:attr:`ModalitySpecificSAE.num_latents`), each with
two atoms (an image and a text direction). ``extra["m_per_side"] = m`` gives the earlier,
unfair setting of a full ``m``-latent SAE per modality (``2m`` atoms).

**Alignment** (:meth:`ModalitySpecificSAE.align`, after training, on the paired training
data): encode images with ``sae_x`` and captions with ``sae_y``, compute the Pearson
correlation ``C[i, j]`` between image latent ``i`` and text latent ``j`` across pairs,
and match latents one-to-one with the Hungarian algorithm
(:func:`scipy.optimize.linear_sum_assignment`, maximising total correlation). Latents
that never fire on the data (dead) are excluded from the matching; the left-over latents
are then paired among themselves in index order and flagged ``matched = False``.

**"both" is true by construction.** The matching gives every alive image latent an alive
text partner, so aligned latent ``i`` fires on both modalities as soon as each of its two
halves fires somewhere: the neuron category "both" of this model counts matched pairs of
alive latents (about ``n_matched``), a property of the matching, not latents that learned
to fire on an image and on its caption. The class attribute ``both_by_construction = True``
(``both_rule = "matched"``) flags this for the tables.

``permutation[i]`` is the text latent matched to image latent ``i``. After alignment
every text-side quantity is re-indexed by it: ``encode(y, 1)[:, i] = z_y[:, permutation[i]]``,
``decoder_atoms(1)[i] = W_dec_y[permutation[i]]``, ``decode(z, 1)`` uses those atoms,
so latent ``i`` means "the matched pair" in both modalities and every metric of
notebook 04 (neuron categories, MMS, retrieval, zero-shot) applies unchanged. Before
alignment the permutation is the identity (and the codes are not comparable across
modalities). ``match_corr[i]`` keeps the correlation of each matched pair.
"""

from __future__ import annotations

import numpy as np
import torch

from ..engine.sparse import fast_branch
from .losses import fast_auxk, reconstruction_loss
from .base import Dictionary, LossOutput, SAEConfig, register, step_stats
from .topk import TopKSAE

__all__ = ["ModalitySpecificSAE", "pearson_cross_correlation", "hungarian_match", "latents_per_side"]


def latents_per_side(config: SAEConfig) -> int:
    """Latents of each modality's SAE: ``extra["m_per_side"]``, default ``m // 2`` (total
    atoms ``2 * m_per_side = m``, the budget of every other method)."""
    m_side = int(config.extra.get("m_per_side") or config.m // 2)
    if not config.k <= m_side:
        raise ValueError(f"modality_specific: m_per_side={m_side} (m={config.m}) must be >= k={config.k}; "
                         "raise m or set extra['m_per_side']")
    return m_side


def _sub_config(config: SAEConfig) -> SAEConfig:
    return SAEConfig(arch="topk", d=config.d, m=latents_per_side(config), k=config.k, n_modalities=1,
                     auxk_coef=config.auxk_coef, k_aux=config.k_aux, dead_after=config.dead_after,
                     prebias_init=config.prebias_init)


def _as_csr(vals: np.ndarray, idx: np.ndarray, m: int):
    """CSR ``(n, m)`` from TopK slots; slots holding 0 are dropped (they are not firings)."""
    import scipy.sparse as sp

    n, k = idx.shape
    out = sp.csr_matrix((vals.ravel().astype(np.float64), idx.ravel(), np.arange(0, n * k + 1, k)), shape=(n, m))
    out.eliminate_zeros()
    return out


def pearson_cross_correlation(zx, zy) -> np.ndarray:
    """Pearson correlation ``(m_x, m_y)`` between the columns of ``zx`` ``(N, m_x)`` and
    ``zy`` ``(N, m_y)`` (dense arrays or scipy sparse matrices); a constant column gets 0."""
    import scipy.sparse as sp

    n = zx.shape[0]
    if zy.shape[0] != n:
        raise ValueError("zx and zy must have the same number of rows (pairs)")
    if sp.issparse(zx) or sp.issparse(zy):
        zx, zy = sp.csr_matrix(zx, dtype=np.float64), sp.csr_matrix(zy, dtype=np.float64)
        cross = np.asarray((zx.T @ zy).todense())
        mx, my = np.asarray(zx.mean(0)).ravel(), np.asarray(zy.mean(0)).ravel()
        ex2, ey2 = np.asarray(zx.multiply(zx).mean(0)).ravel(), np.asarray(zy.multiply(zy).mean(0)).ravel()
    else:
        zx, zy = np.asarray(zx, np.float64), np.asarray(zy, np.float64)
        cross = zx.T @ zy
        mx, my = zx.mean(0), zy.mean(0)
        ex2, ey2 = (zx * zx).mean(0), (zy * zy).mean(0)
    cov = cross / n - np.outer(mx, my)
    sx, sy = np.sqrt(np.maximum(ex2 - mx ** 2, 0.0)), np.sqrt(np.maximum(ey2 - my ** 2, 0.0))
    den = np.outer(sx, sy)
    ok = den > 1e-12
    return np.where(ok, cov / np.where(ok, den, 1.0), 0.0)


def hungarian_match(corr: np.ndarray, alive_x: np.ndarray | None = None,
                    alive_y: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """One-to-one matching of ``m`` image latents to ``m`` text latents maximising the total
    correlation over the alive ones (Hungarian algorithm).

    Returns ``(permutation, matched)``: ``permutation[i]`` is the text latent of image
    latent ``i`` (a permutation of ``range(m)``); ``matched[i]`` is False where the pair was
    filled in afterwards (a dead latent on either side), in index order."""
    from scipy.optimize import linear_sum_assignment

    m = corr.shape[0]
    if corr.shape != (m, m):
        raise ValueError(f"corr must be square (m, m), got {corr.shape}")
    ax = np.ones(m, bool) if alive_x is None else np.asarray(alive_x, bool)
    ay = np.ones(m, bool) if alive_y is None else np.asarray(alive_y, bool)
    ix, iy = np.nonzero(ax)[0], np.nonzero(ay)[0]
    perm = np.full(m, -1, np.int64)
    matched = np.zeros(m, bool)
    if len(ix) and len(iy):
        r, c = linear_sum_assignment(corr[np.ix_(ix, iy)], maximize=True)
        perm[ix[r]] = iy[c]
        matched[ix[r]] = True
    free_y = np.setdiff1d(np.arange(m), perm[perm >= 0])
    perm[perm < 0] = free_y  # both sorted: left-over image latents take left-over text latents in order
    return perm, matched


@register("modality_specific")
class ModalitySpecificSAE(Dictionary):
    #: the neuron category "both" counts matched latents (see module docstring)
    both_by_construction = True
    both_rule = "matched"

    def __init__(self, config: SAEConfig):
        super().__init__(config)
        self.sae_x = TopKSAE(_sub_config(config))
        self.sae_y = TopKSAE(_sub_config(config))
        m = self.m_per_side
        self.register_buffer("permutation", torch.arange(m, dtype=torch.long))
        self.register_buffer("match_corr", torch.zeros(m))
        self.register_buffer("matched", torch.zeros(m, dtype=torch.bool))
        self.register_buffer("aligned", torch.zeros((), dtype=torch.bool))

    # ------------------------------------------------------------------ interface
    @property
    def m_per_side(self) -> int:
        """Latents of each modality's SAE (= width of the aligned code)."""
        return latents_per_side(self.config)

    @property
    def num_latents(self) -> int:
        """Width of the aligned codes ``encode(u, modality)``: ``m_per_side``."""
        return self.m_per_side

    @property
    def n_atoms(self) -> int:
        """Dictionary atoms of both SAEs together (``2 * m_per_side``, default ``m``)."""
        return 2 * self.m_per_side

    def _sae(self, modality: int) -> TopKSAE:
        return self.sae_x if int(modality) == 0 else self.sae_y

    def encode(self, u: torch.Tensor, modality: int = 0) -> torch.Tensor:
        z = self._sae(modality).encode(u)
        return z if int(modality) == 0 else z[:, self.permutation]

    def decode(self, z: torch.Tensor, modality: int = 0) -> torch.Tensor:
        sae = self._sae(modality)
        return z @ self.decoder_atoms(modality) + sae.b_pre[0]

    def decoder_atoms(self, modality: int = 0) -> torch.Tensor:
        if int(modality) == 0:
            return self.sae_x.W_dec
        return self.sae_y.W_dec[self.permutation]

    def dead_mask(self) -> torch.Tensor:
        """Aligned latent ``i`` is dead when its image latent or its matched text latent is."""
        return self.sae_x.dead_mask() | self.sae_y.dead_mask()[self.permutation]

    def init_from_data(self, x: torch.Tensor, y: torch.Tensor) -> None:
        self.sae_x.init_from_data(x, x)
        self.sae_y.init_from_data(y, y)

    def unit_norm_rows(self) -> list[torch.nn.Parameter]:
        return self.sae_x.unit_norm_rows() + self.sae_y.unit_norm_rows()

    def before_optimizer_step(self, skip=()) -> None:
        self.sae_x.before_optimizer_step(skip)
        self.sae_y.before_optimizer_step(skip)

    def after_optimizer_step(self, skip=()) -> None:
        self.sae_x.after_optimizer_step(skip)
        self.sae_y.after_optimizer_step(skip)

    # ------------------------------------------------------------------ training
    @property
    def select_dtype(self) -> torch.dtype | None:
        """Dtype of the top-K *selection* matmul of both SAEs (set by the training loop)."""
        return self.sae_x.select_dtype

    @select_dtype.setter
    def select_dtype(self, value: torch.dtype | None) -> None:
        self.sae_x.select_dtype = self.sae_y.select_dtype = value

    def _own_loss(self, sae: TopKSAE, u: torch.Tensor):
        """One SAE's objective on its modality, evaluated K-sparse (:func:`mmsae.engine.sparse.fast_branch`)."""
        sel, u_c, vals, idx, u_hat = fast_branch(sae, u, 0, None, sae.select_dtype)
        rec = reconstruction_loss(u, u_hat)
        aux = fast_auxk(sae, sel.aux, u_c, sae._mod(0), u, u_hat, n_blocks=1)  # one modality
        sae._update_firing((vals, idx), n_samples=u.shape[0])
        return rec, aux

    def training_loss(self, x: torch.Tensor, y: torch.Tensor, step: int = 0) -> LossOutput:
        """Each SAE's own objective on its own modality: ``||x - x_hat||^2 + ||y - y_hat||^2`` (+ AuxK each)."""
        rec_x, aux_x = self._own_loss(self.sae_x, x)
        rec_y, aux_y = self._own_loss(self.sae_y, y)
        loss = rec_x + rec_y + self.config.auxk_coef * (aux_x + aux_y)
        return LossOutput(loss, step_stats(x, y, rec_x, rec_y, aux=aux_x + aux_y))

    # ------------------------------------------------------------------ alignment
    @torch.no_grad()
    def raw_codes(self, u, modality: int, batch_size: int = 4096):
        """Unaligned sparse codes of ``u`` (an ``(N, d)`` array) as a scipy CSR matrix."""
        sae = self._sae(modality)
        dev = sae.W_dec.device
        vals, idx = [], []
        for i in range(0, len(u), batch_size):
            ub = torch.as_tensor(np.asarray(u[i:i + batch_size], np.float32), device=dev)
            v, j = sae.encode_sparse(ub)
            vals.append(v.float().cpu().numpy())
            idx.append(j.cpu().numpy())
        return _as_csr(np.concatenate(vals), np.concatenate(idx), self.m_per_side)

    @torch.no_grad()
    def align(self, x, y, min_count: int = 1) -> dict:
        """Match image and text latents on paired data ``(x, y)`` (see module docstring).

        A latent firing on fewer than ``min_count`` samples is dead (excluded). Sets
        ``permutation``, ``matched``, ``match_corr`` and ``aligned``; returns a summary."""
        was_training = self.training
        self.eval()
        zx, zy = self.raw_codes(x, 0), self.raw_codes(y, 1)
        corr = pearson_cross_correlation(zx, zy)
        alive_x = np.asarray((zx > 0).sum(0)).ravel() >= min_count
        alive_y = np.asarray((zy > 0).sum(0)).ravel() >= min_count
        perm, matched = hungarian_match(corr, alive_x, alive_y)
        mc = corr[np.arange(len(perm)), perm]
        dev = self.permutation.device
        self.permutation.copy_(torch.as_tensor(perm, device=dev))
        self.matched.copy_(torch.as_tensor(matched, device=dev))
        self.match_corr.copy_(torch.as_tensor(mc, dtype=torch.float32, device=dev))
        self.aligned.fill_(True)
        self.train(was_training)
        return {"n_matched": int(matched.sum()), "n_dead_x": int((~alive_x).sum()),
                "n_dead_y": int((~alive_y).sum()),
                "mean_match_corr": float(mc[matched].mean()) if matched.any() else float("nan")}
