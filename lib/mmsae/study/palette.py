"""The project's two palettes, shared by every figure (:mod:`mmsae.study.plots`) and the latent browser.

* **Methods**: Okabe-Ito hues, one per method, in each method's record (:mod:`mmsae.models.registry`).
* **Latent categories** (:data:`CATEGORY_COLORS`): colours no method uses (Paul Tol's indigo, rose and olive,
  and a light grey), so that a category is never read as a method: "both" is indigo everywhere, in the
  neuron-category bars, the UMAPs and the browser's chips.
* **Modalities** (:data:`MODALITY_COLORS`): image and text when a figure draws both sides of one method;
  the categories' rose and olive, since image-only and text-only latents are the two sides.

No matplotlib here: the browser reads these without importing a plotting library.
"""

from __future__ import annotations

__all__ = ["PALETTE", "CATEGORY_COLORS", "CATEGORY_LABELS", "MODALITY_COLORS"]

# Okabe & Ito (2008) colour-blind-safe palette, plus two neutral greys.
PALETTE = [
    "#0072B2",  # blue
    "#D55E00",  # vermillion
    "#009E73",  # bluish green
    "#CC79A7",  # reddish purple
    "#E69F00",  # orange
    "#56B4E9",  # sky blue
    "#F0E442",  # yellow
    "#000000",  # black
    "#999999",  # grey
    "#666666",  # dark grey
]

CATEGORY_COLORS = {
    "both": "#332288",  # indigo
    "image_only": "#CC6677",  # rose
    "text_only": "#999933",  # olive
    "dead": "#CCCCCC",  # light grey
}
CATEGORY_LABELS = {"image_only": "image-only", "text_only": "text-only", "both": "both", "dead": "dead"}

MODALITY_COLORS = {"image": CATEGORY_COLORS["image_only"], "text": CATEGORY_COLORS["text_only"]}
