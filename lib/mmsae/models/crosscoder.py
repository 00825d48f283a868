"""Sparse crosscoder (after Lindsey et al. 2024, "Sparse crosscoders for cross-layer features and model diffing"):
one latent reads both members of a pair and writes into both.

Each modality has its own encoder (``W_enc``/``W_enc_t``), decoder (``W_dec``/``W_dec_t``) and pre-bias; one code
``z`` per *pair*, from both members at once:

    a     = ReLU(W_enc (x - b_0) + W_enc_t (y - b_1) + b_enc)
    z     = a on the K latents of largest a_i (||D_x,i|| + ||D_y,i||), 0 elsewhere
    x_hat = D_x z + b_0,   y_hat = D_y z + b_1
    L     = ||x - x_hat||^2 + ||y - y_hat||^2 + lambda * sum_i z_i (||D_x,i|| + ||D_y,i||)   (+ AuxK)

The penalty weighs each active latent by the *sum* of its per-modality decoder norms (Lindsey et al.'s l1 of the
norms). The decoder rows are free, not unit norm; the K latents are chosen by their activation times their
decoder norms (as in the TopK crosscoders of Minder et al. 2025), so neither the choice nor the penalty changes
when scale moves between a latent's code and its decoder rows. A latent pays for every modality it writes into, so latents that need only one modality let the other
decoder row shrink to zero. It is the closest relative of the paper's l2,1 penalty, which sums
``sqrt(z_x,i^2 + z_y,i^2)`` over a latent's two activations instead. ``lambda`` is the config's ``group_lambda``
(the paper's 0.05); K is per pair (one code a pair, where the other designs have one code per member).

**What it cannot have.** Encoding needs both halves of a pair: there is no code of a lone image or caption
(:meth:`Crosscoder.encode` refuses; :meth:`Crosscoder.encode_pair` is the encoder). So the metrics built on the
codes of one modality do not apply and are left empty (NaN), marked "needs one modality" in the tables: the
firing categories and the split measure, MMS, retrieval from codes or reconstructions, zero-shot through the SAE,
steering, and the activation-based ground-truth scores (alignment error, a latent tracking a shared concept).
What it has: reconstruction of each member from the pair's code, L0, dead and dense latents, the decoders
(atom recovery, seed stability, UMAP) and its own split, by decoder norms: a latent whose text decoder row has
under a tenth of its two norms is image-only (:func:`decoder_norm_split`; Lindsey et al.'s relative decoder norm).
The step is dense (the engine's K-sparse path selects by activation alone, where the crosscoder ranks activations
weighted by decoder norms); ``scripts/benchmark.py`` times it beside the others.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn

from ..engine.sparse import dead_latents, select_dead
from .base import LossOutput, SAEConfig, register, step_stats
from .losses import auxk_loss
from .topk import TopKSAE

__all__ = ["Crosscoder", "PairOnlyError", "decoder_norm_split", "needs_pair"]

#: a latent's relative text-decoder norm ``||D_y|| / (||D_x|| + ||D_y||)`` at or under this is image-only, at or
#: over ``1 -`` this text-only (Lindsey et al.'s cut-offs)
NORM_SHARE = 0.1


class PairOnlyError(ValueError):
    """A model that encodes a pair was asked for the code of one modality."""


def needs_pair(model) -> bool:
    """Whether ``model`` encodes a pair only (its codes of one modality do not exist)."""
    return bool(getattr(model, "needs_pair", False))


def decoder_norm_split(norm_x, norm_y, share: float = NORM_SHARE) -> np.ndarray:
    """Each latent's category by its decoder norms: ``"image_only"`` when ``||D_y|| / (||D_x|| + ||D_y||) <=
    share``, ``"text_only"`` when ``>= 1 - share``, ``"both"`` between (``"dead"`` where both norms are 0)."""
    nx, ny = np.asarray(norm_x, np.float64), np.asarray(norm_y, np.float64)
    tot = nx + ny
    r = np.divide(ny, tot, out=np.full_like(tot, 0.5), where=tot > 0)
    out = np.where(r <= share, "image_only", np.where(r >= 1 - share, "text_only", "both")).astype(object)
    out[tot <= 0] = "dead"
    return out


@register("crosscoder")
class Crosscoder(TopKSAE):
    needs_pair = True
    both_rule = "needs one modality"

    def __init__(self, config: SAEConfig):
        if config.n_modalities != 2:
            raise ValueError("Crosscoder needs n_modalities=2 (one encoder, decoder and pre-bias per modality)")
        super().__init__(config)
        w = torch.randn(config.m, config.d)
        w = w / w.norm(dim=1, keepdim=True)
        self.W_dec_t = nn.Parameter(w.clone())  # the caption decoder (m, d); rows free, unit norm at init
        self.W_enc_t = nn.Parameter(w.clone())  # the caption encoder, its transpose at init
        with torch.no_grad():  # each encoder reads half the input of one code
            self.W_enc.mul_(0.5)
            self.W_enc_t.mul_(0.5)

    # ------------------------------------------------------------------ encoding a pair
    def raw_pre_activations_pair(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """``W_enc (x - b_0) + W_enc_t (y - b_1) + b_enc`` before the ReLU, ``(B, m)``."""
        return (x - self.b_pre[0]) @ self.W_enc.t() + (y - self.b_pre[1]) @ self.W_enc_t.t() + self.b_enc

    def select(self, pre: torch.Tensor, norms: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``(values, indices)`` of the K latents of largest ``pre_i (||D_x,i|| + ||D_y,i||)`` per row of the
        ReLU'd pre-activations ``pre`` (the values are ``pre``'s); ``norms``: those summed norms, if at hand."""
        with torch.no_grad():
            if norms is None:
                norms = sum(self.decoder_norms())
            idx = (pre.detach() * norms.detach()).topk(self.config.k, dim=-1, sorted=False).indices
        return pre.gather(1, idx), idx

    def encode_pair_sparse(self, x: torch.Tensor, y: torch.Tensor):
        """``(values, indices)`` of the K active latents of each pair's code."""
        return self.select(torch.relu(self.raw_pre_activations_pair(x, y)))

    def encode_pair(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The dense code ``(B, m)`` of each pair (image ``x``, caption ``y``)."""
        v, i = self.encode_pair_sparse(x, y)
        return self.densify(v, i, self.config.m)

    def encode(self, u: torch.Tensor, modality: int = 0) -> torch.Tensor:
        raise PairOnlyError("Crosscoder encodes a pair (an image and its caption together): use encode_pair(x, y); "
                            "a lone image or caption has no code, so the single-modality metrics do not apply")

    def raw_pre_activations(self, u: torch.Tensor, modality: int = 0) -> torch.Tensor:
        return self.encode(u, modality)  # refuses, as encode does

    def encode_pair_numpy(self, x, y, batch_size: int = 4096) -> np.ndarray:
        """Codes of paired ``(N, d)`` arrays, batched, as float32 numpy."""
        return self._map_numpy(self.encode_pair, (x, y), self.config.m, batch_size)

    def decode_numpy(self, z, modality: int = 0, batch_size: int = 4096) -> np.ndarray:
        """Reconstructions of one modality from pair codes ``(N, m)``, as float32 numpy."""
        return self._map_numpy(lambda zb: self.decode(zb, modality), z, self.config.d, batch_size)

    # ------------------------------------------------------------------ decoding
    def _dec(self, modality: int) -> nn.Parameter:
        return self.W_dec if int(modality) == 0 else self.W_dec_t

    def decode(self, z: torch.Tensor, modality: int = 0) -> torch.Tensor:
        return z @ self._dec(modality) + self.b_pre[int(modality)]

    def decode_sparse(self, values: torch.Tensor, indices: torch.Tensor, modality: int = 0) -> torch.Tensor:
        return torch.einsum("bk,bkd->bd", values, self._dec(modality)[indices]) + self.b_pre[int(modality)]

    def decoder_atoms(self, modality: int = 0) -> torch.Tensor:
        return self._dec(modality)

    def decoder_norms(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Each latent's image and caption decoder norms."""
        return self.W_dec.norm(dim=1), self.W_dec_t.norm(dim=1)

    # the decoder rows are free (the penalty reads their norms): no projection, no renormalisation
    def unit_norm_rows(self) -> list[nn.Parameter]:
        return []

    def before_optimizer_step(self, skip=()) -> None:
        pass

    def after_optimizer_step(self, skip=()) -> None:
        pass

    # ------------------------------------------------------------------ training
    def training_loss(self, x: torch.Tensor, y: torch.Tensor, step: int = 0) -> LossOutput:
        """Both reconstructions from the pair's code, the decoder-norm penalty and AuxK (see the module)."""
        raw = self.raw_pre_activations_pair(x, y)
        norms = sum(self.decoder_norms())  # once a step: the selection's weights and the penalty's
        v, i = self.select(torch.relu(raw), norms)
        x_hat, y_hat = self.decode_sparse(v, i, 0), self.decode_sparse(v, i, 1)
        rec_x, rec_y = ((x - x_hat) ** 2).sum(1).mean(), ((y - y_hat) ** 2).sum(1).mean()
        penalty = (v * norms[i]).sum(1).mean()
        loss = rec_x + rec_y + self.config.group_lambda * penalty
        aux = self._auxk(raw, x, y, x_hat, y_hat)
        if aux is not None:
            loss = loss + self.config.auxk_coef * aux
        self._update_firing((v, i), n_samples=x.shape[0])
        return LossOutput(loss, step_stats(x, y, rec_x, rec_y, decoder_norm_penalty=penalty,
                                           aux=aux if aux is not None else 0.0))

    def _auxk(self, raw, x, y, x_hat, y_hat):
        """AuxK on the pair code: the dead latents' top ``k_aux`` pre-activations (the engine's choice,
        :func:`mmsae.engine.sparse.select_dead`) decode both residuals."""
        dead_idx, k_aux = dead_latents(self)
        sel = select_dead(raw, dead_idx, k_aux)
        if sel is None:
            return None
        ia = sel[1]
        va = torch.relu(raw.gather(1, ia))
        res = torch.cat([x - x_hat, y - y_hat]).detach()
        rec = torch.cat([torch.einsum("bk,bkd->bd", va, self.W_dec[ia]),
                         torch.einsum("bk,bkd->bd", va, self.W_dec_t[ia])])
        return auxk_loss(res, rec, torch.cat([x, y]), n_blocks=2)
