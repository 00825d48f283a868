"""Class names and prompt templates for zero-shot evaluation.

Image sets (CLIP): CIFAR-10, CIFAR-100 (in the datasets' label order) with the 18
CIFAR templates of the CLIP paper's prompt-engineering notebook; ImageNet class names
and the 80 OpenAI templates come from ``open_clip.zero_shot_metadata`` when open_clip is
installed (label order = sorted WordNet ids, the standard ILSVRC-2012 order).

Audio sets (CLAP): GTZAN genres (folder names of ``genres_original``) and NSynth
instrument families (in ``instrument_family`` id order), each with a few audio templates.

:func:`get_prompt_set` returns a :class:`PromptSet` (names used to match folders,
display names filled into templates, templates as format strings).
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "PromptSet",
    "CIFAR10_CLASSES",
    "CIFAR100_CLASSES",
    "CIFAR_TEMPLATES",
    "GTZAN_GENRES",
    "NSYNTH_FAMILIES",
    "MUSIC_GENRE_TEMPLATES",
    "INSTRUMENT_TEMPLATES",
    "imagenet_classes",
    "imagenet_templates",
    "get_prompt_set",
    "available_prompt_sets",
]

CIFAR10_CLASSES = [
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
]

CIFAR100_CLASSES = [
    "apple", "aquarium_fish", "baby", "bear", "beaver", "bed", "bee", "beetle", "bicycle", "bottle",
    "bowl", "boy", "bridge", "bus", "butterfly", "camel", "can", "castle", "caterpillar", "cattle",
    "chair", "chimpanzee", "clock", "cloud", "cockroach", "couch", "crab", "crocodile", "cup", "dinosaur",
    "dolphin", "elephant", "flatfish", "forest", "fox", "girl", "hamster", "house", "kangaroo", "keyboard",
    "lamp", "lawn_mower", "leopard", "lion", "lizard", "lobster", "man", "maple_tree", "motorcycle", "mountain",
    "mouse", "mushroom", "oak_tree", "orange", "orchid", "otter", "palm_tree", "pear", "pickup_truck", "pine_tree",
    "plain", "plate", "poppy", "porcupine", "possum", "rabbit", "raccoon", "ray", "road", "rocket",
    "rose", "sea", "seal", "shark", "shrew", "skunk", "skyscraper", "snail", "snake", "spider",
    "squirrel", "streetcar", "sunflower", "sweet_pepper", "table", "tank", "telephone", "television", "tiger", "tractor",
    "train", "trout", "tulip", "turtle", "wardrobe", "whale", "willow_tree", "wolf", "woman", "worm",
]

# The CIFAR-10 / CIFAR-100 templates of the CLIP prompt-engineering notebook.
CIFAR_TEMPLATES = [
    "a photo of a {}.", "a blurry photo of a {}.", "a black and white photo of a {}.",
    "a low contrast photo of a {}.", "a high contrast photo of a {}.", "a bad photo of a {}.",
    "a good photo of a {}.", "a photo of a small {}.", "a photo of a big {}.", "a photo of the {}.",
    "a blurry photo of the {}.", "a black and white photo of the {}.", "a low contrast photo of the {}.",
    "a high contrast photo of the {}.", "a bad photo of the {}.", "a good photo of the {}.",
    "a photo of the small {}.", "a photo of the big {}.",
]

# GTZAN folder names (genres_original/<genre>/*.wav), label order = sorted.
GTZAN_GENRES = ["blues", "classical", "country", "disco", "hiphop", "jazz", "metal", "pop", "reggae", "rock"]
_GTZAN_DISPLAY = {"hiphop": "hip hop"}

# NSynth instrument_family ids 0..10 (instrument_family_str in examples.json).
NSYNTH_FAMILIES = [
    "bass", "brass", "flute", "guitar", "keyboard", "mallet", "organ", "reed", "string", "synth_lead", "vocal",
]
_NSYNTH_DISPLAY = {"synth_lead": "synth lead", "vocal": "voice", "string": "string instrument",
                   "reed": "reed instrument", "mallet": "mallet percussion"}

MUSIC_GENRE_TEMPLATES = [
    "This audio is a {} song.", "a recording of {} music.", "a {} track.", "music in the style of {}.",
    "a piece of {} music.",
]
INSTRUMENT_TEMPLATES = [
    "the sound of a {}.", "a recording of a {}.", "a {} playing a single note.", "a note played on a {}.",
    "this is the sound of a {}.",
]


@dataclass(frozen=True)
class PromptSet:
    """Class names for one evaluation set and the templates to embed them with."""

    name: str
    classes: tuple[str, ...]          # identifiers (dataset label order; folder names)
    display: tuple[str, ...]          # what goes into the templates
    templates: tuple[str, ...]        # format strings with one ``{}``
    modality: str = "image"           # "image" or "audio"

    def prompts(self, i: int) -> list[str]:
        """All prompts for class ``i``."""
        return [t.format(self.display[i]) for t in self.templates]

    def __len__(self) -> int:
        return len(self.classes)


def _template_string(t) -> str:
    """open_clip stores templates as ``lambda c: f'...{c}...'``; turn them into format strings."""
    if isinstance(t, str):
        return t
    marker = "\x00CLASS\x00"
    s = t(marker)
    return s.replace("{", "{{").replace("}", "}}").replace(marker, "{}")


def imagenet_classes() -> list[str]:
    """The 1000 ImageNet class names in label order (open_clip's OpenAI names)."""
    try:
        from open_clip.zero_shot_metadata import IMAGENET_CLASSNAMES
    except ImportError as e:  # pragma: no cover - open_clip is a dependency of the encoders extra
        raise ImportError("ImageNet class names come from open_clip: pip install open_clip_torch") from e
    return list(IMAGENET_CLASSNAMES)


def imagenet_templates() -> list[str]:
    """The 80 OpenAI ImageNet templates as format strings."""
    from open_clip.zero_shot_metadata import OPENAI_IMAGENET_TEMPLATES

    return [_template_string(t) for t in OPENAI_IMAGENET_TEMPLATES]


def _pretty(name: str) -> str:
    return name.replace("_", " ")


def get_prompt_set(name: str) -> PromptSet:
    """``cifar10``, ``cifar100``, ``imagenet``, ``gtzan`` or ``nsynth`` (case-insensitive, '-'/'_' ignored)."""
    key = name.lower().replace("-", "").replace("_", "")
    if key == "cifar10":
        return PromptSet("cifar10", tuple(CIFAR10_CLASSES), tuple(map(_pretty, CIFAR10_CLASSES)),
                         tuple(CIFAR_TEMPLATES))
    if key == "cifar100":
        return PromptSet("cifar100", tuple(CIFAR100_CLASSES), tuple(map(_pretty, CIFAR100_CLASSES)),
                         tuple(CIFAR_TEMPLATES))
    if key in ("imagenet", "imagenet1k", "imagenetval"):
        names = imagenet_classes()
        return PromptSet("imagenet", tuple(names), tuple(names), tuple(imagenet_templates()))
    if key == "gtzan":
        return PromptSet("gtzan", tuple(GTZAN_GENRES), tuple(_GTZAN_DISPLAY.get(g, g) for g in GTZAN_GENRES),
                         tuple(MUSIC_GENRE_TEMPLATES), "audio")
    if key == "nsynth":
        return PromptSet("nsynth", tuple(NSYNTH_FAMILIES),
                         tuple(_NSYNTH_DISPLAY.get(f, _pretty(f)) for f in NSYNTH_FAMILIES),
                         tuple(INSTRUMENT_TEMPLATES), "audio")
    raise KeyError(f"unknown prompt set {name!r}; known: {', '.join(available_prompt_sets())}")


def available_prompt_sets() -> list[str]:
    return ["cifar10", "cifar100", "imagenet", "gtzan", "nsynth"]
