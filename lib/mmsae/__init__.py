"""mmsae: sparse autoencoders for multimodal embedding spaces.

An open companion to "Decomposing multimodal embedding spaces with group-sparse
autoencoders" (Kaushik, Barch, Fanelli; ICLR 2026). Modules, one concern each:

``data``       paired-embedding store (load/validate/save)
``synthetic``  aligned multimodal embeddings with ground truth (the default data)
``models``     TopK SAE, GSAE/MGSAE and the other methods, save/load
``losses``     reconstruction, l2,1 group penalty, AuxK
``train``      the one training loop
``metrics``    neuron categories, MMS, reconstruction, retrieval, zero-shot, ground truth
``plots``      one figure style; every figure as PDF + PNG
"""

import os as _os
import sys as _sys

#: torch's OpenMP threads keep spinning on their cores for a while after each parallel
#: region (the GEMM); the compiled kernels (numba, their own threads, right after the GEMM)
#: then share the cores with them and run up to twice as long on two threads. Passive
#: waiting puts them to sleep at once. It only takes effect when set before torch is first
#: imported; a value the user set is kept.
if "torch" not in _sys.modules:
    _os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from .data.load import load_paired  # noqa: E402
from .data.store import EmbeddingError, PairedEmbeddings, ZeroShotSet  # noqa: E402
from .models import SAEConfig, build_model, load_model  # noqa: E402
from .train.loop import TrainConfig, train  # noqa: E402

__version__ = "0.1.0"

__all__ = ["EmbeddingError", "PairedEmbeddings", "ZeroShotSet", "load_paired", "SAEConfig", "build_model",
           "load_model", "TrainConfig", "train", "__version__"]
