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

__all__ = ["Entries", "defer_gradients", "deferring", "record", "pending", "take", "clear", "grouped", "materialize"]

_ATTR = "_mmsae_deferred_entries"


@dataclass
class Entries:
    """One contribution to a matrix's gradient: row ``latents[e]`` gets ``coef[e] * S[rows[e]]`` for every entry
    ``e``; ``order``/``ptr``: the entries grouped by latent (:func:`mmsae.engine.kernels.entries_by_latent`), or
    None. ``keep``: tensors whose memory ``S`` and the arrays view."""
    S: np.ndarray
    rows: np.ndarray
    coef: np.ndarray
    latents: np.ndarray
    order: np.ndarray | None = None
    ptr: np.ndarray | None = None
    keep: tuple = ()


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
        return Entries(e.S, e.rows, e.coef, e.latents, order, ptr, e.keep)
    offsets = np.cumsum([0] + [e.S.shape[0] for e in parts[:-1]])
    S = np.ascontiguousarray(np.concatenate([e.S for e in parts]))
    rows = np.concatenate([e.rows + o for e, o in zip(parts, offsets)])
    coef = np.ascontiguousarray(np.concatenate([e.coef for e in parts]))
    latents = np.concatenate([e.latents for e in parts])
    order, ptr = kernels.entries_by_latent(latents, m)
    return Entries(S, rows, coef, latents, order, ptr)


def materialize(parts: list[Entries], like: torch.Tensor) -> torch.Tensor:
    """The dense gradient the entries make (for a matrix that also received a dense gradient)."""
    out = torch.zeros_like(like)
    for e in parts:
        src = torch.from_numpy(e.S)[torch.from_numpy(e.rows)] * torch.from_numpy(e.coef)[:, None]
        out.index_add_(0, torch.from_numpy(e.latents), src)
    return out
