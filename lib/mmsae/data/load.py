"""Loading and validation of paired embeddings: every file layout of the store
(:mod:`mmsae.data.store`) and embedding-cache folders (:mod:`mmsae.data.cache`) into one
validated :class:`~mmsae.data.store.PairedEmbeddings`."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
from safetensors import safe_open

from .cache import load_cache
from .captions import attach_captions, find_captions
from .store import EmbeddingError, PairedEmbeddings

__all__ = ["load_paired", "check_validation_pairs"]


def _load_safetensors(path: Path) -> PairedEmbeddings:
    with safe_open(str(path), framework="np") as f:
        keys = set(f.keys())
        header = f.metadata() or {}
        missing = {"x", "y"} - keys
        if missing:
            raise EmbeddingError(f"{path}: missing tensors {sorted(missing)} (found {sorted(keys)})")
        x, y = f.get_tensor("x"), f.get_tensor("y")
        labels = f.get_tensor("labels") if "labels" in keys else None
    meta = json.loads(header.get("mmsae_meta", "{}"))
    captions = json.loads(header["captions"]) if "captions" in header else None
    return PairedEmbeddings(x, y, labels, captions, meta, str(path))


def _load_npy(path: Path, mmap: bool) -> PairedEmbeddings:
    arr = np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    if arr.ndim != 3 or arr.shape[0] != 2:
        raise EmbeddingError(
            f"{path}: expected an array of shape (2, N, d) = [image, text], got {tuple(arr.shape)}"
        )
    x, y = arr[0], arr[1]
    if not mmap:
        x, y = np.asarray(x, np.float32), np.asarray(y, np.float32)
    meta = {"dataset": path.stem, "normalized": None, "format": "npy(2,N,d)"}
    return PairedEmbeddings(x, y, None, None, meta, str(path))


def _load_npz(path: Path) -> PairedEmbeddings:
    with np.load(path, allow_pickle=False) as z:
        if "x" not in z or "y" not in z:
            raise EmbeddingError(f"{path}: .npz must hold arrays 'x' and 'y' (found {list(z.keys())})")
        meta = json.loads(str(z["meta"])) if "meta" in z else {}
        captions = json.loads(str(z["captions"])) if "captions" in z else None
        labels = z["labels"] if "labels" in z else None
        return PairedEmbeddings(z["x"], z["y"], labels, captions, meta, str(path))


def load_paired(
    path: str | os.PathLike,
    expect_normalized: bool | None = None,
    expected_dim: int | None = None,
    mmap: bool = False,
    captions: str | os.PathLike | None = "auto",
) -> PairedEmbeddings:
    """Load and validate paired embeddings from a file or an embedding-cache folder.

    ``expect_normalized``: ``True`` requires unit-norm rows, ``False`` skips the check,
    ``None`` follows the file's metadata. Raises :class:`EmbeddingError` (naming the
    file) on a missing file, a bad layout, unpaired rows, NaN/inf or a wrong dimension.
    ``captions``: a captions file for the pairs (:mod:`mmsae.data.captions`); ``"auto"``
    (default) takes ``<stem>_captions.json``/``.txt`` beside the file when the file itself
    carries no captions; ``None`` attaches none. A captions file that does not match the
    pairs is an error naming it.
    """
    path = Path(path)
    if not path.exists():
        raise EmbeddingError(f"{path}: no such file or folder")
    try:
        if path.is_dir():
            data = load_cache(path)  # embedding cache folders (manifest.json + shards)
        elif path.suffix == ".safetensors":
            data = _load_safetensors(path)
        elif path.suffix == ".npy":
            data = _load_npy(path, mmap)
        elif path.suffix == ".npz":
            data = _load_npz(path)
        else:
            raise EmbeddingError(
                f"{path}: unsupported file type {path.suffix!r} (expected .safetensors, .npy, .npz or a cache folder)"
            )
    except EmbeddingError:
        raise
    except Exception as e:  # corrupt files: name them
        raise EmbeddingError(f"{path}: could not be read ({type(e).__name__}: {e})") from e
    data.source = str(path)
    data.validate(expect_normalized=expect_normalized, expected_dim=expected_dim)
    cap_file = find_captions(path) if captions == "auto" and data.captions is None else (
        None if captions in (None, "auto") else captions)
    if cap_file is not None:
        data = attach_captions(data, cap_file)
    if data.meta.get("normalized") is None:
        if expect_normalized is not None:
            data.meta["normalized"] = bool(expect_normalized)
        else:  # unknown provenance: record what the data is rather than guess
            norms = np.linalg.norm(np.asarray(data.x[: min(len(data), 1000)], np.float32), axis=1)
            data.meta["normalized"] = bool(np.all(np.abs(norms - 1) < 1e-2))
    return data


def check_validation_pairs(train: PairedEmbeddings, val: PairedEmbeddings | None,
                           expect_normalized: bool | None = None) -> PairedEmbeddings | None:
    """Validate held-out pairs against the training pairs they are evaluated with: same
    embedding dimension, finite everywhere, and unit-norm rows when the training rows are
    (``expect_normalized=None``: when ``train.meta["normalized"]`` is true or its first 1000
    rows are unit-norm). Raises :class:`EmbeddingError` naming the validation file; returns
    ``val`` (``None`` passes through: no validation source)."""
    if val is None:
        return None
    ctx = f"validation pairs for the training pairs {train.source} (d={train.dim})"
    if val.dim != train.dim:
        raise EmbeddingError(f"{val.source}: wrong dimension: d={val.dim}, but the training pairs {train.source} "
                             f"have d={train.dim}; both must come from the same encoder")
    if expect_normalized is None:
        head = np.asarray(train.x[: min(len(train), 1000)], np.float32)
        expect_normalized = bool(train.meta.get("normalized")) or bool(
            np.all(np.abs(np.linalg.norm(head, axis=1) - 1) < 1e-2))
    try:
        val.validate(expect_normalized=expect_normalized, expected_dim=train.dim)
    except EmbeddingError as e:
        raise EmbeddingError(f"{e} [{ctx}]") from None
    return val
