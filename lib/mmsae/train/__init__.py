"""Stage 3, training: the one training loop (:mod:`.loop`), its data-parallel collectives
(:mod:`.distributed`) and the command line used under ``torchrun``."""

from .loop import TrainConfig, seed_everything, train

__all__ = ["TrainConfig", "seed_everything", "train"]
