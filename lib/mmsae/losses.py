"""Loss terms shared by every SAE in :mod:`mmsae.models`.

All losses average over the batch and *sum* over embedding dimensions / latents, so
``reconstruction_loss(x, x_hat) = mean_b ||x_b - x_hat_b||^2`` exactly as written in the
paper (``||x - x_hat||^2``).
"""

from __future__ import annotations

import torch

__all__ = [
    "reconstruction_loss",
    "group_l21",
    "auxk_loss",
    "normalized_mse",
    "explained_variance",
]


def reconstruction_loss(u: torch.Tensor, u_hat: torch.Tensor) -> torch.Tensor:
    """``mean_b ||u_b - u_hat_b||_2^2`` (squared error summed over dimensions)."""
    return (u - u_hat).pow(2).sum(dim=-1).mean()


def group_l21(z_x: torch.Tensor, z_y: torch.Tensor, eps: float = 0.0) -> torch.Tensor:
    """The paper's group-sparse penalty ``mean_b sum_i sqrt(z_x,bi^2 + z_y,bi^2)``.

    Each group is one latent's pair of activations (on the image and on its caption),
    so the penalty is an l2,1 norm of the ``(latents x 2)`` activation matrix of a pair:
    it prefers latents that fire on both members over two latents firing on one each.

    Gradient: ``z_x,i / sqrt(z_x,i^2 + z_y,i^2)`` on the x activation (and likewise for
    y); at a group that is exactly zero we use the subgradient 0 (``eps = 0``), or the
    smooth ``sqrt(. + eps)`` when ``eps > 0``.
    """
    if z_x.shape != z_y.shape:
        raise ValueError(f"group_l21: shapes differ {tuple(z_x.shape)} vs {tuple(z_y.shape)}")
    if eps > 0:
        return torch.sqrt(z_x.pow(2) + z_y.pow(2) + eps).sum(dim=-1).mean()
    # torch.linalg.vector_norm has subgradient 0 at the origin (no NaN).
    return torch.linalg.vector_norm(torch.stack([z_x, z_y], dim=-1), dim=-1).sum(dim=-1).mean()


def normalized_mse(u: torch.Tensor, u_hat: torch.Tensor, reference: torch.Tensor | None = None) -> torch.Tensor:
    """``sum ||u - u_hat||^2 / sum ||u - mean(ref)||^2`` (1 - explained variance)."""
    ref = u if reference is None else reference
    denom = (u - ref.mean(dim=0, keepdim=True)).pow(2).sum().clamp_min(1e-12)
    return (u - u_hat).pow(2).sum() / denom


def explained_variance(u: torch.Tensor, u_hat: torch.Tensor) -> torch.Tensor:
    """``1 - sum ||u - u_hat||^2 / sum ||u - mean(u)||^2``."""
    return 1.0 - normalized_mse(u, u_hat)


def auxk_loss(residual: torch.Tensor, aux_recon: torch.Tensor) -> torch.Tensor:
    """AuxK loss of Gao et al. (2024): how well dead latents model the residual.

    ``residual = u - u_hat`` (detached), ``aux_recon`` the decoding (without pre-bias)
    of the top-``k_aux`` *dead* latents. Normalised by the residual's variance so the
    coefficient (default 1/32) is scale-free; returns 0 when there is nothing to fit.
    """
    denom = (residual - residual.mean(dim=0, keepdim=True)).pow(2).sum()
    if denom <= 0:
        return residual.new_zeros(())
    return (residual - aux_recon).pow(2).sum() / denom
