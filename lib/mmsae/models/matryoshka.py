"""Matryoshka BatchTopK SAE (Bussmann et al. 2025; Nabeshima 2024), a baseline of the paper.

A BatchTopK SAE (pooled embeddings, :mod:`.batchtopk`) whose dictionary is read as a
sequence of nested prefixes ``m_1 < m_2 < ... < m_n = m`` (``extra["prefixes"]``,
default ``m/8, m/4, m/2, m``). Every prefix must reconstruct on its own: with the one
BatchTopK code ``z``,

    x_hat^(j) = sum_{i < m_j} z_i W_dec[i] + b_pre,      L = sum_j ||x - x_hat^(j)||^2

(summed over the prefixes by default; ``extra["prefix_reduce"] = "mean"`` averages
them), for both modalities, plus AuxK on the full reconstruction. Early latents are
pushed to carry the coarse, most general directions; later ones refine. Inference is
the BatchTopK threshold code, decoded with all ``m`` latents
(:meth:`MatryoshkaSAE.prefix_reconstructions` gives each prefix's reconstruction).
"""

from __future__ import annotations

import torch

from ..engine.sparse import decode_entries, prefix_decode_errors, stack_pair
from .base import LossOutput, SAEConfig, register, step_stats
from .batchtopk import BatchTopKSAE

__all__ = ["MatryoshkaSAE", "default_prefixes"]


def default_prefixes(m: int) -> list[int]:
    """``m/8, m/4, m/2, m`` (deduplicated, at least 1)."""
    return sorted({max(1, m // 8), max(1, m // 4), max(1, m // 2), m})


@register("matryoshka")
class MatryoshkaSAE(BatchTopKSAE):
    def __init__(self, config: SAEConfig):
        super().__init__(config)
        p = [int(v) for v in config.extra.get("prefixes") or default_prefixes(config.m)]
        if p != sorted(set(p)) or p[0] < 1 or p[-1] != config.m:
            raise ValueError(f"prefixes must be strictly increasing, >= 1 and end at m={config.m}; got {p}")
        if config.extra.get("prefix_reduce", "sum") not in ("sum", "mean"):
            raise ValueError("extra['prefix_reduce'] must be 'sum' or 'mean'")
        self.prefixes = p

    def _prefix_decodes(self, z: torch.Tensor, modality: int) -> list[torch.Tensor]:
        """Reconstruction from latents ``< m_j`` for every prefix ``m_j`` (cumulative)."""
        out, acc, start = [], self.b_pre[self._mod(modality)].expand(z.shape[0], -1), 0
        for end in self.prefixes:
            acc = acc + z[:, start:end] @ self.W_dec[start:end]
            out.append(acc)
            start = end
        return out

    @torch.no_grad()
    def prefix_reconstructions(self, u: torch.Tensor, modality: int = 0) -> list[torch.Tensor]:
        """Inference reconstructions of ``u`` by each prefix (same code, truncated)."""
        return self._prefix_decodes(self.encode(u, modality), modality)

    def _prefix_decodes_flat(self, vals: torch.Tensor, flat_idx: torch.Tensor, b: int) -> torch.Tensor:
        """:meth:`_prefix_decodes_entries` of entries given as flat indices ``row * m + latent``."""
        m = self.config.m
        return self._prefix_decodes_entries(vals, flat_idx // m, flat_idx % m, b)

    def _groups(self, cols: torch.Tensor) -> torch.Tensor:
        """The first prefix each latent of ``cols`` belongs to (latent < prefixes[0] -> 0, ...)."""
        return torch.bucketize(cols, torch.as_tensor(self.prefixes, device=cols.device), right=True)

    def _prefix_decodes_entries(self, vals: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor,
                                b: int) -> torch.Tensor:
        """Reconstructions ``(n_prefixes, 2B, d)`` of the pooled batch by every prefix, from the
        sparse BatchTopK entries (any order): each entry goes to the bag ``(group, row)``,
        ``group`` the first prefix its latent belongs to; one ``embedding_bag`` decodes every
        bag (the per-group partial sums), a cumulative sum over the groups gives the prefixes."""
        n_groups, n_rows = len(self.prefixes), 2 * b
        group = self._groups(cols)
        bag, order = (group * n_rows + rows).sort(stable=True)
        parts = decode_entries(self.W_dec, vals[order], bag, cols[order], n_groups * n_rows)
        return parts.reshape(n_groups, n_rows, -1).cumsum(0) + self._pooled_bias(b)

    def training_loss(self, x: torch.Tensor, y: torch.Tensor, step: int = 0) -> LossOutput:
        """``sum_j ||x - x_hat^(j)||^2 + ||y - y_hat^(j)||^2`` over the prefixes (or their mean)
        + AuxK on the full reconstruction, evaluated K-sparse like :class:`BatchTopKSAE`'s."""
        b = x.shape[0]
        pre, u_c, mod, kept, rows, cols = self._batch_codes(x, y)
        vals = self._sparse_values(u_c, mod, kept, rows, cols)
        u = stack_pair(x, y)
        # every prefix's decode and squared error in one compiled pass where it applies (the entries are sorted by
        # row, then latent, so by prefix group within a row)
        fused = prefix_decode_errors(self.W_dec, vals, rows, cols, self._groups(cols), len(self.prefixes), u,
                                     self.b_pre, mod)
        if fused is not None:
            per, full = fused  # (n_prefixes, 2B), the full reconstruction
        else:
            recs = self._prefix_decodes_entries(vals, rows, cols, b)  # (n_prefixes, 2B, d)
            per, full = (u[None] - recs).pow(2).sum(-1), recs[-1]  # (n_prefixes, 2B)
        terms = per[:, :b].mean(1) + per[:, b:].mean(1)  # ||x - x_hat_j||^2 + ||y - y_hat_j||^2
        loss = terms.sum()
        if self.config.extra.get("prefix_reduce", "sum") == "mean":
            loss = loss / len(self.prefixes)
        rec_x, rec_y = per[-1, :b].mean(), per[-1, b:].mean()
        aux = self._auxk_pooled(pre, u_c, mod, u, full)
        loss = loss + self.config.auxk_coef * aux
        prefix_stats = {f"rec_prefix{p}": t for p, t in zip(self.prefixes, terms)}
        return LossOutput(loss, step_stats(x, y, rec_x, rec_y, aux=aux,
                                       threshold=self.threshold.detach().clone(), **prefix_stats))
