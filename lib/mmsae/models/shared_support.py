"""Shared-support SAE (after SPARC, Nasiri-Sarvi et al. 2025): one TopK for both members.

The GSAE architecture (shared ``W_enc``, ``W_dec``, ``b_enc``; a pre-bias per modality)
with SPARC's *global TopK*: the two members' raw (pre-ReLU) pre-activations are summed,
and ReLU and TopK are applied to the sum. For a pair ``(x, y)``:

    h_x = W_enc (x - b_0) + b_enc,   h_y = W_enc (y - b_1) + b_enc       (raw, no ReLU)
    S   = support of TopK(ReLU(h_x + h_y))                 (one index set per pair)
    z_x = ReLU(h_x) on S, 0 elsewhere;   z_y = ReLU(h_y) on S, 0 elsewhere

so both members of a pair use the *same* latents (an entry can still be 0 in one member
where that member's own pre-activation is negative: a strong image activation can carry a
latent whose caption activation is slightly negative). Summing *before* the ReLU is what
SPARC does; summing ``ReLU(h_x) + ReLU(h_y)`` instead would let one member alone choose
the set (a latent strongly negative on the caption would still be picked).

``S`` is the set of latents with a *positive* value in ``TopK(ReLU(h_x + h_y))``: when
fewer than K summed pre-activations are positive, the remaining TopK slots hold 0 and are
empty (SPARC's gate, a TopK of the raw sum, would keep the least negative latents
there); an empty slot is not a firing for the dead-latent counter.

Loss: ``||x - x_hat||^2 + ||y - y_hat||^2`` (+ AuxK on each member's own ReLU
pre-activations). No l2,1 penalty and, unlike SPARC, no cross-reconstruction term.

**Inference on a single modality** (``encode(u, modality)``, what retrieval, zero-shot and
the neuron categories use, since a query has no partner): TopK of that modality's own
pre-activations alone, i.e. the GSAE encoder. The paired encoder is
:meth:`SharedSupportSAE.encode_pair` (and :meth:`shared_support` for the index sets).
"""

from __future__ import annotations

import torch

from ..engine.sparse import (centred_pair_rows, pair_mod, select_shared_support, sparse_decode, sparse_encoder_values,
                             stack_pair)
from .losses import fast_auxk, squared_errors
from .base import LossOutput, SAEConfig, register, step_stats
from .topk import TopKSAE

__all__ = ["SharedSupportSAE", "global_topk"]


def global_topk(h_x: torch.Tensor, h_y: torch.Tensor, k: int):
    """SPARC's global TopK of raw pre-activations ``h_x``, ``h_y`` (``(B, m)`` each).

    Returns ``(idx, v_x, v_y)``: the ``(B, k)`` TopK indices of ``ReLU(h_x + h_y)`` and
    each member's values there, ``ReLU(h)`` on slots whose summed value is > 0, 0 on the
    empty slots (summed value 0)."""
    s, idx = torch.relu(h_x + h_y).topk(k, dim=-1, sorted=False)
    on = (s > 0).to(h_x.dtype)
    return idx, torch.relu(h_x.gather(1, idx)) * on, torch.relu(h_y.gather(1, idx)) * on


@register("shared_support")
class SharedSupportSAE(TopKSAE):
    def __init__(self, config: SAEConfig):
        if config.n_modalities != 2:
            raise ValueError("SharedSupportSAE needs n_modalities=2 (a pre-bias per modality)")
        super().__init__(config)

    def _pair_sparse(self, x: torch.Tensor, y: torch.Tensor):
        """``(h_x, h_y, idx, v_x, v_y)``: raw pre-activations and the global-TopK slots."""
        h_x, h_y = self.raw_pre_activations(x, 0), self.raw_pre_activations(y, 1)
        idx, vx, vy = global_topk(h_x, h_y, self.config.k)
        return h_x, h_y, idx, vx, vy

    def shared_support(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The ``(B, K)`` TopK indices of each pair (slots with a summed value of 0, when
        fewer than K are positive, are empty: see :meth:`encode_pair`)."""
        return self._pair_sparse(x, y)[2]

    def encode_pair(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Dense codes ``(z_x, z_y)`` of a batch of pairs on one shared index set per pair."""
        _, _, idx, vx, vy = self._pair_sparse(x, y)
        m = self.config.m
        return self.densify(vx, idx, m), self.densify(vy, idx, m)

    def training_loss(self, x: torch.Tensor, y: torch.Tensor, step: int = 0) -> LossOutput:
        """``||x - x_hat||^2 + ||y - y_hat||^2`` (+ AuxK on each member's own pre-activations)
        with the global TopK support; evaluated K-sparse (:func:`mmsae.engine.sparse.select_shared_support`:
        one no-grad encoder pass, only the ``(2B, K)`` supported entries enter autograd)."""
        B = x.shape[0]
        b_pre = self.b_pre
        u = stack_pair(x, y)
        u_c = centred_pair_rows(self, u)
        sel, on = select_shared_support(self, u_c, self.select_dtype)
        mod = pair_mod(self, B)
        vals = sparse_encoder_values(sel.raw, u_c, sel.idx, self.W_enc, self.b_enc, b_pre, mod)
        vals = vals * on.repeat(2, 1).to(vals.dtype)  # empty slots hold 0
        u_hat = sparse_decode(self.W_dec, vals, sel.idx, b_pre=b_pre, mod=mod)
        se = squared_errors(u, u_hat)  # ||u - u_hat||^2 per row of [x; y]
        rec_x, rec_y = se[:B].mean(), se[B:].mean()
        aux = fast_auxk(self, sel.aux, u_c, mod, u, u_hat)
        loss = rec_x + rec_y + self.config.auxk_coef * aux
        self._update_firing((vals, sel.idx), n_samples=2 * B)  # the rows of x and of y at once
        return LossOutput(loss, step_stats(x, y, rec_x, rec_y, aux=aux))
