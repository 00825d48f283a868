"""The one switch that makes the CPU take the engine's device paths.

Off the CPU (CUDA) the engine takes other code than on it: torch forms instead of the compiled
kernels (``torch.topk`` and the hash on the top candidates instead of the compiled scan, the
``index_add`` / ``embedding_bag`` backward and decode instead of the latent-by-latent kernels,
the sort-based l2,1 matching, torch's Adam and the decoder-norm hooks in torch instead of
``adam_rows`` / ``project_rows`` / ``renorm_rows``), the encoder pass over the whole batch at
once instead of blocks of :data:`mmsae.engine.sparse.CPU_BLOCK_BYTES`, ``addmm`` instead of the
bias added inside the scan, and (the training loop's CUDA default) the selection matmul in
bfloat16 with the selected values re-scored in float32. A CPU run, and so the test suite,
normally takes none of it. With the switch on, the CPU takes all of it, so those paths are
tested with the same equivalence checks as the compiled ones (``tests/test_device_paths.py``).

The switch:

* ``MMSAE_ENGINE=torch`` in the environment, read when this module is imported: the device
  paths, with bfloat16 selection where the caller leaves the selection dtype unset (as the
  loop sets it on a GPU with bfloat16); ``MMSAE_ENGINE=torch-fp32``: the device paths with
  float32 selection (as ``TrainConfig(bf16_select=False)`` on CUDA); unset, empty or
  ``compiled``: the normal CPU paths. Any other value is an error.
* :func:`force_device_paths` (a context manager) and :func:`set_device_paths` flip it in a
  process (tests); :func:`device_paths_forced` reads it.

Every device-dependent branch of the engine consults :func:`uses_device_paths` (and
:func:`selection_dtype` for the selection dtype); with the switch off that costs one check of
a module-level bool. Objects that decide once (a :class:`~mmsae.train.optim.RowAdam` decides at
construction which matrices its compiled pass takes) follow the switch as it was when they were
made.
"""

from __future__ import annotations

import os
from contextlib import contextmanager

import torch

__all__ = ["ENV", "uses_device_paths", "selection_dtype", "device_paths_forced", "set_device_paths",
           "force_device_paths"]

#: the environment variable read at import (see the module docstring)
ENV = "MMSAE_ENGINE"

_SETTINGS = {"": (False, None), "compiled": (False, None),
             "torch": (True, torch.bfloat16), "torch-fp32": (True, None)}


def _from_env() -> tuple[bool, torch.dtype | None]:
    value = os.environ.get(ENV, "").strip().lower()
    if value not in _SETTINGS:
        raise ValueError(f"{ENV}={os.environ[ENV]!r}: expected one of "
                         + ", ".join(repr(v) for v in _SETTINGS if v) + " (or unset)")
    return _SETTINGS[value]


#: the switch: True makes the CPU take the device paths
FORCED: bool
#: with the switch on, the selection dtype used where the caller passes None (bfloat16, as the
#: training loop sets on CUDA; None: the parameters' dtype)
SELECT_DTYPE: torch.dtype | None
FORCED, SELECT_DTYPE = _from_env()


def uses_device_paths(*where) -> bool:
    """Whether the engine takes its device (torch) paths for these tensors (or devices): the
    switch is on, or one of them is not on the CPU."""
    if FORCED:
        return True
    for t in where:
        if (t if isinstance(t, torch.device) else t.device).type != "cpu":
            return True
    return False


def selection_dtype(requested: torch.dtype | None) -> torch.dtype | None:
    """The dtype of the selection matmul: ``requested``, or with the switch on and nothing
    requested, the switch's (:data:`SELECT_DTYPE`)."""
    return SELECT_DTYPE if requested is None and FORCED else requested


def device_paths_forced() -> bool:
    """Whether the switch is on."""
    return FORCED


def set_device_paths(on: bool, select_dtype: torch.dtype | None = torch.bfloat16):
    """Turn the switch on or off; ``select_dtype``: the selection dtype while on (bfloat16, the
    CUDA default; None: float32 selection). Returns the previous ``(on, select_dtype)``."""
    global FORCED, SELECT_DTYPE
    previous = (FORCED, SELECT_DTYPE)
    FORCED, SELECT_DTYPE = bool(on), (select_dtype if on else None)
    return previous


@contextmanager
def force_device_paths(on: bool = True, select_dtype: torch.dtype | None = torch.bfloat16):
    """``with force_device_paths():`` the CPU takes the device paths (see
    :func:`set_device_paths`); the previous setting is restored afterwards."""
    previous = set_device_paths(on, select_dtype)
    try:
        yield
    finally:
        set_device_paths(*previous)
