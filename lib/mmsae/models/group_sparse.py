"""Group-sparse SAE (GSAE) and its cross-modally masked variant (MGSAE).

One shared ``W_enc``, ``W_dec``, ``b_enc`` and a pre-bias per modality (``b_0`` for
image/audio, ``b_1`` for text), trained on pairs ``(x, y)``:

    z_x = TopK(ReLU(W_enc (x - b_0) + b_enc)),   z_y = TopK(ReLU(W_enc (y - b_1) + b_enc))
    L   = ||x - x_hat||^2 + ||y - y_hat||^2 + lambda * sum_i sqrt(z_x,i^2 + z_y,i^2)

(plus AuxK, as for the baseline). The l2,1 term (:func:`mmsae.models.losses.group_l21`) groups
each latent's two activations on a pair and so rewards latents shared by an image and
its caption.

MGSAE adds *cross-modal random masking* during training: one random binary mask over
the ``m`` latents, drop probability ``mask_rate`` (paper: 0.2), is applied to the
pre-TopK activations of BOTH members of a pair, so both pick their top K from the
same surviving latents. ``mask_mode="pair"`` (default; the paper does not say) draws
one mask per pair, ``"batch"`` one per batch. No mask at inference.

GSAE = ``SAEConfig(arch="group_sparse", n_modalities=2, group_lambda=0.05)``;
MGSAE = the same with ``mask_rate=0.2`` (see :func:`gsae_config`, :func:`mgsae_config`).
"""

from __future__ import annotations

import torch

from .losses import group_l21, reconstruction_loss
from .base import LossOutput, SAEConfig, register, step_stats
from .sparse import group_sparse_fast_loss
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

    def draw_mask(self, batch: int, device: torch.device, generator: torch.Generator | None = None) -> torch.Tensor:
        """Boolean keep-mask ``(batch, m)`` (per pair) or ``(1, m)`` (per batch)."""
        rows = batch if self.config.mask_mode == "pair" else 1
        return torch.rand(rows, self.config.m, device=device, generator=generator) >= self.config.mask_rate

    def training_loss(self, x: torch.Tensor, y: torch.Tensor, step: int = 0, keep=None) -> LossOutput:
        """``keep``: optional mask to use instead of a freshly drawn one, a bool tensor
        ``(B, m)`` / ``(1, m)`` or an index-form :class:`mmsae.models.sparse.HashMask`.

        With ``fast_path`` (default) the sparse path of :mod:`mmsae.models.sparse` computes the same
        objective (index-form mask, l2,1 on the union of active sets); ``fast_path = False``
        selects this dense reference code (mask drawn by :meth:`draw_mask`)."""
        if self._use_fast(GroupSparseSAE) and type(self).draw_mask is GroupSparseSAE.draw_mask:
            return group_sparse_fast_loss(self, x, y, keep, self.fast_select_dtype)
        if keep is None and self.training and self.config.mask_rate > 0:
            keep = self.draw_mask(x.shape[0], x.device)
        elif keep is not None and not torch.is_tensor(keep):  # HashMask -> dense
            keep = keep.dense(x.shape[0], self.config.m, x.device)
        pre_x, vx, ix, x_hat = self._branch(x, 0, keep)
        pre_y, vy, iy, y_hat = self._branch(y, 1, keep)
        rec_x, rec_y = reconstruction_loss(x, x_hat), reconstruction_loss(y, y_hat)
        m = self.config.m
        group = group_l21(self.densify(vx, ix, m), self.densify(vy, iy, m))
        loss = rec_x + rec_y + self.config.group_lambda * group
        aux = self._auxk(torch.cat([pre_x, pre_y]), torch.cat([x - x_hat, y - y_hat]), torch.cat([x, y]))
        loss = loss + self.config.auxk_coef * aux
        self._update_firing((vx, ix), (vy, iy), n_samples=2 * x.shape[0])  # zero-valued slots do not fire
        return LossOutput(loss, step_stats(x, y, x_hat, y_hat, rec_x, rec_y, aux=aux, group=group))
