"""Shared by the encoder and cache tests: a tiny random-weight open_clip model."""

import json

import open_clip

TINY = "mmsae-test-tiny-vit"


def register_tiny_clip(tmp_path_factory) -> str:
    """A tiny ViT config (random weights only) so CPU tests take well under a second."""
    if TINY not in open_clip.list_models():
        d = tmp_path_factory.mktemp("oc_cfg")
        cfg = {"embed_dim": 64,
               "vision_cfg": {"image_size": 64, "layers": 2, "width": 64, "patch_size": 16, "head_width": 32},
               "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2}}
        (d / f"{TINY}.json").write_text(json.dumps(cfg))
        open_clip.add_model_config(d / f"{TINY}.json")
    return TINY
