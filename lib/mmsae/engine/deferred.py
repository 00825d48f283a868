"""Deferred weight gradients: the K-sparse backward hands a matrix's gradient to the optimiser as the entries that
make it up, and the optimiser sums each row in the same pass as its Adam update.

At the paper's batch (128 pairs, m = 8192, K = 32) a step's K-sparse backward touches a few thousand of the 8192
rows of ``W_enc`` and ``W_dec``; written as dense ``(m, d)`` gradients it still costs a pass that writes every row
(the untouched ones as zeros), and Adam then reads that gradient again in its own pass. Deferred, the backward of
:class:`~mmsae.engine.sparse.SparseDecode` and :class:`~mmsae.engine.sparse.SparseEncoderValues` computes only what
flows on (the values' gradient, the bias gradients) and records the weight gradient as :class:`Entries`: row ``j``
is ``sum_e coef[e] * S[rows[e]]`` over the entries ``e`` of latent ``j`` (``S`` the upstream gradient of the decode,
or the centred inputs of the encoder). :class:`mmsae.train.optim.RowAdam` then builds each row in cache and updates
it (:func:`mmsae.engine.kernels.adam_entries`): the same sums in the same order as the dense backward, so the same
update, with one pass over the parameter and its two moments instead of three passes and a gradient.

The training loop turns it on for the matrices RowAdam updates (:func:`defer_gradients`, a context: outside it,
and for every other tensor, ``backward`` fills ``.grad`` as usual). While it is on, ``W.grad`` of a deferred matrix
stays ``None`` after ``backward`` unless something else adds a dense gradient; then both are used
(:func:`materialize`). Gradient clipping and multi-process training need the dense gradients, so the loop leaves it
off there.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterable

import numpy as np
import torch

from . import kernels

__all__ = ["Entries", "defer_gradients", "deferring", "record", "pending", "take", "clear", "grouped", "materialize",
           "prebias_grads", "add_grad"]

_ATTR = "_mmsae_deferred_entries"


@dataclass
class Entries:
    """One contribution to a matrix's gradient: row ``latents[e]`` gets ``coef[e] * S[rows[e]]`` for every entry
    ``e``; ``order``/``ptr``: the entries grouped by latent (:func:`mmsae.engine.kernels.entries_by_latent`), or
    None. ``keep``: tensors whose memory ``S`` and the arrays view.

    An encoder's entries may carry its pre-bias gradient too: ``prebias`` (the pre-bias parameter, shape
    ``(n_pre, d)`` or ``(d,)``) gets ``-coef[e] * W[latents[e]]`` in row ``rowmod[rows[e]]`` for every entry (-1:
    none), with ``W`` the matrix before its update. The optimiser adds it to ``prebias.grad`` while it has each row
    of ``W`` in cache (:func:`mmsae.engine.kernels.adam_entries`), before it updates ``prebias``; :func:`prebias_grads`
    computes it from the entries where they are materialised instead."""
    S: np.ndarray
    rows: np.ndarray
    coef: np.ndarray
    latents: np.ndarray
    order: np.ndarray | None = None
    ptr: np.ndarray | None = None
    keep: tuple = ()
    rowmod: np.ndarray | None = None
    prebias: torch.Tensor | None = None


def deferring(W: torch.Tensor) -> bool:
    """Whether ``W``'s gradient is being deferred (inside :func:`defer_gradients` for it)."""
    return getattr(W, _ATTR, None) is not None


def record(W: torch.Tensor, entries: Entries) -> None:
    """Add ``entries`` to ``W``'s deferred gradient."""
    getattr(W, _ATTR).append(entries)


def pending(W: torch.Tensor) -> bool:
    """Whether ``W`` has a deferred gradient waiting."""
    return bool(getattr(W, _ATTR, None))


def take(W: torch.Tensor) -> list[Entries]:
    """``W``'s deferred gradient so far (emptied)."""
    pending = getattr(W, _ATTR, None)
    if not pending:
        return []
    out = list(pending)
    pending.clear()
    return out


def clear(params: Iterable[torch.Tensor]) -> None:
    """Drop the deferred gradients of ``params`` (``zero_grad``)."""
    for p in params:
        pending = getattr(p, _ATTR, None)
        if pending:
            pending.clear()


@contextmanager
def defer_gradients(params: Iterable[torch.Tensor]):
    """Within the context, the K-sparse backward defers the gradients of ``params`` (see the module)."""
    params = list(params)
    for p in params:
        setattr(p, _ATTR, [])
    try:
        yield
    finally:
        for p in params:
            if hasattr(p, _ATTR):
                delattr(p, _ATTR)


def grouped(parts: list[Entries], m: int) -> Entries:
    """One :class:`Entries` with the entries grouped by latent: ``parts[0]`` itself when it is alone and grouped,
    else the parts concatenated (their ``S`` stacked, rows offset) and grouped again."""
    if len(parts) == 1 and parts[0].order is not None:
        return parts[0]
    if len(parts) == 1:
        e = parts[0]
        order, ptr = kernels.entries_by_latent(e.latents, m)
        return Entries(e.S, e.rows, e.coef, e.latents, order, ptr, e.keep, e.rowmod, e.prebias)
    first = parts[0]
    if all(e.S is first.S or (e.S.ctypes.data == first.S.ctypes.data and e.S.shape == first.S.shape
                              and e.S.strides == first.S.strides) for e in parts) and \
            all(e.prebias is first.prebias for e in parts) and \
            all(e.rowmod is None if first.rowmod is None else
                (e.rowmod is not None and np.array_equal(e.rowmod, first.rowmod)) for e in parts):
        # the parts read the same rows (an encoder's TopK and AuxK entries both take the centred inputs): S once
        latents = np.concatenate([e.latents for e in parts])
        order, ptr = kernels.entries_by_latent(latents, m)
        return Entries(first.S, np.concatenate([e.rows for e in parts]),
                       np.ascontiguousarray(np.concatenate([e.coef for e in parts])), latents, order, ptr,
                       tuple(k for e in parts for k in e.keep), first.rowmod, first.prebias)
    offsets = np.cumsum([0] + [e.S.shape[0] for e in parts[:-1]])
    S = np.ascontiguousarray(np.concatenate([e.S for e in parts]))
    rows = np.concatenate([e.rows + o for e, o in zip(parts, offsets)])
    coef = np.ascontiguousarray(np.concatenate([e.coef for e in parts]))
    latents = np.concatenate([e.latents for e in parts])
    order, ptr = kernels.entries_by_latent(latents, m)
    targets = {id(e.prebias): e.prebias for e in parts if e.prebias is not None}
    if len(targets) != 1:  # none, or (never in the library's models) several pre-biases: added by the caller
        return Entries(S, rows, coef, latents, order, ptr)
    rowmod = np.concatenate([e.rowmod if e.prebias is not None else np.full(e.S.shape[0], -1, np.int64)
                             for e in parts])
    return Entries(S, rows, coef, latents, order, ptr, rowmod=rowmod, prebias=next(iter(targets.values())))


def prebias_grads(parts: list[Entries], W: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``[(pre-bias, its gradient from the entries)]`` (see :class:`Entries`), computed from ``W`` as it is now: for a
    matrix whose entries are materialised (:func:`materialize`) rather than summed inside the update."""
    out = []
    for e in parts:
        if e.prebias is None:
            continue
        gp = torch.zeros(e.prebias.shape, dtype=W.dtype).reshape(-1, W.shape[1])
        q = torch.from_numpy(e.rowmod[e.rows])
        keep = q >= 0
        src = W.detach()[torch.from_numpy(e.latents)] * torch.from_numpy(e.coef)[:, None]
        gp.index_add_(0, q[keep], -src[keep])
        out.append((e.prebias, gp.reshape(e.prebias.shape)))
    return out


def add_grad(p: torch.Tensor, g: torch.Tensor) -> None:
    """``p.grad += g`` (``p.grad = g`` where it is None)."""
    if p.grad is None:
        p.grad = g.to(p.dtype).clone()
    else:
        p.grad.add_(g)


def materialize(parts: list[Entries], like: torch.Tensor) -> torch.Tensor:
    """The dense gradient the entries make (for a matrix that also received a dense gradient)."""
    out = torch.zeros_like(like)
    for e in parts:
        src = torch.from_numpy(e.S)[torch.from_numpy(e.rows)] * torch.from_numpy(e.coef)[:, None]
        out.index_add_(0, torch.from_numpy(e.latents), src)
    return out
