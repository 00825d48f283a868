"""The training loop's optimiser on CPU: torch's Adam, with the decoder-norm constraint fused into
the update of the decoder.

A TopK SAE step ends with three passes over the ``(m, d)`` decoder: the gradient projection
(``model.before_optimizer_step``), the Adam update, and the renormalisation of every atom
(``model.after_optimizer_step``). Each pass is memory-bound. :class:`RowAdam` does all three
in one pass, a row at a time while it is in cache (:func:`mmsae.engine.kernels.adam_rows`),
and the loop skips the two hooks for the matrices it handled
(:attr:`RowAdam.fused_unit_rows`). Every other parameter (the encoder, the biases) goes
through torch's Adam step: for a plain matrix the compiled pass is no faster than torch's
fused kernel (measured in the step, MGSAE at batch 128: about equal on one thread, about 1%
slower on two; see docs/performance.md).

With ``rows`` (the training loop passes every matrix when it defers the K-sparse weight gradients,
:mod:`mmsae.engine.deferred`), those matrices go through the compiled pass too, without the hooks;
a matrix whose gradient arrives as entries is updated by :func:`mmsae.engine.kernels.adam_entries`,
which sums each gradient row from its entries in the same pass as the update (same sums, same
update; no dense gradient written or read). An encoder's entries carry its pre-bias gradient too:
the matrices with entries are updated first, and the pre-bias gradient, summed from each encoder
row while the pass has it in cache, is added to the pre-bias's ``.grad`` before the pre-bias is
updated.

The state is torch's (``step``, ``exp_avg``, ``exp_avg_sq`` per parameter), so checkpoints
load into ``torch.optim.Adam`` and back.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import replace

import numpy as np
import torch

from ..engine.device_paths import uses_device_paths
from ..engine import deferred
from ..engine.kernels import adam_entries, adam_rows
from ..engine.parallel import run_ranges, split_rows

__all__ = ["RowAdam"]

_NO_ROWS = np.empty(0, np.int64)
_NO_PRE = np.empty((0, 0), np.float32)
#: blocks of rows whose pre-bias gradients are summed apart (then in order) by :func:`adam_entries`: fixed, so the
#: sum does not depend on the thread count; enough for the threads to share the rows
_PRE_BLOCKS = 16


def _adam_step(opt: torch.optim.Adam) -> None:
    """``torch.optim.Adam.step`` without the step hooks that torch wraps around it once an Adam
    has been made (they ran around :meth:`RowAdam.step` already)."""
    step = torch.optim.Adam.step
    (step.__wrapped__ if getattr(step, "hooked", False) else step)(opt)


class RowAdam(torch.optim.Adam):
    """``torch.optim.Adam`` (same arguments) that updates the ``unit_rows`` matrices (a model's
    :meth:`~mmsae.models.base.Dictionary.unit_norm_rows`: rows kept at unit norm) with one
    compiled pass, row by row, split over torch's intra-op thread count (each row by one
    thread: the result does not depend on the thread count). The pass removes each gradient
    row's component along its atom, applies Adam's update and renormalises the atom: the
    decoder-norm hooks and the update in one pass (``p.grad`` is left unprojected).

    A ``unit_rows`` matrix the pass cannot take (not CPU float32 contiguous, its group has
    weight decay, amsgrad or maximize, or the engine's device paths are forced,
    ``MMSAE_ENGINE=torch``) and every other parameter go through torch's Adam, and then the
    model's hooks do the projection and renormalisation as usual (on the device paths: all of
    them, as on CUDA, where the loop uses torch's Adam)."""

    def __init__(self, params, unit_rows: Iterable[torch.Tensor] = (), rows: Iterable[torch.Tensor] = (), **kwargs):
        super().__init__(params, **kwargs)
        self._unit = {id(p) for p in unit_rows}
        extra = {id(p) for p in rows}
        self._mine = {id(p) for group in self.param_groups for p in group["params"]
                      if (id(p) in self._unit or id(p) in extra) and self._takes(p, group)}

    @property
    def compiled_params(self) -> list[torch.Tensor]:
        """The matrices the compiled pass updates (those whose K-sparse gradients may be deferred)."""
        return [p for group in self.param_groups for p in group["params"] if id(p) in self._mine]

    def zero_grad(self, set_to_none: bool = True) -> None:
        super().zero_grad(set_to_none)
        deferred.clear(self.compiled_params)

    @staticmethod
    def _takes(p: torch.Tensor, group: dict) -> bool:
        """Whether the compiled pass can update ``p`` (fixed for the optimiser's life; never on the
        device paths, CUDA or forced on CPU: :mod:`mmsae.engine.device_paths`)."""
        return (not uses_device_paths(p) and p.dtype == torch.float32 and p.dim() == 2 and p.is_contiguous()
                and not group["amsgrad"] and not group["maximize"] and group["weight_decay"] == 0
                and not group.get("differentiable", False) and not group.get("capturable", False)
                and not torch.is_tensor(group["lr"]))

    @property
    def fused_unit_rows(self) -> frozenset[int]:
        """``id`` of each ``unit_rows`` parameter whose projection and renormalisation this
        optimiser does (pass it as ``skip`` to the model's optimiser-step hooks)."""
        return frozenset(self._mine)

    @torch.no_grad()
    def _update(self, p: torch.Tensor, group: dict) -> None:
        state = self.state[p]
        if len(state) == 0:  # as torch's Adam initialises it
            state["step"] = torch.tensor(0.0, dtype=torch.float32)
            state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        m, v = state["exp_avg"], state["exp_avg_sq"]  # float32 and contiguous like p (torch's load keeps them so)
        parts = deferred.take(p)
        state["step"] += 1
        t = float(state["step"])
        beta1, beta2 = group["betas"]
        f = np.float32
        hyper = (f(group["lr"] / (1.0 - beta1 ** t)), f(beta1), f(beta2), f(group["eps"]),
                 f(math.sqrt(1.0 - beta2 ** t)), id(p) in self._unit)
        if parts and (p.grad is not None or len({id(e.prebias) for e in parts if e.prebias is not None}) > 1):
            for b, gb in deferred.prebias_grads(parts, p):  # from the matrix before its update
                deferred.add_grad(b, gb)
            parts = [replace(e, rowmod=None, prebias=None) for e in parts]
        if parts and p.grad is None:  # the gradient as entries: summed row by row inside the update
            e = deferred.grouped(parts, p.shape[0])
            n = p.shape[0]
            if e.prebias is None:
                split_rows(adam_entries, n, p.detach().numpy(), m.numpy(), v.numpy(), e.S, e.rows, e.coef, e.order,
                           e.ptr, *hyper, _NO_ROWS, _NO_PRE, 0, 1)
                return
            # with an encoder's pre-bias gradient: one partial sum per block of rows (fixed blocks, so the sum does
            # not depend on the thread count), added to the pre-bias's .grad before the pre-bias is updated
            n_pre = e.prebias.numel() // p.shape[1]
            blocks = max(1, min(_PRE_BLOCKS, n))
            part = -(-n // blocks)
            gpre = np.zeros((blocks * n_pre, p.shape[1]), np.float32)
            run_ranges(adam_entries, list(range(0, n, part)) + [n], p.detach().numpy(), m.numpy(), v.numpy(), e.S,
                       e.rows, e.coef, e.order, e.ptr, *hyper, e.rowmod, gpre, n_pre, part)
            deferred.add_grad(e.prebias, torch.from_numpy(gpre.reshape(blocks, n_pre, -1).sum(0))
                              .reshape(e.prebias.shape))
            return
        g = p.grad.contiguous()
        if parts:  # entries and a dense gradient (another use of the matrix in the step): both
            g = g + deferred.materialize(parts, p)
        split_rows(adam_rows, p.shape[0], p.detach().numpy(), g.numpy(), m.numpy(), v.numpy(), *hyper)

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        saved = [group["params"] for group in self.param_groups]
        rest = []
        # the matrices with deferred entries first: an encoder's entries may add to its pre-bias's gradient
        done = set()
        for group in self.param_groups:
            for p in group["params"]:
                if id(p) in self._mine and deferred.pending(p):
                    self._update(p, group)
                    done.add(id(p))
        for group in self.param_groups:
            left = []
            for p in group["params"]:
                if id(p) in self._mine:
                    if p.grad is not None and id(p) not in done:
                        self._update(p, group)
                else:
                    left.append(p)
            rest.append(left)
        if any(p.grad is not None for left in rest for p in left):
            try:  # torch's Adam for the rest: the groups narrowed to it for this call
                for group, left in zip(self.param_groups, rest):
                    group["params"] = left
                _adam_step(self)
            finally:
                for group, params in zip(self.param_groups, saved):
                    group["params"] = params
        return loss
