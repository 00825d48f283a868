"""Class labels derived from captions, and the zero-shot set they give.

Real paired data (the 500 COCO pairs shipped in ``data/``) carries captions but no class
labels. The paper's headline measure, zero-shot classification through the SAE, needs
labelled images and one text "prompt" per class; both are derived here.

**The labelling rule** (:func:`caption_labels`): an item mentions class ``c`` in a caption
when one of ``c``'s word forms (:data:`CLASS_WORDS`: the 80 COCO object classes with their
plurals and common synonyms, plus a few scene and food words) occurs in it as a whole word
(or phrase). Among a set of classes, the item is labelled ``c`` when at least
``min_captions`` of *all* its captions (COCO: 3 of 5) mention ``c`` and no other class of
the set reaches that count: single-label items only; every other item gets ``-1``. With
fewer captions than ``min_captions``, all of them must mention it.

**Which classes** (:func:`choose_classes`): from the *training* pairs only, the classes
with at least ``min_train`` single-label training items, found by iterating (start from
every class reaching ``min_captions`` on ``min_train`` training items, label, drop the
classes left with too few, relabel, until nothing changes). The held-out captions only
label the test items.

**The zero-shot set** (:func:`caption_zero_shot_set`): the chosen classes; the class "prompt" is the
normalised mean *text* embedding of that class's **training** pairs (no held-out caption is
used to build a class; no text encoder is needed offline). The samples are the held-out
*images* with a kept label. Where a text encoder with weights is at hand, the paper's
templated prompts ("a photo of a {class}.") can be used instead
(:func:`template_class_embeddings`).
"""

from __future__ import annotations

import re
from typing import Callable, Sequence

import numpy as np

from .store import EmbeddingError, PairedEmbeddings, ZeroShotSet, l2_normalize

__all__ = ["CLASS_WORDS", "class_mentions", "caption_labels", "choose_classes", "caption_zero_shot_set",
           "template_class_embeddings", "CAPTION_ZERO_SHOT"]

#: Name of the zero-shot set built from captions (its columns are ``zs_caption_classes_*``).
CAPTION_ZERO_SHOT = "caption_classes"

_COCO = {
    "person": "person people man men woman women boy boys girl girls child children kid kids guy guys lady ladies "
              "player players skier skiers surfer surfers skateboarder skateboarders",
    "bicycle": "bicycle bicycles bike bikes", "car": "car cars", "motorcycle": "motorcycle motorcycles motorbike",
    "airplane": "airplane airplanes plane planes jet jets aircraft airliner", "bus": "bus buses",
    "train": "train trains", "truck": "truck trucks", "boat": "boat boats ship ships",
    "traffic light": "traffic light|traffic lights|stoplight", "fire hydrant": "fire hydrant|hydrant",
    "stop sign": "stop sign", "parking meter": "parking meter|parking meters", "bench": "bench benches",
    "bird": "bird birds", "cat": "cat cats kitten kittens", "dog": "dog dogs puppy puppies",
    "horse": "horse horses", "sheep": "sheep lamb", "cow": "cow cows cattle", "elephant": "elephant elephants",
    "bear": "bear bears", "zebra": "zebra zebras", "giraffe": "giraffe giraffes",
    "backpack": "backpack backpacks", "umbrella": "umbrella umbrellas", "handbag": "handbag handbags purse",
    "tie": "tie ties necktie", "suitcase": "suitcase suitcases luggage", "frisbee": "frisbee frisbees",
    "skis": "skis ski skiing", "snowboard": "snowboard snowboarder snowboarding", "sports ball": "ball",
    "kite": "kite kites", "baseball bat": "baseball bat|bat", "baseball glove": "baseball glove|mitt",
    "skateboard": "skateboard skateboards skateboarding", "surfboard": "surfboard surfboards surfing",
    "tennis racket": "tennis racket|racket|racquet", "bottle": "bottle bottles",
    "wine glass": "wine glass|wine glasses", "cup": "cup cups mug", "fork": "fork forks",
    "knife": "knife knives", "spoon": "spoon spoons", "bowl": "bowl bowls", "banana": "banana bananas",
    "apple": "apple apples", "sandwich": "sandwich sandwiches", "orange": "orange oranges",
    "broccoli": "broccoli", "carrot": "carrot carrots", "hot dog": "hot dog|hot dogs|hotdog",
    "pizza": "pizza pizzas", "donut": "donut donuts doughnut doughnuts", "cake": "cake cakes",
    "chair": "chair chairs", "couch": "couch couches sofa", "potted plant": "potted plant|houseplant",
    "bed": "bed beds", "dining table": "dining table|table", "toilet": "toilet toilets",
    "tv": "tv television", "laptop": "laptop laptops", "mouse": "mouse", "remote": "remote remotes",
    "keyboard": "keyboard keyboards", "cell phone": "cell phone|cellphone|phone|phones",
    "microwave": "microwave", "oven": "oven ovens stove", "toaster": "toaster", "sink": "sink sinks",
    "refrigerator": "refrigerator fridge", "book": "book books", "clock": "clock clocks",
    "vase": "vase vases", "scissors": "scissors", "teddy bear": "teddy bear|teddy bears|stuffed animal",
    "hair drier": "hair drier|hair dryer", "toothbrush": "toothbrush toothbrushes",
}
_SCENES = {
    "kitchen": "kitchen kitchens", "bathroom": "bathroom bathrooms restroom", "bedroom": "bedroom",
    "street": "street streets road", "beach": "beach", "food": "food meal dish plate",
    "field": "field grass grassy", "snow": "snow snowy", "water": "water ocean lake river",
}


def _forms(spec: str) -> tuple[str, ...]:
    """'a b|c d' -> ('a b', 'c d'); 'a b c' (no '|') -> ('a', 'b', 'c')."""
    return tuple(s.strip() for s in spec.split("|")) if "|" in spec else tuple(spec.split())


#: class -> its word forms (whole words or phrases, lower case).
CLASS_WORDS: dict[str, tuple[str, ...]] = {c: _forms(v) for c, v in {**_COCO, **_SCENES}.items()}


def _pattern(forms: Sequence[str]) -> re.Pattern:
    return re.compile(r"\b(?:" + "|".join(re.escape(f) for f in sorted(forms, key=len, reverse=True)) + r")\b")


def class_mentions(captions: Sequence[Sequence[str]], classes: dict[str, Sequence[str]] | None = None) -> np.ndarray:
    """``(N, C)`` counts: how many of item ``i``'s captions mention class ``c``."""
    classes = CLASS_WORDS if classes is None else classes
    pats = [_pattern(f) for f in classes.values()]
    out = np.zeros((len(captions), len(pats)), np.int64)
    for i, caps in enumerate(captions):
        low = [c.lower() for c in caps]
        for j, p in enumerate(pats):
            out[i, j] = sum(1 for c in low if p.search(c))
    return out


def _needed(captions: Sequence[Sequence[str]], min_captions: int) -> np.ndarray:
    """``(N, 1)``: how many of each item's captions must name a class (all of them when it has fewer)."""
    return np.array([min(min_captions, max(1, len(c))) for c in captions])[:, None]


def caption_labels(captions: Sequence[Sequence[str]], classes: dict[str, Sequence[str]] | None = None,
                   min_captions: int = 3, counts: np.ndarray | None = None) -> tuple[np.ndarray, list[str]]:
    """Single-label class of every item among ``classes`` (``-1``: none, or several) by the
    module's rule, and the class names. ``counts``: :func:`class_mentions` of ``captions``
    under ``classes``, when already computed."""
    classes = CLASS_WORDS if classes is None else classes
    counts = class_mentions(captions, classes) if counts is None else counts
    need = _needed(captions, min_captions)
    hit = counts >= need
    labels = np.where(hit.sum(1) == 1, hit.argmax(1), -1).astype(np.int64)
    return labels, list(classes)


def choose_classes(train_captions: Sequence[Sequence[str]], min_train: int = 8, min_captions: int = 3,
                   classes: dict[str, Sequence[str]] | None = None) -> dict[str, tuple[str, ...]]:
    """The classes with at least ``min_train`` single-label training items (module docstring)."""
    classes = CLASS_WORDS if classes is None else classes
    names = list(classes)
    counts = class_mentions(train_captions, classes)
    need = _needed(train_captions, min_captions)
    cand = np.nonzero((counts >= need).sum(0) >= min_train)[0]
    while len(cand):
        labels, _ = caption_labels(train_captions, {names[c]: classes[names[c]] for c in cand}, min_captions,
                                   counts=counts[:, cand])
        n = np.bincount(labels[labels >= 0], minlength=len(cand))
        if (n >= min_train).all():
            break
        cand = cand[n >= min_train]
    return {names[c]: tuple(classes[names[c]]) for c in cand}


def template_class_embeddings(class_names: Sequence[str], encode_texts: Callable[[list[str]], np.ndarray],
                              templates: Sequence[str] = ("a photo of a {}.",)) -> np.ndarray:
    """The paper's prompts: each class through every template, encoded, averaged, normalised."""
    out = []
    for c in class_names:
        e = l2_normalize(np.asarray(encode_texts([t.format(c) for t in templates]), np.float32))
        out.append(e.mean(0))
    return l2_normalize(np.stack(out))


def caption_zero_shot_set(train: PairedEmbeddings, val: PairedEmbeddings, min_captions: int = 3,
                          min_train: int = 8, classes: dict[str, Sequence[str]] | None = None,
                          class_emb_fn: Callable[[list[str]], np.ndarray] | None = None,
                          name: str = CAPTION_ZERO_SHOT) -> ZeroShotSet | None:
    """The zero-shot set of the module docstring, or ``None`` (with the reason printed) when
    the pairs carry no captions, fewer than two classes qualify or no held-out item is
    labelled. ``class_emb_fn``: class names -> prompt embeddings (e.g.
    :func:`template_class_embeddings` with a text encoder); default: the mean text embedding
    of each class's training pairs."""
    tc, vc = train.caption_lists(), val.caption_lists()
    if tc is None or vc is None:
        print("no caption zero-shot set: the pairs carry no captions")
        return None
    chosen = choose_classes(tc, min_train, min_captions, classes)
    if len(chosen) < 2:
        print(f"no caption zero-shot set: {len(chosen)} class(es) with >= {min_train} single-label training pairs")
        return None
    kept = list(chosen)
    lt, _ = caption_labels(tc, chosen, min_captions)
    lv, _ = caption_labels(vc, chosen, min_captions)
    rows = np.nonzero(lv >= 0)[0]
    if len(rows) == 0:
        print("no caption zero-shot set: no held-out pair is labelled with one of " + ", ".join(kept))
        return None
    if class_emb_fn is None:
        ty = np.asarray(train.y, np.float32)
        class_emb = l2_normalize(np.stack([ty[lt == c].mean(0) for c in range(len(kept))]))
        prompts = "mean text embedding of the class's training pairs"
    else:
        class_emb = np.asarray(class_emb_fn(kept), np.float32)
        prompts = "templated prompts through a text encoder"
    if class_emb.shape[1] != val.dim:
        raise EmbeddingError(f"class prompts of d = {class_emb.shape[1]} for pairs of d = {val.dim}")
    meta = {"rule": f"single-label items: one class named in >= {min_captions} of an item's captions",
            "classes_from": f"training pairs: classes with >= {min_train} single-label items",
            "prompts": prompts, "min_train": min_train, "min_captions": min_captions, "val_rows": rows.tolist(),
            "n_train_per_class": dict(zip(kept, np.bincount(lt[lt >= 0], minlength=len(kept)).tolist())),
            "n_val_per_class": dict(zip(kept, np.bincount(lv[rows], minlength=len(kept)).tolist()))}
    return ZeroShotSet(name, np.asarray(val.x, np.float32)[rows], lv[rows], class_emb, kept,
                       meta).validate(expected_dim=val.dim)
