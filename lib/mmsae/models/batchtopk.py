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
"""

from __future__ import annotations

import torch

from .losses import reconstruction_loss
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

    def _pooled_sparse(self, x: torch.Tensor, y: torch.Tensor):
        """Pre-activations ``(2B, m)`` of the pooled batch and its BatchTopK entries as
        ``(values, flat indices)`` into the flattened pre-activations (``2B * K`` of them).
        In training mode also updates the threshold and the firing statistics."""
        pre = torch.cat([self.pre_activations(x, 0), self.pre_activations(y, 1)])
        n_keep = min(pre.shape[0] * self.config.k, pre.numel())
        vals, flat_idx = pre.reshape(-1).topk(n_keep, sorted=False)
        if self.training:
            self._update_threshold(vals)
            # a kept entry of value 0 (fewer than 2B*K positive pre-activations) is not a firing
            self._update_firing((vals, flat_idx % self.config.m), n_samples=pre.shape[0])
        return pre, vals, flat_idx

    def _pooled_codes(self, x: torch.Tensor, y: torch.Tensor):
        """``(pre, z)``: pre-activations and the dense BatchTopK code of the pooled batch."""
        pre, vals, flat_idx = self._pooled_sparse(x, y)
        z = torch.zeros_like(pre).reshape(-1).scatter(0, flat_idx, vals).reshape(pre.shape)
        return pre, z

    def _decode_flat(self, vals: torch.Tensor, flat_idx: torch.Tensor, b: int,
                     keep: torch.Tensor | None = None) -> torch.Tensor:
        """Decode the pooled batch (``b`` image rows then ``b`` text rows) from its sparse
        entries, optionally only those with ``keep`` True; gathers one atom per kept entry."""
        m = self.config.m
        rows, cols = flat_idx // m, flat_idx % m
        if keep is not None:
            rows, cols, vals = rows[keep], cols[keep], vals[keep]
        contrib = vals[:, None] * self.W_dec[cols]
        out = torch.zeros(2 * b, self.config.d, dtype=contrib.dtype, device=contrib.device).index_add(0, rows, contrib)
        bias = torch.cat([self.b_pre[self._mod(0)].expand(b, -1), self.b_pre[self._mod(1)].expand(b, -1)])
        return out + bias

    def training_loss(self, x: torch.Tensor, y: torch.Tensor, step: int = 0) -> LossOutput:
        """Pooled reconstruction ``||x - x_hat||^2 + ||y - y_hat||^2`` (+ AuxK) with BatchTopK."""
        b = x.shape[0]
        pre, vals, flat_idx = self._pooled_sparse(x, y)
        u_hat = self._decode_flat(vals, flat_idx, b)
        x_hat, y_hat = u_hat[:b], u_hat[b:]
        rec_x, rec_y = reconstruction_loss(x, x_hat), reconstruction_loss(y, y_hat)
        aux = self._auxk(pre, torch.cat([x - x_hat, y - y_hat]), torch.cat([x, y]))
        loss = rec_x + rec_y + self.config.auxk_coef * aux
        return LossOutput(loss, step_stats(x, y, x_hat, y_hat, rec_x, rec_y, aux=aux,
                                       threshold=self.threshold.detach().clone()))
