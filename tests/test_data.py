import json
import os
import stat
from pathlib import Path

import numpy as np
import pytest

from mmsae.data import (EmbeddingError, PairedEmbeddings, ZeroShotSet, array_digest, check_validation_pairs,
                        l2_normalize, load_paired)


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
    with pytest.raises(EmbeddingError, match="not L2-normalised") as err:
        load_paired(path, expect_normalized=True)
    # the suggested fix is one that works from notebook 01 (which always expects unit norm)
    assert "normalized()" in str(err.value) and "meta[" not in str(err.value)
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


@pytest.mark.parametrize("umask", [0o022, 0o002, 0o077])
def test_atomic_writes_get_the_mode_of_an_ordinary_write(tmp_path, umask):
    from mmsae.data import atomic_write

    old = os.umask(umask)
    try:
        with open(tmp_path / "plain.txt", "w") as f:
            f.write("x")
        written = [atomic_write(tmp_path / "a.txt", lambda t: Path(t).write_text("x")),
                   _pairs().save(tmp_path / "p.safetensors"), _pairs().save(tmp_path / "p.npz")]
    finally:
        os.umask(old)
    want = 0o666 & ~umask
    assert stat.S_IMODE((tmp_path / "plain.txt").stat().st_mode) == want
    for p in written:
        assert stat.S_IMODE(p.stat().st_mode) == want, p


def test_late_nan_and_norm_rows_are_found(tmp_path):
    # past the 200,000 rows the scan used to stop at, in a memory-mapped file
    n, d = 200_010, 4
    arr = np.lib.format.open_memmap(tmp_path / "big.npy", mode="w+", dtype=np.float32, shape=(2, n, d))
    arr[:] = 0.5  # unit-norm rows (d = 4)
    arr[1, 200_003, 1] = np.nan
    arr.flush()
    del arr
    with pytest.raises(EmbeddingError, match=r"big\.npy: y \(text\) has NaN/inf values in 1 rows \(first: row 200003\)"):
        load_paired(tmp_path / "big.npy", mmap=True)
    # every chunk is scanned; counts and the first row add up across chunks
    p = _pairs(n=50)
    p.x[[7, 31, 44]] *= 2.0
    with pytest.raises(EmbeddingError, match=r"3 rows off unit norm.*row 7 has norm 2\.0"):
        p.validate(expect_normalized=True, chunk_rows=6)
    p.x[[7, 31, 44]] /= 2.0
    p.y[[33, 48], 0] = np.inf
    with pytest.raises(EmbeddingError, match=r"in 2 rows \(first: row 33\)"):
        p.validate(chunk_rows=6)


def test_validation_pairs_checked_against_training_pairs(tmp_path):
    train = _pairs(n=30, d=8)
    val_ok = _pairs(n=10, d=8, seed=1)
    assert check_validation_pairs(train, val_ok) is val_ok
    assert check_validation_pairs(train, None) is None
    wide = load_paired(_pairs(n=10, d=16, seed=1).save(tmp_path / "val_wide.safetensors"))
    with pytest.raises(EmbeddingError, match=r"val_wide\.safetensors: wrong dimension: d=16, but the training "
                                             r"pairs .* have d=8"):
        check_validation_pairs(train, wide)
    raw = _pairs(n=10, d=8, seed=1, normalized=False)
    raw.meta["normalized"] = False
    unnormed = load_paired(raw.save(tmp_path / "val_raw.safetensors"))
    with pytest.raises(EmbeddingError, match=r"val_raw\.safetensors: x \(image/audio\) is not L2-normalised.*"
                                             r"validation pairs"):
        check_validation_pairs(train, unnormed)
    nan = _pairs(n=10, d=8, seed=1)
    nan.y[9, 0] = np.nan
    np.save(tmp_path / "val_nan.npy", np.stack([nan.x, nan.y]))
    arr = np.load(tmp_path / "val_nan.npy", mmap_mode="r")
    late = PairedEmbeddings(arr[0], arr[1], source=str(tmp_path / "val_nan.npy"))
    with pytest.raises(EmbeddingError, match=r"val_nan\.npy: y \(text\) has NaN/inf values in 1 rows \(first: row 9\)"):
        check_validation_pairs(train, late)
    # unnormalised training pairs: the validation pairs need not be unit-norm either
    assert check_validation_pairs(_pairs(n=30, d=8, normalized=False), unnormed) is unnormed


@pytest.mark.slow
@pytest.mark.notebooks
def test_notebook_01_refuses_a_bad_validation_file(tmp_path):
    """``--extract val_source=`` of another d, or unnormalised: notebook 01 fails naming the file."""
    import subprocess
    import sys

    pytest.importorskip("papermill")
    pytest.importorskip("jupytext")
    root = Path(__file__).resolve().parents[1]
    train = _pairs(n=100, d=8)
    np.save(tmp_path / "train.npy", np.stack([train.x, train.y]))
    wide = _pairs(n=20, d=16, seed=1)
    np.save(tmp_path / "val_wide.npy", np.stack([wide.x, wide.y]))
    raw = _pairs(n=20, d=8, seed=1, normalized=False)
    np.save(tmp_path / "val_raw.npy", np.stack([raw.x, raw.y]) * 3)
    nb = tmp_path / "01.ipynb"
    subprocess.run([sys.executable, "-m", "jupytext", "--quiet", "--to", "ipynb", "--output", str(nb),
                    str(root / "notebooks" / "01_extract.py")], check=True)
    for val, problem in (("val_wide.npy", "wrong dimension: d=16"), ("val_raw.npy", "x (image/audio) is not L2-normalised")):
        proc = subprocess.run(
            [sys.executable, "-m", "papermill", "--cwd", str(root / "notebooks"), "--kernel", "python3",
             "--no-progress-bar", str(nb), str(tmp_path / "out.ipynb"), "-p", "data",
             f"embeddings:{tmp_path / 'train.npy'}", "-p", "out_dir", str(tmp_path / "run"),
             "-y", f"extract_options: {{val_source: {tmp_path / val}}}"],
            capture_output=True, text=True, timeout=300, env=dict(os.environ, MPLBACKEND="Agg"))
        assert proc.returncode != 0
        assert f"EmbeddingError: {tmp_path / val}: {problem}" in proc.stdout + proc.stderr
        assert not (tmp_path / "run" / "results" / "data_summary.json").exists()


def test_array_digest_covers_every_row_and_caches_memmaps(tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    a = rng.normal(size=(1000, 8)).astype(np.float32)
    b = a.copy()
    b[500, 3] += 1e-3  # one value in the middle
    assert array_digest(a) != array_digest(b)
    assert array_digest(a) == array_digest(a.astype(np.float64))  # float32 values decide
    assert array_digest(a, chunk_bytes=100) == array_digest(a)  # chunking does not change it
    np.save(tmp_path / "e.npy", np.stack([a, b]))
    m = np.load(tmp_path / "e.npy", mmap_mode="r")
    assert array_digest(m[0]) == array_digest(a) and array_digest(m[1]) == array_digest(b)
    import mmsae.data.store as D

    calls = []
    real = np.ascontiguousarray
    monkeypatch.setattr(D.np, "ascontiguousarray", lambda *x, **k: calls.append(1) or real(*x, **k))
    m2 = np.load(tmp_path / "e.npy", mmap_mode="r")
    assert array_digest(m2[1]) == array_digest(b) and calls.count(1) == 1  # only b was hashed: m2[1] cached
    monkeypatch.setattr(D.np, "ascontiguousarray", real)
    c = np.stack([a, a])
    np.save(tmp_path / "e.npy", c)  # rewritten: size/mtime key changes
    os.utime(tmp_path / "e.npy", ns=(1, 1))
    m3 = np.load(tmp_path / "e.npy", mmap_mode="r")
    assert array_digest(m3[1]) == array_digest(a)
