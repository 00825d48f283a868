"""The engine: the K-sparse computations every SAE objective is evaluated with, and the
machinery that makes them fast on CPU. It knows no method; the methods (one file each, with
their objectives and losses) are in :mod:`mmsae.models`.

* :mod:`mmsae.engine.sparse`: the K-sparse helpers (no-grad encoder pass and top-K
  selection, sparse-gradient encoder values, sparse decode, dead-latent selection,
  batch top-N entries, index-form masks);
* :mod:`mmsae.engine.kernels`: the compiled (numba) kernels behind them, the l2,1 pass and
  the row-wise decoder and Adam updates;
* :mod:`mmsae.engine.parallel`: running those kernels over threads (torch's OpenMP
  threads, else a small pool);
* :mod:`mmsae.engine.device_paths`: the switch (``MMSAE_ENGINE=torch``,
  :func:`force_device_paths`) that makes the CPU take the paths CUDA takes (torch forms of
  the kernels, whole-batch encoder pass, bf16 selection), so that they are tested on CPU.

The engine imports torch, numpy and numba only, never another :mod:`mmsae` stage. It reads
a model through its parameters and config (``W_enc``, ``b_enc``, ``b_pre``, ``W_dec``,
``config.k``, ...), not through a class of :mod:`mmsae.models`.
"""

from .device_paths import device_paths_forced, force_device_paths, set_device_paths, uses_device_paths

__all__ = ["device_paths_forced", "force_device_paths", "set_device_paths", "uses_device_paths"]
