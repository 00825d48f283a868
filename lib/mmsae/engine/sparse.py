"""The sparse computations the TopK-family objectives are evaluated with (K-sparse work).

The methods of :mod:`mmsae.models` (e.g. :meth:`mmsae.models.topk.TopKSAE.training_loss`,
:meth:`mmsae.models.group_sparse.GroupSparseSAE.training_loss`) write their objective once
and evaluate it with these helpers; nothing here imports a method. A dense evaluation
would build autograd through the full ``(B, m)`` pre-activation matrix (a second and third
``B x d x m`` matmul in the backward, a decoder gather back-propagating through a slow
``index_put``, ``(B, m)`` group-penalty and mask tensors). Here:

* the encoder matmul runs once, without autograd; the top-K (pre-ReLU; ReLU is monotone
  so the selected values are the same) is taken on it and only the ``(B, K)`` selected
  entries enter the graph through :class:`SparseEncoderValues`, whose backward forms the
  ``W_enc`` gradient as a sparse ``(m x B) @ (B x d)`` product (``B*K*d`` work instead of
  ``B*m*d``), the ``b_enc`` gradient by ``index_add`` and the pre-bias gradient as one
  ``m x d`` mat-vec;
* the decoder is :func:`torch.nn.functional.embedding_bag` over the K active atoms;
* AuxK works on the dead latents' columns only: :func:`select_dead` picks them in the
  encoder pass (:attr:`Selection.aux`), and :func:`mmsae.models.losses.fast_auxk` decodes
  them with :func:`sparse_encoder_values` and :func:`sparse_decode`;
* the l2,1 group penalty (:func:`mmsae.models.losses.group_l21`) takes the K-sparse codes,
  never densified;
* the MGSAE cross-modal mask is in index form (:class:`HashMask`): keep/drop of latent
  ``i`` for pair ``b`` is a counter-based hash of ``(salt, b, i)``, evaluated only for
  the ``K' ~ K/(1-rate) + 4 sd`` best candidates of each row; rows where fewer than K
  candidates survive are scanned again with 4x the candidates (CPU), and any still short fall
  back to the exact dense masked top-K. Both members of a pair
  use the same ``(salt, b)`` keys, so they see the same mask, as in the paper.

On CUDA the encoder matmul used for *selection* may run in bf16 (``select_dtype``); the
selected values are then recomputed exactly in float32, so losses and gradients keep
float32 precision (only near-ties in the selection can differ).

Every branch between the compiled CPU path and the device (torch) path consults
:func:`mmsae.engine.device_paths.uses_device_paths`; ``MMSAE_ENGINE=torch`` or
:func:`mmsae.engine.force_device_paths` makes the CPU take the device paths (torch forms,
whole-batch encoder pass, bf16 selection with float32 re-scoring), so that they are tested
on CPU (``tests/test_device_paths.py``).

``tests/test_fast_path.py`` checks losses and gradients against a dense evaluation of the
same objectives written in the test.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch.profiler import record_function

from . import deferred, kernels
from .device_paths import selection_dtype, uses_device_paths
from .kernels import CHUNK, scan_rows
from .parallel import run_ranges, split_rows

__all__ = ["HashMask", "draw_hash_mask", "SparseEncoderValues", "sparse_encoder_values", "SparseDecodeErrors",
           "decode_errors_applies", "PrefixDecodeErrors", "prefix_decode_errors", "fast_branch",
           "fast_pair_branch", "pair_mod", "centred_pair_rows", "stack_pair", "sparse_grad_matmul",
           "decode_entries", "sparse_decode", "SparseDecode",
           "topk_rows", "Selection",
           "select_codes", "select_dead", "dead_latents", "select_shared_support"]

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
def sparse_grad_matmul(idx: torch.Tensor, g: torch.Tensor, u: torch.Tensor, m: int,
                       rows: torch.Tensor | None = None) -> torch.Tensor:
    """``S^T @ u`` for the ``(R, m)`` matrix ``S`` with ``S[r, idx[r, k]] = g[r, k]``: the
    ``(m, d)`` gradient of a weight whose rows ``idx`` were dotted with rows of ``u``, as an
    ``index_add`` of the outer products (the torch form; CPU float32 uses
    :func:`kernels.encoder_backward`).

    With ``rows`` given, ``idx``, ``g`` and ``rows`` are flat ``(N,)`` entry lists instead:
    ``S[rows[n], idx[n]] = g[n]`` (entries sorted by row, as :func:`batch_topk_entries` gives them)."""
    if rows is None:
        R, K = idx.shape
        rows = torch.arange(R, device=u.device).repeat_interleave(K)
    out = torch.zeros(m, u.shape[1], device=u.device, dtype=u.dtype)
    return out.index_add_(0, idx.reshape(-1), g.reshape(-1, 1).to(u.dtype) * u[rows])


def _mod_parts(mod, rows: torch.Tensor | None):
    """``[(row selector, pre-bias row)]`` for ``mod`` (an int: every row; or a list of
    (row slice, pre-bias row)) over the entries; with flat entries ``rows`` (sorted), the
    slices select rows of the batch and are mapped to entry ranges."""
    parts = [(slice(None), mod)] if isinstance(mod, int) else mod
    if rows is None or isinstance(mod, int):
        return parts
    out = []
    for sl, mrow in parts:
        lo = int(torch.searchsorted(rows, sl.start or 0))
        hi = len(rows) if sl.stop is None else int(torch.searchsorted(rows, sl.stop))
        out.append((slice(lo, hi), mrow))
    return out


def _kernel_ok(*ts: torch.Tensor) -> bool:
    """The compiled latent-by-latent backward applies: CPU float32 tensors, the device paths
    not forced (:mod:`mmsae.engine.device_paths`)."""
    return not uses_device_paths(*ts) and all(t.dtype == torch.float32 for t in ts)


def _np(t: torch.Tensor):
    return t.detach().contiguous().numpy()


def _over_latents(kernel, ptr, *args) -> None:
    """Run ``kernel(*args, lo, hi)`` over the latent range, split over torch's intra-op thread
    count into ranges holding about equal numbers of entries (at least 4096 per thread)."""
    m, n = len(ptr) - 1, int(ptr[-1])
    threads = max(1, min(torch.get_num_threads(), n // 4096))
    run_ranges(kernel, [0] + [int(np.searchsorted(ptr, n * t // threads)) for t in range(1, threads)] + [m],
               *args)


#: rows from which :class:`SparseDecode` decodes with :func:`kernels.decode_rows` instead of
#: ``embedding_bag`` (one thread, m = 8192, d = 512, K = 32: 1024 rows 3.0 -> 2.3 ms, 8192 rows
#: 24 -> 19 ms; 256 rows 0.40 -> 0.53 ms)
_DECODE_ROWS = 1024

_GROUPED: list = [None]  # the last grouping: (idx, its key, order, ptr)


def _entries_by_latent(idx: torch.Tensor, m: int):
    """``kernels.entries_by_latent`` of ``idx``'s flat entries. The backward of the decode and
    that of the encoder values group the same ``idx``, so the last grouping is kept and
    reused when asked for the same tensor again: same storage address, shape, strides and
    version counter (an in-place change bumps it). The kept reference to ``idx`` keeps its
    storage alive, so no other tensor can take its address in the meantime."""
    key = (idx.data_ptr(), tuple(idx.shape), idx.stride(), idx.dtype, idx._version, m)
    last = _GROUPED[0]
    if last is not None and last[1] == key:
        return last[2], last[3]
    order, ptr = kernels.entries_by_latent(_np(idx.reshape(-1)), m)
    _GROUPED[0] = (idx, key, order, ptr)
    return order, ptr


def _entry_rows(rows: torch.Tensor | None):
    """``(rows array, K)`` for the kernels: flat entries pass their rows (K = 0)."""
    return (np.empty(0, np.int64), None) if rows is None else (_np(rows.to(torch.int64)), 0)


class SparseEncoderValues(torch.autograd.Function):
    """``relu(raw)`` for the selected entries ``raw[r, k] = (u_r - b_pre[mod]) . W_enc[idx[r,k]] + b_enc[idx[r,k]]``
    with gradients for ``W_enc``, ``b_enc``, ``b_pre`` (and ``u`` if it requires grad)
    that touch only the ``(R, K)`` selected entries. With ``rows`` (flat entries, sorted by
    row), ``raw`` and ``idx`` are ``(N,)`` lists of entries of rows ``rows``."""

    @staticmethod
    def forward(ctx, raw, u_c, idx, W_enc, b_enc, b_pre, mod, rows=None):  # noqa: D401
        """``mod``: the pre-bias row of all rows (int) or of each row (list of (row slice, row))."""
        vals = torch.relu(raw)
        ctx.save_for_backward(u_c, idx, W_enc, raw, rows)
        ctx.mod, ctx.bpre_shape = mod, b_pre.shape
        ctx.b_pre = b_pre if b_pre.is_leaf else None  # its gradient may go with W_enc's entries
        ctx.mark_non_differentiable(idx)
        return vals

    @staticmethod
    def backward(ctx, g):
        u_c, idx, W_enc, raw, rows = ctx.saved_tensors
        g = g * (raw > 0)
        m = W_enc.shape[0]
        gW = gb = gpre = gu = None
        need_b = ctx.needs_input_grad[4] or ctx.needs_input_grad[5]
        defer = ctx.needs_input_grad[3] and deferred.deferring(W_enc) and _kernel_ok(u_c, W_enc, g)
        pre_deferred = False
        if defer:  # W_enc's gradient goes to the optimiser as entries (mmsae.engine.deferred), and with them the
            # pre-bias gradient, summed while the optimiser has each row of W_enc in cache
            pre_deferred = ctx.needs_input_grad[5] and ctx.b_pre is not None
            _defer(W_enc, u_c, idx, g, rows, m,
                   prebias=ctx.b_pre if pre_deferred else None,
                   rowmod=_rowmod(ctx.mod, u_c.shape[0]) if pre_deferred else None)
        if not defer and (ctx.needs_input_grad[3] or need_b) and _kernel_ok(u_c, W_enc, g):
            gW, per = _encoder_grads(ctx.mod, ctx.bpre_shape[0], idx, g, u_c, m, rows)
            if not ctx.needs_input_grad[3]:
                gW = None
        else:
            if ctx.needs_input_grad[3] and not defer:
                gW = sparse_grad_matmul(idx, g, u_c, m, rows).to(W_enc.dtype)
            if need_b:
                per = torch.zeros(ctx.bpre_shape[0], m, device=g.device, dtype=torch.float32)
                for sel, mrow in _mod_parts(ctx.mod, rows):
                    per[mrow].index_add_(0, idx[sel].reshape(-1), g[sel].reshape(-1).float())
        if need_b:
            if ctx.needs_input_grad[4]:
                gb = per.sum(0)
            if ctx.needs_input_grad[5] and not pre_deferred:
                gpre = _prebias_grad(ctx.mod, rows, idx, g, W_enc, ctx.bpre_shape)
        if ctx.needs_input_grad[1]:
            if rows is None:
                gu = F.embedding_bag(idx, W_enc, per_sample_weights=g.to(W_enc.dtype), mode="sum")
            else:
                gu = decode_entries(W_enc, g.to(W_enc.dtype), rows, idx, u_c.shape[0])
        return None, gu, None, gW, gb, gpre, None, None


def sparse_encoder_values(raw, u_c, idx, W_enc, b_enc, b_pre, mod, rows=None):
    """:class:`SparseEncoderValues` (``rows``: flat entries, see there)."""
    return SparseEncoderValues.apply(raw, u_c, idx, W_enc, b_enc, b_pre, mod, rows)


def _prebias_grad(mod, rows, idx, g, W_enc, shape) -> torch.Tensor:
    """The pre-bias gradient ``-sum_e g[e] W_enc[idx[e]]`` over the entries of each pre-bias row's rows: the
    entries' encoder rows gathered (``embedding_bag``), not the product of the per-latent sums with every row of
    ``W_enc`` (at the paper's batch a sixth of the time: 0.5 against 2.9 ms on one thread here)."""
    out = torch.zeros(shape, dtype=W_enc.dtype, device=W_enc.device)
    for sel, q in _mod_parts(mod, rows):
        i = idx[sel].reshape(1, -1)
        if i.numel():
            out[q] -= F.embedding_bag(i, W_enc, per_sample_weights=g[sel].reshape(1, -1).to(W_enc.dtype),
                                      mode="sum")[0]
    return out


def _rowmod(mod, R: int) -> np.ndarray:
    """The pre-bias row of each of the ``R`` rows (``mod`` as :class:`SparseEncoderValues` takes it)."""
    rowmod = np.zeros(R, np.int64)
    if not isinstance(mod, int):
        for sl, mrow in mod:
            rowmod[sl] = mrow
    elif mod:
        rowmod[:] = mod
    return rowmod


def _defer(W: torch.Tensor, S: torch.Tensor, idx: torch.Tensor, coef: torch.Tensor, rows: torch.Tensor | None,
           m: int, prebias: torch.Tensor | None = None, rowmod: np.ndarray | None = None) -> None:
    """Record ``W``'s gradient ``sum_e coef[e] S[row(e)]`` into row ``idx[e]`` as entries for the optimiser
    (:mod:`mmsae.engine.deferred`), grouped by latent as the dense backward would sum them; with ``prebias``, its
    gradient ``-coef[e] W[idx[e]]`` into row ``rowmod[row(e)]`` too (an encoder's pre-bias)."""
    order, ptr = _entries_by_latent(idx, m)
    if rows is None:
        R, K = idx.shape
        r = np.repeat(np.arange(R, dtype=np.int64), K)
    else:
        r = _np(rows.to(torch.int64))
    S_t, c_t = S.detach().contiguous(), coef.detach().reshape(-1).contiguous()
    deferred.record(W, deferred.Entries(S_t.numpy(), r, c_t.numpy(), _np(idx.reshape(-1)), order, ptr,
                                        keep=(S_t, c_t, idx), rowmod=rowmod, prebias=prebias))


def _encoder_grads(mod, n_pre: int, idx, g, u_c, m: int, rows):
    """CPU: ``(W_enc gradient, per)`` with ``per[q, j]`` the summed gradient of latent ``j``'s
    entries in rows that use pre-bias row ``q`` (:func:`kernels.encoder_backward`)."""
    rowmod = _rowmod(mod, u_c.shape[0])
    order, ptr = _entries_by_latent(idx, m)
    r_np, K = _entry_rows(rows)
    gW = torch.empty(m, u_c.shape[1], dtype=u_c.dtype)  # every row written by the kernel
    per = torch.zeros(n_pre, m, dtype=torch.float32)
    _over_latents(kernels.encoder_backward, ptr, _np(u_c), r_np, idx.shape[1] if K is None else 0,
                  _np(g.reshape(-1)), rowmod, order, ptr, gW.numpy(), per.numpy())
    return gW, per


class SparseDecode(torch.autograd.Function):
    """``embedding_bag`` decoding (``u_hat[r] = sum vals[r, k] W[idx[r, k]]``; with ``rows``,
    flat entries sorted by row and ``offsets`` their row starts; from :data:`_DECODE_ROWS` rows of
    ``(R, K)`` entries on, the compiled :func:`kernels.decode_rows`), plus the pre-bias row
    ``b_pre[q]`` of each row block (``mod``: as :class:`SparseEncoderValues`; None: no bias)
    added in place. The backward runs latent by latent on CPU (:func:`kernels.decoder_backward`):
    each ``W`` gradient row is summed in cache and written once, instead of
    ``embedding_bag``'s scattered read-modify-writes; the pre-bias gradient is a row sum per block."""

    @staticmethod
    def forward(ctx, vals, idx, W, rows, offsets, b_pre, mod):  # noqa: D401
        if rows is None and idx.shape[0] >= _DECODE_ROWS and W.is_contiguous():
            # large batches: compiled, a block of rows at a time (kernels.decode_rows; about a
            # fifth faster than embedding_bag at 8192 rows, slower below ~1000)
            out = torch.empty(idx.shape[0], W.shape[1], dtype=W.dtype)
            split_rows(kernels.decode_rows, idx.shape[0], W.detach().numpy(), _np(vals), _np(idx), out.numpy(),
                       min_rows=kernels.DECODE_BLOCK)
        else:
            out = F.embedding_bag(idx, W, offsets, per_sample_weights=vals, mode="sum")
        if b_pre is not None:
            for sl, q in _mod_parts(mod, None):
                out[sl] += b_pre[q]
        ctx.save_for_backward(vals, idx, W, rows)
        ctx.mod = mod
        ctx.bpre = None if b_pre is None else (b_pre.shape, b_pre.dtype)
        ctx.mark_non_differentiable(idx)
        return out

    @staticmethod
    def backward(ctx, G):
        vals, idx, W, rows = ctx.saved_tensors
        G = G.contiguous()
        gv, gW = _decode_backward(G, W, idx, vals, rows, ctx.needs_input_grad[2], True)
        gb = None
        if ctx.bpre is not None and ctx.needs_input_grad[5]:
            shape, dtype = ctx.bpre
            gb = torch.zeros(shape, dtype=dtype)
            for sl, q in _mod_parts(ctx.mod, None):
                gb[q] += G[sl].sum(0)
        return (gv.view_as(vals) if ctx.needs_input_grad[0] else None, None, gW, None, None, gb, None)


_NO_BIAS = np.empty((0, 0), np.float32)
_NO_ROWMOD = np.empty(0, np.int64)
_NO_F32 = np.empty(0, np.float32)


class SparseDecodeErrors(torch.autograd.Function):
    """The K-sparse decode of :class:`SparseDecode` (``(R, K)`` entries, with the pre-bias rows) and its per-row
    squared error against ``u``, ``se[r] = ||u_hat[r] - u[r]||^2``, in one compiled pass
    (:func:`kernels.decode_errors`): outputs ``(u_hat, se)``. The pass also takes the product of each row's error
    with each of its atoms while the atoms are in cache, so when only ``se`` receives a gradient (the usual case:
    the reconstruction enters the loss through its squared error alone) the values' gradient is
    ``2 g_se[r] dots[r, k]`` and the decoder's atoms are not read again in the backward. A gradient on ``u_hat``
    itself is handled as :class:`SparseDecode` handles it."""

    @staticmethod
    def forward(ctx, vals, idx, W, b_pre, mod, u):  # noqa: D401
        R, K = idx.shape
        d = W.shape[1]
        out, E = torch.empty(R, d, dtype=W.dtype), torch.empty(R, d, dtype=W.dtype)
        se, dots = torch.empty(R, dtype=W.dtype), torch.empty(R, K, dtype=W.dtype)
        if b_pre is None:
            Bp, rowmod = _NO_BIAS, _NO_ROWMOD
        else:
            Bp, rowmod = _np(b_pre.reshape(-1, d)), _rowmod(mod, R)
        split_rows(kernels.decode_errors, R, _np(W), _np(vals), _np(idx), Bp, rowmod, _np(u), out.numpy(),
                   E.numpy(), se.numpy(), dots.numpy(), min_rows=64)
        ctx.save_for_backward(vals, idx, W, E, dots)
        ctx.mod = mod
        ctx.bpre = None if b_pre is None else (b_pre.shape, b_pre.dtype)
        ctx.set_materialize_grads(False)
        return out, se

    @staticmethod
    def backward(ctx, g_out, g_se):
        vals, idx, W, E, dots = ctx.saved_tensors
        if g_out is None and g_se is None:
            return None, None, None, None, None, None
        G = None if g_se is None else E * (2.0 * g_se).unsqueeze(1)
        if g_out is not None:
            G = g_out.contiguous() if G is None else G + g_out
        gv = gW = gb = gu = None
        need_v, need_W = ctx.needs_input_grad[0], ctx.needs_input_grad[2]
        if need_v and g_out is None:
            gv = dots * (2.0 * g_se).unsqueeze(1)
        if need_W or (need_v and gv is None):
            gv_all, gW = _decode_backward(G, W, idx, vals, None, need_W, need_v and gv is None)
            if need_v and gv is None:
                gv = gv_all.view_as(vals)
        if ctx.bpre is not None and ctx.needs_input_grad[3]:
            shape, dtype = ctx.bpre
            gb = torch.zeros(shape, dtype=dtype)
            for sl, q in _mod_parts(ctx.mod, None):
                gb[q] += G[sl].sum(0)
        if ctx.needs_input_grad[5] and g_se is not None:
            gu = E * (-2.0 * g_se).unsqueeze(1)
        return gv, None, gW, gb, None, gu


def _decode_backward(G, W, idx, vals, rows, need_W: bool, need_v: bool):
    """``(values' gradient (flat) or None, W's gradient or None)`` of a K-sparse decode whose output received
    ``G``; under deferral (:mod:`mmsae.engine.deferred`) W's gradient goes to the optimiser as entries."""
    m = W.shape[0]
    flat = idx.reshape(-1)
    r_np, K = _entry_rows(rows)
    G = G.contiguous()
    gv = torch.empty(flat.shape[0], dtype=vals.dtype) if need_v or not (need_W and deferred.deferring(W)) else None
    if need_W and deferred.deferring(W):  # the values' gradient only; W's to the optimiser
        if need_v:
            split_rows(kernels.decoder_value_grads, flat.shape[0], _np(G), _np(W), r_np,
                       idx.shape[1] if K is None else 0, _np(flat), gv.numpy(), min_rows=4096)
        _defer(W, G, idx, vals, rows, m)
        return gv, None
    order, ptr = _entries_by_latent(idx, m)
    gW = torch.empty_like(W)  # every row written by the kernel
    _over_latents(kernels.decoder_backward, ptr, _np(G), _np(W), r_np, idx.shape[1] if K is None else 0,
                  _np(vals.reshape(-1)), order, ptr, gW.numpy(), gv.numpy())
    return gv, gW if need_W else None


class PrefixDecodeErrors(torch.autograd.Function):
    """Matryoshka's nested-prefix decodes of flat entries and their per-row squared errors in one compiled pass
    (:func:`kernels.prefix_errors`): outputs ``(per, last)``, ``per[g, r] = ||u[r] - u_hat_g[r]||^2`` with
    ``u_hat_g`` the decode by the entries of groups ``<= g`` plus the pre-bias rows, and ``last`` the full
    reconstruction. The backward turns the errors into the gradient each group's entries receive (a suffix sum
    over the groups, in place, :func:`kernels.prefix_suffix_sums`), then goes on as :class:`SparseDecode`'s does,
    the entries' rows being ``(group, row)`` pairs."""

    @staticmethod
    def forward(ctx, vals, rows, cols, group, offsets, n_groups, W, b_pre, mod, u):  # noqa: D401
        R, d = u.shape
        E = torch.empty(n_groups * R, d, dtype=W.dtype)
        per, last = torch.empty(n_groups * R, dtype=W.dtype), torch.empty(R, d, dtype=W.dtype)
        if b_pre is None:
            Bp, rowmod = _NO_BIAS, _NO_ROWMOD
        else:
            Bp, rowmod = _np(b_pre.reshape(-1, d)), _rowmod(mod, R)
        split_rows(kernels.prefix_errors, R, _np(W), _np(vals), _np(cols), _np(group), _np(offsets), int(n_groups),
                   Bp, rowmod, _np(u), E.numpy(), per.numpy(), last.numpy(), min_rows=64)
        ctx.save_for_backward(vals, cols, group * R + rows, W, E)
        ctx.mod, ctx.n_groups = mod, int(n_groups)
        ctx.bpre = None if b_pre is None else (b_pre.shape, b_pre.dtype)
        ctx.set_materialize_grads(False)
        return per.view(n_groups, R), last

    @staticmethod
    def backward(ctx, g_per, g_last):
        vals, cols, erows, W, E = ctx.saved_tensors
        G, R = ctx.n_groups, E.shape[0] // ctx.n_groups
        if getattr(ctx, "consumed", False):
            raise RuntimeError("PrefixDecodeErrors: its backward turns the saved errors into gradients in place and "
                               "runs once (no retain_graph)")
        ctx.consumed = True
        H = E  # the errors become the gradients, in place
        if g_per is None:
            H.zero_()
        else:
            split_rows(kernels.prefix_suffix_sums, R, H.numpy(), _np(g_per.reshape(-1).to(E.dtype)), G, min_rows=64)
        if g_last is not None:
            H.view(G, R, -1).add_(g_last)
        need_v, need_W = ctx.needs_input_grad[0], ctx.needs_input_grad[6]
        gv = gW = gb = gu = None
        if need_v or need_W:
            gv, gW = _decode_backward(H, W, cols, vals, erows, need_W, need_v)
        H0 = H[:R]
        if ctx.bpre is not None and ctx.needs_input_grad[7]:
            shape, dtype = ctx.bpre
            gb = torch.zeros(shape, dtype=dtype)
            for sl, q in _mod_parts(ctx.mod, None):
                gb[q] += H0[sl].sum(0)
        if ctx.needs_input_grad[9]:
            gu = -(H0 if g_last is None else H0 - g_last)
        return gv, None, None, None, None, None, gW, gb, None, gu


def prefix_decode_errors(W: torch.Tensor, vals: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor,
                         group: torch.Tensor, n_groups: int, u: torch.Tensor, b_pre: torch.Tensor | None = None,
                         mod=None):
    """``(per, last)`` of :class:`PrefixDecodeErrors` for flat entries sorted by row and, within a row, by group
    (``group[e]``: the first prefix latent ``cols[e]`` belongs to); None where that pass does not apply (not CPU
    float32, no autograd): the caller decodes the prefixes itself."""
    if not (_kernel_ok(W, vals, u) and W.is_contiguous() and torch.is_grad_enabled()
            and (W.requires_grad or vals.requires_grad)):
        return None
    counts = torch.bincount(rows, minlength=u.shape[0])
    offsets = torch.zeros(u.shape[0] + 1, dtype=torch.int64)
    torch.cumsum(counts, 0, out=offsets[1:])
    return PrefixDecodeErrors.apply(vals, rows, cols, group, offsets, n_groups, W, b_pre, mod, u)


def decode_errors_applies(W: torch.Tensor, vals: torch.Tensor, idx: torch.Tensor, u: torch.Tensor) -> bool:
    """Whether :class:`SparseDecodeErrors` takes this decode: CPU float32 (the device paths not forced), ``(R, K)``
    entries, a contiguous decoder, under autograd."""
    return (_kernel_ok(W, vals, u) and idx.dim() == 2 and W.is_contiguous() and torch.is_grad_enabled()
            and (W.requires_grad or vals.requires_grad) and u.shape == (idx.shape[0], W.shape[1]))


def sparse_decode(W: torch.Tensor, vals: torch.Tensor, idx: torch.Tensor, rows: torch.Tensor | None = None,
                  offsets: torch.Tensor | None = None, b_pre: torch.Tensor | None = None, mod=None) -> torch.Tensor:
    """``sum_k vals[r, k] W[idx[r, k]]`` per row (``(R, K)`` inputs), or of flat entries
    (``rows`` their sorted rows, ``offsets`` each row's first entry); with ``b_pre``, plus the
    pre-bias row of each row (``mod``: one row index for all rows, or a list of (row slice,
    row index) as :class:`SparseEncoderValues` takes). CPU float32 goes through
    :class:`SparseDecode`; elsewhere (and on the forced device paths)
    :func:`torch.nn.functional.embedding_bag` and an add."""
    if _kernel_ok(W, vals) and torch.is_grad_enabled() and (W.requires_grad or vals.requires_grad):
        return SparseDecode.apply(vals, idx, W, rows, offsets, b_pre, mod)
    out = F.embedding_bag(idx, W, offsets, per_sample_weights=vals, mode="sum")
    if b_pre is None:
        return out
    if isinstance(mod, int):
        return out + b_pre[mod]
    return out + torch.cat([b_pre[q].expand(sl.stop - (sl.start or 0), -1) for sl, q in mod])


def decode_entries(W_dec: torch.Tensor, vals: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor,
                   n_rows: int, b_pre: torch.Tensor | None = None, mod=None) -> torch.Tensor:
    """``(n_rows, d)`` decoding of flat entries (``vals[n]`` times atom ``cols[n]`` added to row
    ``rows[n]``; entries sorted by row; a row without entries decodes to 0), plus the pre-bias
    rows ``b_pre``/``mod`` as :func:`sparse_decode` takes them."""
    counts = torch.bincount(rows, minlength=n_rows)
    offsets = torch.cumsum(counts, 0) - counts
    return sparse_decode(W_dec, vals, cols, rows, offsets, b_pre, mod)


def _exact_raw(u_c: torch.Tensor, idx: torch.Tensor, W_enc: torch.Tensor, b_enc: torch.Tensor) -> torch.Tensor:
    """float32 pre-activations at the selected entries (after a low-precision selection)."""
    return torch.bmm(W_enc[idx], u_c[:, :, None]).squeeze(-1) + b_enc[idx]


# ----------------------------------------------------------------------- top-k kernel
def _chunk_size(m: int, kc: int) -> int:
    """Entries per chunk for the compiled scan of rows of ``m`` entries bounding ``kc``
    candidates: :data:`kernels.CHUNK`, or fewer where that gives fewer than ``kc`` chunks
    (down to 2; 0: the scan does not apply)."""
    size = CHUNK
    while size >= 2:
        if 0 < kc <= -(-m // size):
            return size
        size //= 2
    return 0


def _scan_fits(m: int, kc: int) -> bool:
    return _chunk_size(m, kc) > 0


def _scan_applies(pre: torch.Tensor, kc: int) -> bool:
    return (not uses_device_paths(pre) and pre.dtype == torch.float32 and pre.dim() == 2 and pre.is_contiguous()
            and pre.shape[0] > 0 and _scan_fits(pre.shape[1], kc))


def _chunk_scan(pre: torch.Tensor, k: int, kc: int, mask: "HashMask | None" = None,
                pairs: torch.Tensor | None = None, bias: torch.Tensor | None = None):
    """The compiled top-k of :func:`topk_rows` (and, with ``mask``, the masked top-k of
    :func:`_select`) of ``pre (+ bias)``: ``(vals, idx, short)`` with ``short`` the rows left to
    the caller (see :func:`kernels.scan_rows`), or None where it does not apply (not CPU
    float32 contiguous, or a row too short for ``kc`` chunks)."""
    R, m = pre.shape
    if not _scan_applies(pre, kc):
        return None
    vals = torch.empty(R, k, dtype=pre.dtype)
    idx = torch.empty(R, k, dtype=torch.int64)
    if mask is None:
        margs = (False, np.uint64(0), np.uint64(0), False, np.empty(0, np.int64))
    else:
        p = torch.arange(R) if pairs is None else pairs.to(torch.int64)
        margs = (True, np.uint64(mask.salt & _M32), np.uint64(int(mask.rate * 2 ** 32)), bool(mask.per_pair),
                 (p + mask.row_offset).numpy())
    bn = np.empty(0, np.float32) if bias is None else bias.detach().to(torch.float32).contiguous().numpy()
    a, v, i = pre.numpy(), vals.numpy(), idx.numpy()
    split_rows(scan_rows, R, a, bn, _chunk_size(m, kc), kc, k, *margs, v, i, min_rows=64)
    return vals, idx, idx[:, 0] < 0


def _biased(pre: torch.Tensor, bias: torch.Tensor | None, rows: torch.Tensor | None = None) -> torch.Tensor:
    """``pre (+ bias)``, of the rows ``rows`` only when given (a new tensor; ``pre`` is left as is)."""
    p = pre if rows is None else pre[rows]
    return p if bias is None else p + bias


def topk_rows(pre: torch.Tensor, k: int, bias: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``(pre + bias).topk(k, dim=-1, sorted=False)`` of a 2-D tensor (``bias``: None or one
    value per column), faster on CPU.

    On CPU (float32, contiguous) each row is cut into chunks of 16 entries (fewer when ``k``
    is more than a sixteenth of the row; :func:`_chunk_size`; the bias added on
    the way) and their maxima taken in one pass; a value ``t`` reached by at least ``k`` chunk
    maxima is a lower bound of the row's k-th largest entry (those chunks hold ``k`` distinct
    entries ``>= t``), so the top k are among the entries ``>= t``, usually little more than
    k, and lie in the chunks whose maximum is ``>= t``. The compiled scan (numba,
    :func:`kernels.scan_rows`) collects the entries of those chunks and selects the k largest.
    Same values as ``torch.topk`` (ties at the k-th value go to the lowest index;
    ``torch.topk`` leaves tie order unspecified); a row holding NaN or infinity falls back to
    ``torch.topk``. Elsewhere (CUDA or the device paths forced, other dtypes, rows of fewer
    than ``2k`` entries) ``torch.topk``."""
    res = _chunk_scan(pre, k, k, bias=bias)
    if res is None:
        return _biased(pre, bias).topk(k, dim=-1, sorted=False)
    vals, idx, bad = res
    if bool(bad.any()):
        r = bad.nonzero().squeeze(1)
        vals[r], idx[r] = _biased(pre, bias, r).topk(k, dim=-1, sorted=False)
    return vals, idx


# ----------------------------------------------------------------------- selection
def _candidates(k: int, m: int, rate: float) -> int:
    keep = 1.0 - rate
    return min(m, int(math.ceil(k / keep + 4.0 * math.sqrt(k * rate) / keep)) + 1)


@torch.no_grad()
def _select(pre: torch.Tensor, k: int, mask: HashMask | torch.Tensor | None, pairs: torch.Tensor | None = None,
            bias: torch.Tensor | None = None):
    """Top-k ``(raw values, indices)`` of each row of ``pre (+ bias)`` among kept latents; row
    ``r`` belongs to pair ``pairs[r]`` (default ``r``) for the mask."""
    if mask is None:
        return topk_rows(pre, k, bias)
    R, m = pre.shape
    rate = mask.rate if isinstance(mask, HashMask) else min(0.95, 1.0 - float(mask.float().mean()))
    kc = _candidates(k, m, rate)
    rows = (torch.arange(R, device=pre.device) if pairs is None else pairs)[:, None]
    res = _chunk_scan(pre, k, kc, mask, rows[:, 0], bias) if isinstance(mask, HashMask) else None
    if res is not None:  # CPU: the mask applied inside the compiled scan
        v, idx, short = res
        while bool(short.any()) and 4 * kc <= m // 2:
            # rows where the mask dropped too many candidates: those rows again, with 4x the
            # candidates (exact as before: the masked top-k whenever k of them are kept)
            kc *= 4
            r = short.nonzero().squeeze(1)
            again = _chunk_scan(pre[r], k, kc, mask, rows[r, 0], bias)
            if again is None:
                break
            v[r], idx[r] = again[0], again[1]
            short[r] = again[2]
    else:
        cv, ci = topk_rows(pre, kc, bias)
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
        pr_ = _biased(pre, bias, r)
        vr, ir = torch.relu(pr_).masked_fill(~kr, 0.0).topk(k, dim=-1, sorted=False)
        # fewer than k kept positive entries: slots at value 0, possibly on dropped latents,
        # which must stay at 0 (their raw value may be positive)
        v[r] = pr_.gather(1, ir).masked_fill(~kr.gather(1, ir), 0.0)
        idx[r] = ir
    return v, idx


@dataclass
class Selection:
    """What the no-grad encoder pass of a batch keeps: the TopK entries ``(raw, idx)``
    (``(R, K)``, pre-ReLU values) and, when latents are dead and AuxK is on, each row's
    top ``k_aux`` dead latents ``(aux_raw, aux_idx)`` (else None)."""

    raw: torch.Tensor
    idx: torch.Tensor
    aux_raw: torch.Tensor | None = None
    aux_idx: torch.Tensor | None = None

    @property
    def aux(self):
        return None if self.aux_idx is None else (self.aux_raw, self.aux_idx)


#: rows of pre-activations computed at once on CPU: a block of ``block_rows x m`` floats is
#: selected (top-K, AuxK) right after its matmul, mostly from the last-level cache. The size
#: trades the encoder pass against the rest of the step: alone, the encoder pass was fastest
#: with large blocks (batch 4096, m = 8192, two threads, an earlier diagnostic on the 2-core VM:
#: 32 MiB ~240 ms, 128 MiB ~221 ms, one 256 MiB block ~218 ms; each block's matmul packs the
#: encoder again), but a large buffer also pushes the optimiser's state and the gradients out of
#: the cache. Over whole MGSAE training steps (same shape, the kernels on torch's threads, blocks
#: of each size interleaved in one process) 32, 48 and 64 MiB were within 1% of each other and
#: 2-4% faster than 128 MiB, on one thread and on two
CPU_BLOCK_BYTES = 64 * 2 ** 20


def _block_rows(R: int, m: int, device: torch.device) -> int:
    """Rows per block of the encoder pass: all ``R`` on the device paths (CUDA, or forced)."""
    if uses_device_paths(device):
        return R
    return max(16, min(R, CPU_BLOCK_BYTES // (4 * m)))


def _workspace(model, rows: int, m: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """A ``(rows, m)`` buffer kept on the model between steps (a plain attribute, not state)."""
    ws = model.__dict__.get("_select_workspace")
    if ws is None or ws.shape[0] < rows or ws.shape[1] != m or ws.dtype != dtype or ws.device != device:
        ws = torch.empty(rows, m, dtype=dtype, device=device)
        model.__dict__["_select_workspace"] = ws
    return ws[:rows]


def dead_latents(model) -> tuple[torch.Tensor | None, int]:
    """``(indices of the dead latents, k_aux)`` when AuxK applies this step, else ``(None, 0)``."""
    cfg = model.config
    if cfg.auxk_coef <= 0:
        return None, 0
    dead_idx = model.dead_mask().nonzero().squeeze(1)
    n_dead = int(dead_idx.numel())
    if n_dead == 0:
        return None, 0
    return dead_idx, min(cfg.k_aux or cfg.d // 2, n_dead)


@torch.no_grad()
def select_dead(pre: torch.Tensor, dead_idx: torch.Tensor | None, k_aux: int, bias: torch.Tensor | None = None):
    """Each row's top ``k_aux`` dead latents of the raw pre-activations ``pre (+ bias)``
    (ranked by their ReLU, as AuxK's ``TopK(ReLU(pre) on the dead latents)``):
    ``(raw values, indices)``, or None when no latent is dead."""
    if dead_idx is None or k_aux <= 0:
        return None
    sub = pre.index_select(1, dead_idx)
    res = _chunk_scan(sub, k_aux, k_aux, bias=None if bias is None else bias[dead_idx])
    if res is not None:  # compiled: the top k_aux of the raw values (the same positive entries as of their ReLU;
        # where fewer than k_aux are positive, other zero-valued slots, which add nothing to the loss or its gradients)
        vals, j, bad = res
        if not bool(bad.any()):
            return vals, dead_idx[j]
    if bias is not None:
        sub += bias[dead_idx]
    _, j = torch.relu(sub).topk(k_aux, dim=-1, sorted=False)
    return sub.gather(1, j), dead_idx[j]


@torch.no_grad()
def select_codes(model, u_c: torch.Tensor, mask=None, pairs: torch.Tensor | None = None,
                 select_dtype: torch.dtype | None = None, aux: bool = True) -> Selection:
    """The encoder pass without autograd: pre-activations ``u_c @ W_enc^T + b_enc`` of the rows
    ``u_c`` (centred inputs), their (masked) TopK and, for AuxK, the top dead latents.

    On CPU the rows go through in blocks (:data:`CPU_BLOCK_BYTES`) into a buffer kept on the
    model, so the ``(R, m)`` matrix is never written whole and each block is selected while it
    is in cache (on the device paths, CUDA or forced, in one block). ``pairs[r]``: the pair of
    row ``r`` for the mask (default ``r``). ``select_dtype`` None: the parameters' dtype, or
    with the device paths forced the switch's (:func:`mmsae.engine.device_paths.selection_dtype`)."""
    W_enc, b_enc = model.W_enc, model.b_enc
    k = model.config.k
    R, m = u_c.shape[0], W_enc.shape[0]
    dead_idx, k_aux = dead_latents(model) if aux else (None, 0)
    select_dtype = selection_dtype(select_dtype)
    low = select_dtype is not None and select_dtype != W_enc.dtype
    dt = select_dtype if low else W_enc.dtype
    Wt, bb, uu = W_enc.to(dt).t(), b_enc.to(dt), u_c.to(dt)
    if pairs is None and mask is not None:
        pairs = torch.arange(R, device=u_c.device)
    rb = _block_rows(R, m, u_c.device)
    kc = k if mask is None else _candidates(k, m, mask.rate) if isinstance(mask, HashMask) else 0
    # the compiled scan adds b_enc itself (one more load per entry it reads already): a plain
    # matmul into the buffer, where addmm would first copy the bias into every row of it
    in_scan = not uses_device_paths(u_c) and dt == torch.float32 and _scan_fits(m, kc)
    raw = torch.empty(R, k, dtype=dt, device=u_c.device)
    idx = torch.empty(R, k, dtype=torch.int64, device=u_c.device)
    aux_raw = torch.empty(R, k_aux, dtype=dt, device=u_c.device) if k_aux else None
    aux_idx = torch.empty(R, k_aux, dtype=torch.int64, device=u_c.device) if k_aux else None
    for r0 in range(0, R, rb):
        r1 = min(R, r0 + rb)
        with record_function("mmsae.encoder_gemm"):
            pre = _workspace(model, r1 - r0, m, dt, u_c.device)
            if in_scan:
                torch.mm(uu[r0:r1], Wt, out=pre)
            else:
                torch.addmm(bb, uu[r0:r1], Wt, out=pre)
        with record_function("mmsae.topk_select" if mask is None else "mmsae.topk_select_masked"):
            raw[r0:r1], idx[r0:r1] = _select(pre, k, mask, None if pairs is None else pairs[r0:r1],
                                             bb if in_scan else None)
        if k_aux:
            with record_function("mmsae.auxk_select"):
                aux_raw[r0:r1], aux_idx[r0:r1] = select_dead(pre, dead_idx, k_aux, bb if in_scan else None)
    if low:  # exact float32 values of the entries chosen in low precision
        raw = _exact_raw(u_c, idx, W_enc, b_enc)
        if k_aux:
            aux_raw = _exact_raw(u_c, aux_idx, W_enc, b_enc)
    return Selection(raw, idx, aux_raw, aux_idx)


@torch.no_grad()
def select_shared_support(model, u_c: torch.Tensor, select_dtype: torch.dtype | None = None, aux: bool = True):
    """SPARC's global TopK without autograd, for the rows ``u_c = [x - b_0; y - b_1]`` of
    ``B`` pairs: per pair, the TopK support of ``ReLU(h_x + h_y)`` (``h`` the raw
    pre-activations). Returns ``(sel, on)``: ``sel.idx`` holds each pair's support for both its
    rows, ``sel.raw`` each member's own raw values there (and ``sel.aux`` each member's top
    dead latents); ``on`` ``(B, K)`` is False on slots whose summed value is 0 (empty slots,
    when fewer than K summed pre-activations are positive). Blocked over pairs on CPU like
    :func:`select_codes`."""
    W_enc, b_enc = model.W_enc, model.b_enc
    k = model.config.k
    R, m = u_c.shape[0], W_enc.shape[0]
    B = R // 2
    dead_idx, k_aux = dead_latents(model) if aux else (None, 0)
    select_dtype = selection_dtype(select_dtype)
    low = select_dtype is not None and select_dtype != W_enc.dtype
    dt = select_dtype if low else W_enc.dtype
    Wt, bb, uu = W_enc.to(dt).t(), b_enc.to(dt), u_c.to(dt)
    dev = u_c.device
    pb = max(1, _block_rows(R, m, dev) // 2)
    raw = torch.empty(R, k, dtype=dt, device=dev)
    idx = torch.empty(R, k, dtype=torch.int64, device=dev)
    on = torch.empty(B, k, dtype=torch.bool, device=dev)
    aux_raw = torch.empty(R, k_aux, dtype=dt, device=dev) if k_aux else None
    aux_idx = torch.empty(R, k_aux, dtype=torch.int64, device=dev) if k_aux else None
    for p0 in range(0, B, pb):
        p1 = min(B, p0 + pb)
        n = p1 - p0
        ws = _workspace(model, 3 * n, m, dt, dev)
        with record_function("mmsae.encoder_gemm"):
            h_x = torch.addmm(bb, uu[p0:p1], Wt, out=ws[:n])
            h_y = torch.addmm(bb, uu[B + p0:B + p1], Wt, out=ws[n:2 * n])
        with record_function("mmsae.topk_select"):
            summed = torch.add(h_x, h_y, out=ws[2 * n:3 * n]).relu_()
            s, j = topk_rows(summed, k)
        idx[p0:p1], idx[B + p0:B + p1] = j, j
        raw[p0:p1], raw[B + p0:B + p1] = h_x.gather(1, j), h_y.gather(1, j)
        on[p0:p1] = s > 0
        if k_aux:
            aux_raw[p0:p1], aux_idx[p0:p1] = select_dead(h_x, dead_idx, k_aux)
            aux_raw[B + p0:B + p1], aux_idx[B + p0:B + p1] = select_dead(h_y, dead_idx, k_aux)
    if low:
        raw = _exact_raw(u_c, idx, W_enc, b_enc)
        if k_aux:
            aux_raw = _exact_raw(u_c, aux_idx, W_enc, b_enc)
    return Selection(raw, idx, aux_raw, aux_idx), on


def fast_branch(model, u: torch.Tensor, modality: int, mask=None, select_dtype: torch.dtype | None = None):
    """One modality through the sparse encoder: ``(sel, u_c, vals, idx, u_hat)`` with ``sel``
    the :class:`Selection` (its ``aux`` for :func:`mmsae.models.losses.fast_auxk`)."""
    mod = model._mod(modality)
    b_pre = model.b_pre
    with torch.no_grad():
        u_c = u - b_pre[mod]
    sel = select_codes(model, u_c, mask, None, select_dtype)
    vals = sparse_encoder_values(sel.raw, u - b_pre[mod].detach() if u.requires_grad else u_c, sel.idx,
                                 model.W_enc, model.b_enc, b_pre, mod)
    u_hat = sparse_decode(model.W_dec, vals, sel.idx, b_pre=b_pre, mod=mod)
    return sel, u_c, vals, sel.idx, u_hat


def pair_mod(model, B: int):
    """The pre-bias row(s) of the ``2B`` rows ``[x; y]``, as :class:`SparseEncoderValues` and
    :func:`sparse_decode` take them: one row index, or ``[(rows of x, row), (rows of y, row)]``."""
    m0, m1 = model._mod(0), model._mod(1)
    return m0 if m0 == m1 else [(slice(0, B), m0), (slice(B, 2 * B), m1)]


def stack_pair(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``torch.cat([x, y])``; a view, without the copy, where ``y``'s rows directly follow ``x``'s
    in one buffer (the training loop gathers each batch so) and neither needs a gradient."""
    if (x.dim() == 2 and x.shape == y.shape and x.dtype == y.dtype and x.device == y.device
            and x.is_contiguous() and y.is_contiguous() and not (x.requires_grad or y.requires_grad)
            and x.untyped_storage().data_ptr() == y.untyped_storage().data_ptr()
            and y.storage_offset() == x.storage_offset() + x.numel()):
        return torch.as_strided(x, (2 * x.shape[0], x.shape[1]), x.stride(), x.storage_offset())
    return torch.cat([x, y])


@torch.no_grad()
def centred_pair_rows(model, u: torch.Tensor) -> torch.Tensor:
    """``[x - b_pre[m0]; y - b_pre[m1]]`` of the stacked ``u = [x; y]``, in one pass."""
    m0, m1 = model._mod(0), model._mod(1)
    if m0 == m1:
        return u - model.b_pre[m0]
    both = model.b_pre[m0:m0 + 2] if m1 == m0 + 1 else model.b_pre[[m0, m1]]  # a view where it can be
    return (u.view(2, u.shape[0] // 2, -1) - both.unsqueeze(1)).view(u.shape)


def fast_pair_branch(model, x: torch.Tensor, y: torch.Tensor, mask=None, select_dtype=None,
                     u: torch.Tensor | None = None, errors: bool = False):
    """Both modalities in one pass (one encoder matmul, one sparse backward, one decode over
    the ``2B`` rows ``[x; y]``): ``(sel, u_c, vals, idx, u_hat, mod)``; rows ``:B`` are x.
    ``u``: ``[x; y]`` (:func:`stack_pair`) when the caller has it already (its squared errors need it).
    With ``errors``, a seventh item: the per-row squared errors ``||u - u_hat||^2`` of the decode's own pass
    (:class:`SparseDecodeErrors`), or None where that pass does not apply (the caller computes them)."""
    B = x.shape[0]
    b_pre = model.b_pre
    mod = pair_mod(model, B)
    if x.requires_grad or y.requires_grad:  # rare (gradients wrt the data): per-modality path
        bx, by = fast_branch(model, x, 0, mask, select_dtype), fast_branch(model, y, 1, mask, select_dtype)
        sx, sy = bx[0], by[0]
        sel = Selection(torch.cat([sx.raw, sy.raw]), torch.cat([sx.idx, sy.idx]),
                        None if sx.aux is None else torch.cat([sx.aux_raw, sy.aux_raw]),
                        None if sx.aux is None else torch.cat([sx.aux_idx, sy.aux_idx]))
        out = (sel,) + tuple(torch.cat([a, b]) for a, b in zip(bx[1:], by[1:])) + (mod,)
        return out + (None,) if errors else out
    if u is None:
        u = stack_pair(x, y)
    u_c = centred_pair_rows(model, u)
    pairs = torch.arange(B, device=x.device).repeat(2) if mask is not None else None
    sel = select_codes(model, u_c, mask, pairs, select_dtype)
    se = None
    with record_function("mmsae.sparse_decode"):
        vals = sparse_encoder_values(sel.raw, u_c, sel.idx, model.W_enc, model.b_enc, b_pre, mod)
        if errors and decode_errors_applies(model.W_dec, vals, sel.idx, u):
            u_hat, se = SparseDecodeErrors.apply(vals, sel.idx, model.W_dec, b_pre, mod, u)
        else:
            u_hat = sparse_decode(model.W_dec, vals, sel.idx, b_pre=b_pre, mod=mod)
    out = (sel, u_c, vals, sel.idx, u_hat, mod)
    return out + (se,) if errors else out


# ----------------------------------------------------------------------- batch top-N (BatchTopK, Matryoshka)
__all__ += ["pooled_pre_activations", "batch_topk_entries"]


@torch.no_grad()
def pooled_pre_activations(model, u_c: torch.Tensor, finish: bool = True) -> torch.Tensor:
    """``ReLU(u_c @ W_enc^T + b_enc)`` of the centred rows ``u_c``, without autograd (as
    ``pre_activations``). The ``(R, m)`` result lives in a buffer kept on the model
    (:func:`_workspace`): it is overwritten by the model's next encoder pass. With ``finish=False``, the product
    alone: :func:`batch_topk_entries` with ``bias=b_enc`` adds the bias and the ReLU in place in its own pass
    (``addmm`` first copies the bias into every row of the output, and the ReLU is one more pass)."""
    W_enc, b_enc = model.W_enc, model.b_enc
    out = _workspace(model, u_c.shape[0], W_enc.shape[0], W_enc.dtype, u_c.device)
    if not finish:
        return torch.mm(u_c.to(W_enc.dtype), W_enc.t(), out=out)
    return torch.addmm(b_enc, u_c.to(W_enc.dtype), W_enc.t(), out=out).relu_()


@torch.no_grad()
def batch_topk_entries(pre: torch.Tensor, n_keep: int,
                       bias: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """BatchTopK's selection as flat entries: the ``n_keep`` largest entries of the whole
    ``(R, m)`` matrix ``pre`` (at most ``R * m``), as ``(values, rows, cols)``, each ``(n_keep,)``,
    sorted by row (then column), the order :func:`sparse_encoder_values` (``rows=``) and
    :func:`decode_entries` take.

    The values are ``pre``'s. On ReLU'd pre-activations with fewer than ``n_keep`` positive
    entries some kept entries hold 0 (which ones is unspecified); passed as ``raw`` to
    :func:`sparse_encoder_values` such an entry has value 0 and gradient 0, as in the dense form.
    With ``bias`` (one value per column), ``pre`` is first made ``ReLU(pre + bias)`` in place (on CPU in the
    selection's own pass, :func:`kernels.flat_topn`)."""
    R, m = pre.shape
    n_keep = min(int(n_keep), R * m)
    if bias is not None:
        b = bias.detach().to(pre.dtype).contiguous()
        if not (_flat_kernel_applies(pre.reshape(-1), n_keep) and m % CHUNK == 0 and b.device.type == "cpu"
                and not uses_device_paths(b)):
            pre.add_(b).relu_()
            bias = None
    vals, flat = _flat_topk(pre.reshape(-1), n_keep, None if bias is None else b)
    flat, order = flat.sort()
    return vals[order], flat // m, flat % m


def _flat_kernel_applies(flat: torch.Tensor, n: int) -> bool:
    """Whether :func:`_flat_topk` takes ``flat`` through :func:`kernels.flat_topn`."""
    N = flat.numel()
    return (not uses_device_paths(flat) and flat.dtype == torch.float32 and flat.is_contiguous()
            and N % CHUNK == 0 and N >= CHUNK * n and n > 0)


def _flat_topk(flat: torch.Tensor, n: int, bias: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``flat.topk(n, sorted=False)`` of a long 1-D tensor. On CPU the same chunk-maximum bound
    as :func:`topk_rows`: cut into at least ``2n`` chunks, the ``n``-th largest chunk maximum is
    a lower bound of the ``n``-th largest entry, so only the entries above it (usually a few
    times ``n``) go through ``torch.topk`` (one call on the whole vector runs single-threaded
    over every entry). Ties at the bound may resolve to other indices than ``torch.topk``'s."""
    N = flat.numel()
    if _flat_kernel_applies(flat, n):  # compiled (kernels.flat_topn): no (N,) masks or index lists
        v, i = torch.empty(n, dtype=flat.dtype), torch.empty(n, dtype=torch.int64)
        b = _NO_F32 if bias is None else bias.numpy()
        if kernels.flat_topn(flat.detach().numpy(), n, b, v.numpy(), i.numpy()):
            return v, i
        return flat.topk(n, sorted=False)
    if bias is not None:
        raise ValueError("_flat_topk: a bias only where the compiled top-n applies")
    size = 1
    while size * 2 * 2 * n <= N:  # chunks of a power-of-two size, at least 2n of them
        size *= 2
    if uses_device_paths(flat) or size < 4 or N % size:
        return flat.topk(n, sorted=False)
    t = flat.view(-1, size).amax(1).topk(n, sorted=False).values.amin()
    cand = (flat >= t).nonzero().squeeze(1)
    if cand.numel() < n:  # NaN in the vector (its chunk maximum is NaN, so is t): no bound holds
        return flat.topk(n, sorted=False)
    v, j = flat[cand].topk(n, sorted=False)
    return v, cand[j]
