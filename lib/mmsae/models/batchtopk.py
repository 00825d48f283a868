"""BatchTopK SAE (Bussmann, Leask & Nanda 2024), a baseline of the paper's final version.

Same encoder/decoder as the TopK baseline (pooled: image and text embeddings share one
pre-bias, nothing couples a pair), but the sparsity constraint is taken over the *batch*:

* **training**: the ``B`` pairs of a step give ``2B`` pooled embeddings; their ReLU
  pre-activations ``(2B, m)`` are flattened and the top ``2B * K`` entries are kept
  (every other entry is zeroed). A sample may use more or fewer than ``K`` latents; the
  batch uses exactly ``K`` per sample on average.
* **inference**: a single learned threshold ``theta`` replaces the batch dependence,
  ``z = pre * (pre > theta)``. ``theta`` is a running average (exponential, weight
  ``extra["threshold_momentum"]``, default 0.01) of the smallest activation kept in each
  training batch, as in Bussmann et al.; it is a buffer, saved with the model. Before any
  training step (``theta < 0``) inference falls back to per-sample TopK.

``extra["inference"] = "topk"`` forces per-sample TopK at inference (default
``"threshold"``). AuxK (per modality, at Gao et al.'s relative weight:
:func:`mmsae.models.losses.auxk_loss`) and the decoder-norm constraint are the TopK recipe's. A
kept entry of value 0 (when fewer than ``2B * K`` pre-activations are positive) is not a
firing for the dead-latent counter.

``training_loss`` is evaluated K-sparse (:mod:`mmsae.engine.sparse`): the ``(2B, m)``
pre-activations are computed without autograd and the top ``2B * K`` taken as flat
entries (:func:`~mmsae.engine.sparse.batch_topk_entries`); only those enter the graph
(:func:`~mmsae.engine.sparse.sparse_encoder_values`) and are decoded by one
``embedding_bag``. The dead set for AuxK is taken after this step's firing update.
"""

from __future__ import annotations

import torch

from ..engine.sparse import (batch_topk_entries, centred_pair_rows, dead_latents, decode_entries, pair_mod, pooled_pre_activations,
                             prefix_decode_errors, select_dead, sparse_encoder_values, stack_pair)
from .losses import fast_auxk, squared_errors
from .base import LossOutput, SAEConfig, register, step_stats
from .topk import TopKSAE

__all__ = ["BatchTopKSAE", "batch_topk"]


def batch_topk(pre: torch.Tensor, k_per_row: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Keep the ``rows * k_per_row`` largest entries of ``pre`` (2-D), zero the rest.

    Returns the sparse-dense code ``(rows, m)`` and the flat indices kept."""
    rows, m = pre.shape
    n_keep = min(rows * k_per_row, rows * m)
    flat = pre.reshape(-1)
    vals, idx = flat.topk(n_keep, sorted=False)
    z = torch.zeros_like(flat).scatter(0, idx, vals).reshape(rows, m)
    return z, idx


@register("batchtopk")
class BatchTopKSAE(TopKSAE):
    def __init__(self, config: SAEConfig):
        super().__init__(config)
        mom = float(config.extra.get("threshold_momentum", 0.01))
        if not 0.0 < mom <= 1.0:
            raise ValueError(f"threshold_momentum must be in (0, 1], got {mom}")
        if config.extra.get("inference", "threshold") not in ("threshold", "topk"):
            raise ValueError("extra['inference'] must be 'threshold' or 'topk'")
        # < 0: not yet estimated (inference then falls back to per-sample TopK)
        self.register_buffer("threshold", torch.tensor(-1.0))

    # ------------------------------------------------------------------ inference
    def encode(self, u: torch.Tensor, modality: int = 0) -> torch.Tensor:
        """Inference code (train or eval mode alike): the threshold rule, or per-sample TopK
        before any training step; the batch rule is :meth:`batch_encode` / ``training_loss``."""
        if self.config.extra.get("inference", "threshold") == "topk" or float(self.threshold) < 0:
            return super().encode(u, modality)
        pre = self.pre_activations(u, modality)
        return pre * (pre > self.threshold)

    def batch_encode(self, u: torch.Tensor, modality: int = 0) -> torch.Tensor:
        """BatchTopK code of ``u`` (``len(u) * K`` activations over the whole batch)."""
        return batch_topk(self.pre_activations(u, modality), self.config.k)[0]

    # ------------------------------------------------------------------ training
    @torch.no_grad()
    def _update_threshold(self, kept: torch.Tensor) -> None:
        """Running mean of the smallest positive activation kept in the batch."""
        pos = kept[kept > 0]
        if pos.numel() == 0:
            return
        low = pos.min()
        if float(self.threshold) < 0:
            self.threshold.copy_(low)
        else:
            mom = float(self.config.extra.get("threshold_momentum", 0.01))
            self.threshold.mul_(1.0 - mom).add_(mom * low)

    def _batch_codes(self, x: torch.Tensor, y: torch.Tensor):
        """The pooled batch's BatchTopK selection, without autograd on the ``(2B, m)`` matrix.

        Returns ``(pre, u_c, mod, kept, rows, cols)``: ``pre`` the ReLU pre-activations
        ``(2B, m)`` (no autograd; a buffer reused by the next encoder pass), ``u_c`` the
        centred rows ``[x - b_pre; y - b_pre]`` (carrying the gradient wrt the data when
        ``x`` or ``y`` requires it), ``mod`` their pre-bias row(s) (as for
        :func:`~mmsae.engine.sparse.sparse_encoder_values`), and the ``2B * K`` kept entries
        (values ``kept``, sorted by row; :func:`~mmsae.engine.sparse.batch_topk_entries`).
        In training mode also updates the threshold and the firing statistics (a kept entry
        of value 0, when fewer than ``2B * K`` pre-activations are positive, is not a firing)."""
        b = x.shape[0]
        m0, m1 = self._mod(0), self._mod(1)
        mod = pair_mod(self, b)
        if x.requires_grad or y.requires_grad:
            b_pre = self.b_pre.detach()
            u_c = torch.cat([x - b_pre[m0], y - b_pre[m1]])
        else:  # one pass over [x; y] (a view where the loop gathered the batch into one buffer)
            u_c = centred_pair_rows(self, stack_pair(x, y))
        pre = pooled_pre_activations(self, u_c.detach(), finish=False)  # ReLU(pre + b_enc) made in the selection
        kept, rows, cols = batch_topk_entries(pre, 2 * b * self.config.k, bias=self.b_enc)
        if self.training:
            self._update_threshold(kept)
            self._update_firing((kept, cols), n_samples=2 * b)
        return pre, u_c, mod, kept, rows, cols

    def _pooled_sparse(self, x: torch.Tensor, y: torch.Tensor):
        """``(pre, values, flat indices)`` of the pooled batch's BatchTopK entries (no autograd;
        ``flat = row * m + latent``), with the updates of :meth:`_batch_codes` in training mode."""
        pre, _, _, kept, rows, cols = self._batch_codes(x, y)
        return pre.clone(), kept, rows * self.config.m + cols

    def _pooled_codes(self, x: torch.Tensor, y: torch.Tensor):
        """``(pre, z)``: pre-activations and the dense BatchTopK code of the pooled batch (no autograd)."""
        pre, vals, flat_idx = self._pooled_sparse(x, y)
        z = torch.zeros_like(pre).reshape(-1).scatter(0, flat_idx, vals).reshape(pre.shape)
        return pre, z

    def _pooled_bias(self, b: int) -> torch.Tensor:
        """The pre-bias added to the decoding of the ``2B`` pooled rows (broadcastable)."""
        m0, m1 = self._mod(0), self._mod(1)
        if m0 == m1:
            return self.b_pre[m0]
        return torch.cat([self.b_pre[m0].expand(b, -1), self.b_pre[m1].expand(b, -1)])

    def _sparse_values(self, u_c: torch.Tensor, mod, kept: torch.Tensor, rows: torch.Tensor,
                       cols: torch.Tensor) -> torch.Tensor:
        """The kept entries' code values with their (sparse) gradients wrt ``W_enc``, ``b_enc``,
        ``b_pre`` (and the data): ``ReLU`` of the pre-activation at each entry."""
        return sparse_encoder_values(kept, u_c, cols, self.W_enc, self.b_enc, self.b_pre, mod, rows=rows)

    def _auxk_pooled(self, pre: torch.Tensor, u_c: torch.Tensor, mod, inputs, u_hat: torch.Tensor) -> torch.Tensor:
        """AuxK of the pooled batch (per modality): the top ``k_aux`` dead latents of each row
        of ``pre`` (dead after this step's firing update) decode the residual ``inputs - u_hat``
        (``inputs``: ``(x, y)``)."""
        return fast_auxk(self, select_dead(pre, *dead_latents(self)), u_c, mod, inputs, u_hat)

    def training_loss(self, x: torch.Tensor, y: torch.Tensor, step: int = 0) -> LossOutput:
        """Pooled reconstruction ``||x - x_hat||^2 + ||y - y_hat||^2`` (+ AuxK) with BatchTopK.

        Evaluated K-sparse (:mod:`mmsae.engine.sparse`): the ``(2B, m)`` pre-activations are
        computed without autograd; only the ``2B * K`` kept entries enter the graph and are
        decoded with one ``embedding_bag``."""
        b = x.shape[0]
        pre, u_c, mod, kept, rows, cols = self._batch_codes(x, y)
        vals = self._sparse_values(u_c, mod, kept, rows, cols)
        u = stack_pair(x, y)
        # the decode and its squared errors in one compiled pass where it applies (one prefix group: the whole
        # dictionary; the backward then reads no atom again for the values' gradient)
        fused = prefix_decode_errors(self.W_dec, vals, rows, cols, torch.zeros_like(cols), 1, u, self.b_pre, mod)
        if fused is not None:
            se, u_hat = fused[0][0], fused[1]
        else:
            u_hat = decode_entries(self.W_dec, vals, rows, cols, 2 * b, self.b_pre, mod)
            se = squared_errors(u, u_hat)  # ||u - u_hat||^2 per row of [x; y]
        rec_x, rec_y = se[:b].mean(), se[b:].mean()
        aux = self._auxk_pooled(pre, u_c, mod, (x, y), u_hat)
        loss = rec_x + rec_y + self.config.auxk_coef * aux
        return LossOutput(loss, step_stats(x, y, rec_x, rec_y, aux=aux,
                                       threshold=self.threshold.detach().clone()))
