"""The names of the methods compared, typed once.

``METHOD_ORDER`` is the one list of the methods and the order of every table, figure and
profile; the constants below are its entries (for the few places that name one method or
a subset). Everything else (profiles, the method registry of
:mod:`mmsae.study.experiments`, the figure colours, the notebooks) reads the names from
here; ``tests/test_layout.py`` fails on a literal list of three or more of them elsewhere.
The paper's own rows in :mod:`mmsae.study.paper` are facts about the paper and keep its names.
"""

from __future__ import annotations

__all__ = ["METHOD_ORDER", "SAE", "BATCHTOPK", "MATRYOSHKA", "GSAE", "MGSAE", "MODALITY_SPECIFIC",
           "SHARED_SUPPORT", "PAPER_METHODS", "GROUP_SPARSE_METHODS"]

METHOD_ORDER = ["SAE", "BatchTopK", "Matryoshka", "GSAE", "MGSAE", "ModalitySpecific", "SharedSupport"]
SAE, BATCHTOPK, MATRYOSHKA, GSAE, MGSAE, MODALITY_SPECIFIC, SHARED_SUPPORT = METHOD_ORDER

#: the three methods of the paper's first version (its Tables 1-3 and the width/K sweep)
PAPER_METHODS = [SAE, GSAE, MGSAE]
#: the methods with the l2,1 group penalty (the lambda sweep)
GROUP_SPARSE_METHODS = [GSAE, MGSAE]
