"""Universal SAE (USAE, after Thasarathan et al., ICML 2025): one encoder and one decoder per modality around one
shared code.

Each modality has its own encoder (``W_enc``/``b_enc`` for images, ``W_enc_t``/``b_enc_t`` for captions), its own
decoder (``W_dec``, ``W_dec_t``, unit rows) and pre-bias; latent ``i`` is one concept for both. A step encodes
each member of a pair with its own encoder and decodes every code into *both* modalities:

    z_x = TopK(ReLU(W_enc (x - b_0) + b_enc)),   z_y = TopK(ReLU(W_enc_t (y - b_1) + b_enc_t))
    L   = ||x - D_x z_x||^2 + ||y - D_y z_y||^2 + ||y - D_y z_x||^2 + ||x - D_x z_y||^2

(USAE draws one source a step and reconstructs all sources from it; with pairs, both sources a step is that
objective's expectation.) Encoding a lone image or caption needs nothing else, so every single-modality metric
applies. The step is the dense reference form (no K-sparse engine path): benchmark it beside the others with
``scripts/benchmark.py --methods usae``.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from .base import LossOutput, SAEConfig, register, step_stats
from .topk import TopKSAE

__all__ = ["UniversalSAE"]


@register("usae")
class UniversalSAE(TopKSAE):
    def __init__(self, config: SAEConfig):
        if config.n_modalities != 2:
            raise ValueError("UniversalSAE needs n_modalities=2 (one encoder, decoder and pre-bias per modality)")
        super().__init__(config)
        w = torch.randn(config.m, config.d)
        w = w / w.norm(dim=1, keepdim=True)
        self.W_dec_t = nn.Parameter(w.clone())  # the caption decoder, (m, d), unit rows
        self.W_enc_t = nn.Parameter(w.clone())  # the caption encoder, its transpose at init
        self.b_enc_t = nn.Parameter(torch.zeros(config.m))

    def _enc(self, modality: int):
        return (self.W_enc, self.b_enc) if int(modality) == 0 else (self.W_enc_t, self.b_enc_t)

    def _dec(self, modality: int) -> nn.Parameter:
        return self.W_dec if int(modality) == 0 else self.W_dec_t

    def raw_pre_activations(self, u: torch.Tensor, modality: int = 0) -> torch.Tensor:
        W, b = self._enc(modality)
        return (u - self.b_pre[int(modality)]) @ W.t() + b

    def decode(self, z: torch.Tensor, modality: int = 0) -> torch.Tensor:
        return z @ self._dec(modality) + self.b_pre[int(modality)]

    def decode_sparse(self, values: torch.Tensor, indices: torch.Tensor, modality: int = 0) -> torch.Tensor:
        atoms = self._dec(modality)[indices]
        return torch.einsum("bk,bkd->bd", values, atoms) + self.b_pre[int(modality)]

    def decoder_atoms(self, modality: int = 0) -> torch.Tensor:
        return self._dec(modality)

    def unit_norm_rows(self) -> list[nn.Parameter]:
        return [self.W_dec, self.W_dec_t]

    @torch.no_grad()
    def before_optimizer_step(self, skip=()) -> None:
        super().before_optimizer_step(skip)  # the image decoder
        W, g = self.W_dec_t, self.W_dec_t.grad
        if g is not None and id(W) not in skip:
            g.addcmul_(torch.linalg.vecdot(g, W, dim=1).unsqueeze(1), W, value=-1.0)

    @torch.no_grad()
    def after_optimizer_step(self, skip=()) -> None:
        super().after_optimizer_step(skip)
        if id(self.W_dec_t) not in skip:
            self.W_dec_t.div_(torch.linalg.vector_norm(self.W_dec_t, dim=1, keepdim=True).clamp_min_(1e-8))

    def training_loss(self, x: torch.Tensor, y: torch.Tensor, step: int = 0) -> LossOutput:
        """Each member encoded by its own encoder, each code decoded into both modalities (see the module)."""
        vx, ix = self.encode_sparse(x, 0)
        vy, iy = self.encode_sparse(y, 1)
        err = lambda a, b: ((a - b) ** 2).sum(1).mean()  # noqa: E731
        rec_x, rec_y = err(x, self.decode_sparse(vx, ix, 0)), err(y, self.decode_sparse(vy, iy, 1))
        cross = err(y, self.decode_sparse(vx, ix, 1)) + err(x, self.decode_sparse(vy, iy, 0))
        self._update_firing((vx, ix), (vy, iy), n_samples=2 * x.shape[0])
        return LossOutput(rec_x + rec_y + cross, step_stats(x, y, rec_x, rec_y, cross=cross))
