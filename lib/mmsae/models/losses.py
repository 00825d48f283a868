"""Loss terms shared by every SAE in :mod:`mmsae.models`.

All losses average over the batch and *sum* over embedding dimensions / latents, so
``reconstruction_loss(x, x_hat) = mean_b ||x_b - x_hat_b||^2`` exactly as written in the
paper (``||x - x_hat||^2``).

The terms are defined here and computed with the engine (:mod:`mmsae.engine`): the l2,1
penalty's compiled pass, and :func:`fast_auxk`, the AuxK term of a step from the dead
latents the engine's encoder pass selected.
"""

from __future__ import annotations

import torch
from torch.profiler import record_function

from ..engine.device_paths import uses_device_paths
from ..engine.kernels import group_l21_rows
from ..engine.parallel import split_rows
from ..engine.sparse import SparseDecodeErrors, decode_errors_applies, sparse_decode, sparse_encoder_values

__all__ = [
    "reconstruction_loss",
    "squared_errors",
    "group_l21",
    "auxk_loss",
    "fast_auxk",
    "total_variance",
    "normalized_mse",
    "explained_variance",
]


class _SquaredErrors(torch.autograd.Function):
    """Per-row ``||u_hat - u||^2`` with a one-pass backward ``2 (u_hat - u) * g``."""

    @staticmethod
    def forward(ctx, u_hat, u):  # noqa: D401
        e = u_hat - u
        ctx.save_for_backward(e)
        return torch.linalg.vector_norm(e, dim=-1).square_()

    @staticmethod
    def backward(ctx, g):
        (e,) = ctx.saved_tensors
        grad = e * (2.0 * g).unsqueeze(-1)
        return (grad if ctx.needs_input_grad[0] else None), (-grad if ctx.needs_input_grad[1] else None)


def squared_errors(u: torch.Tensor, u_hat: torch.Tensor) -> torch.Tensor:
    """``||u_b - u_hat_b||_2^2`` per row (shape ``u.shape[:-1]``).

    One pass forward (the difference and its row norms) and one backward; per-block means of
    it give each modality's :func:`reconstruction_loss` of a stacked batch ``[x; y]`` without
    slicing the ``(2B, d)`` reconstruction (whose backward would allocate and zero it twice)."""
    if u.shape != u_hat.shape:
        return (u - u_hat).pow(2).sum(dim=-1)
    return _SquaredErrors.apply(u_hat, u)


def reconstruction_loss(u: torch.Tensor, u_hat: torch.Tensor) -> torch.Tensor:
    """``mean_b ||u_b - u_hat_b||_2^2`` (squared error summed over dimensions)."""
    return squared_errors(u, u_hat).mean()


def _compiled_match(i_x: torch.Tensor, i_y: torch.Tensor) -> bool:
    """:func:`group_l21` runs compiled (:func:`mmsae.engine.kernels.group_l21_rows`): CPU, int64 indices,
    the device paths not forced (:mod:`mmsae.engine.device_paths`)."""
    return not uses_device_paths(i_x) and i_x.dtype == i_y.dtype == torch.int64 and i_x.shape[0] > 0


class _GroupL21(torch.autograd.Function):
    """:func:`group_l21` on CPU: value and derivatives in one compiled pass over the pairs
    (:func:`mmsae.engine.kernels.group_l21_rows`, pairs split over torch's thread count); the backward
    scales the saved derivatives."""

    @staticmethod
    def forward(ctx, v_x, i_x, v_y, i_y):  # noqa: D401
        vx, vy = v_x.detach().contiguous(), v_y.detach().to(v_x.dtype).contiguous()
        B = vx.shape[0]
        d_x, d_y = torch.empty_like(vx), torch.empty_like(vy)
        per_pair = torch.empty(B, dtype=torch.float64)
        split_rows(group_l21_rows, B, vx.numpy(), i_x.contiguous().numpy(), vy.numpy(), i_y.contiguous().numpy(),
                   d_x.numpy(), d_y.numpy(), per_pair.numpy())
        ctx.save_for_backward(d_x, d_y)
        ctx.v_y_dtype = v_y.dtype
        return (per_pair.sum() / B).to(v_x.dtype)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g):
        d_x, d_y = ctx.saved_tensors
        s = g / d_x.shape[0]
        return (d_x * s if ctx.needs_input_grad[0] else None, None,
                (d_y * s).to(ctx.v_y_dtype) if ctx.needs_input_grad[2] else None, None)


def group_l21(v_x: torch.Tensor, i_x: torch.Tensor, v_y: torch.Tensor, i_y: torch.Tensor) -> torch.Tensor:
    """The paper's group-sparse penalty ``mean_b sum_i sqrt(z_x,bi^2 + z_y,bi^2)``.

    Each group is one latent's pair of activations (on the image and on its caption),
    so the penalty is an l2,1 norm of the ``(latents x 2)`` activation matrix of a pair:
    it prefers latents that fire on both members over two latents firing on one each.

    The codes are given K-sparse, as the models produce them: ``v_x``, ``i_x`` (``(B, K)``)
    are the values and latent indices of ``z_x`` (indices unique within a row; every other
    entry is 0), likewise ``v_y``, ``i_y``. A latent active in both members of pair ``b``
    contributes ``sqrt(z_x^2 + z_y^2)``, one active in a single member ``|z|``.

    Gradient: ``z_x,i / sqrt(z_x,i^2 + z_y,i^2)`` on the x activation (and likewise for
    y); at a group that is exactly zero the subgradient 0.
    """
    if v_x.shape != i_x.shape or v_y.shape != i_y.shape or v_x.shape[0] != v_y.shape[0]:
        raise ValueError(f"group_l21: shapes differ: v_x {tuple(v_x.shape)}, i_x {tuple(i_x.shape)}, "
                         f"v_y {tuple(v_y.shape)}, i_y {tuple(i_y.shape)}")
    # match each member's slots with the other's: on CPU one compiled pass that also gives the
    # value and the derivatives; elsewhere by binary search in the sorted indices (O(B K log K);
    # a (B, K, K) comparison tensor costs K^2 memory per pair)
    K_x, K_y = i_x.shape[1], i_y.shape[1]
    if K_x == 0 or K_y == 0:
        return (v_x.abs().sum() + v_y.abs().sum()) / max(v_x.shape[0], 1)
    if _compiled_match(i_x, i_y):
        return _GroupL21.apply(v_x, i_x, v_y, i_y)
    s_y, p_y = i_y.sort(dim=1)
    pos = torch.searchsorted(s_y, i_x).clamp_max_(K_y - 1)
    hit = s_y.gather(1, pos) == i_x  # x-slot's latent is active in y too
    vy_match = torch.where(hit, v_y.gather(1, p_y.gather(1, pos)), v_y.new_zeros(()))  # z_y at each x-slot
    s_x = i_x.sort(dim=1).values
    y_only = s_x.gather(1, torch.searchsorted(s_x, i_y).clamp_max_(K_x - 1)) != i_y  # y-slots absent from x
    # torch.linalg.vector_norm has subgradient 0 at the origin (no NaN); |.| has 0 at 0.
    both = torch.linalg.vector_norm(torch.stack([v_x, vy_match], dim=-1), dim=-1)
    return (both.sum() + (v_y.abs() * y_only).sum()) / v_x.shape[0]


def normalized_mse(u: torch.Tensor, u_hat: torch.Tensor, reference: torch.Tensor | None = None) -> torch.Tensor:
    """``sum ||u - u_hat||^2 / sum ||u - mean(ref)||^2`` (1 - explained variance)."""
    ref = u if reference is None else reference
    denom = (u - ref.mean(dim=0, keepdim=True)).pow(2).sum().clamp_min(1e-12)
    return (u - u_hat).pow(2).sum() / denom


def explained_variance(u: torch.Tensor, u_hat: torch.Tensor) -> torch.Tensor:
    """``1 - sum ||u - u_hat||^2 / sum ||u - mean(u)||^2``."""
    return 1.0 - normalized_mse(u, u_hat)


def total_variance(u: torch.Tensor) -> torch.Tensor:
    """``mean_b ||u_b - mean(u)||^2``: the batch's variance summed over dimensions (1/B, biased).

    Same units as :func:`reconstruction_loss`; ``reconstruction_loss(u, u_hat) /
    total_variance(u)`` is the normalised MSE of Gao et al. (2024)."""
    return (u - u.mean(dim=0, keepdim=True)).pow(2).sum(dim=-1).mean()


def auxk_loss(residual: torch.Tensor, aux_recon: torch.Tensor, inputs: torch.Tensor, n_blocks: int = 1,
              eps: float = 1e-12, sq_errors: torch.Tensor | None = None) -> torch.Tensor:
    """AuxK loss of Gao et al. (2024), weighted for an un-normalised main loss.

    ``residual = e = u - u_hat`` (the main reconstruction's error), ``aux_recon = e_hat``
    the decoding (without pre-bias) of the top-``k_aux`` *dead* latents, ``inputs = u`` the
    embeddings that were reconstructed. For one modality of ``B`` rows the value is

        ``auxk_loss = TV(u) * mean_b ||e_b - e_hat_b||^2 / TV(e)``

    with ``TV`` = :func:`total_variance` (both detached; ``TV(e)`` clamped to ``>= eps``).

    Why this weight. Gao et al. ("Scaling and evaluating sparse autoencoders", 2024, and
    their ``openai/sparse_autoencoder`` code) minimise ``NMSE(u, u_hat) + alpha *
    NMSE(e, e_hat)``, where each term is a squared error divided by the variance of its own
    target: ``mse(u_hat, u) / Var(u)`` and ``mse(e_hat, e) / Var(e)``. Our main loss is the
    un-normalised ``mean_b ||u_b - u_hat_b||^2`` (kept, as the paper writes it), i.e. Gao's
    main term times ``TV(u)``. Multiplying Gao's whole objective by ``TV(u)`` gives the
    AuxK term above, so ``auxk_coef * auxk_loss`` keeps Gao's *relative* weight: against
    the main loss the AuxK squared error weighs ``auxk_coef * TV(u) / TV(e)``. (A plain
    ``||e - e_hat||^2`` would be too small by ``TV(u) / TV(e)``, about ``1 / (1 -
    explained variance)``: 5x at 80 % explained variance; Gao's NMSE alone would be off by
    ``TV(u)`` and depend on the embeddings' scale.) The value is in the units of
    :func:`reconstruction_loss`.

    ``n_blocks``: the rows are ``n_blocks`` equal consecutive blocks, one per modality (the
    models stack ``[x; y]``, ``n_blocks = 2``); each block is normalised by its own
    ``TV(u)`` and ``TV(e)`` and the blocks' values are summed, as the main loss is the sum
    ``||x - x_hat||^2 + ||y - y_hat||^2`` of one term per modality. A block of one row has
    ``TV(u) = 0`` and contributes 0 (no variance to normalise by).

    ``sq_errors``: the per-row ``||e_b - e_hat_b||^2`` where the caller has them already (with their gradient;
    :class:`~mmsae.engine.sparse.SparseDecodeErrors`), used instead of recomputing them from ``aux_recon``.
    """
    if residual.shape != aux_recon.shape or residual.shape != inputs.shape:
        raise ValueError(f"auxk_loss: shapes differ: residual {tuple(residual.shape)}, aux_recon "
                         f"{tuple(aux_recon.shape)}, inputs {tuple(inputs.shape)}")
    n_blocks = int(n_blocks)
    if n_blocks <= 0 or residual.shape[0] % n_blocks:
        raise ValueError(f"auxk_loss: {residual.shape[0]} rows cannot be split into n_blocks={n_blocks} equal blocks")
    e = residual.detach()
    total = residual.new_zeros(())
    se = (e - aux_recon).pow(2).sum(dim=-1) if sq_errors is None else sq_errors
    for e_b, se_b, u_b in zip(e.chunk(n_blocks), se.chunk(n_blocks), inputs.detach().chunk(n_blocks)):
        total = total + total_variance(u_b) * se_b.mean() / total_variance(e_b).clamp_min(eps)
    return total


def fast_auxk(model, aux, u_c: torch.Tensor, mod, inputs, u_hat: torch.Tensor, n_blocks: int = 2) -> torch.Tensor:
    """The AuxK term of a step, evaluated K-sparse: :func:`auxk_loss` of the residual
    ``inputs - u_hat`` and the decoding of the dead latents chosen in the encoder pass,
    ``aux = (raw, idx)`` (:attr:`mmsae.engine.sparse.Selection.aux` or
    :func:`mmsae.engine.sparse.select_dead`; None: no latent dead, the term is 0). Their values
    enter the graph through :func:`~mmsae.engine.sparse.sparse_encoder_values` (``u_c`` the
    centred rows, ``mod`` their pre-bias rows) and are decoded by
    :func:`~mmsae.engine.sparse.sparse_decode`, so only the dead latents' columns are touched.
    ``inputs``: the rows' embeddings (a tensor, or a tuple of row blocks such as ``(x, y)``,
    concatenated only when AuxK applies), ``u_hat`` their reconstruction, ``n_blocks`` the
    modalities stacked in the rows (default 2, ``[x; y]``)."""
    if aux is None or model.config.auxk_coef <= 0:
        return u_hat.new_zeros(())
    with record_function("mmsae.auxk"):
        if isinstance(inputs, (tuple, list)):
            inputs = torch.cat(list(inputs))
        residual = (inputs - u_hat).detach()
        raw, idx = aux
        vals = sparse_encoder_values(raw, u_c, idx, model.W_enc, model.b_enc, model.b_pre, mod)
        if decode_errors_applies(model.W_dec, vals, idx, residual):  # the decode and its squared errors in one pass
            recon, se = SparseDecodeErrors.apply(vals, idx, model.W_dec, None, None, residual)
            return auxk_loss(residual, recon, inputs, n_blocks=n_blocks, sq_errors=se)
        recon = sparse_decode(model.W_dec, vals, idx)
        return auxk_loss(residual, recon, inputs, n_blocks=n_blocks)
