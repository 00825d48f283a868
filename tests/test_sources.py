"""Data sources: ordering, bad rows counted and skipped, pairing preserved."""

from __future__ import annotations

import io
import json
import pickle
import tarfile

import numpy as np
import pytest

skdata = pytest.importorskip("skimage.data")
from PIL import Image  # noqa: E402

from mmsae.embed.sources import (CifarSource, CocoCaptions, CsvSource, LabelledFolder, NSynthSource,  # noqa: E402
                           WebDatasetSource, open_source)

IMAGES = {"astronaut": skdata.astronaut, "cat": skdata.chelsea, "coffee": skdata.coffee, "rocket": skdata.rocket}


def _save_images(folder):
    folder.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name, f in IMAGES.items():
        p = folder / f"{name}.jpg"
        Image.fromarray(f()).resize((48, 48)).save(p)
        paths[name] = p
    (folder / "broken.jpg").write_bytes(b"not a jpeg at all")
    return paths


def test_csv_source_skips_bad_rows_and_keeps_pairing(tmp_path):
    _save_images(tmp_path / "img")
    (tmp_path / "pairs.tsv").write_text(
        "image\tcaption\n"
        "img/astronaut.jpg\tan astronaut\n"
        "img/broken.jpg\ta broken image\n"
        "img/cat.jpg\t   \n"
        "img/missing.jpg\tnothing here\n"
        "img/coffee.jpg\ta cup of coffee\n")
    src = CsvSource(tmp_path / "pairs.tsv")
    rows = list(src)
    assert [r.index for r in rows] == [0, 4]
    assert [r.caption for r in rows] == ["an astronaut", "a cup of coffee"]
    assert rows[1].media.size == (48, 48) and rows[1].media.mode == "RGB"
    assert src.n_skipped == 3
    assert set(src.skipped) == {"unreadable image (UnidentifiedImageError)", "empty caption",
                                "missing file 'img/missing.jpg'"}
    assert src.modality == "image"
    assert [r.index for r in src.rows(start=2)] == [4]  # resume from an index


def test_csv_without_header_and_threads(tmp_path):
    _save_images(tmp_path)
    (tmp_path / "p.csv").write_text("".join(f"{n}.jpg,a photo of {n}\n" for n in IMAGES))
    a = [(r.index, r.caption) for r in CsvSource(tmp_path / "p.csv")]
    b = [(r.index, r.caption) for r in CsvSource(tmp_path / "p.csv", workers=3)]
    assert a == b and len(a) == 4


def test_coco_captions(tmp_path):
    paths = _save_images(tmp_path / "val")
    ann = {"images": [{"id": i, "file_name": p.name} for i, p in enumerate(paths.values())]
           + [{"id": 99, "file_name": "gone.jpg"}],
           "annotations": [{"id": 10 + i, "image_id": i, "caption": f"caption {i}"} for i in range(4)]
           + [{"id": 5, "image_id": 0, "caption": "first caption of image 0"},
              {"id": 50, "image_id": 99, "caption": "image file missing"}]}
    (tmp_path / "captions.json").write_text(json.dumps(ann))
    src = CocoCaptions(tmp_path / "captions.json", tmp_path / "val")
    rows = list(src)
    assert [r.caption for r in rows] == ["first caption of image 0", "caption 1", "caption 2", "caption 3"]
    assert src.n_skipped == 1
    allc = CocoCaptions(tmp_path / "captions.json", tmp_path / "val", captions="all")
    assert len(list(allc)) == 5
    s = open_source(f"coco:{tmp_path / 'captions.json'}:{tmp_path / 'val'}")
    assert isinstance(s, CocoCaptions)


def _write_tar(path, samples):
    with tarfile.open(path, "w") as tf:
        for key, members in samples:
            for ext, data in members.items():
                ti = tarfile.TarInfo(f"{key}.{ext}")
                ti.size = len(data)
                tf.addfile(ti, io.BytesIO(data))


def _jpeg(f):
    b = io.BytesIO()
    Image.fromarray(f()).resize((40, 40)).save(b, format="JPEG")
    return b.getvalue()


def test_webdataset_shards(tmp_path):
    _write_tar(tmp_path / "00000.tar", [
        ("000000000", {"jpg": _jpeg(skdata.astronaut), "txt": b"an astronaut"}),
        ("000000001", {"jpg": b"garbage", "txt": b"broken"}),
        ("000000002", {"jpg": _jpeg(skdata.chelsea), "json": json.dumps({"caption": "a cat"}).encode()}),
    ])
    _write_tar(tmp_path / "00001.tar", [
        ("000000003", {"jpg": _jpeg(skdata.coffee), "txt": b""}),
        ("000000004", {"txt": b"caption without image"}),
        ("000000005", {"png": _jpeg(skdata.rocket), "txt": b"a rocket"}),
    ])
    src = open_source(str(tmp_path / "{00000..00001}.tar"))
    assert isinstance(src, WebDatasetSource)
    rows = list(src)
    assert [(r.index, r.caption) for r in rows] == [(0, "an astronaut"), (2, "a cat"), (5, "a rocket")]
    assert src.n_skipped == 3 and src.num_rows() == 6
    # resume: whole shards with known counts are skipped without reading them
    src2 = WebDatasetSource(str(tmp_path / "*.tar"))
    src2.shard_counts = {str(tmp_path / "00000.tar"): 3}
    (tmp_path / "00000.tar").write_bytes(b"corrupt now")  # would be a bad row if it were read
    assert [r.index for r in src2.rows(start=3)] == [5]
    assert src2.n_skipped == 2


def test_labelled_folder_and_prompt_names(tmp_path):
    for cls, f in (("cat", skdata.chelsea), ("airplane", skdata.rocket)):
        (tmp_path / cls).mkdir()
        for i in range(2):
            Image.fromarray(f()).resize((32, 32)).save(tmp_path / cls / f"{i}.png")
    (tmp_path / "cat" / "bad.png").write_bytes(b"x")
    from mmsae.embed.prompts import CIFAR10_CLASSES

    src = LabelledFolder(tmp_path, class_names=CIFAR10_CLASSES)
    rows = list(src)
    assert [r.label for r in rows] == [0, 0, 3, 3]  # airplane=0, cat=3 in CIFAR-10 order
    assert src.n_skipped == 1
    assert LabelledFolder(tmp_path, max_per_class=1).num_rows() == 2
    with pytest.raises(ValueError, match="match no class"):
        LabelledFolder(tmp_path, class_names=["dog", "frog", "ship"])


def test_cifar_pickles(tmp_path):
    d = tmp_path / "cifar-10-batches-py"
    d.mkdir()
    rng = np.random.default_rng(0)
    data = rng.integers(0, 255, (5, 3072), dtype=np.uint8)
    with open(d / "test_batch", "wb") as f:
        pickle.dump({b"data": data, b"labels": [3, 1, 4, 1, 5]}, f)
    src = open_source(tmp_path)
    assert isinstance(src, CifarSource) and src.class_names[3] == "cat"
    rows = list(src)
    assert [r.label for r in rows] == [3, 1, 4, 1, 5] and rows[0].media.size == (32, 32)
    np.testing.assert_array_equal(np.asarray(rows[0].media)[0, 0], data[0].reshape(3, 32, 32)[:, 0, 0])


def test_nsynth_and_audio_resampling(tmp_path):
    sf = pytest.importorskip("soundfile")
    (tmp_path / "audio").mkdir()
    ex = {}
    for i, fam in enumerate([0, 3, 10]):
        sf.write(tmp_path / "audio" / f"note{i}.wav", np.sin(np.arange(16000) / 10).astype(np.float32), 16000)
        ex[f"note{i}"] = {"instrument_family": fam, "instrument_family_str": "x"}
    ex["note9"] = {"instrument_family": 2}  # file missing
    (tmp_path / "examples.json").write_text(json.dumps(ex))
    src = open_source(tmp_path)
    assert isinstance(src, NSynthSource)
    rows = list(src)
    assert [r.label for r in rows] == [0, 3, 10] and src.n_skipped == 1
    assert rows[0].media.dtype == np.float32 and abs(len(rows[0].media) - 48000) <= 1  # 1 s at 48 kHz


def test_open_source_errors(tmp_path):
    with pytest.raises(FileNotFoundError):
        open_source(tmp_path / "nothing.csv")
    with pytest.raises(FileNotFoundError):
        open_source(str(tmp_path / "none-*.tar"))
