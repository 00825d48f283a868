"""The compiled (numba, CPU) kernels behind :mod:`mmsae.engine.sparse`,
:func:`mmsae.models.losses.group_l21` and the decoder hooks of
:class:`~mmsae.models.topk.TopKSAE`.

numba compiles each kernel on its first call and caches it on disk (``cache=True``, which
works for module-level functions only), so later processes load it in milliseconds instead
of compiling it again. Every kernel releases the GIL (``nogil``), so the caller can split
its work over threads.

* ``scan_rows(pre, b, kc, k, masked, ...)``: the row top-k of
  :func:`~mmsae.engine.sparse.topk_rows` (of ``pre + b``, the encoder bias added on the
  way), from the maxima of short chunks (a value reached by ``kc`` of them bounds the
  candidates), scanning only the chunks that can hold a candidate, with the MGSAE mask
  applied to the candidates when ``masked``.
* ``entries_by_latent(idx, m)``: the entries (flat positions in ``idx``) grouped by latent,
  CSR style: ``order[ptr[j]:ptr[j + 1]]`` are the entries of latent ``j``, in entry order (a
  stable counting sort, ``O(N + m)``).
* ``decode_rows(W, vals, idx, out, ...)``: the K-sparse decode of large batches, a block of
  rows at a time, latent by latent, so an atom used by several rows of a block is read once.
* ``decoder_backward(...)`` and ``encoder_backward(...)``: the backward of a K-sparse decode
  (``u_hat[r] = sum_e vals[e] W[idx[e]]`` over row ``r``'s entries) and of the K selected
  encoder values, latent by latent over that grouping. Each weight-gradient row is summed
  in cache and written once (no zero fill and no scattered read-modify-write of the
  ``(m, d)`` gradient); the rows of the upstream gradient are what is gathered; and the
  result does not depend on how the latent range is split over threads (each latent's sum
  runs in entry order).
* ``group_l21_rows(v_x, i_x, v_y, i_y, ...)``: the l2,1 penalty of
  :func:`mmsae.models.losses.group_l21` on the K-sparse codes of the two members of each
  pair and its derivatives in one pass: each x slot's latent matched among the y slots by
  direct comparison, the group norms, the y slots with no x partner.
* ``project_rows(W, G, lo, hi)`` and ``renorm_rows(W, lo, hi)``: the decoder-norm hooks
  (gradient projection, renormalisation), one row at a time while it is in cache.
* ``adam_rows(P, G, M, V, ...)``: torch's Adam update of a matrix, row by row, with (``unit``)
  the two decoder-norm hooks in the same pass (:class:`mmsae.train.optim.RowAdam`).
* ``decoder_value_grads(...)`` and ``adam_entries(...)``: the deferred weight gradients of
  :mod:`mmsae.engine.deferred`: the backward of a K-sparse decode for its values alone, and the
  Adam update of a matrix whose gradient rows are summed from their entries in the same pass
  (eight entries per pass over the row buffer; each row's first entry written in the previous
  row's update loop; an encoder's pre-bias gradient summed from each row while it is in cache).
* ``decode_errors(...)``: a K-sparse decode, its pre-bias, its per-row squared error and the
  product of the error with each of the row's atoms in one pass per row
  (:class:`~mmsae.engine.sparse.SparseDecodeErrors`).
* ``prefix_errors(...)`` and ``prefix_suffix_sums(...)``: Matryoshka's nested-prefix decodes of
  flat entries with their squared errors in one pass per row, and the backward's suffix sums over
  the prefix groups (:class:`~mmsae.engine.sparse.PrefixDecodeErrors`; BatchTopK uses it with one
  group).
* ``flat_topn(flat, n, bias, ...)``: BatchTopK's ``n`` largest entries of a whole matrix (chunk
  maxima, a bisection bound, the candidate chunks, a quickselect), with the encoder bias and the
  ReLU added in place in the same pass.
"""

from __future__ import annotations

import numba
import numpy as np
from llvmlite import ir as _llvm_ir
from numba.core import cgutils as _cgutils
from numba.core import types as _types
from numba.extending import intrinsic as _intrinsic

try:  # count trailing zeros as one instruction (numba's intrinsic, present since numba 0.47)
    from numba.cpython.unsafe.numbers import trailing_zeros
except ImportError:  # pragma: no cover - a numba without it: a loop
    @numba.njit(cache=True, nogil=True, inline="always")
    def trailing_zeros(x):
        n = 0
        while not (x >> np.uint32(n)) & np.uint32(1):
            n += 1
        return n

__all__ = ["scan_rows", "entries_by_latent", "decode_rows", "decoder_backward", "encoder_backward", "project_rows",
           "renorm_rows", "adam_rows", "adam_entries", "decoder_value_grads", "group_l21_rows"]

#: fast-math flags for the dot products and sums (reassociation lets them vectorise); no
#: ``nnan``/``ninf``, so NaN and infinity propagate as in torch
_FM = {"reassoc", "contract", "nsz", "arcp"}


_M32 = np.uint64(0xFFFFFFFF)


@numba.njit(cache=True, nogil=True, inline="always")
def _mix32(h):
    """murmur3's 32-bit finaliser (as :func:`mmsae.engine.sparse._mix32`), on uint64."""
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


#: entries per chunk of a row in :func:`scan_rows` (fewer where a row has too few chunks for
#: the candidates asked; the last chunk may be shorter)
CHUNK = 16

#: fast-math flags of the chunk maxima (``nnan`` lets the max reduction vectorise; no ``ninf``:
#: each maximum starts from -inf): the rows holding NaN or infinity are found beforehand, from
#: the bits or the biased sum, and answered by the caller instead
_FMAX = {"nnan", "reassoc", "nsz", "arcp", "contract"}

_ABS = np.int32(0x7FFFFFFF)
_INF_BITS = np.int32(0x7F800000)


@_intrinsic
def _prefetch_l2(typingctx, arr, i):
    """Ask for the cache line of ``arr[i]`` (a 1-D array) to be loaded into the L2 cache
    (``llvm.prefetch``, locality 1: ``prefetcht2`` on x86), without waiting for it."""
    if not (isinstance(arr, _types.Array) and arr.ndim == 1 and isinstance(i, _types.Integer)):
        return None

    def codegen(context, builder, signature, args):
        ary = context.make_array(signature.args[0])(context, builder, args[0])
        i8p = _llvm_ir.IntType(8).as_pointer()
        i32 = _llvm_ir.IntType(32)
        addr = builder.bitcast(builder.gep(ary.data, [args[1]]), i8p)
        fnty = _llvm_ir.FunctionType(_llvm_ir.VoidType(), [i8p, i32, i32, i32])
        fn = _cgutils.get_or_insert_function(builder.module, fnty, "llvm.prefetch.p0i8")
        builder.call(fn, [addr, _llvm_ir.Constant(i32, 0), _llvm_ir.Constant(i32, 1), _llvm_ir.Constant(i32, 1)])
        return context.get_dummy_value()

    return _types.none(arr, i), codegen


@numba.njit(cache=True, nogil=True, boundscheck=False, fastmath=_FMAX)
def _chunk_maxima(row, cm, size, nxt):
    """``cm[c]``: the maximum of chunk ``c`` (``size`` entries, the last one possibly fewer)
    of ``row``, a row without NaN or infinity. (Fixed-length inner loops over the row alone:
    they vectorise; a loop to ``min(m, ...)``, or one that adds the bias, does not.)

    ``nxt``: the next row to scan (or an empty array), whose cache lines are prefetched into
    L2 along the way, one per 16 entries: its load from memory then overlaps this row's work
    instead of following it (the scan of ``8192 x 8192`` pre-activations on one thread took
    about 15% less time here)."""
    m = row.shape[0]
    full = m // size
    pf = nxt.shape[0] >= m
    if size == 16:
        for c in range(full):
            base = c * 16
            if pf:
                _prefetch_l2(nxt, base)
            mx = np.float32(-np.inf)
            for j in range(16):
                mx = max(mx, row[base + j])
            cm[c] = mx
    else:
        for c in range(full):
            base = c * size
            if pf:
                _prefetch_l2(nxt, base)
            mx = np.float32(-np.inf)
            for j in range(size):
                mx = max(mx, row[base + j])
            cm[c] = mx
    if full < cm.shape[0]:
        mx = np.float32(-np.inf)
        for j in range(full * size, m):
            mx = max(mx, row[j])
        cm[full] = mx


@numba.njit(cache=True, nogil=True, boundscheck=False)
def _not_finite(bits):
    """Whether the float32 row whose bits are ``bits`` holds NaN or infinity (an integer
    maximum of the bits without the sign; one vectorised pass)."""
    top = np.int32(0)
    for j in range(bits.shape[0]):
        x = np.int32(bits[j] & _ABS)
        top = x if x > top else top
    return top >= _INF_BITS


@numba.njit(cache=True, nogil=True, boundscheck=False)
def _add_not_finite(row, b, out):
    """``out = row + b``; whether the sum holds NaN or infinity (one vectorised pass)."""
    bad = False
    for j in range(row.shape[0]):
        t = row[j] + b[j]
        out[j] = t
        bad |= not (t - t == np.float32(0))
    return bad


@numba.njit(cache=True, nogil=True, boundscheck=False)
def _add_relu_not_finite(row, b):
    """``row = ReLU(row + b)`` in place (NaN kept); whether the sum holds NaN or infinity (one vectorised pass)."""
    bad = False
    zero = np.float32(0.0)
    for j in range(row.shape[0]):
        t = row[j] + b[j]
        bad |= not (t - t == zero)
        row[j] = zero if t < zero else t
    return bad


@numba.njit(cache=True, nogil=True, boundscheck=False)
def _count_bound(cm, q):
    """A value ``t`` with at least ``q`` of the (finite) ``cm`` at or above it, found by
    bisection on the counts between their minimum and maximum (a few vectorised passes over
    ``cm`` instead of a quickselect's unpredictable branches); the closer to the ``q``-th
    largest, the fewer chunks are scanned."""
    lo = cm[0]
    hi = cm[0]
    for c in range(cm.shape[0]):
        lo = min(lo, cm[c])
        hi = max(hi, cm[c])
    for _ in range(7):
        mid = lo + (hi - lo) * np.float32(0.5)
        cnt = 0
        for c in range(cm.shape[0]):
            cnt += cm[c] >= mid
        if cnt >= q:
            lo = mid
        else:
            hi = mid
    return lo


@numba.njit(cache=True, nogil=True, boundscheck=False)
def _top_of_candidates(buf_v, buf_i, n, k, work, out_v, out_i):
    """The ``k`` largest of the ``n`` candidates ``buf_v[:n]`` (indices ``buf_i``, in increasing order) into
    ``out_v[:k]``/``out_i[:k]``: a quickselect on a copy (``work``) for the ``k``-th value, then every candidate
    above it and, for the rest, those equal to it with the lowest indices."""
    for e in range(n):
        work[e] = buf_v[e]
    kth = _kth_largest(work, n, k)
    w = 0
    for e in range(n):
        if buf_v[e] > kth:
            out_v[w] = buf_v[e]
            out_i[w] = buf_i[e]
            w += 1
    for e in range(n):  # ties at the k-th value: the lowest indices
        if w >= k:
            break
        if buf_v[e] == kth:
            out_v[w] = kth
            out_i[w] = buf_i[e]
            w += 1


@numba.njit(cache=True, nogil=True, boundscheck=False)
def scan_rows(pre, b, size, kc, k, masked, salt, thresh, per_pair, pairs, out_v, out_i, lo, hi):
    """Rows ``lo <= r < hi``: the top ``k`` of each row of ``pre + b`` (``pre``: ``(R, m)``
    float32; ``b``: ``(m,)``, or empty for no bias), found among the candidates ``>= t[r]``.

    Each row is cut into chunks of ``size`` entries and their maxima taken in one pass;
    ``t`` is a value with at least ``kc`` chunk maxima at or above it (``kc <= n_chunks``;
    ``kc = k`` unmasked), so at least ``kc`` distinct entries are candidates, and only the
    chunks whose maximum reaches ``t`` are scanned. With ``masked``, candidates are kept only
    where the index-form mask keeps them (``keep`` of :class:`mmsae.engine.sparse.HashMask`
    with ``salt``, ``thresh = rate * 2^32``, ``per_pair`` and pair ``pairs[r]``), and the top
    ``k`` are taken among the kept ones. Every kept entry outside the candidates is below
    ``t``, so this is the exact (masked) top-k whenever at least ``k`` candidates are kept.
    Results are unsorted; ties at the k-th value go to the lowest indices. A row with fewer
    than ``k`` kept candidates (the mask dropping too many), or holding NaN or infinity (in
    ``pre`` or ``b``), gets ``out_i[r, 0] = -1``, for the caller. (The chunk maxima and the
    bound are separate functions: numba's own inlining would drop their fast-math flags.)"""
    m = pre.shape[1]
    nc = (m + size - 1) // size
    hasb = b.shape[0] > 0
    bits = pre.view(np.int32)
    cm = np.empty(nc, pre.dtype)
    chunks = np.empty(nc, np.int64)
    biased = np.empty(m if hasb else 0, pre.dtype)
    buf_v = np.empty(m + size, pre.dtype)
    buf_i = np.empty(m + size, np.int64)
    work = np.empty(m + size, pre.dtype)
    salt = np.uint64(salt) & _M32
    hfin = (salt * np.uint64(0x7FEB352D) + np.uint64(0x165667B1)) & _M32
    hsalt = (salt ^ np.uint64(0x27D4EB2F)) & _M32
    for r in range(lo, hi):
        if hasb:  # the row plus the bias, once, into a buffer that stays in cache
            bad = _add_not_finite(pre[r], b, biased)
            row = biased
        else:
            bad = _not_finite(bits[r])
            row = pre[r]
        if bad:
            out_i[r, 0] = -1
            continue
        _chunk_maxima(row, cm, size, pre[r + 1] if r + 1 < hi else pre[r, :0])
        tr = _count_bound(cm, kc)
        nl = 0
        for c in range(nc):  # the chunks to scan, listed without a branch
            chunks[nl] = c
            nl += cm[c] >= tr
        n = 0
        for q in range(nl):  # the candidates: a bit mask of each chunk, then its set bits
            c0 = chunks[q] * size
            span = min(m, c0 + size) - c0
            msk = np.uint32(0)
            for j in range(span):
                msk |= np.uint32(row[c0 + j] >= tr) << np.uint32(j)
            while msk:
                j = c0 + trailing_zeros(msk)
                buf_v[n] = row[j]
                buf_i[n] = j
                n += 1
                msk &= msk - np.uint32(1)
        if masked:
            hrow = np.uint64(0)
            if per_pair:
                hrow = _mix32(((np.uint64(pairs[r]) & _M32) * np.uint64(0x85EBCA77) + hsalt) & _M32)
            w = 0
            for e in range(n):
                h = _mix32((np.uint64(buf_i[e]) * np.uint64(0x9E3779B1) + salt) & _M32) ^ hrow
                buf_v[w] = buf_v[e]
                buf_i[w] = buf_i[e]
                w += _mix32(h ^ hfin) >= thresh
            n = w
        if n < k:
            out_i[r, 0] = -1
            continue
        _top_of_candidates(buf_v, buf_i, n, k, work, out_v[r], out_i[r])


@numba.njit(cache=True, nogil=True, boundscheck=False)
def flat_topn(flat, n, bias, out_v, out_i):
    """The ``n`` largest entries of the 1-D ``flat`` (``len(flat)`` a multiple of :data:`CHUNK` and at least
    ``CHUNK * n``) into ``out_v``/``out_i`` (unsorted; ties at the ``n``-th value go to the lowest indices); returns
    False, leaving the outputs, where ``flat`` holds NaN (the caller answers with ``torch.topk``). As
    :func:`scan_rows` does for a row: the maxima of chunks of :data:`CHUNK` entries (one vectorised pass), a value
    ``t`` reached by ``n`` of them (vectorised bisection counts; a lower bound of the ``n``-th largest entry), the
    entries ``>= t`` of the chunks whose maximum reaches ``t`` as candidates (a bit mask per chunk), and a
    quickselect among them.

    With ``bias`` (not empty; ``flat`` the rows of an ``(R, m)`` matrix, ``m = len(bias)`` a multiple of
    :data:`CHUNK`), ``flat`` is first made ``ReLU(flat + bias)`` in place, row by row in the same pass as the chunk
    maxima (NaN stays NaN, as torch's ``relu``)."""
    N = flat.shape[0]
    size = CHUNK
    nc = N // size
    cm = np.empty(nc, flat.dtype)
    m = bias.shape[0]
    if m > 0:
        bad = False
        nr = N // m
        for r in range(nr):
            row = flat[r * m:(r + 1) * m]
            bad |= _add_relu_not_finite(row, bias)
            _chunk_maxima(row, cm[r * (m // size):(r + 1) * (m // size)], size,
                          flat[(r + 1) * m:(r + 2) * m] if r + 1 < nr else flat[:0])
        if bad:
            for j in range(N):  # infinity is fine; NaN is not
                if flat[j] != flat[j]:
                    return False
    else:
        if _not_finite(flat.view(np.int32)):
            for j in range(N):  # infinity is fine; NaN is not
                if flat[j] != flat[j]:
                    return False
        _chunk_maxima(flat, cm, size, flat[:0])
    t = _count_bound(cm, n)
    chunks = np.empty(nc, np.int64)
    nl = 0
    for c in range(nc):  # the chunks to scan, listed without a branch
        chunks[nl] = c
        nl += cm[c] >= t
    buf_v = np.empty(nl * size, flat.dtype)
    buf_i = np.empty(nl * size, np.int64)
    cnt = 0
    for q in range(nl):  # scattered over the vector: each chunk's line asked for 16 chunks ahead
        if q + 16 < nl:
            _prefetch_l2(flat, chunks[q + 16] * size)
        base = chunks[q] * size
        msk = np.uint32(0)
        for j in range(size):
            msk |= np.uint32(flat[base + j] >= t) << np.uint32(j)
        while msk:
            j = base + trailing_zeros(msk)
            buf_v[cnt] = flat[j]
            buf_i[cnt] = j
            cnt += 1
            msk &= msk - np.uint32(1)
    _top_of_candidates(buf_v, buf_i, cnt, n, np.empty(cnt, flat.dtype), out_v, out_i)
    return True


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


#: rows per block of :func:`decode_rows`: their outputs (``512 x d`` floats, 1 MiB at d = 512)
#: stay in the L2 cache while the block's atoms are added in
DECODE_BLOCK = 512


@numba.njit(cache=True, nogil=True, fastmath=_FM, boundscheck=False)
def decode_rows(W, vals, idx, out, lo, hi):
    """Rows ``lo <= r < hi`` of the K-sparse decode ``out[r] = sum_k vals[r, k] W[idx[r, k]]``
    (``idx``, ``vals``: ``(R, K)``), a block of :data:`DECODE_BLOCK` rows at a time, latent by
    latent: the block's entries are grouped by latent (a counting sort), and each atom used in
    the block is read once and added into all of its rows, whose outputs stay in cache. A
    row-by-row gather (``embedding_bag``) reads an atom once per entry; here an atom used by
    several rows of a block is read once. Each row's sum runs in latent order."""
    K = idx.shape[1]
    m, d = W.shape
    cnt = np.empty(m + 1, np.int64)
    ent = np.empty(DECODE_BLOCK * K, np.int64)
    for r0 in range(lo, hi, DECODE_BLOCK):
        r1 = min(hi, r0 + DECODE_BLOCK)
        for j in range(m + 1):
            cnt[j] = 0
        for r in range(r0, r1):
            for k in range(K):
                cnt[idx[r, k] + 1] += 1
        for j in range(m):
            cnt[j + 1] += cnt[j]
        for r in range(r0, r1):  # entries by latent: latent j's are ent[cnt[j] : end of j]
            for k in range(K):
                j = idx[r, k]
                ent[cnt[j]] = (r - r0) * K + k
                cnt[j] += 1
        for r in range(r0, r1):
            o = out[r]
            for c in range(d):
                o[c] = 0.0
        start = 0
        for j in range(m):  # cnt[j] is now the end of latent j's entries
            end = cnt[j]
            if end > start:
                w = W[j]
                for e in range(start, end):
                    r = r0 + ent[e] // K
                    v = vals[r, ent[e] % K]
                    o = out[r]
                    for c in range(d):
                        o[c] += v * w[c]
            start = end


@numba.njit(cache=True, nogil=True, fastmath=_FM, boundscheck=False)
def _add_atoms(o, W, vals, cols, q0, q1):
    """``o += sum_q vals[q] W[cols[q]]``, ``q0 <= q < q1``, added one after another in that order, eight atoms per
    pass over ``o`` (each element's chain of multiply-adds in a register, as in :func:`_add_entries`)."""
    d = o.shape[0]
    q = q0
    while q + 8 <= q1:
        b0, b1, b2, b3 = vals[q], vals[q + 1], vals[q + 2], vals[q + 3]
        b4, b5, b6, b7 = vals[q + 4], vals[q + 5], vals[q + 6], vals[q + 7]
        t0, t1, t2, t3 = W[cols[q]], W[cols[q + 1]], W[cols[q + 2]], W[cols[q + 3]]
        t4, t5, t6, t7 = W[cols[q + 4]], W[cols[q + 5]], W[cols[q + 6]], W[cols[q + 7]]
        for c in range(d):
            acc = o[c]
            acc = acc + b0 * t0[c]
            acc = acc + b1 * t1[c]
            acc = acc + b2 * t2[c]
            acc = acc + b3 * t3[c]
            acc = acc + b4 * t4[c]
            acc = acc + b5 * t5[c]
            acc = acc + b6 * t6[c]
            acc = acc + b7 * t7[c]
            o[c] = acc
        q += 8
    while q < q1:
        a = vals[q]
        w = W[cols[q]]
        for c in range(d):
            o[c] += a * w[c]
        q += 1


@numba.njit(cache=True, nogil=True, fastmath=_FM, boundscheck=False)
def decode_errors(W, vals, idx, Bp, rowmod, U, out, E, se, dots, lo, hi):
    """Rows ``lo <= r < hi`` of a K-sparse decode and its squared error against ``U`` in one pass, with what the
    backward of the error needs from the atoms while they are in cache: ``out[r] = sum_k vals[r, k] W[idx[r, k]]``
    (plus the pre-bias row ``Bp[rowmod[r]]`` where ``rowmod`` is not empty and ``rowmod[r] >= 0``), ``E[r] = out[r]
    - U[r]``, ``se[r] = ||E[r]||^2`` and ``dots[r, k] = E[r] . W[idx[r, k]]`` (the gradient of ``se[r]`` with respect
    to ``vals[r, k]`` is ``2 dots[r, k]``). The atoms are added in slot order, eight per pass over the row."""
    K = idx.shape[1]
    d = W.shape[1]
    hasb = rowmod.shape[0] > 0
    for r in range(lo, hi):
        o = out[r]
        for c in range(d):
            o[c] = 0.0
        ix = idx[r]
        _add_atoms(o, W, vals[r], ix, 0, K)
        if hasb and rowmod[r] >= 0:
            b = Bp[rowmod[r]]
            for c in range(d):
                o[c] += b[c]
        u = U[r]
        e = E[r]
        s = np.float32(0.0)
        for c in range(d):
            t = o[c] - u[c]
            e[c] = t
            s += t * t
        se[r] = s
        for k in range(K):
            w = W[ix[k]]
            t = np.float32(0.0)
            for c in range(d):
                t += e[c] * w[c]
            dots[r, k] = t


@numba.njit(cache=True, nogil=True, fastmath=_FM, boundscheck=False)
def prefix_errors(W, vals, cols, group, offsets, n_groups, Bp, rowmod, U, E, per, last, lo, hi):
    """Rows ``lo <= r < hi`` of the nested-prefix (Matryoshka) decodes of flat entries and their squared errors, in
    one pass: row ``r``'s entries ``offsets[r] <= e < offsets[r + 1]`` (sorted so that ``group[e]``, the first
    prefix their latent belongs to, does not decrease) are added ``o += vals[e] W[cols[e]]`` group after group, and
    after group ``g``: ``E[g * R + r] = o + b - U[r]`` and ``per[g * R + r] = ||E[g * R + r]||^2`` (``b`` the
    pre-bias row ``Bp[rowmod[r]]``, or none where ``rowmod`` is empty). ``last[r]``: the full reconstruction
    ``o + b``. The atoms are added in entry order, eight per pass over the row."""
    R = U.shape[0]
    d = W.shape[1]
    hasb = rowmod.shape[0] > 0
    for r in range(lo, hi):
        o = last[r]
        for c in range(d):
            o[c] = 0.0
        b = Bp[rowmod[r]] if hasb else o[:0]
        u = U[r]
        q = offsets[r]
        q_end = offsets[r + 1]
        for g in range(n_groups):
            q1 = q
            while q1 < q_end and group[q1] == g:
                q1 += 1
            _add_atoms(o, W, vals, cols, q, q1)
            q = q1
            e = E[g * R + r]
            s = np.float32(0.0)
            if hasb:
                for c in range(d):
                    t = (o[c] + b[c]) - u[c]
                    e[c] = t
                    s += t * t
            else:
                for c in range(d):
                    t = o[c] - u[c]
                    e[c] = t
                    s += t * t
            per[g * R + r] = s
        if hasb:
            for c in range(d):
                o[c] += b[c]


@numba.njit(cache=True, nogil=True, fastmath=_FM, boundscheck=False)
def prefix_suffix_sums(E, gper, n_groups, lo, hi):
    """Rows ``lo <= r < hi``, in place: ``E[g * R + r] <- sum_{j >= g} 2 gper[j * R + r] E[j * R + r]``, the
    gradient reaching the group-``g`` entries of row ``r`` from every prefix that contains them (``R =
    len(E) / n_groups``)."""
    R = E.shape[0] // n_groups
    d = E.shape[1]
    for r in range(lo, hi):
        acc = E[(n_groups - 1) * R + r]
        a = np.float32(2.0) * gper[(n_groups - 1) * R + r]
        for c in range(d):
            acc[c] = a * acc[c]
        for g in range(n_groups - 2, -1, -1):
            e = E[g * R + r]
            a = np.float32(2.0) * gper[g * R + r]
            for c in range(d):
                e[c] = acc[c] + a * e[c]
            acc = e


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


@_intrinsic
def _sqrt_f32(typingctx, x):
    """``llvm.sqrt.f32``: numba's ``math.sqrt`` calls libm's ``sqrtf``, which keeps a loop from
    vectorising; the intrinsic becomes one ``vsqrtps`` per vector."""
    if x != _types.float32:
        return None

    def codegen(context, builder, signature, args):
        fnty = _llvm_ir.FunctionType(_llvm_ir.FloatType(), [_llvm_ir.FloatType()])
        return builder.call(_cgutils.get_or_insert_function(builder.module, fnty, "llvm.sqrt.f32"), args)

    return _types.float32(_types.float32), codegen


# error_model="numpy": a float division by zero gives inf/NaN as in torch instead of raising,
# so the divisions carry no zero test and the loops vectorise
@numba.njit(cache=True, nogil=True, fastmath=_FM, boundscheck=False, error_model="numpy")
def adam_rows(P, G, M, V, step_size, beta1, beta2, eps, bc2_sqrt, unit, lo, hi):
    """Rows ``lo <= i < hi`` of one Adam step (``torch.optim.Adam`` without weight decay, in
    place; ``M``, ``V`` the first and second moments; ``step_size = lr / (1 - beta1^t)``,
    ``bc2_sqrt = sqrt(1 - beta2^t)``)::

        m = beta1 m + (1 - beta1) g;  v = beta2 v + (1 - beta2) g^2
        p -= step_size * m / (sqrt(v) / bc2_sqrt + eps)

    With ``unit`` (rows kept at unit norm: decoder atoms) the step uses the gradient minus its
    component along the row, ``g - (g . p) p`` (``G`` itself is left as it is), and the row
    is renormalised afterwards, ``p /= max(||p||, 1e-8)``: the decoder-norm hooks, with the
    row in cache, in the same pass as the update."""
    d = P.shape[1]
    one = np.float32(1.0)
    a1 = one - beta1
    a2 = one - beta2
    for i in range(lo, hi):
        p = P[i]
        g = G[i]
        m = M[i]
        v = V[i]
        s = np.float32(0.0)
        if unit:
            for c in range(d):
                s += g[c] * p[c]
        n2 = np.float32(0.0)
        for c in range(d):
            gc = g[c] - s * p[c]
            mc = beta1 * m[c] + a1 * gc
            vc = beta2 * v[c] + a2 * gc * gc
            m[c] = mc
            v[c] = vc
            pc = p[c] - step_size * mc / (_sqrt_f32(vc) / bc2_sqrt + eps)
            p[c] = pc
            n2 += pc * pc
        if unit:
            nrm = max(_sqrt_f32(n2), np.float32(1e-8))
            for c in range(d):
                p[c] = p[c] / nrm


@numba.njit(cache=True, nogil=True, fastmath=_FM, boundscheck=False)
def decoder_value_grads(G, W, rows, K, idx, gvals, lo, hi):
    """Entries ``lo <= e < hi`` of a K-sparse decode: ``gvals[e] = G[row(e)] . W[idx[e]]`` (the gradient of the
    values alone; the weight gradient is left to the optimiser, :mod:`mmsae.engine.deferred`). ``row(e)`` as in
    :func:`decoder_backward`."""
    d = G.shape[1]
    for e in range(lo, hi):
        r = e // K if K > 0 else rows[e]
        g = G[r]
        w = W[idx[e]]
        s = np.float32(0.0)
        for c in range(d):
            s += g[c] * w[c]
        gvals[e] = s


@numba.njit(cache=True, nogil=True, fastmath=_FM, boundscheck=False)
def _add_entries(g, S, rows, coef, order, q0, q1):
    """``g += sum_q coef[e] S[rows[e]]`` over the entries ``e = order[q]``, ``q0 <= q < q1``, added one after another
    in that order (the dense backward's sum, bit for bit), eight entries per pass over ``g`` where there are eight
    left: each element's chain of eight multiply-adds stays in a register, so ``g`` is loaded and stored once per
    eight entries instead of once per entry (about 1.7x faster at 32 entries a row; with AuxK's 256 entries per row,
    2.6x)."""
    d = g.shape[0]
    q = q0
    while q + 8 <= q1:
        e0, e1, e2, e3 = order[q], order[q + 1], order[q + 2], order[q + 3]
        e4, e5, e6, e7 = order[q + 4], order[q + 5], order[q + 6], order[q + 7]
        b0, b1, b2, b3 = coef[e0], coef[e1], coef[e2], coef[e3]
        b4, b5, b6, b7 = coef[e4], coef[e5], coef[e6], coef[e7]
        t0, t1, t2, t3 = S[rows[e0]], S[rows[e1]], S[rows[e2]], S[rows[e3]]
        t4, t5, t6, t7 = S[rows[e4]], S[rows[e5]], S[rows[e6]], S[rows[e7]]
        for c in range(d):
            acc = g[c]
            acc = acc + b0 * t0[c]
            acc = acc + b1 * t1[c]
            acc = acc + b2 * t2[c]
            acc = acc + b3 * t3[c]
            acc = acc + b4 * t4[c]
            acc = acc + b5 * t5[c]
            acc = acc + b6 * t6[c]
            acc = acc + b7 * t7[c]
            g[c] = acc
        q += 8
    while q < q1:
        e = order[q]
        a = coef[e]
        src = S[rows[e]]
        for c in range(d):
            g[c] += a * src[c]
        q += 1


@numba.njit(cache=True, nogil=True, fastmath=_FM, boundscheck=False)
def _prebias_entries(gpre, p, rows, coef, order, rowmod, q0, q1, base, cs):
    """``gpre[base + q] -= (sum of coef[e] over the entries of pre-bias row q) * p``, entries ``order[q0:q1]``
    (``cs``: a zeroed buffer of one float per pre-bias row, left zeroed)."""
    for q in range(q0, q1):
        e = order[q]
        r = rowmod[rows[e]]
        if r >= 0:
            cs[r] += coef[e]
    d = p.shape[0]
    for r in range(cs.shape[0]):
        a = cs[r]
        if a != 0:
            gp = gpre[base + r]
            for c in range(d):
                gp[c] -= a * p[c]
            cs[r] = 0.0


@numba.njit(cache=True, nogil=True, fastmath=_FM, boundscheck=False, error_model="numpy")
def adam_entries(P, M, V, S, rows, coef, order, ptr, step_size, beta1, beta2, eps, bc2_sqrt, unit, rowmod, gpre,
                 n_pre, part, lo, hi):
    """:func:`adam_rows` of a matrix whose gradient is given as entries (:mod:`mmsae.engine.deferred`): row ``i``'s
    gradient ``sum_e coef[e] S[rows[e]]`` over its entries ``order[ptr[i]:ptr[i + 1]]`` (in that order, as
    :func:`decoder_backward` and :func:`encoder_backward` sum it) is built in a row buffer and used at once, so
    the dense gradient is never written or read; a row without entries takes Adam's step with a zero gradient.

    With ``rowmod`` (not empty: the pre-bias row of each row of ``S``, -1 for none) the pre-bias gradient of an
    encoder, ``-sum_e coef[e] P[i]`` over each pre-bias row's entries (``P[i]`` before its update), is added into
    ``gpre[(i // part) * n_pre + q]``: one partial sum per block of ``part`` rows, so that the caller's sum of the
    blocks in order does not depend on how the rows were split over threads."""
    d = P.shape[1]
    if hi <= lo:
        return
    one = np.float32(1.0)
    a1 = one - beta1
    a2 = one - beta2
    g = np.empty(d, np.float32)  # this row's gradient
    gn = np.empty(d, np.float32)  # the next row's, begun in this row's update loop
    zrow = np.zeros(d, np.float32)
    pre = rowmod.shape[0] > 0
    cs = np.zeros(max(n_pre, 1), np.float32)
    q0, q1 = ptr[lo], ptr[lo + 1]
    a, src = np.float32(0.0), zrow
    if q1 > q0:
        a, src = coef[order[q0]], S[rows[order[q0]]]
    for c in range(d):
        g[c] = a * src[c]
    _add_entries(g, S, rows, coef, order, q0 + 1, q1)
    for i in range(lo, hi):
        p = P[i]
        if pre and ptr[i + 1] > ptr[i]:
            _prebias_entries(gpre, p, rows, coef, order, rowmod, ptr[i], ptr[i + 1], (i // part) * n_pre, cs)
        m = M[i]
        v = V[i]
        s = np.float32(0.0)
        if unit:
            for c in range(d):
                s += g[c] * p[c]
        # the next row's first entry is written in this row's update loop, whose square roots and divisions
        # leave room for it (no zero fill; the rest of its entries follow the loop)
        a, src, nq0, nq1 = np.float32(0.0), zrow, 0, 0
        if i + 1 < hi:
            nq0, nq1 = ptr[i + 1], ptr[i + 2]
            if nq1 > nq0:
                a, src = coef[order[nq0]], S[rows[order[nq0]]]
        n2 = np.float32(0.0)
        for c in range(d):
            gn[c] = a * src[c]
            gc = g[c] - s * p[c]
            mc = beta1 * m[c] + a1 * gc
            vc = beta2 * v[c] + a2 * gc * gc
            m[c] = mc
            v[c] = vc
            pc = p[c] - step_size * mc / (_sqrt_f32(vc) / bc2_sqrt + eps)
            p[c] = pc
            n2 += pc * pc
        if unit:
            nrm = max(_sqrt_f32(n2), np.float32(1e-8))
            for c in range(d):
                p[c] = p[c] / nrm
        if nq1 > nq0 + 1:
            _add_entries(gn, S, rows, coef, order, nq0 + 1, nq1)
        g, gn = gn, g


@numba.njit(cache=True, nogil=True, boundscheck=False, fastmath=_FM, error_model="numpy")
def group_l21_rows(v_x, i_x, v_y, i_y, d_x, d_y, per_pair, lo, hi):
    """Pairs ``lo <= b < hi`` of the l2,1 penalty of :func:`mmsae.models.losses.group_l21` on
    K-sparse codes (values ``v``, latents ``i``, unique within a row):

        per_pair[b] = sum_s sqrt(v_x[b, s]^2 + z^2) + sum of |v_y[b, t]| over the y slots no x slot shares

    (``z`` the y value at the x slot's latent, 0 when y does not hold it; the norms in the
    values' dtype, the sum in float64), and its derivatives: ``d_x = v_x / norm`` and, at a
    shared latent, ``d_y = v_y / norm`` (0 where the norm is 0, the subgradient torch's
    ``vector_norm`` takes); ``d_y = sign(v_y)`` at a y-only slot. Each x slot's partner is found
    by comparing it with every y slot (``K^2`` comparisons per pair, in registers); the norms
    and quotients then run over the slots in a second, vectorised loop."""
    Kx = i_x.shape[1]
    Ky = i_y.shape[1]
    hit = np.empty(Kx, np.int64)
    vym = np.empty(Kx, v_y.dtype)
    nrm = np.empty(Kx, v_x.dtype)
    shared = np.empty(Ky, np.bool_)
    zero = np.zeros(1, v_y.dtype)[0]
    for b in range(lo, hi):
        for t in range(Ky):
            shared[t] = False
        for s in range(Kx):
            j = i_x[b, s]
            h = -1
            for t in range(Ky):
                if i_y[b, t] == j:
                    h = t
            hit[s] = h
            if h >= 0:
                shared[h] = True
                vym[s] = v_y[b, h]
            else:
                vym[s] = zero
        acc = 0.0
        for s in range(Kx):
            vx = v_x[b, s]
            vy = vym[s]
            n = np.sqrt(vx * vx + vy * vy)
            nrm[s] = n
            acc += n
            d_x[b, s] = vx / n if n != 0 else zero
        for s in range(Kx):
            if hit[s] >= 0:
                n = nrm[s]
                d_y[b, hit[s]] = vym[s] / n if n != 0 else zero
        for t in range(Ky):
            if not shared[t]:
                vy = v_y[b, t]
                acc += abs(vy)
                d_y[b, t] = np.sign(vy)
        per_pair[b] = acc


# ----------------------------------------------------------------------- OpenMP tasks
# The range kernels above as C callbacks ``void task(void *block)`` for the OpenMP runtime's
# ``GOMP_parallel`` (:func:`mmsae.engine.parallel.run_ranges`): every thread of the team runs
# the task, takes ranges off a shared counter until none is left and runs the kernel on each.
# ``block`` is an int64 array: [next range (the counter, from 0), number of ranges, address of
# the ``n + 1`` cut points, then the kernel's arguments: an array as its address followed by
# its shape, an integer or bool as itself, a float as the bits of a float64]. The Python side
# (``parallel._pack``) checks each array's dtype, rank and contiguity against the task's
# ``TASK_ARGS`` entry before it writes the block.

_TASK = _types.void(_types.voidptr)


@_intrinsic
def _voidptr(typingctx, addr):
    """The address ``addr`` (int64) as a ``void *`` (for :func:`numba.carray`)."""
    if addr != _types.int64:
        return None

    def codegen(context, builder, signature, args):
        return builder.inttoptr(args[0], _llvm_ir.IntType(8).as_pointer())

    return _types.voidptr(_types.int64), codegen


@_intrinsic
def _next_range(typingctx, block):
    """Atomically ``block[0] += 1``, returning the old value: the next range to do."""
    if block != _types.voidptr:
        return None

    def codegen(context, builder, signature, args):
        i64 = _llvm_ir.IntType(64)
        counter = builder.bitcast(args[0], i64.as_pointer())
        return builder.atomic_rmw("add", counter, _llvm_ir.Constant(i64, 1), "monotonic")

    return _types.int64(_types.voidptr), codegen


@numba.njit(cache=True, inline="always")
def _f32_1d(a, i):
    return numba.carray(_voidptr(a[i]), (a[i + 1],), np.float32)


@numba.njit(cache=True, inline="always")
def _f32_2d(a, i):
    return numba.carray(_voidptr(a[i]), (a[i + 1], a[i + 2]), np.float32)


@numba.njit(cache=True, inline="always")
def _f64_1d(a, i):
    return numba.carray(_voidptr(a[i]), (a[i + 1],), np.float64)


@numba.njit(cache=True, inline="always")
def _i64_1d(a, i):
    return numba.carray(_voidptr(a[i]), (a[i + 1],), np.int64)


@numba.njit(cache=True, inline="always")
def _i64_2d(a, i):
    return numba.carray(_voidptr(a[i]), (a[i + 1], a[i + 2]), np.int64)


@numba.njit(cache=True, inline="always")
def _block(block, n_args):
    """``(slots as int64, the same as float64, cut points, number of ranges)``."""
    a = numba.carray(block, (3 + n_args,), np.int64)
    f = numba.carray(block, (3 + n_args,), np.float64)
    return a, f, numba.carray(_voidptr(a[2]), (a[1] + 1,), np.int64), a[1]


@numba.cfunc(_TASK, cache=True)
def scan_rows_task(block):
    a, f, cuts, n = _block(block, 20)
    pre, b, pairs, out_v, out_i = _f32_2d(a, 3), _f32_1d(a, 6), _i64_1d(a, 15), _f32_2d(a, 17), _i64_2d(a, 20)
    r = _next_range(block)
    while r < n:
        scan_rows(pre, b, a[8], a[9], a[10], a[11] != 0, np.uint64(a[12]), np.uint64(a[13]), a[14] != 0, pairs,
                  out_v, out_i, cuts[r], cuts[r + 1])
        r = _next_range(block)


@numba.cfunc(_TASK, cache=True)
def decoder_backward_task(block):
    a, f, cuts, n = _block(block, 20)
    G, W, rows, vals = _f32_2d(a, 3), _f32_2d(a, 6), _i64_1d(a, 9), _f32_1d(a, 12)
    order, ptr, gW, gvals = _i64_1d(a, 14), _i64_1d(a, 16), _f32_2d(a, 18), _f32_1d(a, 21)
    r = _next_range(block)
    while r < n:
        decoder_backward(G, W, rows, a[11], vals, order, ptr, gW, gvals, cuts[r], cuts[r + 1])
        r = _next_range(block)


@numba.cfunc(_TASK, cache=True)
def encoder_backward_task(block):
    a, f, cuts, n = _block(block, 20)
    U, rows, g, rowmod = _f32_2d(a, 3), _i64_1d(a, 6), _f32_1d(a, 9), _i64_1d(a, 11)
    order, ptr, gW, per = _i64_1d(a, 13), _i64_1d(a, 15), _f32_2d(a, 17), _f32_2d(a, 20)
    r = _next_range(block)
    while r < n:
        encoder_backward(U, rows, a[8], g, rowmod, order, ptr, gW, per, cuts[r], cuts[r + 1])
        r = _next_range(block)


@numba.cfunc(_TASK, cache=True)
def project_rows_task(block):
    a, f, cuts, n = _block(block, 6)
    W, G = _f32_2d(a, 3), _f32_2d(a, 6)
    r = _next_range(block)
    while r < n:
        project_rows(W, G, cuts[r], cuts[r + 1])
        r = _next_range(block)


@numba.cfunc(_TASK, cache=True)
def renorm_rows_task(block):
    a, f, cuts, n = _block(block, 3)
    W = _f32_2d(a, 3)
    r = _next_range(block)
    while r < n:
        renorm_rows(W, cuts[r], cuts[r + 1])
        r = _next_range(block)


@numba.cfunc(_TASK, cache=True)
def adam_rows_task(block):
    a, f, cuts, n = _block(block, 18)
    P, G, M, V = _f32_2d(a, 3), _f32_2d(a, 6), _f32_2d(a, 9), _f32_2d(a, 12)
    step_size, beta1, beta2 = np.float32(f[15]), np.float32(f[16]), np.float32(f[17])
    eps, bc2_sqrt = np.float32(f[18]), np.float32(f[19])
    r = _next_range(block)
    while r < n:
        adam_rows(P, G, M, V, step_size, beta1, beta2, eps, bc2_sqrt, a[20] != 0, cuts[r], cuts[r + 1])
        r = _next_range(block)


@numba.cfunc(_TASK, cache=True)
def decode_rows_task(block):
    a, f, cuts, n = _block(block, 12)
    W, vals, idx, out = _f32_2d(a, 3), _f32_2d(a, 6), _i64_2d(a, 9), _f32_2d(a, 12)
    r = _next_range(block)
    while r < n:
        decode_rows(W, vals, idx, out, cuts[r], cuts[r + 1])
        r = _next_range(block)


@numba.cfunc(_TASK, cache=True)
def group_l21_rows_task(block):
    a, f, cuts, n = _block(block, 20)
    v_x, i_x, v_y, i_y = _f32_2d(a, 3), _i64_2d(a, 6), _f32_2d(a, 9), _i64_2d(a, 12)
    d_x, d_y, per_pair = _f32_2d(a, 15), _f32_2d(a, 18), _f64_1d(a, 21)
    r = _next_range(block)
    while r < n:
        group_l21_rows(v_x, i_x, v_y, i_y, d_x, d_y, per_pair, cuts[r], cuts[r + 1])
        r = _next_range(block)


@numba.cfunc(_TASK, cache=True)
def decoder_value_grads_task(block):
    a, f, cuts, n = _block(block, 13)
    G, W, rows, idx, gvals = _f32_2d(a, 3), _f32_2d(a, 6), _i64_1d(a, 9), _i64_1d(a, 12), _f32_1d(a, 14)
    r = _next_range(block)
    while r < n:
        decoder_value_grads(G, W, rows, a[11], idx, gvals, cuts[r], cuts[r + 1])
        r = _next_range(block)


@numba.cfunc(_TASK, cache=True)
def adam_entries_task(block):
    a, f, cuts, n = _block(block, 33)
    P, M, V, S = _f32_2d(a, 3), _f32_2d(a, 6), _f32_2d(a, 9), _f32_2d(a, 12)
    rows, coef, order, ptr = _i64_1d(a, 15), _f32_1d(a, 17), _i64_1d(a, 19), _i64_1d(a, 21)
    step_size, beta1, beta2 = np.float32(f[23]), np.float32(f[24]), np.float32(f[25])
    eps, bc2_sqrt = np.float32(f[26]), np.float32(f[27])
    rowmod, gpre = _i64_1d(a, 29), _f32_2d(a, 31)
    r = _next_range(block)
    while r < n:
        adam_entries(P, M, V, S, rows, coef, order, ptr, step_size, beta1, beta2, eps, bc2_sqrt, a[28] != 0,
                     rowmod, gpre, a[34], a[35], cuts[r], cuts[r + 1])
        r = _next_range(block)


@numba.cfunc(_TASK, cache=True)
def decode_errors_task(block):
    a, f, cuts, n = _block(block, 28)
    W, vals, idx, Bp = _f32_2d(a, 3), _f32_2d(a, 6), _i64_2d(a, 9), _f32_2d(a, 12)
    rowmod, U, out, E = _i64_1d(a, 15), _f32_2d(a, 17), _f32_2d(a, 20), _f32_2d(a, 23)
    se, dots = _f32_1d(a, 26), _f32_2d(a, 28)
    r = _next_range(block)
    while r < n:
        decode_errors(W, vals, idx, Bp, rowmod, U, out, E, se, dots, cuts[r], cuts[r + 1])
        r = _next_range(block)


@numba.cfunc(_TASK, cache=True)
def prefix_errors_task(block):
    a, f, cuts, n = _block(block, 28)
    W, vals, cols, group = _f32_2d(a, 3), _f32_1d(a, 6), _i64_1d(a, 8), _i64_1d(a, 10)
    offsets, Bp, rowmod, U = _i64_1d(a, 12), _f32_2d(a, 15), _i64_1d(a, 18), _f32_2d(a, 20)
    E, per, last = _f32_2d(a, 23), _f32_1d(a, 26), _f32_2d(a, 28)
    r = _next_range(block)
    while r < n:
        prefix_errors(W, vals, cols, group, offsets, a[14], Bp, rowmod, U, E, per, last, cuts[r], cuts[r + 1])
        r = _next_range(block)


@numba.cfunc(_TASK, cache=True)
def prefix_suffix_sums_task(block):
    a, f, cuts, n = _block(block, 6)
    E, gper = _f32_2d(a, 3), _f32_1d(a, 6)
    r = _next_range(block)
    while r < n:
        prefix_suffix_sums(E, gper, a[8], cuts[r], cuts[r + 1])
        r = _next_range(block)


#: per range kernel: its task and the kernel's arguments before ``lo, hi`` as the task reads
#: them (``"f4", "i8"`` with the rank: an array of that dtype, C-contiguous; ``"int"``,
#: ``"bool"``, ``"float"``: a scalar)
TASK_ARGS = {
    scan_rows: (scan_rows_task, (("f4", 2), ("f4", 1), "int", "int", "int", "bool", "int", "int", "bool",
                                 ("i8", 1), ("f4", 2), ("i8", 2))),
    decoder_backward: (decoder_backward_task, (("f4", 2), ("f4", 2), ("i8", 1), "int", ("f4", 1), ("i8", 1),
                                               ("i8", 1), ("f4", 2), ("f4", 1))),
    encoder_backward: (encoder_backward_task, (("f4", 2), ("i8", 1), "int", ("f4", 1), ("i8", 1), ("i8", 1),
                                               ("i8", 1), ("f4", 2), ("f4", 2))),
    project_rows: (project_rows_task, (("f4", 2), ("f4", 2))),
    renorm_rows: (renorm_rows_task, (("f4", 2),)),
    adam_rows: (adam_rows_task, (("f4", 2),) * 4 + ("float",) * 5 + ("bool",)),
    decode_rows: (decode_rows_task, (("f4", 2), ("f4", 2), ("i8", 2), ("f4", 2))),
    prefix_errors: (prefix_errors_task, (("f4", 2), ("f4", 1), ("i8", 1), ("i8", 1), ("i8", 1), "int", ("f4", 2),
                                         ("i8", 1), ("f4", 2), ("f4", 2), ("f4", 1), ("f4", 2))),
    prefix_suffix_sums: (prefix_suffix_sums_task, (("f4", 2), ("f4", 1), "int")),
    decode_errors: (decode_errors_task, (("f4", 2), ("f4", 2), ("i8", 2), ("f4", 2), ("i8", 1), ("f4", 2),
                                         ("f4", 2), ("f4", 2), ("f4", 1), ("f4", 2))),
    decoder_value_grads: (decoder_value_grads_task, (("f4", 2), ("f4", 2), ("i8", 1), "int", ("i8", 1), ("f4", 1))),
    adam_entries: (adam_entries_task, (("f4", 2),) * 4 + (("i8", 1), ("f4", 1), ("i8", 1), ("i8", 1))
                   + ("float",) * 5 + ("bool", ("i8", 1), ("f4", 2), "int", "int")),
    group_l21_rows: (group_l21_rows_task, (("f4", 2), ("i8", 2), ("f4", 2), ("i8", 2), ("f4", 2), ("f4", 2),
                                           ("f8", 1))),
}
