"""The compiled (numba, CPU) kernels behind :mod:`mmsae.models.sparse`,
:func:`mmsae.models.losses.group_l21` and the decoder hooks of
:class:`~mmsae.models.topk.TopKSAE`.

numba compiles each kernel on its first call and caches it on disk (``cache=True``, which
works for module-level functions only), so later processes load it in milliseconds instead
of compiling it again. Every kernel releases the GIL (``nogil``), so the caller can split
its work over threads.

* ``scan_rows(pre, cmax, kc, k, masked, ...)``: the row top-k of
  :func:`~mmsae.models.sparse.topk_rows` from the chunk maxima ``cmax`` (their ``kc``-th
  largest bounds the candidates), scanning only the chunks that can hold a candidate, with
  the MGSAE mask applied to the candidates when ``masked``.
* ``entries_by_latent(idx, m)``: the entries (flat positions in ``idx``) grouped by latent,
  CSR style: ``order[ptr[j]:ptr[j + 1]]`` are the entries of latent ``j``, in entry order (a
  stable counting sort, ``O(N + m)``).
* ``decoder_backward(...)`` and ``encoder_backward(...)``: the backward of a K-sparse decode
  (``u_hat[r] = sum_e vals[e] W[idx[e]]`` over row ``r``'s entries) and of the K selected
  encoder values, latent by latent over that grouping. Each weight-gradient row is summed
  in cache and written once (no zero fill and no scattered read-modify-write of the
  ``(m, d)`` gradient); the rows of the upstream gradient are what is gathered; and the
  result does not depend on how the latent range is split over threads (each latent's sum
  runs in entry order).
* ``match_slots(i_x, i_y, match_x, y_only)``: for the K-sparse codes of the two members of
  each pair, where each x slot's latent sits among the y slots, and which y slots have no x
  partner (the matching of :func:`mmsae.models.losses.group_l21`).
* ``project_rows(W, G, lo, hi)`` and ``renorm_rows(W, lo, hi)``: the decoder-norm hooks
  (gradient projection, renormalisation), one row at a time while it is in cache.
"""

from __future__ import annotations

import numba
import numpy as np

__all__ = ["scan_rows", "entries_by_latent", "decoder_backward", "encoder_backward", "project_rows",
           "renorm_rows", "match_slots"]

#: fast-math flags for the dot products and sums (reassociation lets them vectorise); no
#: ``nnan``/``ninf``, so NaN and infinity propagate as in torch
_FM = {"reassoc", "contract", "nsz", "arcp"}


_M32 = np.uint64(0xFFFFFFFF)


@numba.njit(cache=True, nogil=True, inline="always")
def _mix32(h):
    """murmur3's 32-bit finaliser (as :func:`mmsae.models.sparse._mix32`), on uint64."""
    h = h ^ (h >> np.uint64(16))
    h = (h * np.uint64(0x85EBCA6B)) & _M32
    h = h ^ (h >> np.uint64(13))
    h = (h * np.uint64(0xC2B2AE35)) & _M32
    return h ^ (h >> np.uint64(16))


@numba.njit(cache=True, nogil=True)
def _kth_largest(a, n, q):
    """The ``q``-th largest (1-based) of ``a[:n]`` (quickselect; reorders ``a[:n]``)."""
    target = n - q
    lo, hi = 0, n - 1
    while lo < hi:
        mid = (lo + hi) >> 1
        if a[mid] < a[lo]:
            a[mid], a[lo] = a[lo], a[mid]
        if a[hi] < a[lo]:
            a[hi], a[lo] = a[lo], a[hi]
        if a[mid] < a[hi]:
            a[mid], a[hi] = a[hi], a[mid]
        p = a[hi]  # median of three
        i = lo
        for j in range(lo, hi):
            if a[j] < p:
                a[i], a[j] = a[j], a[i]
                i += 1
        a[i], a[hi] = a[hi], a[i]
        if i == target:
            return a[i]
        if i < target:
            lo = i + 1
        else:
            hi = i - 1
    return a[target]


@numba.njit(cache=True, nogil=True, boundscheck=False)
def scan_rows(pre, cmax, kc, k, masked, salt, thresh, per_pair, pairs, out_v, out_i):
    """Top ``k`` of each row of ``pre`` (``(R, m)`` float32) from the candidates ``>= t[r]``.

    ``cmax[r, c]`` is the maximum of chunk ``c`` (``m / n_chunks`` consecutive entries) of row
    ``r``; their ``kc``-th largest ``t`` (``kc <= n_chunks``; ``kc = k`` unmasked) is a lower
    bound of the row's ``kc``-th largest entry (the ``kc`` largest chunk maxima are ``kc``
    distinct entries), so the candidates are the entries ``>= t`` and only chunks with
    ``cmax >= t`` are scanned. With ``masked``, candidates
    are kept only where the index-form mask keeps them (``keep`` of
    :class:`mmsae.models.sparse.HashMask` with ``salt``, ``thresh = rate * 2^32``,
    ``per_pair`` and pair ``pairs[r]``), and the top ``k`` are taken among the kept ones: the
    exact masked top-k whenever at least ``k`` candidates are kept. Results are unsorted; ties
    at the k-th value go to the lowest indices. A row with fewer than ``k`` (kept) candidates
    (NaN in the row, or the mask dropping too many) gets ``out_i[r, 0] = -1``, for the caller."""
    R, m = pre.shape
    nc = cmax.shape[1]
    size = m // nc
    buf_v = np.empty(m, pre.dtype)
    buf_i = np.empty(m, np.int64)
    work = np.empty(max(m, nc), pre.dtype)
    salt = np.uint64(salt) & _M32
    hfin = (salt * np.uint64(0x7FEB352D) + np.uint64(0x165667B1)) & _M32
    hsalt = (salt ^ np.uint64(0x27D4EB2F)) & _M32
    for r in range(R):
        row = pre[r]
        nan = False
        for c in range(nc):
            v = cmax[r, c]
            work[c] = v
            nan |= v != v
        if nan:  # NaN in the row: no bound holds
            out_i[r, 0] = -1
            continue
        tr = _kth_largest(work, nc, kc)
        n = 0
        for c in range(nc):
            if cmax[r, c] >= tr:
                for j in range(c * size, (c + 1) * size):
                    v = row[j]
                    if v >= tr:
                        buf_v[n] = v
                        buf_i[n] = j
                        n += 1
        if masked:
            hrow = np.uint64(0)
            if per_pair:
                hrow = _mix32(((np.uint64(pairs[r]) & _M32) * np.uint64(0x85EBCA77) + hsalt) & _M32)
            w = 0
            for e in range(n):
                h = _mix32((np.uint64(buf_i[e]) * np.uint64(0x9E3779B1) + salt) & _M32) ^ hrow
                if _mix32(h ^ hfin) >= thresh:
                    buf_v[w] = buf_v[e]
                    buf_i[w] = buf_i[e]
                    w += 1
            n = w
        if n < k:
            out_i[r, 0] = -1
            continue
        for e in range(n):
            work[e] = buf_v[e]
        kth = _kth_largest(work, n, k)
        w = 0
        for e in range(n):
            if buf_v[e] > kth:
                out_v[r, w] = buf_v[e]
                out_i[r, w] = buf_i[e]
                w += 1
        for e in range(n):  # ties at the k-th value: the lowest latent indices
            if w >= k:
                break
            if buf_v[e] == kth:
                out_v[r, w] = kth
                out_i[r, w] = buf_i[e]
                w += 1


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


@numba.njit(cache=True, nogil=True, boundscheck=False)
def match_slots(i_x, i_y, match_x, y_only):
    """Per pair ``b``: ``match_x[b, s]`` = the y slot holding latent ``i_x[b, s]`` (or -1), and
    ``y_only[b, t]`` = no x slot holds latent ``i_y[b, t]`` (latents unique within a row)."""
    B, Kx = i_x.shape
    Ky = i_y.shape[1]
    for b in range(B):
        for t in range(Ky):
            y_only[b, t] = True
        for s in range(Kx):
            j = i_x[b, s]
            hit = -1
            for t in range(Ky):
                if i_y[b, t] == j:
                    hit = t
            match_x[b, s] = hit
            if hit >= 0:
                y_only[b, hit] = False
