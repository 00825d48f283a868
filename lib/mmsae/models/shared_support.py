"""Shared-support SAE (after SPARC, Nasiri-Sarvi et al. 2025): one TopK for both members.

The GSAE architecture (shared ``W_enc``, ``W_dec``, ``b_enc``; a pre-bias per modality)
with a hard version of its coupling. For a pair ``(x, y)``:

    p_x = ReLU(W_enc (x - b_0) + b_enc),   p_y = ReLU(W_enc (y - b_1) + b_enc)
    S   = TopK-indices(p_x + p_y)                      (one index set per pair)
    z_x = p_x on S, 0 elsewhere;   z_y = p_y on S, 0 elsewhere

so both members of a pair use the *same* K latents (identical index sets; an entry can
still be exactly 0 in one modality where that modality's ReLU pre-activation is 0).
Loss: ``||x - x_hat||^2 + ||y - y_hat||^2`` (+ AuxK on the summed pre-activations). No
l2,1 penalty and, unlike SPARC, no cross-reconstruction term.

**Inference on a single modality** (``encode(u, modality)``, what retrieval, zero-shot and
the neuron categories use, since a query has no partner): TopK of that modality's own
pre-activations ``p_u`` alone, i.e. the GSAE encoder. The paired encoder is
:meth:`SharedSupportSAE.encode_pair` (and :meth:`shared_support` for the index sets).
"""

from __future__ import annotations

import torch

from ..losses import reconstruction_loss
from .base import LossOutput, SAEConfig, register
from .topk import TopKSAE, _stats

__all__ = ["SharedSupportSAE"]


@register("shared_support")
class SharedSupportSAE(TopKSAE):
    def __init__(self, config: SAEConfig):
        if config.n_modalities != 2:
            raise ValueError("SharedSupportSAE needs n_modalities=2 (a pre-bias per modality)")
        super().__init__(config)

    def _pair_sparse(self, x: torch.Tensor, y: torch.Tensor):
        pre_x, pre_y = self.pre_activations(x, 0), self.pre_activations(y, 1)
        idx = (pre_x + pre_y).topk(self.config.k, dim=-1, sorted=False).indices
        return pre_x, pre_y, idx, pre_x.gather(1, idx), pre_y.gather(1, idx)

    def shared_support(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The ``(B, K)`` latent indices chosen for each pair."""
        return self._pair_sparse(x, y)[2]

    def encode_pair(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Dense codes ``(z_x, z_y)`` of a batch of pairs on one shared index set per pair."""
        _, _, idx, vx, vy = self._pair_sparse(x, y)
        m = self.config.m
        return self.densify(vx, idx, m), self.densify(vy, idx, m)

    def training_loss(self, x: torch.Tensor, y: torch.Tensor, step: int = 0) -> LossOutput:
        pre_x, pre_y, idx, vx, vy = self._pair_sparse(x, y)
        x_hat, y_hat = self.decode_sparse(vx, idx, 0), self.decode_sparse(vy, idx, 1)
        rec_x, rec_y = reconstruction_loss(x, x_hat), reconstruction_loss(y, y_hat)
        aux = self._auxk(torch.cat([pre_x, pre_y]), torch.cat([x - x_hat, y - y_hat]))
        loss = rec_x + rec_y + self.config.auxk_coef * aux
        self._update_firing(idx, n_samples=2 * x.shape[0])
        return LossOutput(loss, _stats(x, y, x_hat, y_hat, rec_x, rec_y, aux=aux))
