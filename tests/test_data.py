import json

import numpy as np
import pytest

from mmsae.data import EmbeddingError, PairedEmbeddings, ZeroShotSet, l2_normalize, load_paired


def _pairs(n=20, d=8, seed=0, normalized=True):
    rng = np.random.default_rng(seed)
    x, y = rng.normal(size=(n, d)), rng.normal(size=(n, d))
    if normalized:
        x, y = l2_normalize(x), l2_normalize(y)
    return PairedEmbeddings(x.astype(np.float32), y.astype(np.float32), np.arange(n) % 3,
                            [f"cap {i}" for i in range(n)], {"encoder": "test", "normalized": normalized})


@pytest.mark.parametrize("suffix", [".safetensors", ".npz"])
def test_round_trip(tmp_path, suffix):
    p = _pairs()
    path = p.save(tmp_path / f"pairs{suffix}")
    q = load_paired(path)
    np.testing.assert_array_equal(q.x, p.x)
    np.testing.assert_array_equal(q.y, p.y)
    np.testing.assert_array_equal(q.labels, p.labels)
    assert q.captions == p.captions
    assert q.meta["encoder"] == "test" and q.meta["count"] == 20 and q.meta["dim"] == 8
    assert not list(tmp_path.glob(".*tmp"))  # no temporary files left


def test_npy_2nd_layout(tmp_path):
    p = _pairs()
    np.save(tmp_path / "e.npy", np.stack([p.x, p.y]))
    q = load_paired(tmp_path / "e.npy", expect_normalized=True)
    assert len(q) == 20 and q.dim == 8 and q.meta["normalized"] is True


def test_errors_name_file_and_problem(tmp_path):
    p = _pairs()
    bad = p.x.copy()
    bad[3, 2] = np.nan
    np.save(tmp_path / "nan.npy", np.stack([bad, p.y]))
    with pytest.raises(EmbeddingError, match=r"nan\.npy.*NaN/inf.*row 3"):
        load_paired(tmp_path / "nan.npy")
    np.save(tmp_path / "flat.npy", p.x)
    with pytest.raises(EmbeddingError, match=r"flat\.npy.*\(2, N, d\)"):
        load_paired(tmp_path / "flat.npy")
    with pytest.raises(EmbeddingError, match="wrong dimension: expected d=512"):
        load_paired(p.save(tmp_path / "ok.safetensors"), expected_dim=512)
    with pytest.raises(EmbeddingError, match="no such file"):
        load_paired(tmp_path / "missing.safetensors")
    un = _pairs(normalized=False)
    un.meta["normalized"] = False
    path = un.save(tmp_path / "un.safetensors")
    with pytest.raises(EmbeddingError, match="not L2-normalised"):
        load_paired(path, expect_normalized=True)
    assert len(load_paired(path)) == 20  # metadata says unnormalised: no check


def test_unpaired_rows():
    p = _pairs()
    with pytest.raises(EmbeddingError, match="unpaired rows: 20 image/audio rows but 19 text rows"):
        PairedEmbeddings(p.x, p.y[:19], source="mem").validate()


def test_failed_save_keeps_existing_file(tmp_path, monkeypatch):
    import safetensors.numpy

    p = _pairs()
    path = p.save(tmp_path / "pairs.safetensors")
    before = path.read_bytes()

    def crash(tensors, filename, metadata=None):  # writes half a file, then dies
        with open(filename, "wb") as f:
            f.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(safetensors.numpy, "save_file", crash)
    with pytest.raises(OSError, match="disk full"):
        p.save(path)
    assert path.read_bytes() == before
    assert [f.name for f in tmp_path.iterdir()] == ["pairs.safetensors"]


def test_split_and_pooled():
    p = _pairs(n=50)
    tr, va = p.split(0.2, seed=1)
    assert len(tr) == 40 and len(va) == 10
    # pairing preserved: each val row is some original row, in both modalities
    rows = [int(np.nonzero((p.x == r).all(1))[0][0]) for r in va.x]
    np.testing.assert_array_equal(p.y[rows], va.y)
    assert va.captions == [p.captions[i] for i in rows]
    u, mod = p.pooled()
    assert u.shape == (100, 8) and mod.sum() == 50


def test_zero_shot_set_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    zs = ZeroShotSet("toy", rng.normal(size=(6, 4)).astype(np.float32), np.array([0, 1, 2, 0, 1, 2]),
                     rng.normal(size=(3, 4)).astype(np.float32), ["a", "b", "c"], {"k": 1})
    path = zs.save(tmp_path / "zs.safetensors")
    z2 = ZeroShotSet.load(path)
    assert z2.name == "toy" and z2.class_names == ["a", "b", "c"] and z2.meta == {"k": 1}
    np.testing.assert_array_equal(z2.labels, zs.labels)
    with pytest.raises(EmbeddingError, match="labels outside"):
        ZeroShotSet("bad", zs.emb, np.array([0, 1, 2, 3, 0, 0]), zs.class_emb, zs.class_names).validate()
    assert json.loads(json.dumps(z2.meta)) == {"k": 1}
