"""SAE models: one file per architecture, all behind the :class:`Dictionary` interface."""

from .base import (MODEL_REGISTRY, CheckpointError, CheckpointMismatchError, Dictionary, LossOutput, SAEConfig, build_model,
                   load_model, register)
from .group_sparse import GroupSparseSAE, gsae_config, mgsae_config
from .topk import TopKSAE
from .batchtopk import BatchTopKSAE
from .matryoshka import MatryoshkaSAE
from .modality_specific import ModalitySpecificSAE
from .shared_support import SharedSupportSAE
from .usae import UniversalSAE
from .crosscoder import Crosscoder

__all__ = [
    "MODEL_REGISTRY", "CheckpointError", "CheckpointMismatchError", "Dictionary", "LossOutput", "SAEConfig", "build_model", "load_model",
    "register", "TopKSAE", "GroupSparseSAE", "gsae_config", "mgsae_config",
    "BatchTopKSAE", "MatryoshkaSAE", "ModalitySpecificSAE", "SharedSupportSAE", "UniversalSAE", "Crosscoder",
]
