"""The compiled row scan behind :func:`mmsae.models.sparse.topk_rows` (numba, CPU).

Kept in its own module, imported on first use: numba compiles the kernel once and caches
it on disk (``cache=True`` works for module-level functions only), so later processes load
it in milliseconds instead of compiling it again.

``scan_rows(pre, t, k, out_v, out_i)``: for each row ``r`` of the float32 matrix ``pre``,
given a lower bound ``t[r]`` of the row's k-th largest entry, write the k largest entries
and their column indices into ``out_v[r]``, ``out_i[r]`` (unsorted; ties at the k-th value go
to the lowest indices). A row with fewer than k entries ``>= t[r]`` (only possible with NaN)
gets ``out_i[r, 0] = -1`` and is left to the caller.
"""

from __future__ import annotations

import numba
import numpy as np

__all__ = ["scan_rows"]


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
