"""The compiled (numba, CPU) kernels behind :mod:`mmsae.models.sparse`.

Kept in their own module, imported on first use: numba compiles each kernel once and
caches it on disk (``cache=True`` works for module-level functions only), so later
processes load them in milliseconds instead of compiling them again. Every kernel releases
the GIL (``nogil``), so the caller can split its work over threads.

* ``scan_rows(pre, t, k, out_v, out_i)``: for each row ``r`` of the float32 matrix ``pre``,
  given a lower bound ``t[r]`` of the row's k-th largest entry, write the k largest entries
  and their column indices into ``out_v[r]``, ``out_i[r]`` (unsorted; ties at the k-th value
  go to the lowest indices). A row with fewer than k entries ``>= t[r]`` (only possible with
  NaN) gets ``out_i[r, 0] = -1`` and is left to the caller (:func:`~mmsae.models.sparse.topk_rows`).
* ``entries_by_latent(idx, m)``: the entries (flat positions in ``idx``) grouped by latent,
  CSR style: ``order[ptr[j]:ptr[j + 1]]`` are the entries of latent ``j``, in entry order (a
  stable counting sort, ``O(N + m)``).
* ``decoder_backward(...)`` and ``encoder_backward(...)``: the backward of a K-sparse decode
  (``u_hat[r] = sum_e vals[e] W[idx[e]]`` over row ``r``'s entries) and of the K selected
  encoder values, latent by latent over that grouping. Each weight-gradient row is summed
  in cache and written once (no zero fill and no scattered read-modify-write of the ``(m, d)``
  gradient), the
  rows of the upstream gradient are what is gathered, and the result does not depend on how
  the latent range is split over threads (each latent's sum runs in entry order).
* ``project_rows(W, G, lo, hi)`` and ``renorm_rows(W, lo, hi)``: the decoder-norm hooks of
  :class:`~mmsae.models.topk.TopKSAE` (gradient projection, renormalisation), one row at a
  time while it is in cache.
"""

from __future__ import annotations

import numba
import numpy as np

__all__ = ["scan_rows", "entries_by_latent", "decoder_backward", "encoder_backward", "project_rows",
           "renorm_rows"]

#: fast-math flags for the dot products and sums (reassociation lets them vectorise); no
#: ``nnan``/``ninf``, so NaN and infinity propagate as in torch
_FM = {"reassoc", "contract", "nsz", "arcp"}


@numba.njit(cache=True, nogil=True, inline="always")
def _scan_row(row, t, k, buf_v, buf_i, out_v, out_i):
    m = row.shape[0]
    n = 0
    for j in range(m):  # candidates: every entry >= the lower bound t
        v = row[j]
        if v >= t:
            buf_v[n] = v
            buf_i[n] = j
            n += 1
    if n < k:  # NaN in the row (no bound holds): the caller uses torch.topk
        out_i[0] = -1
        return
    kth = np.partition(buf_v[:n], n - k)[n - k]
    w = 0
    for j in range(n):
        if buf_v[j] > kth:
            out_v[w] = buf_v[j]
            out_i[w] = buf_i[j]
            w += 1
    for j in range(n):  # ties at the k-th value: the lowest latent indices
        if w >= k:
            break
        if buf_v[j] == kth:
            out_v[w] = kth
            out_i[w] = buf_i[j]
            w += 1


@numba.njit(cache=True, nogil=True)
def scan_rows(pre, t, k, out_v, out_i):
    buf_v = np.empty(pre.shape[1], pre.dtype)
    buf_i = np.empty(pre.shape[1], np.int64)
    for r in range(pre.shape[0]):
        _scan_row(pre[r], t[r], k, buf_v, buf_i, out_v[r], out_i[r])


@numba.njit(cache=True, nogil=True)
def entries_by_latent(idx, m):
    n = idx.shape[0]
    ptr = np.zeros(m + 1, np.int64)
    for e in range(n):
        ptr[idx[e] + 1] += 1
    for j in range(m):
        ptr[j + 1] += ptr[j]
    fill = ptr[:-1].copy()
    order = np.empty(n, np.int64)
    for e in range(n):
        j = idx[e]
        order[fill[j]] = e
        fill[j] += 1
    return order, ptr


@numba.njit(cache=True, nogil=True, fastmath=_FM, boundscheck=False)
def decoder_backward(G, W, rows, K, vals, order, ptr, gW, gvals, lo, hi):
    """Latents ``lo <= j < hi``: ``gW[j] = sum_e vals[e] G[row(e)]`` and, for each of their
    entries, ``gvals[e] = G[row(e)] . W[j]``. ``row(e)`` is ``rows[e]`` (flat entries) or
    ``e // K`` (``K > 0``: ``K`` entries per row). Every row of ``gW`` in the range is
    written (0 for a latent without entries), so it may come uninitialised."""
    d = G.shape[1]
    for j in range(lo, hi):
        acc = gW[j]
        for c in range(d):
            acc[c] = 0.0
        w = W[j]
        for p in range(ptr[j], ptr[j + 1]):
            e = order[p]
            r = e // K if K > 0 else rows[e]
            g = G[r]
            a = vals[e]
            s = np.float32(0.0)
            for c in range(d):
                s += g[c] * w[c]
                acc[c] += a * g[c]
            gvals[e] = s


@numba.njit(cache=True, nogil=True, fastmath=_FM, boundscheck=False)
def encoder_backward(U, rows, K, g, rowmod, order, ptr, gW, per, lo, hi):
    """Latents ``lo <= j < hi``: ``gW[j] = sum_e g[e] U[row(e)]`` and
    ``per[rowmod[row(e)], j] = sum_e g[e]`` (the bias gradients, per pre-bias row). Every row of ``gW``
    in the range is written; ``per`` comes zeroed."""
    d = U.shape[1]
    for j in range(lo, hi):
        acc = gW[j]
        for c in range(d):
            acc[c] = 0.0
        for p in range(ptr[j], ptr[j + 1]):
            e = order[p]
            a = g[e]
            if a == 0.0:
                continue
            r = e // K if K > 0 else rows[e]
            per[rowmod[r], j] += a
            u = U[r]
            for c in range(d):
                acc[c] += a * u[c]



@numba.njit(cache=True, nogil=True, fastmath=_FM, boundscheck=False)
def project_rows(W, G, lo, hi):
    """Rows ``lo <= i < hi``: ``G[i] -= (G[i] . W[i]) W[i]`` (the gradient's component along
    the unit-norm atom ``W[i]`` removed; in place)."""
    d = W.shape[1]
    for i in range(lo, hi):
        w = W[i]
        g = G[i]
        s = np.float32(0.0)
        for c in range(d):
            s += g[c] * w[c]
        if s != 0.0:
            for c in range(d):
                g[c] -= s * w[c]


@numba.njit(cache=True, nogil=True, fastmath=_FM, boundscheck=False)
def renorm_rows(W, lo, hi):
    """Rows ``lo <= i < hi``: ``W[i] /= max(||W[i]||, 1e-8)`` (in place)."""
    d = W.shape[1]
    for i in range(lo, hi):
        w = W[i]
        s = np.float32(0.0)
        for c in range(d):
            s += w[c] * w[c]
        nrm = max(np.sqrt(s), np.float32(1e-8))
        for c in range(d):
            w[c] = w[c] / nrm
