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

from .data.load import load_paired
from .data.store import EmbeddingError, PairedEmbeddings, ZeroShotSet
from .models import SAEConfig, build_model, load_model
from .train.loop import TrainConfig, train

__version__ = "0.1.0"

__all__ = ["EmbeddingError", "PairedEmbeddings", "ZeroShotSet", "load_paired", "SAEConfig", "build_model",
           "load_model", "TrainConfig", "train", "__version__"]
