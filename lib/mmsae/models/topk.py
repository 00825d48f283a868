"""TopK sparse autoencoder (Gao et al. 2024), the paper's baseline "SAE".

    z     = TopK(ReLU(W_enc (u - b_pre) + b_enc))
    u_hat = W_dec^T z + b_pre

``W_dec`` is stored as ``(m, d)``: row ``i`` is dictionary atom ``i`` (a column of the
paper's ``d x m`` decoder) and is kept at unit norm; before each optimiser step the
gradient component parallel to each atom is removed (Gao et al.'s projection), after
it the atoms are renormalised.

The baseline is trained on image and text embeddings *pooled*: each batch of ``B``
pairs contributes its ``2B`` embeddings, all through the same pre-bias, with no term
coupling a pair (``n_modalities = 1``). With ``n_modalities = 2`` each modality gets
its own pre-bias (used by :class:`~mmsae.models.group_sparse.GroupSparseSAE`).

AuxK (on by default, coefficient 1/32): latents that have not fired for
``dead_after`` samples are "dead"; the top ``k_aux`` of their pre-activations must
reconstruct the residual ``e = u - u_hat``, which pulls them back into use. Gao et al.
(2024, "Scaling and evaluating sparse autoencoders") weigh it against a *normalised* main
loss, ``NMSE(u, u_hat) + alpha * NMSE(e, e_hat)`` (each squared error divided by its
target's variance). Our main loss is un-normalised, so each modality's AuxK term is
rescaled to keep that relative weight (:func:`mmsae.models.losses.auxk_loss`):

    L = ||x - x_hat||^2 + ||y - y_hat||^2
        + auxk_coef * (TV(x) ||e_x - e_x_hat||^2 / TV(e_x) + TV(y) ||e_y - e_y_hat||^2 / TV(e_y))

(batch means; ``TV`` the batch's total variance, detached), i.e. against the main loss
the AuxK squared error weighs ``auxk_coef * TV(u) / TV(e)``. The pooled models (this
baseline, BatchTopK, Matryoshka) normalise per modality too: they pool the encoder, but
their loss is the sum of one term per modality.

Firing: a latent *fires* on a sample when its code value is > 0. A TopK slot can hold
the value 0 (fewer than K positive pre-activations); such a slot is not a firing, for the
dead-latent counter (:meth:`TopKSAE._update_firing`) as for every statistic on the codes.
"""

from __future__ import annotations

import torch
from torch import nn

from ..engine.device_paths import uses_device_paths
from ..engine.kernels import project_rows, renorm_rows
from ..engine.parallel import split_rows
from ..engine.sparse import fast_pair_branch, stack_pair
from .losses import fast_auxk, squared_errors
from .base import Dictionary, LossOutput, SAEConfig, register, step_stats

__all__ = ["TopKSAE", "geometric_median"]

#: rows of the decoder per block in the decoder-norm hooks (1 MiB of float32 at d = 512)
_ROW_BLOCK = 512


def _rows_kernel_ok(*ts: torch.Tensor) -> bool:
    """The compiled decoder-norm hooks apply: CPU float32 contiguous, the device paths not forced."""
    return not uses_device_paths(*ts) and all(t.dtype == torch.float32 and t.is_contiguous() for t in ts)


def geometric_median(u: torch.Tensor, iters: int = 100, tol: float = 1e-6) -> torch.Tensor:
    """Weiszfeld's algorithm for the point minimising the sum of distances to rows of ``u``."""
    med = u.mean(dim=0)
    for _ in range(iters):
        w = 1.0 / (u - med).norm(dim=1).clamp_min(1e-8)
        new = (w[:, None] * u).sum(0) / w.sum()
        if (new - med).norm() < tol:
            return new
        med = new
    return med


@register("topk")
class TopKSAE(Dictionary):
    def __init__(self, config: SAEConfig):
        super().__init__(config)
        d, m = config.d, config.m
        if not 0 < config.k <= m:
            raise ValueError(f"k must be in [1, m={m}], got {config.k}")
        if config.n_modalities not in (1, 2):
            raise ValueError("n_modalities must be 1 (pooled) or 2 (per-modality pre-bias)")
        w = torch.randn(m, d)
        w = w / w.norm(dim=1, keepdim=True)
        self.W_dec = nn.Parameter(w.clone())  # (m, d), unit rows
        self.W_enc = nn.Parameter(w.clone())  # (m, d), encoder = decoder^T at init
        self.b_enc = nn.Parameter(torch.zeros(m))
        self.b_pre = nn.Parameter(torch.zeros(config.n_modalities, d))
        # samples since each latent last fired (training only), for AuxK / dead counts
        self.register_buffer("since_fired", torch.zeros(m, dtype=torch.long))
        # dtype of the encoder matmul used only to *select* the top-K in ``training_loss``
        # (None = parameter dtype; the loop sets bfloat16 on CUDA); values stay float32
        self.select_dtype: torch.dtype | None = None

    # ------------------------------------------------------------------ helpers
    def _mod(self, modality: int) -> int:
        return 0 if self.config.n_modalities == 1 else int(modality)

    def raw_pre_activations(self, u: torch.Tensor, modality: int = 0) -> torch.Tensor:
        """``W_enc (u - b_pre) + b_enc`` before the ReLU, shape ``(B, m)``."""
        return (u - self.b_pre[self._mod(modality)]) @ self.W_enc.t() + self.b_enc

    def pre_activations(self, u: torch.Tensor, modality: int = 0) -> torch.Tensor:
        """``ReLU(W_enc (u - b_pre) + b_enc)``, shape ``(B, m)``."""
        return torch.relu(self.raw_pre_activations(u, modality))

    def topk(self, pre: torch.Tensor, keep: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Top-``k`` values and indices of ``pre``; ``keep`` (bool, broadcastable) masks latents out first."""
        if keep is not None:
            pre = pre.masked_fill(~keep, 0.0)
        return pre.topk(self.config.k, dim=-1, sorted=False)

    def encode_sparse(self, u: torch.Tensor, modality: int = 0, keep: torch.Tensor | None = None):
        """``(values, indices)`` of the K active latents per row."""
        return self.topk(self.pre_activations(u, modality), keep)

    def decode_sparse(self, values: torch.Tensor, indices: torch.Tensor, modality: int = 0) -> torch.Tensor:
        """Decode from the K active latents only (gather of K atoms per row)."""
        atoms = self.W_dec[indices]  # (B, K, d)
        return torch.einsum("bk,bkd->bd", values, atoms) + self.b_pre[self._mod(modality)]

    @staticmethod
    def densify(values: torch.Tensor, indices: torch.Tensor, m: int) -> torch.Tensor:
        return torch.zeros(values.shape[0], m, dtype=values.dtype, device=values.device).scatter(
            1, indices, values)

    # ------------------------------------------------------------------ interface
    def encode(self, u: torch.Tensor, modality: int = 0) -> torch.Tensor:
        vals, idx = self.encode_sparse(u, modality)
        return self.densify(vals, idx, self.config.m)

    def decode(self, z: torch.Tensor, modality: int = 0) -> torch.Tensor:
        return z @ self.W_dec + self.b_pre[self._mod(modality)]

    def decoder_atoms(self, modality: int = 0) -> torch.Tensor:
        return self.W_dec

    def dead_mask(self) -> torch.Tensor:
        return self.since_fired >= self.config.dead_after

    @torch.no_grad()
    def init_from_data(self, x: torch.Tensor, y: torch.Tensor) -> None:
        """Pre-bias at the data mean (or geometric median) of each modality (pooled if one)."""
        center = geometric_median if self.config.prebias_init == "geometric_median" else (lambda a: a.mean(0))
        if self.config.prebias_init not in ("mean", "geometric_median", "zero"):
            raise ValueError(f"unknown prebias_init {self.config.prebias_init!r}")
        if self.config.prebias_init == "zero":
            self.b_pre.zero_()
        elif self.config.n_modalities == 1:
            self.b_pre[0] = center(torch.cat([x, y]).float())
        else:
            self.b_pre[0] = center(x.float())
            self.b_pre[1] = center(y.float())

    def unit_norm_rows(self) -> list[nn.Parameter]:
        return [self.W_dec]

    @torch.no_grad()
    def before_optimizer_step(self, skip=()) -> None:
        """Remove the gradient component parallel to each (unit) decoder atom:
        ``g_i -= (g_i . w_i) w_i``, one pass over memory: on CPU (float32) a compiled kernel
        row by row (:func:`mmsae.engine.kernels.project_rows`), elsewhere in blocks of rows
        that stay in cache between the dot products and the update. Nothing when
        ``id(W_dec)`` is in ``skip`` (the optimiser projects it: :class:`mmsae.train.optim.RowAdam`)."""
        g = self.W_dec.grad
        if g is None or id(self.W_dec) in skip:
            return
        W = self.W_dec
        if _rows_kernel_ok(W, g):  # CPU: one compiled pass, row by row
            split_rows(project_rows, W.shape[0], W.detach().numpy(), g.numpy())
            return
        for r in range(0, W.shape[0], _ROW_BLOCK):
            gb, wb = g[r:r + _ROW_BLOCK], W[r:r + _ROW_BLOCK]
            gb.addcmul_(torch.linalg.vecdot(gb, wb, dim=1).unsqueeze(1), wb, value=-1.0)

    @torch.no_grad()
    def after_optimizer_step(self, skip=()) -> None:
        """Renormalise every decoder atom to unit norm (CPU float32: compiled, row by row; elsewhere
        in cache-sized blocks of rows). Nothing when ``id(W_dec)`` is in ``skip``."""
        W = self.W_dec
        if id(W) in skip:
            return
        if _rows_kernel_ok(W):
            split_rows(renorm_rows, W.shape[0], W.detach().numpy())
            return
        for r in range(0, W.shape[0], _ROW_BLOCK):
            wb = W[r:r + _ROW_BLOCK]
            wb.div_(torch.linalg.vector_norm(wb, dim=1, keepdim=True).clamp_min_(1e-8))

    # ------------------------------------------------------------------ training
    @torch.no_grad()
    def _update_firing(self, *sets, n_samples: int) -> None:
        """Dead-latent bookkeeping after a batch of ``n_samples`` embeddings: every counter
        grows by ``n_samples``; latents that fired are reset to 0.

        Each of ``sets`` is a ``(values, indices)`` pair of the batch's TopK slots (any
        shapes, equal): a latent fired when one of its slots holds a value > 0, so a slot
        holding 0 (fewer than K positive pre-activations) does not count. A bare index
        tensor is also accepted and counts every slot as fired (only for codes known to
        be positive). No device sync: the hits are accumulated with ``index_add``."""
        self.since_fired.add_(n_samples)
        for s in sets:
            if isinstance(s, (tuple, list)):
                vals, idx = s
                hits = torch.zeros(self.since_fired.shape[0], dtype=torch.int32, device=idx.device)
                hits.index_add_(0, idx.reshape(-1), (vals.detach().reshape(-1) > 0).to(torch.int32))
                self.since_fired.masked_fill_(hits > 0, 0)
            else:
                self.since_fired.index_fill_(0, s.reshape(-1), 0)

    def training_loss(self, x: torch.Tensor, y: torch.Tensor, step: int = 0) -> LossOutput:
        """Pooled objective: ``||x - x_hat||^2 + ||y - y_hat||^2`` (+ AuxK), no pair coupling.

        Evaluated K-sparse (:mod:`mmsae.engine.sparse`): the ``2B`` rows ``[x; y]`` go through
        one encoder matmul; only the selected ``(2B, K)`` entries enter the autograd graph."""
        B = x.shape[0]
        u = stack_pair(x, y)
        sel, u_c, vals, idx, u_hat, mod, se = fast_pair_branch(self, x, y, None, self.select_dtype, u=u, errors=True)
        if se is None:
            se = squared_errors(u, u_hat)  # ||u - u_hat||^2 per row of [x; y]
        rec_x, rec_y = se[:B].mean(), se[B:].mean()
        aux = fast_auxk(self, sel.aux, u_c, mod, u, u_hat)
        loss = rec_x + rec_y + self.config.auxk_coef * aux
        self._update_firing((vals, idx), n_samples=2 * B)  # the rows of x and of y at once
        return LossOutput(loss, step_stats(x, y, rec_x, rec_y, aux=aux))
