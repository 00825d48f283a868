"""Stage 2, the embeddings store: paired (x, y) embeddings on disk, their loading and
validation (:mod:`.store`, :mod:`.load`, :mod:`.cache` for sharded folders), and the synthetic generator with ground truth that the default
run uses instead of extracted embeddings (:mod:`.synthetic`)."""

from .load import check_validation_pairs, load_paired
from .store import (MODALITY_NAMES, EmbeddingError, PairedEmbeddings, ZeroShotSet, array_digest, atomic_write,
                    l2_normalize, make_temp_dir, replace_dir)

__all__ = ["MODALITY_NAMES", "EmbeddingError", "PairedEmbeddings", "ZeroShotSet", "array_digest", "atomic_write",
           "check_validation_pairs", "l2_normalize", "load_paired", "make_temp_dir", "replace_dir"]
