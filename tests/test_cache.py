"""Sharded resumable cache + CLIP extraction end to end (random weights, offline)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

open_clip = pytest.importorskip("open_clip")
skdata = pytest.importorskip("skimage.data")
from PIL import Image  # noqa: E402

from mmsae.data.cache import CacheMismatch, EmbeddingCache, load_cache, read_manifest  # noqa: E402
from mmsae.data import EmbeddingError, ZeroShotSet, load_paired  # noqa: E402
from mmsae.embed.encoders import ClipEncoder  # noqa: E402
from mmsae.embed.extract import build_zero_shot_sets, extract_from_params, extract_pairs, extraction_help  # noqa: E402

SHARED = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "clip_vitb16_coco500.npy"
FUNCS = [skdata.astronaut, skdata.chelsea, skdata.coffee, skdata.rocket, skdata.camera, skdata.horse,
         skdata.immunohistochemistry, skdata.retina]


from clip_helpers import TINY, register_tiny_clip  # noqa: E402


@pytest.fixture(scope="module")
def enc(tmp_path_factory):
    return ClipEncoder(register_tiny_clip(tmp_path_factory), pretrained="random", device="cpu", batch_size=3)


@pytest.fixture
def pairs_csv(tmp_path):
    """9 rows: 8 real images and a broken one at index 3; captions name the image."""
    rows = []
    for i, f in enumerate(FUNCS):
        p = tmp_path / f"img{i}.png"
        Image.fromarray(np.asarray(f())).resize((40, 40)).save(p)
        rows.append((p.name, f"caption {i} {f.__name__}"))
    (tmp_path / "bad.jpg").write_bytes(b"\xff\xd8 truncated")
    rows.insert(3, ("bad.jpg", "caption of a broken image"))
    (tmp_path / "pairs.csv").write_text("path,caption\n" + "".join(f"{p},{c}\n" for p, c in rows))
    return tmp_path / "pairs.csv"


def test_extract_cache_and_pairing(enc, pairs_csv, tmp_path):
    out = tmp_path / "cache"
    pe = extract_pairs("clip", out, pairs_csv, encoder=enc, shard_size=4, progress=False)
    assert len(pe) == 8 and pe.dim == 64
    assert isinstance(pe.x, np.memmap) and isinstance(pe.y, np.memmap)  # memory-mapped
    np.testing.assert_allclose(np.linalg.norm(pe.x, axis=1), 1, atol=1e-5)
    assert pe.meta["normalized"] is True and pe.meta["rows_skipped"] == 1
    assert "unreadable image" in next(iter(pe.meta["skipped_reasons"]))
    # pairing: row i's image and caption belong together (bad row 3 dropped, nothing shifted)
    idx = np.load(out / "index.npy")
    assert idx.tolist() == [0, 1, 2, 4, 5, 6, 7, 8]
    assert pe.captions[3] == "caption 3 rocket"
    ims = [Image.open(pairs_csv.parent / f"img{i}.png") for i in range(8)]
    np.testing.assert_allclose(pe.x, enc.encode_images(ims), atol=1e-5)
    np.testing.assert_allclose(pe.y, enc.encode_texts(pe.captions), atol=1e-5)
    m = read_manifest(out)
    assert m["complete"] and m["rows_done"] == 8 and m["rows_skipped"] == 1
    assert m["identity"]["encoder"]["name"] == "clip" and m["identity"]["encoder"]["pretrained"] == "random"
    assert m["identity"]["normalized"] is True and len(m["shards"]) == 3
    assert all(len(r["sha256"]) == 64 for r in m["shards"].values())
    # the folder loads through the generic loader notebooks use
    pe2 = load_paired(out, expect_normalized=True)
    np.testing.assert_array_equal(np.asarray(pe2.x), np.asarray(pe.x))


def test_resume_after_interruption_skips_finished_shards(enc, pairs_csv, tmp_path, monkeypatch):
    out = tmp_path / "cache"
    calls = {"n": 0}
    real = enc.encode_images

    def flaky(images, batch_size=None):
        calls["n"] += 1
        if calls["n"] == 3:  # dies while encoding the second shard
            raise KeyboardInterrupt
        return real(images, batch_size)

    monkeypatch.setattr(enc, "encode_images", flaky)
    with pytest.raises(KeyboardInterrupt):
        extract_pairs("clip", out, pairs_csv, encoder=enc, shard_size=4, progress=False)
    m = read_manifest(out)
    assert not m["complete"] and list(m["shards"]) == ["0"]
    with pytest.raises(EmbeddingError, match="unfinished"):
        load_cache(out)
    assert len(load_cache(out, allow_partial=True)) == 3

    seen: list[int] = []

    def counting(images, batch_size=None):
        seen.append(len(images))
        return real(images, batch_size)

    monkeypatch.setattr(enc, "encode_images", counting)
    pe = extract_pairs("clip", out, pairs_csv, encoder=enc, shard_size=4, progress=False)
    assert sum(seen) == 5  # rows 4..8 only; shard 0 (rows 0..3) was not re-encoded
    monkeypatch.setattr(enc, "encode_images", real)
    fresh = extract_pairs("clip", tmp_path / "fresh", pairs_csv, encoder=enc, shard_size=4, progress=False)
    np.testing.assert_allclose(np.asarray(pe.x), np.asarray(fresh.x), atol=1e-6)
    assert pe.captions == fresh.captions
    # a finished cache is simply loaded
    seen.clear()
    monkeypatch.setattr(enc, "encode_images", counting)
    extract_pairs("clip", out, pairs_csv, encoder=enc, shard_size=4, progress=False)
    assert seen == []


def test_mismatched_manifest_is_refused(enc, pairs_csv, tmp_path, tmp_path_factory):
    out = tmp_path / "cache"
    extract_pairs("clip", out, pairs_csv, encoder=enc, shard_size=4, progress=False)
    other = ClipEncoder(register_tiny_clip(tmp_path_factory), pretrained="random", seed=1, device="cpu")
    with pytest.raises(CacheMismatch, match="encoder.seed"):
        extract_pairs("clip", out, pairs_csv, encoder=other, shard_size=4, progress=False)
    with pytest.raises(CacheMismatch, match="shard_size"):
        extract_pairs("clip", out, pairs_csv, encoder=enc, shard_size=5, progress=False)
    pe = extract_pairs("clip", out, pairs_csv, encoder=other, shard_size=4, progress=False, overwrite=True)
    assert read_manifest(out)["identity"]["encoder"]["seed"] == 1 and len(pe) == 8


def test_corrupt_shard_is_recomputed_and_consolidated_checked(tmp_path):
    c = EmbeddingCache(tmp_path / "c", {"encoder": {"name": "t"}, "dataset": "d", "normalized": False}, dim=2,
                       shard_size=2)
    for k in range(2):
        c.write_shard(k, {"x": np.ones((2, 2)) * k, "y": np.zeros((2, 2))}, [2 * k, 2 * k + 1],
                      captions=["a", "b"])
    c.finalize()
    pe = load_cache(tmp_path / "c")
    assert len(pe) == 4 and pe.captions == ["a", "b", "a", "b"]
    # tamper with a consolidated file -> checksum error naming it
    x = np.load(tmp_path / "c" / "x.npy")
    x[0, 0] = 5
    np.save(tmp_path / "c" / "x.npy", x)
    with pytest.raises(EmbeddingError, match="x.npy"):
        load_cache(tmp_path / "c")
    (tmp_path / "c" / "x.npy").unlink()  # rebuilt from the shards
    assert float(load_cache(tmp_path / "c").x[0, 0]) == 0.0
    # a damaged shard is dropped on reopen (and recomputed by the next run)
    p = tmp_path / "c" / "shards" / "shard_00001.npz"
    p.write_bytes(p.read_bytes()[:-10])
    with pytest.warns(UserWarning, match="checksum"):
        c2 = EmbeddingCache(tmp_path / "c", {"encoder": {"name": "t"}, "dataset": "d", "normalized": False},
                            dim=2, shard_size=2)
    assert not c2.complete and c2.resume_index() == 2


def test_zero_shot_sets(enc, tmp_path):
    root = tmp_path / "cifar_like"
    for cls, f in (("cat", skdata.chelsea), ("airplane", skdata.rocket), ("horse", skdata.horse)):
        (root / cls).mkdir(parents=True)
        for i in range(2):
            Image.fromarray(np.asarray(f())).resize((32 + i, 32)).save(root / cls / f"{i}.png")
    (root / "cat" / "broken.png").write_bytes(b"no")
    sets = build_zero_shot_sets(enc, {"cifar10": str(root)}, tmp_path / "out", progress=False)
    zs = sets["cifar10"]
    assert zs.emb.shape == (6, 64) and zs.class_emb.shape == (10, 64)
    assert sorted(set(zs.labels.tolist())) == [0, 3, 7]
    assert zs.meta["rows_skipped"] == 1
    loaded = ZeroShotSet.load(tmp_path / "out" / "zeroshot_cifar10.safetensors")
    np.testing.assert_allclose(loaded.class_emb, zs.class_emb)
    np.testing.assert_allclose(np.linalg.norm(zs.class_emb, axis=1), 1, atol=1e-5)


def test_help_and_missing_data(enc, tmp_path):
    assert "train_source" in extraction_help() and "zeroshot_imagenet" in extraction_help()
    with pytest.raises(EmbeddingError, match="no data given"):
        extract_pairs("clip", tmp_path / "x", None, encoder=enc)
    with pytest.raises(EmbeddingError, match="train_source"):
        extract_from_params("clip", {}, tmp_path)


@pytest.mark.skipif(not SHARED.is_file(), reason=f"shared real embeddings not present at {SHARED}")
def test_precomputed_shared_embeddings_end_to_end(tmp_path):
    res = extract_from_params(f"embeddings:{SHARED}", {}, tmp_path)
    pe = res["train"]
    assert len(pe) == 500 and pe.dim == 512 and pe.meta["normalized"] is True
    # real CLIP pairs: matched image-text cosine clearly above unmatched
    x, y = np.asarray(pe.x, np.float32), np.asarray(pe.y, np.float32)
    s = x @ y.T
    assert np.diag(s).mean() > s.mean() + 0.05
    # round trip through a cache folder: identical rows, memory-mapped
    c = EmbeddingCache(tmp_path / "c", {"encoder": {"name": "clip", "model": "ViT-B-16"}, "dataset": "coco500",
                                        "normalized": True}, dim=512, shard_size=200)
    for k in range(3):
        sl = slice(200 * k, min(500, 200 * (k + 1)))
        c.write_shard(k, {"x": x[sl], "y": y[sl]}, np.arange(500)[sl])
    c.finalize()
    back = load_paired(tmp_path / "c", expect_normalized=True)
    assert isinstance(back.x, np.memmap)
    np.testing.assert_array_equal(np.asarray(back.x), x)
    tr, va = back.split(0.2)
    assert len(tr) + len(va) == 500


def test_extract_from_params_notebook_glue(enc, pairs_csv, tmp_path):
    """String parameters as the notebook receives them from run_all.sh --param KEY=VALUE."""
    params = {"train_source": str(pairs_csv), "val_source": str(pairs_csv), "val_limit": "4",
              "clip_model": TINY, "clip_pretrained": "random", "device": "cpu", "shard_size": "4",
              "progress": "false", "batch_size": "4", "zeroshot_imagenet": "", "unrelated_param": 3}
    res = extract_from_params("clip", params, tmp_path / "out")
    assert len(res["train"]) == 8 and len(res["val"]) == 3  # rows 0..3 minus the broken one
    assert res["zeroshot"] == {}
    np.testing.assert_allclose(np.asarray(res["train"].x), enc.encode_images(
        [Image.open(pairs_csv.parent / f"img{i}.png") for i in range(8)]), atol=1e-5)
    assert (tmp_path / "out" / "train" / "manifest.json").is_file()
    assert read_manifest(tmp_path / "out" / "val")["identity"]["dataset"]["limit"] == 4
