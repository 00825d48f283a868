"""Universal SAE (USAE, after Thasarathan et al., ICML 2025): one encoder and one decoder per modality around one
shared code.

Each modality has its own encoder (``W_enc``/``b_enc`` for images, ``W_enc_t``/``b_enc_t`` for captions), its own
decoder (``W_dec``, ``W_dec_t``, unit rows) and pre-bias; latent ``i`` is one concept for both. A step encodes
each member of a pair with its own encoder and decodes every code into *both* modalities:

    z_x = TopK(ReLU(W_enc (x - b_0) + b_enc)),   z_y = TopK(ReLU(W_enc_t (y - b_1) + b_enc_t))
    L   = ||x - D_x z_x||^2 + ||y - D_y z_y||^2 + ||y - D_y z_x||^2 + ||x - D_x z_y||^2

(USAE draws one source a step and reconstructs all sources from it; with pairs, both sources a step is that
objective's expectation.) Encoding a lone image or caption needs nothing else, so every single-modality metric
applies. AuxK (as for the TopK SAE, :mod:`mmsae.models.topk`) runs per encoder: the dead latents of each modality's
pre-activations decode, with that modality's decoder, the residual of its own reconstruction.

The step runs on the engine's K-sparse path (:mod:`mmsae.engine.sparse`), each encoder seen by it as a TopK SAE
(:class:`_Side`): one encoder GEMM and selection per modality, and the two decodes of each code touch only its K
atoms in each decoder (``tests/test_fast_path.py`` checks it against the dense form).
"""

from __future__ import annotations

import torch
import torch.nn as nn

from ..engine.sparse import select_codes, sparse_decode, sparse_encoder_values
from .base import LossOutput, SAEConfig, register, step_stats
from .losses import fast_auxk, squared_errors
from .topk import TopKSAE

__all__ = ["UniversalSAE"]


class _Side:
    """One modality of a USAE as the engine's selection sees a TopK SAE: its encoder (``W_enc``, ``b_enc``), its
    decoder (``W_dec``), the model's pre-biases, config and dead latents (shared by the two encoders)."""

    def __init__(self, model: "UniversalSAE", modality: int):
        self.W_enc, self.b_enc = model._enc(modality)
        self.W_dec = model._dec(modality)
        self.b_pre, self.config, self.dead_mask = model.b_pre, model.config, model.dead_mask


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
        """Each member encoded by its own encoder, each code decoded into both modalities, AuxK per encoder (see
        the module); evaluated K-sparse."""
        sides = self.__dict__.get("_sides")
        if sides is None or sides[0].W_enc is not self.W_enc:  # one view per encoder, kept between steps
            sides = self.__dict__["_sides"] = (_Side(self, 0), _Side(self, 1))
        own, cross, aux, sets = [], [], [], []
        for mod, u in ((0, x), (1, y)):
            side, other = sides[mod], sides[1 - mod]
            with torch.no_grad():
                u_c = u - self.b_pre[mod]
            sel = select_codes(side, u_c, None, None, self.select_dtype)
            vals = sparse_encoder_values(sel.raw, u - self.b_pre[mod].detach() if u.requires_grad else u_c, sel.idx,
                                         side.W_enc, side.b_enc, self.b_pre, mod)
            u_hat = sparse_decode(side.W_dec, vals, sel.idx, b_pre=self.b_pre, mod=mod)
            own.append(squared_errors(u, u_hat).mean())
            cross.append(squared_errors(y if mod == 0 else x,
                                        sparse_decode(other.W_dec, vals, sel.idx, b_pre=self.b_pre, mod=1 - mod)).mean())
            aux.append(fast_auxk(side, sel.aux, u_c, mod, u, u_hat, n_blocks=1))
            sets.append((vals, sel.idx))
        rec_x, rec_y = own
        cross_t, aux_t = cross[0] + cross[1], aux[0] + aux[1]
        self._update_firing(*sets, n_samples=2 * x.shape[0])
        return LossOutput(rec_x + rec_y + cross_t + self.config.auxk_coef * aux_t,
                          step_stats(x, y, rec_x, rec_y, cross=cross_t, aux=aux_t))
