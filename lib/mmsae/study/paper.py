"""The paper's reported numbers (Kaushik, Barch, Fanelli, ICLR 2026), for side-by-side tables.

Facts from the paper (via ``shared/docs/paper.md``); our measured numbers are never
mixed into these tables.
"""

import pandas as pd

__all__ = ["neuron_categories", "zero_shot_clip", "clap_results"]


def neuron_categories() -> pd.DataFrame:
    """CLIP ViT-B/16, CC3M validation, 8192 latents (paper Fig. 3)."""
    return pd.DataFrame(
        [("SAE", 1817, 1316, 4618, 441), ("GSAE", 1025, 1156, 5823, 188), ("MGSAE", 853, 973, 6230, 136)],
        columns=["model", "image_only", "text_only", "both", "dead"],
    )


def zero_shot_clip() -> pd.DataFrame:
    """Zero-shot accuracy through the SAE (CLIP ViT-B/16)."""
    return pd.DataFrame(
        [("SAE", 0.657, 0.418, 0.303), ("BatchTopK", 0.657, 0.277, 0.178), ("Matryoshka", 0.587, 0.166, 0.185),
         ("GSAE", 0.808, 0.526, 0.354), ("MGSAE", 0.842, 0.554, 0.373), ("dense CLIP", 0.916, 0.687, 0.686)],
        columns=["model", "cifar10", "cifar100", "imagenet"],
    )


def clap_results() -> pd.DataFrame:
    """CLAP: GTZAN and NSynth zero-shot accuracy, FMACaps text-to-music MRR."""
    return pd.DataFrame(
        [("SAE", 0.376, 0.265, 0.023), ("GSAE", 0.705, 0.303, 0.050), ("MGSAE", 0.672, 0.354, 0.061),
         ("dense CLAP", 0.710, 0.339, 0.075)],
        columns=["model", "gtzan_acc", "nsynth_acc", "fmacaps_t2m_mrr"],
    )


def headline_values(labels) -> dict:
    """The paper's values for the headline figure's panels: "both" under the any-firing rule (share of its 8192
    latents) and, for the first zero-shot panel among ``labels``, its CIFAR-10 accuracy through the SAE."""
    out = {"both, any firing": {r.model: r.both / 8192 for r in neuron_categories().itertuples()}}
    zs = next((c for c in labels if str(c).startswith("zero-shot")), None)
    if zs is not None:  # another data set: compare the order of the methods, not the values
        out[zs] = {r.model: r.cifar10 for r in zero_shot_clip().itertuples()}
    return out
