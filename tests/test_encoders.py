"""Encoders offline: random-weight OpenCLIP on bundled images, CLAP lazy import and errors."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

open_clip = pytest.importorskip("open_clip")
skdata = pytest.importorskip("skimage.data")

from mmsae.embed.encoders import ClapEncoder, ClipEncoder, EncoderUnavailable  # noqa: E402

from clip_helpers import register_tiny_clip  # noqa: E402


def sample_images():
    from PIL import Image

    return [Image.fromarray(f()) for f in (skdata.astronaut, skdata.chelsea, skdata.coffee, skdata.rocket,
                                            skdata.camera)]


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
    return ClipEncoder(register_tiny_clip(tmp_path_factory), pretrained="random", device="cpu", batch_size=2)


def test_clip_random_shapes_normalised_and_batching(tiny_clip):
    ims = sample_images()  # includes a grayscale image (camera)
    a = tiny_clip.encode_images(ims)
    assert a.shape == (5, 64) and a.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(a, axis=1), 1.0, atol=1e-5)
    b = tiny_clip.encode_images(ims, batch_size=5)
    np.testing.assert_allclose(a, b, atol=1e-5)  # batching does not change results
    c = tiny_clip.encode_images(list(reversed(ims)), batch_size=3)
    np.testing.assert_allclose(a, c[::-1], atol=1e-5)  # order preserved
    t = tiny_clip.encode_texts(["an astronaut", "a cat", "a cup of coffee"])
    assert t.shape == (3, 64)
    np.testing.assert_allclose(np.linalg.norm(t, axis=1), 1.0, atol=1e-5)
    assert tiny_clip.identity()["pretrained"] == "random"


def test_clip_accepts_paths_and_arrays(tiny_clip, tmp_path):
    ims = sample_images()[:2]
    p = tmp_path / "a.png"
    ims[0].save(p)
    a = tiny_clip.encode_images([p, np.asarray(ims[1])])
    b = tiny_clip.encode_images(ims)
    np.testing.assert_allclose(a, b, atol=1e-5)


def test_clip_random_is_seeded(tiny_clip, tmp_path_factory):
    again = ClipEncoder(register_tiny_clip(tmp_path_factory), pretrained="random", device="cpu")
    t = ["a photo of a cat"]
    np.testing.assert_allclose(again.encode_texts(t), tiny_clip.encode_texts(t), atol=1e-6)


def test_clip_missing_weights_offline_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    with pytest.raises(EncoderUnavailable) as e:
        ClipEncoder("ViT-B-32", pretrained="openai", device="cpu", cache_dir=str(tmp_path / "empty"))
    msg = str(e.value)
    assert "not available offline" in msg and "huggingface-cli download" in msg and "random" in msg


def test_clip_bad_tag_and_missing_file():
    with pytest.raises(EncoderUnavailable, match="available"):
        ClipEncoder("ViT-B-32", pretrained="no-such-tag", device="cpu")
    with pytest.raises(EncoderUnavailable, match="not found"):
        ClipEncoder("ViT-B-32", pretrained="/nonexistent/weights.bin", device="cpu")
    with pytest.raises(EncoderUnavailable, match="no model"):
        ClipEncoder("NoSuchModel-7", pretrained="random", device="cpu")


def test_clap_lazy_import():
    """Importing mmsae's encoder, cache, source and extract modules never imports laion_clap."""
    code = ("import sys; import mmsae.embed.encoders, mmsae.embed.extract, mmsae.data.cache, mmsae.embed.sources, mmsae.embed.prompts; "
            "print('laion_clap' in sys.modules)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       env={**__import__('os').environ, "PYTHONPATH": str(Path(__file__).parents[1] / "lib")})
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "False"


def test_clap_offline_missing_checkpoint_fails_fast(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("MMSAE_CLAP_DIR", str(tmp_path / "clap"))
    t = time.time()
    with pytest.raises(EncoderUnavailable) as e:
        ClapEncoder(checkpoint="music", device="cpu")
    assert time.time() - t < 10
    msg = str(e.value)
    assert "music_audioset_epoch_15_esc_90.14.pt" in msg and str(tmp_path / "clap") in msg
    assert "huggingface-cli download lukewys/laion_clap" in msg


def test_clap_offline_missing_tokenizer_fails_fast(monkeypatch, tmp_path):
    from mmsae.embed import encoders

    if encoders._hf_cached("roberta-base", "vocab.json"):
        pytest.skip("roberta-base tokenizer is cached on this machine")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    t = time.time()
    with pytest.raises(EncoderUnavailable) as e:
        ClapEncoder(checkpoint="random", device="cpu")
    assert time.time() - t < 10
    msg = str(e.value)
    assert "roberta-base" in msg and "vocab.json" in msg and "clap_tokenizer" in msg


def test_clap_bad_checkpoint_name():
    with pytest.raises(EncoderUnavailable, match="neither a known name"):
        ClapEncoder(checkpoint="no-such-checkpoint", device="cpu")


def _tiny_tokenizer(folder: Path) -> Path:
    """A byte-level BPE vocabulary of single letters in roberta's format (tokenizer files are
    not on this offline machine; the text tower has random weights anyway)."""
    folder.mkdir(parents=True, exist_ok=True)
    vocab = {"<s>": 0, "<pad>": 1, "</s>": 2, "<unk>": 3, "<mask>": 4, "\u0120": 5}
    for i, ch in enumerate("abcdefghijklmnopqrstuvwxyz"):
        vocab[ch] = 6 + i
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    return folder


@pytest.mark.slow
def test_clap_random_extraction_on_synthetic_audio(monkeypatch, tmp_path):
    import importlib.util

    if importlib.util.find_spec("laion_clap") is None:  # not importorskip: a plain import retries the hub
        pytest.skip("laion_clap is not installed")
    from mmsae.embed import encoders

    # a 1-layer RoBERTa keeps random init fast; the width (768) is what CLAP's projection expects
    monkeypatch.setitem(encoders._ROBERTA_BASE_CONFIG, "num_hidden_layers", 1)
    monkeypatch.setitem(encoders._ROBERTA_BASE_CONFIG, "intermediate_size", 256)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    tok = _tiny_tokenizer(tmp_path / "tok")
    enc = ClapEncoder(checkpoint="random", amodel="HTSAT-tiny", device="cpu", tokenizer=str(tok), batch_size=2)
    sr = 48_000
    t = np.arange(sr * 2) / sr
    tone = (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
    noise = (0.05 * np.random.default_rng(0).standard_normal(sr * 12)).astype(np.float32)
    import soundfile as sf

    wav = tmp_path / "tone22k.wav"
    sf.write(wav, (0.3 * np.sin(2 * np.pi * 440 * np.arange(22050 * 2) / 22050)).astype(np.float32), 22050)
    a = enc.encode_audio([tone, noise, wav])
    assert a.shape == (3, enc.dim)
    np.testing.assert_allclose(np.linalg.norm(a, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(enc.encode_audio([tone]), a[:1], atol=1e-5)  # deterministic
    assert np.dot(a[0], a[2]) > 0.9  # same tone, resampled from 22.05 kHz
    txt = enc.encode_texts(["a violin", "a drum"])
    assert txt.shape == (2, enc.dim)
    np.testing.assert_allclose(np.linalg.norm(txt, axis=1), 1.0, atol=1e-5)

    # end to end through the cache: a CSV of synthesised audio + captions, one broken file
    from mmsae.embed.extract import extract_pairs

    rows = []
    for i, f0 in enumerate((220, 330, 440)):
        p = tmp_path / f"a{i}.wav"
        sf.write(p, (0.3 * np.sin(2 * np.pi * f0 * np.arange(sr) / sr)).astype(np.float32), sr)
        rows.append(f"{p.name},a tone at {f0} hertz")
    (tmp_path / "broken.wav").write_bytes(b"RIFF....not audio")
    rows.insert(1, "broken.wav,a broken file")
    (tmp_path / "pairs.csv").write_text("path,caption\n" + "\n".join(rows) + "\n")
    pe = extract_pairs("clap", tmp_path / "cache", tmp_path / "pairs.csv", encoder=enc, shard_size=2,
                       progress=False)
    assert len(pe) == 3 and pe.meta["rows_skipped"] == 1
    assert pe.captions == ["a tone at 220 hertz", "a tone at 330 hertz", "a tone at 440 hertz"]
    np.testing.assert_allclose(pe.y, enc.encode_texts(pe.captions), atol=1e-5)
