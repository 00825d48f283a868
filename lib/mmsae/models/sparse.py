"""The sparse computations the TopK-family objectives are evaluated with (K-sparse work).

:meth:`mmsae.models.topk.TopKSAE.training_loss` and
:meth:`mmsae.models.group_sparse.GroupSparseSAE.training_loss` write their objective once
and evaluate it with these helpers. A dense evaluation would build autograd through the
full ``(B, m)`` pre-activation matrix (a second and third ``B x d x m`` matmul in the
backward, a decoder gather back-propagating through a slow ``index_put``, ``(B, m)``
group-penalty and mask tensors). Here:

* the encoder matmul runs once, without autograd; the top-K (pre-ReLU; ReLU is monotone
  so the selected values are the same) is taken on it and only the ``(B, K)`` selected
  entries enter the graph through :class:`SparseEncoderValues`, whose backward forms the
  ``W_enc`` gradient as a sparse ``(m x B) @ (B x d)`` product (``B*K*d`` work instead of
  ``B*m*d``), the ``b_enc`` gradient by ``index_add`` and the pre-bias gradient as one
  ``m x d`` mat-vec;
* the decoder is :func:`torch.nn.functional.embedding_bag` over the K active atoms;
* AuxK (:func:`fast_auxk`) works on the dead latents' columns only; its value is
  :func:`mmsae.models.losses.auxk_loss` (Gao et al.'s weight, ``TV(u) ||e - e_hat||^2 / TV(e)``
  per modality);
* the l2,1 group penalty (:func:`mmsae.models.losses.group_l21`) takes the K-sparse codes,
  never densified;
* the MGSAE cross-modal mask is in index form (:class:`HashMask`): keep/drop of latent
  ``i`` for pair ``b`` is a counter-based hash of ``(salt, b, i)``, evaluated only for
  the ``K' ~ K/(1-rate) + 4 sd`` best candidates of each row; rows where fewer than K
  candidates survive fall back to the exact dense masked top-K. Both members of a pair
  use the same ``(salt, b)`` keys, so they see the same mask, as in the paper.

On CUDA the encoder matmul used for *selection* may run in bf16 (``select_dtype``); the
selected values are then recomputed exactly in float32, so losses and gradients keep
float32 precision (only near-ties in the selection can differ).

``tests/test_fast_path.py`` checks losses and gradients against a dense evaluation of the
same objectives written in the test.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .losses import auxk_loss

__all__ = ["HashMask", "draw_hash_mask", "SparseEncoderValues", "sparse_encoder_values", "fast_branch",
           "fast_auxk", "fast_pair_branch", "sparse_grad_matmul"]

_M32 = 0xFFFFFFFF


def _mix32(h: torch.Tensor) -> torch.Tensor:
    """murmur3's 32-bit finaliser on int64 tensors holding values in [0, 2^32)."""
    h = h ^ (h >> 16)
    h = (h * 0x85EBCA6B) & _M32
    h = h ^ (h >> 13)
    h = (h * 0xC2B2AE35) & _M32
    return h ^ (h >> 16)


@dataclass(frozen=True)
class HashMask:
    """Index-form cross-modal keep-mask: latent ``i`` of pair (row) ``b`` is kept iff
    ``hash(salt, b, i) >= rate * 2^32``. ``per_pair=False`` uses one mask for the whole
    batch. ``row_offset`` shifts the pair index (data-parallel shards of a global batch)."""

    salt: int
    rate: float
    per_pair: bool = True
    row_offset: int = 0

    def keep(self, rows: torch.Tensor, latents: torch.Tensor) -> torch.Tensor:
        """Bool keep for latents ``latents`` (any shape) of pair rows ``rows`` (broadcastable)."""
        salt = self.salt & _M32
        h = _mix32((latents.to(torch.int64) * 0x9E3779B1 + salt) & _M32)
        if self.per_pair:
            r = (rows.to(torch.int64) + self.row_offset) & _M32
            h = h ^ _mix32((r * 0x85EBCA77 + (salt ^ 0x27D4EB2F)) & _M32)
        h = _mix32(h ^ ((salt * 0x7FEB352D + 0x165667B1) & _M32))
        return h >= int(self.rate * 2 ** 32)

    def dense(self, batch: int, m: int, device=None) -> torch.Tensor:
        """The same mask as a ``(batch, m)`` (or ``(1, m)``) bool tensor (tests, diagnostics)."""
        rows = torch.arange(batch if self.per_pair else 1, device=device)[:, None]
        return self.keep(rows, torch.arange(m, device=device)[None, :])


def draw_hash_mask(rate: float, per_pair: bool, row_offset: int = 0) -> HashMask:
    """A fresh mask; the salt comes from torch's (seeded) CPU generator, so no device sync."""
    salt = int(torch.randint(0, 2 ** 31 - 1, (), dtype=torch.int64))
    return HashMask(salt, rate, per_pair, row_offset)


# ----------------------------------------------------------------------- sparse grads
def sparse_grad_matmul(idx: torch.Tensor, g: torch.Tensor, u: torch.Tensor, m: int) -> torch.Tensor:
    """``S^T @ u`` for the ``(R, m)`` matrix ``S`` with ``S[r, idx[r, k]] = g[r, k]``: the
    ``(m, d)`` gradient of a weight whose rows ``idx`` were dotted with rows of ``u``."""
    R, K = idx.shape
    if u.device.type == "cpu":
        rows = torch.arange(R, device=u.device).repeat_interleave(K)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            S = torch.sparse_coo_tensor(torch.stack([rows, idx.reshape(-1)]), g.reshape(-1).to(u.dtype), (R, m),
                                        is_coalesced=True)
            return torch.sparse.mm(S.t(), u)
    # CUDA: index_add of the K outer products (memory-bound, no sort)
    out = torch.zeros(m, u.shape[1], device=u.device, dtype=u.dtype)
    return out.index_add_(0, idx.reshape(-1), (g[:, :, None].to(u.dtype) * u[:, None, :]).reshape(-1, u.shape[1]))


class SparseEncoderValues(torch.autograd.Function):
    """``relu(raw)`` for the selected entries ``raw[r, k] = (u_r - b_pre[mod]) . W_enc[idx[r,k]] + b_enc[idx[r,k]]``
    with gradients for ``W_enc``, ``b_enc``, ``b_pre`` (and ``u`` if it requires grad)
    that touch only the ``(R, K)`` selected entries."""

    @staticmethod
    def forward(ctx, raw, u_c, idx, W_enc, b_enc, b_pre, mod):  # noqa: D401
        """``mod``: the pre-bias row of all rows (int) or of each row (list of (row slice, row))."""
        vals = torch.relu(raw)
        ctx.save_for_backward(u_c, idx, W_enc, raw)
        ctx.mod, ctx.bpre_shape = mod, b_pre.shape
        ctx.mark_non_differentiable(idx)
        return vals

    @staticmethod
    def backward(ctx, g):
        u_c, idx, W_enc, raw = ctx.saved_tensors
        g = g * (raw > 0)
        m = W_enc.shape[0]
        gW = gb = gpre = gu = None
        need_b = ctx.needs_input_grad[4] or ctx.needs_input_grad[5]
        if ctx.needs_input_grad[3]:
            gW = sparse_grad_matmul(idx, g, u_c, m).to(W_enc.dtype)
        if need_b:
            parts = [(slice(None), ctx.mod)] if isinstance(ctx.mod, int) else ctx.mod
            per = torch.zeros(ctx.bpre_shape[0], m, device=g.device, dtype=torch.float32)
            for rows, mrow in parts:
                per[mrow].index_add_(0, idx[rows].reshape(-1), g[rows].reshape(-1).float())
            if ctx.needs_input_grad[4]:
                gb = per.sum(0)
            if ctx.needs_input_grad[5]:
                gpre = -(per.to(W_enc.dtype) @ W_enc)
        if ctx.needs_input_grad[1]:
            gu = F.embedding_bag(idx, W_enc, per_sample_weights=g.to(W_enc.dtype), mode="sum")
        return None, gu, None, gW, gb, gpre, None


def sparse_encoder_values(raw, u_c, idx, W_enc, b_enc, b_pre, mod):
    return SparseEncoderValues.apply(raw, u_c, idx, W_enc, b_enc, b_pre, mod)


def _exact_raw(u_c: torch.Tensor, idx: torch.Tensor, W_enc: torch.Tensor, b_enc: torch.Tensor) -> torch.Tensor:
    """float32 pre-activations at the selected entries (after a low-precision selection)."""
    return torch.bmm(W_enc[idx], u_c[:, :, None]).squeeze(-1) + b_enc[idx]


# ----------------------------------------------------------------------- selection
def _candidates(k: int, m: int, rate: float) -> int:
    keep = 1.0 - rate
    return min(m, int(math.ceil(k / keep + 4.0 * math.sqrt(k * rate) / keep)) + 1)


@torch.no_grad()
def _select(pre: torch.Tensor, k: int, mask: HashMask | torch.Tensor | None, pairs: torch.Tensor | None = None):
    """Top-k ``(raw values, indices)`` of each row of ``pre`` among kept latents; row ``r``
    belongs to pair ``pairs[r]`` (default ``r``) for the mask."""
    if mask is None:
        return pre.topk(k, dim=-1, sorted=False)
    R, m = pre.shape
    rate = mask.rate if isinstance(mask, HashMask) else min(0.95, 1.0 - float(mask.float().mean()))
    kc = _candidates(k, m, rate)
    cv, ci = pre.topk(kc, dim=-1, sorted=False)
    rows = (torch.arange(R, device=pre.device) if pairs is None else pairs)[:, None]
    if isinstance(mask, HashMask):
        keep = mask.keep(rows if mask.per_pair else torch.zeros_like(rows), ci)
    else:  # dense bool (pairs, m) or (1, m)
        dm = mask if mask.shape[0] == 1 else mask[rows[:, 0]]
        keep = dm.expand(R, m).gather(1, ci)
    short = keep.sum(1) < k
    cv = cv.masked_fill(~keep, float("-inf"))
    v, j = cv.topk(k, dim=-1, sorted=False)
    idx = ci.gather(1, j)
    if bool(short.any()):  # rare: exact dense masked top-k on those rows (dense masked top-K semantics)
        r = short.nonzero().squeeze(1)
        if isinstance(mask, HashMask):
            pr = rows[r]
            kr = mask.keep(pr if mask.per_pair else torch.zeros_like(pr),
                           torch.arange(m, device=pre.device)[None, :].expand(len(r), m))
        else:
            kr = (mask if mask.shape[0] == 1 else mask[rows[r, 0]]).expand(len(r), m)
        vr, ir = torch.relu(pre[r]).masked_fill(~kr, 0.0).topk(k, dim=-1, sorted=False)
        v[r] = pre[r].gather(1, ir)
        idx[r] = ir
    return v, idx


def fast_branch(model, u: torch.Tensor, modality: int, mask=None, select_dtype: torch.dtype | None = None):
    """Sparse counterpart of ``TopKSAE._branch``: ``(pre_raw, u_c, vals, idx, u_hat)``.

    ``pre_raw`` is the detached pre-ReLU ``(B, m)`` matrix (kept for AuxK)."""
    mod = model._mod(modality)
    W_enc, b_enc, b_pre = model.W_enc, model.b_enc, model.b_pre
    with torch.no_grad():
        u_c = u - b_pre[mod]
        if select_dtype is not None and select_dtype != W_enc.dtype:
            pre = torch.addmm(b_enc.to(select_dtype), u_c.to(select_dtype), W_enc.to(select_dtype).t())
        else:
            pre = torch.addmm(b_enc, u_c, W_enc.t())
        raw, idx = _select(pre, model.config.k, mask)
        if pre.dtype != W_enc.dtype:
            raw = _exact_raw(u_c, idx, W_enc, b_enc)
    vals = sparse_encoder_values(raw, u - b_pre[mod].detach() if u.requires_grad else u_c, idx, W_enc, b_enc, b_pre, mod)
    u_hat = F.embedding_bag(idx, model.W_dec, per_sample_weights=vals, mode="sum") + b_pre[mod]
    return pre, u_c, vals, idx, u_hat


def fast_pair_branch(model, x: torch.Tensor, y: torch.Tensor, mask=None, select_dtype=None):
    """Both modalities in one pass (one encoder matmul, one sparse backward, one decode over
    the ``2B`` rows ``[x; y]``): ``(pre, u_c, vals, idx, u_hat, mod)``; rows ``:B`` are x."""
    B = x.shape[0]
    W_enc, b_enc, b_pre = model.W_enc, model.b_enc, model.b_pre
    m0, m1 = model._mod(0), model._mod(1)
    mod = m0 if m0 == m1 else [(slice(0, B), m0), (slice(B, 2 * B), m1)]
    if x.requires_grad or y.requires_grad:  # rare (gradients wrt the data): per-modality path
        bx, by = fast_branch(model, x, 0, mask, select_dtype), fast_branch(model, y, 1, mask, select_dtype)
        return tuple(torch.cat([a, b]) for a, b in zip(bx, by)) + (mod,)
    with torch.no_grad():
        u_c = torch.cat([x - b_pre[m0], y - b_pre[m1]])
        if select_dtype is not None and select_dtype != W_enc.dtype:
            pre = torch.addmm(b_enc.to(select_dtype), u_c.to(select_dtype), W_enc.to(select_dtype).t())
        else:
            pre = torch.addmm(b_enc, u_c, W_enc.t())
        pairs = torch.arange(B, device=x.device).repeat(2) if mask is not None else None
        raw, idx = _select(pre, model.config.k, mask, pairs)
        if pre.dtype != W_enc.dtype:
            raw = _exact_raw(u_c, idx, W_enc, b_enc)
    vals = sparse_encoder_values(raw, u_c, idx, W_enc, b_enc, b_pre, mod)
    pre_bias = b_pre[m0] if m0 == m1 else torch.cat([b_pre[m0].expand(B, -1), b_pre[m1].expand(B, -1)])
    u_hat = F.embedding_bag(idx, model.W_dec, per_sample_weights=vals, mode="sum") + pre_bias
    return pre, u_c, vals, idx, u_hat, mod


def fast_auxk(model, pres, u_cs, mods, residual: torch.Tensor, inputs: torch.Tensor,
              n_blocks: int = 2) -> torch.Tensor:
    """AuxK on the dead latents' columns only (same value and gradients as ``_auxk``:
    :func:`mmsae.models.losses.auxk_loss` of the residual, with ``inputs`` the rows' embeddings and
    ``n_blocks`` the modalities stacked in the rows, default 2 for ``[x; y]``)."""
    cfg = model.config
    if cfg.auxk_coef <= 0:
        return residual.new_zeros(())
    dead = model.dead_mask()
    dead_idx = dead.nonzero().squeeze(1)
    n_dead = int(dead_idx.numel())
    if n_dead == 0:
        return residual.new_zeros(())
    k_aux = min(cfg.k_aux or cfg.d // 2, n_dead)
    recons = []
    for pre, u_c, mod in zip(pres, u_cs, mods):
        with torch.no_grad():
            sub = torch.relu(pre[:, dead_idx])
            _, j = sub.topk(k_aux, dim=-1, sorted=False)
            idx = dead_idx[j]
            if pre.dtype != model.W_enc.dtype:
                raw = _exact_raw(u_c, idx, model.W_enc, model.b_enc)
            else:
                raw = pre[:, dead_idx].gather(1, j)
        vals = sparse_encoder_values(raw, u_c, idx, model.W_enc, model.b_enc, model.b_pre, mod)
        recons.append(F.embedding_bag(idx, model.W_dec, per_sample_weights=vals, mode="sum"))
    return auxk_loss(residual.detach(), torch.cat(recons), inputs, n_blocks=n_blocks)
