"""Running the compiled kernels over several threads.

The kernels of :mod:`mmsae.engine.kernels` that split their work take a range ``lo, hi`` of
rows or latents as their last two arguments; each row or latent is done by one thread, so
the result does not depend on how the work is split. :func:`run_ranges` runs a list of
such ranges, two ways:

* **On torch's own OpenMP threads** where it can (Linux, torch's ATen built with OpenMP,
  which the PyPI and conda builds are): it calls ``GOMP_parallel`` of the OpenMP runtime
  torch has loaded, with the kernel's compiled task (``kernels.TASK_ARGS``) as the parallel
  region, so the kernel runs like one of torch's own parallel ops. The reason: after each
  of torch's parallel regions its OpenMP worker threads keep spinning, waiting for the next
  one, and threads of our own then share the cores with them. Measured on the 2-core
  machine of docs/performance.md: the decoder's Adam pass (``adam_rows``, ``8192 x 512``)
  took 1.6 ms on two threads of our own when nothing ran before it and 2.5 to 3 ms right
  after a torch op, against 1.6 ms after a torch op on torch's OpenMP threads.
* **On a small thread pool of its own** otherwise (torch without OpenMP, the runtime not
  found, ``MMSAE_KERNEL_THREADS=pool`` in the environment, or arguments the task does not
  take). Only numba code runs on those threads, never a torch op: a torch op on a thread
  that torch's OpenMP does not manage makes it throttle its idle threads' spinning for the
  rest of the process, which slows later torch code on several threads (measured here: the
  dictionary_learning peer's training step became 8x slower at 2 threads).

The threads of either kind take ranges in turn (the OpenMP tasks off a shared counter,
the pool from its queue), so a thread that starts late leaves its range to the others.
"""

from __future__ import annotations

import ctypes
import os
import re
import sys

import numpy as np
import torch

from . import kernels

__all__ = ["run_ranges", "split_rows", "backend"]

#: ``MMSAE_KERNEL_THREADS``: ``pool`` keeps the compiled kernels off torch's OpenMP threads
#: (a diagnostic switch; the default, ``openmp``, uses them where it can)
_ENV = "MMSAE_KERNEL_THREADS"

_POOL = None
_OPENMP: "ctypes.CDLL | None | bool" = False  # False: not looked for yet


def _pool(threads: int):
    """The thread pool of the fallback path (numba code only on its threads; see above)."""
    global _POOL
    if _POOL is None or _POOL._max_workers != threads:
        from concurrent.futures import ThreadPoolExecutor

        if _POOL is not None:
            _POOL.shutdown(wait=False)
        _POOL = ThreadPoolExecutor(threads, thread_name_prefix="mmsae-kernels")
    return _POOL


def _find_openmp():
    """The OpenMP runtime torch runs its parallel ops on, as a ``ctypes`` library with
    ``GOMP_parallel`` (libgomp; LLVM's and Intel's runtimes export it too), or None.

    The loaded libraries are read from ``/proc/self/maps``: the runtime under torch's own
    directory if there is one (PyPI wheels ship it there), else the only one loaded. With
    several and none of them torch's, it is not guessed."""
    if sys.platform != "linux" or "parallel backend: OpenMP" not in torch.__config__.parallel_info():
        return None
    try:
        with open("/proc/self/maps") as f:  # address, perms, offset, dev, inode, path
            fields = [line.split(None, 5) for line in f]
        paths = sorted({f[5].strip() for f in fields
                        if len(f) == 6 and re.search(r"/lib(gomp|iomp5|omp)[-.\w]*\.so", f[5])})
    except OSError:
        return None
    here = os.path.dirname(os.path.realpath(torch.__file__))
    mine = [p for p in paths if os.path.realpath(p).startswith(here + os.sep)]
    chosen = mine if mine else paths if len(paths) == 1 else []
    for path in chosen:
        try:
            lib = ctypes.CDLL(path)  # already loaded: the same library, not a second copy
            lib.GOMP_parallel.restype = None
        except (OSError, AttributeError):
            continue
        lib.GOMP_parallel.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_uint, ctypes.c_uint]
        return lib
    return None


def backend() -> str:
    """``"openmp"`` when :func:`run_ranges` runs the kernels on torch's OpenMP threads, else
    ``"pool"`` (see the module docstring)."""
    global _OPENMP
    if os.environ.get(_ENV, "openmp").lower() == "pool":
        return "pool"
    if _OPENMP is False:
        _OPENMP = _find_openmp()
    return "pool" if _OPENMP is None else "openmp"


_INT = (int, bool, np.integer, np.bool_)


def _pack(spec, cuts: np.ndarray, args) -> np.ndarray | None:
    """The task's block (layout in :mod:`mmsae.engine.kernels`), or None where an argument is
    not what the task reads (the caller then takes the pool path)."""
    if len(spec) != len(args):
        return None
    slots = [0, len(cuts) - 1, cuts.ctypes.data]
    for want, x in zip(spec, args):
        if isinstance(want, tuple):
            if not (isinstance(x, np.ndarray) and x.dtype == np.dtype(want[0]) and x.ndim == want[1]
                    and x.flags.c_contiguous and x.flags.aligned):
                return None
            slots.append(x.ctypes.data)
            slots.extend(x.shape)
        elif want == "float":
            if not isinstance(x, (float, np.floating)):
                return None
            slots.append(int(np.float64(x).view(np.int64)))
        else:
            if not isinstance(x, _INT) or (want == "bool") != isinstance(x, (bool, np.bool_)):
                return None
            if not -(2 ** 63) <= int(x) < 2 ** 63:
                return None
            slots.append(int(x))
    return np.array(slots, dtype=np.int64)


def run_ranges(kernel, cuts, *args) -> None:
    """``kernel(*args, cuts[t], cuts[t + 1])`` for every range ``t``, shared over up to torch's
    intra-op thread count (see the module docstring); one range runs on the calling thread.
    The kernels release the GIL."""
    n = len(cuts) - 1
    if n <= 1:
        kernel(*args, cuts[0], cuts[-1])
        return
    # never more threads than torch's count: more OpenMP threads than cores would make the
    # runtime throttle its spinning for the rest of the process (see the module docstring)
    threads = max(1, min(n, torch.get_num_threads()))
    if backend() == "openmp" and kernel in kernels.TASK_ARGS:
        task, spec = kernels.TASK_ARGS[kernel]
        cut_arr = np.asarray(cuts, dtype=np.int64)
        block = _pack(spec, cut_arr, args)
        if block is not None:
            # ``args`` and ``cut_arr`` keep the arrays alive; ctypes releases the GIL for the call
            _OPENMP.GOMP_parallel(task.address, block.ctypes.data, threads, 0)
            return
    list(_pool(threads).map(lambda t: kernel(*args, cuts[t], cuts[t + 1]), range(n)))


def split_rows(kernel, n_rows: int, *args, min_rows: int = 1024) -> None:
    """Run ``kernel(*args, lo, hi)`` over rows ``[0, n_rows)`` split evenly over torch's intra-op
    thread count (at least ``min_rows`` rows per thread)."""
    threads = max(1, min(torch.get_num_threads(), n_rows // min_rows))
    run_ranges(kernel, [n_rows * t // threads for t in range(threads + 1)], *args)
