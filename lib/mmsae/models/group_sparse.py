"""Group-sparse SAE (GSAE) and its cross-modally masked variant (MGSAE).

One shared ``W_enc``, ``W_dec``, ``b_enc`` and a pre-bias per modality (``b_0`` for
image/audio, ``b_1`` for text), trained on pairs ``(x, y)``:

    z_x = TopK(ReLU(W_enc (x - b_0) + b_enc)),   z_y = TopK(ReLU(W_enc (y - b_1) + b_enc))
    L   = ||x - x_hat||^2 + ||y - y_hat||^2 + lambda * sum_i sqrt(z_x,i^2 + z_y,i^2)

(plus AuxK, as for the baseline). The l2,1 term (:func:`mmsae.models.losses.group_l21`) groups
each latent's two activations on a pair and so rewards latents shared by an image and
its caption. The objective is written once, :meth:`GroupSparseSAE.training_loss`, and
evaluated K-sparse (:mod:`mmsae.engine.sparse`).

MGSAE adds *cross-modal random masking* during training: one random binary mask over
the ``m`` latents, drop probability ``mask_rate`` (paper: 0.2), is applied to the
pre-TopK activations of BOTH members of a pair, so both pick their top K from the
same surviving latents. ``mask_mode="pair"`` (default; the paper does not say) draws
one mask per pair, ``"batch"`` one per batch. The mask is in index form
(:class:`mmsae.engine.sparse.HashMask`, :meth:`GroupSparseSAE.draw_mask`). No mask at inference.

GSAE = ``SAEConfig(arch="group_sparse", n_modalities=2, group_lambda=0.05)``;
MGSAE = the same with ``mask_rate=0.2`` (see :func:`gsae_config`, :func:`mgsae_config`).
"""

from __future__ import annotations

import torch

from ..engine.sparse import HashMask, draw_hash_mask, fast_pair_branch, stack_pair
from .losses import fast_auxk, group_l21, squared_errors
from .base import LossOutput, SAEConfig, register, step_stats
from .topk import TopKSAE

__all__ = ["GroupSparseSAE", "gsae_config", "mgsae_config"]


def gsae_config(d: int = 512, m: int = 8192, k: int = 32, group_lambda: float = 0.05, **kw) -> SAEConfig:
    return SAEConfig(arch="group_sparse", d=d, m=m, k=k, n_modalities=2, group_lambda=group_lambda, **kw)


def mgsae_config(d: int = 512, m: int = 8192, k: int = 32, group_lambda: float = 0.05,
                 mask_rate: float = 0.2, mask_mode: str = "pair", **kw) -> SAEConfig:
    return gsae_config(d, m, k, group_lambda, mask_rate=mask_rate, mask_mode=mask_mode, **kw)


@register("group_sparse")
class GroupSparseSAE(TopKSAE):
    def __init__(self, config: SAEConfig):
        if config.n_modalities != 2:
            raise ValueError("GroupSparseSAE needs n_modalities=2 (a pre-bias per modality)")
        if not 0.0 <= config.mask_rate < 1.0:
            raise ValueError(f"mask_rate is a drop probability in [0, 1), got {config.mask_rate}")
        if config.mask_mode not in ("pair", "batch"):
            raise ValueError(f"mask_mode must be 'pair' or 'batch', got {config.mask_mode!r}")
        super().__init__(config)

    def draw_mask(self) -> HashMask:
        """A fresh cross-modal keep-mask (per pair or per batch, see ``mask_mode``); its
        ``(B, m)`` bool form is ``draw_mask().dense(B, m)``. Data-parallel ranks set
        ``mask_row_offset`` so that each shard sees its rows of the global batch's mask."""
        return draw_hash_mask(self.config.mask_rate, self.config.mask_mode == "pair",
                              getattr(self, "mask_row_offset", 0))

    def training_loss(self, x: torch.Tensor, y: torch.Tensor, step: int = 0, keep=None) -> LossOutput:
        """``||x - x_hat||^2 + ||y - y_hat||^2 + group_lambda * l2,1`` (+ AuxK).

        ``keep``: optional mask to use instead of a freshly drawn one (:meth:`draw_mask`, in
        training mode when ``mask_rate > 0``): a :class:`~mmsae.engine.sparse.HashMask` or a
        bool tensor ``(B, m)`` / ``(1, m)``. Evaluated K-sparse: one encoder matmul over
        ``[x; y]``, the l2,1 term on the two members' active sets (never densified)."""
        cfg = self.config
        if keep is None and self.training and cfg.mask_rate > 0:
            keep = self.draw_mask()
        B = x.shape[0]
        u = stack_pair(x, y)
        sel, u_c, vals, idx, u_hat, mod, se = fast_pair_branch(self, x, y, keep, self.select_dtype, u=u, errors=True)
        ix, iy = idx[:B], idx[B:]
        if se is None:
            se = squared_errors(u, u_hat)  # ||u - u_hat||^2 per row of [x; y]
        rec_x, rec_y = se[:B].mean(), se[B:].mean()
        group = group_l21(vals[:B], ix, vals[B:], iy)
        aux = fast_auxk(self, sel.aux, u_c, mod, u, u_hat)
        loss = rec_x + rec_y + cfg.group_lambda * group + cfg.auxk_coef * aux
        self._update_firing((vals, idx), n_samples=2 * B)  # both members' slots at once; zero-valued slots do not fire
        return LossOutput(loss, step_stats(x, y, rec_x, rec_y, aux=aux, group=group))
