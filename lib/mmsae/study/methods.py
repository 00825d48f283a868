"""The names of the methods compared.

``METHOD_ORDER`` is the list of the built-in methods and the order of every table, figure and
profile; the constants below are its entries (for the few places that name one method or
a subset), typed once in :mod:`mmsae.models.registry`, whose records hold each method's
settings, colour and description. Everything else (profiles, the comparison of
:mod:`mmsae.study.experiments`, the figures, the notebooks) reads the names from here; ``tests/test_layout.py`` fails on a literal list of three or more of them elsewhere.
The paper's own rows in :mod:`mmsae.study.paper` are facts about the paper and keep its names.
"""

from __future__ import annotations

__all__ = ["METHOD_ORDER", "SAE", "CENTRED_SAE", "GSAE", "MGSAE", "MASKED_SAE", "BATCHTOPK", "MATRYOSHKA",
           "MODALITY_SPECIFIC", "SHARED_SUPPORT", "USAE", "CROSSCODER", "PAPER_METHODS", "GROUP_SPARSE_METHODS", "LADDER", "LADDER_STEPS"]

#: The first five are the ladder that takes the paper's recipe apart (:data:`LADDER`), then the
#: other baselines and the competing designs.
from ..models.registry import (BATCHTOPK, CENTRED_SAE, CROSSCODER, GSAE, MASKED_SAE, MATRYOSHKA, MGSAE, MODALITY_SPECIFIC, SAE,
                               SHARED_SUPPORT, USAE)

METHOD_ORDER = [SAE, CENTRED_SAE, GSAE, MGSAE, MASKED_SAE, BATCHTOPK, MATRYOSHKA, MODALITY_SPECIFIC, SHARED_SUPPORT,
                USAE, CROSSCODER]

#: the three methods of the paper's first version (its Tables 1-3 and the width/K sweep)
PAPER_METHODS = [SAE, GSAE, MGSAE]
#: the methods with the l2,1 group penalty (the lambda sweep)
GROUP_SPARSE_METHODS = [GSAE, MGSAE]

#: The paper's recipe taken apart, one ingredient a rung: the pooled SAE; the same TopK SAE with one
#: pre-bias per modality (centring each modality, nothing else); + the l2,1 group penalty (GSAE);
#: + the shared cross-modal mask (MGSAE); and the mask without the penalty (MGSAE at lambda = 0).
LADDER = [SAE, CENTRED_SAE, GSAE, MGSAE, MASKED_SAE]
#: each rung beside the rung it adds one ingredient to, and that ingredient in words
LADDER_STEPS = [(SAE, CENTRED_SAE, "centring each modality"), (CENTRED_SAE, GSAE, "the l2,1 group penalty"),
                (GSAE, MGSAE, "the shared mask, on top of the penalty"),
                (CENTRED_SAE, MASKED_SAE, "the shared mask alone")]
