"""Captions travel with the embeddings; labels and the zero-shot set derived from them."""

import json

import numpy as np
import pytest

from mmsae.data import EmbeddingError, PairedEmbeddings, load_paired
from mmsae.data.caption_labels import (CAPTION_ZERO_SHOT, caption_labels, caption_zero_shot_set, choose_classes,
                                       class_mentions, template_class_embeddings)
from mmsae.data.captions import find_captions, read_captions
from mmsae.embed.extract import extract_from_params

from conftest import SHIPPED


def _pairs(n=60, d=16, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, d)).astype(np.float32)
    y = rng.standard_normal((n, d)).astype(np.float32)
    return PairedEmbeddings(x / np.linalg.norm(x, axis=1, keepdims=True), y / np.linalg.norm(y, axis=1, keepdims=True),
                            meta={"normalized": True})


def _save_npy(path, p):
    np.save(path, np.stack([p.x, p.y]))
    return path


def test_sibling_captions_file_is_found_and_attached(tmp_path):
    p = _pairs(5)
    f = _save_npy(tmp_path / "mine.npy", p)
    assert load_paired(f).captions is None  # no captions file: works as before
    rows = [{"row": i, "image_id": 100 + i, "embedded_caption": f"cap {i} b",
             "captions": [f"cap {i} a", f"cap {i} b"]} for i in range(5)]
    (tmp_path / "mine_captions.json").write_text(json.dumps({"rows": rows}))
    assert find_captions(f) == tmp_path / "mine_captions.json"
    got = load_paired(f)
    assert got.caption_lists()[3] == ["cap 3 b", "cap 3 a"]  # the embedded caption first
    assert got.meta["item_ids"] == [100, 101, 102, 103, 104]
    sub = got.subset([4, 1])
    assert sub.caption_lists() == [["cap 4 b", "cap 4 a"], ["cap 1 b", "cap 1 a"]] and sub.meta["item_ids"] == [104, 101]
    assert load_paired(f, captions=None).captions is None
    # round trip through the store keeps several captions per pair
    back = load_paired(got.save(tmp_path / "s.safetensors"))
    assert back.caption_lists() == got.caption_lists()


def test_explicit_captions_option_and_plain_formats(tmp_path):
    p = _pairs(4)
    f = _save_npy(tmp_path / "e.npy", p)
    (tmp_path / "c.txt").write_text("one\ntwo\nthree\nfour\n", encoding="utf-8")
    got = extract_from_params(f"embeddings:{f}", {"captions": str(tmp_path / "c.txt")}, tmp_path / "out")
    assert got["train"].caption_lists() == [["one"], ["two"], ["three"], ["four"]]
    (tmp_path / "c.json").write_text(json.dumps(["a", ["b", "b2"], "c", "d"]))
    assert read_captions(tmp_path / "c.json", 4)[0][1] == ["b", "b2"]


@pytest.mark.parametrize("content, problem", [
    (b"\xff\xfe not utf8", "not UTF-8"),
    (b"[\"a\", \"b\"", "not valid JSON"),
    (json.dumps(["a", "b", "c"]).encode(), "3 caption rows for 4 embedding pairs"),
    (json.dumps(["a", "", "c", "d"]).encode(), "row 1: every caption must be a non-empty string"),
    (json.dumps({"rows": [{"row": 1, "captions": ["a"]}] * 4}).encode(), "row 0 says 'row': 1"),
    (json.dumps({"rows": [{"captions": ["a"], "embedded_caption": "zz"}] * 4}).encode(), "not among its captions"),
])
def test_bad_captions_file_is_refused_naming_file_and_problem(tmp_path, content, problem):
    f = _save_npy(tmp_path / "e.npy", _pairs(4))
    bad = tmp_path / "e_captions.json"
    bad.write_bytes(content)
    with pytest.raises(EmbeddingError) as e:
        load_paired(f)
    assert str(bad) in str(e.value) and problem in str(e.value)


def test_captions_of_other_embeddings_are_refused_by_id(tmp_path):
    p = _pairs(3)
    p.meta["item_ids"] = [1, 2, 3]
    (tmp_path / "c.json").write_text(json.dumps({"rows": [{"image_id": i, "captions": ["x"]} for i in (1, 9, 3)]}))
    from mmsae.data.captions import attach_captions

    with pytest.raises(EmbeddingError, match="row 1 describes item 9, but pair 1 .* is item 2"):
        attach_captions(p, tmp_path / "c.json")


def test_labelling_rule():
    caps = [["a dog on a couch", "the dog sleeps", "a puppy", "a cat too"],  # dog: 3 of 4 -> dog
            ["a dog and a cat", "dogs and cats", "a cat with a dog", "x"],  # dog 3, cat 3 -> ambiguous
            ["a red bus", "a bus", "street", "a road"],  # bus 2 of 4 -> none
            ["kitten"]]  # a single caption: it must name the class
    classes = {"dog": ("dog", "dogs", "puppy"), "cat": ("cat", "cats", "kitten"), "bus": ("bus",)}
    lab, names = caption_labels(caps, classes, min_captions=3)
    assert names == ["dog", "cat", "bus"] and lab.tolist() == [0, -1, -1, 1]
    # whole words only: "category" does not mention "cat"
    assert class_mentions([["a category", "hotdog"]], {"cat": ("cat",), "dog": ("dog",)}).tolist() == [[0, 0]]


def test_classes_come_from_training_captions_only():
    train = [["a dog"] * 3] * 6 + [["a cat"] * 3] * 6 + [["a bus"] * 3] * 2
    chosen = choose_classes(train, min_train=5, classes={"dog": ("dog",), "cat": ("cat",), "bus": ("bus",)})
    assert list(chosen) == ["dog", "cat"]


def test_caption_zero_shot_set_uses_training_text_for_prompts():
    rng = np.random.default_rng(0)
    d = 8
    centers = np.eye(d, dtype=np.float32)[:3] * 3
    def make(n, labels, shift):
        x = centers[labels] + rng.standard_normal((n, d)).astype(np.float32) * 0.3
        y = centers[labels] + shift + rng.standard_normal((n, d)).astype(np.float32) * 0.3
        words = ["dog", "cat", "airplane"]
        caps = [[f"a {words[k]} here"] * 5 for k in labels]
        return PairedEmbeddings(x / np.linalg.norm(x, axis=1, keepdims=True), y / np.linalg.norm(y, axis=1, keepdims=True),
                                captions=caps)
    tr = make(60, np.repeat([0, 1, 2], 20), 0.1)
    va = make(12, np.repeat([0, 1, 2], 4), 0.1)
    va.captions[0] = ["a dog"] * 3 + ["a cat"] * 2  # still dog (cat named in only 2)
    va.captions[1] = ["a dog and a cat"] * 5  # two classes: unlabelled
    zs = caption_zero_shot_set(tr, va, min_train=8)
    assert zs.name == CAPTION_ZERO_SHOT and zs.class_names == ["airplane", "cat", "dog"]  # CLASS_WORDS order
    assert zs.meta["val_rows"] == [0] + list(range(2, 12)) and len(zs.labels) == 11
    assert zs.labels[0] == 2 and zs.labels[-1] == 0  # dog, airplane
    ty = tr.y[:20].mean(0)  # the dog training pairs' text
    np.testing.assert_allclose(zs.class_emb[2], ty / np.linalg.norm(ty), rtol=1e-5)
    # templated prompts through any text encoder
    emb = template_class_embeddings(["dog", "cat"], lambda texts: np.ones((len(texts), 4)) * len(texts[0]),
                                    templates=("a photo of a {}.", "a {}"))
    assert emb.shape == (2, 4) and np.allclose(np.linalg.norm(emb, axis=1), 1)
    assert caption_zero_shot_set(PairedEmbeddings(tr.x, tr.y), va) is None  # no captions: no set


def test_shipped_coco_captions_label_the_real_pairs():
    f = SHIPPED / "clip_vitb16_coco500.npy"
    if not (SHIPPED / "clip_vitb16_coco500_captions.json").exists():
        pytest.skip("shipped COCO captions not found")
    p = load_paired(f)
    caps = p.caption_lists()
    assert len(caps) == 500 and all(len(c) == 5 for c in caps)
    assert caps[0][0] == "A motorcycle with its brake extended standing outside"
    tr, va = p.split(0.2, seed=0)
    zs = caption_zero_shot_set(tr, va)
    assert {"airplane", "kitchen", "person"} <= set(zs.class_names) and len(zs.labels) >= 40
    from mmsae.eval import metrics

    assert metrics.zero_shot_accuracy(zs.emb, zs.labels, zs.class_emb) > 0.8  # real CLIP classifies its classes


def test_shipped_captions_match_their_checksum_and_notice():
    import hashlib

    f = SHIPPED / "clip_vitb16_coco500_captions.json"
    if not f.exists():
        pytest.skip("shipped COCO captions not found")
    assert hashlib.sha256(f.read_bytes()).hexdigest() == \
        "3a6a04f1697f355d5b2582c053e2bdf11a4b85be51978995272b90c86df7a2ec"
    notice = (SHIPPED / "README.md").read_text()
    assert "CC BY 4.0" in notice and "clip_vitb16_coco500_captions.json" in notice
