"""Paired-embedding store: the one data format every notebook and trainer consumes.

A :class:`PairedEmbeddings` holds two arrays of equal shape ``(N, d)``:

* ``x``: image (or audio) embeddings, modality 0;
* ``y``: text embeddings, modality 1;

row ``i`` of ``x`` and row ``i`` of ``y`` are one pair (an image and its caption).
Optional ``labels`` (``N`` ints, for zero-shot evaluation), ``captions`` (per pair a
string, or a list of strings whose first is the embedded caption and the rest other
captions of the same item; :mod:`mmsae.data.captions`) and a JSON-able ``meta`` dict
(encoder, dataset, normalisation, count, ...) travel with them.

Files
-----
``.safetensors``  tensors ``x``, ``y`` (and ``labels``); meta and captions in the header.
``.npy``          an array of shape ``(2, N, d)`` = ``[x, y]`` (the layout of the
                  shared ``clip_vitb16_coco500.npy``), meta defaults.
``.npz``          arrays ``x``, ``y`` (and ``labels``), optional ``meta`` JSON string.
directory         an embedding cache written by :mod:`mmsae.data.cache` (memory-mapped).

Loading lives in :mod:`mmsae.data.load`; every loader validates what it reads and raises :class:`EmbeddingError` naming the
file and the problem. Writers are atomic: a temporary file in the same folder is
renamed over the target, so an interrupted save never leaves a half-written file.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from tqdm.auto import tqdm

__all__ = [
    "EmbeddingError",
    "PairedEmbeddings",
    "atomic_write",
    "make_temp_dir",
    "replace_dir",
    "array_digest",
    "l2_normalize",
    "ZeroShotSet",
]

MODALITY_NAMES = ("image", "text")


class EmbeddingError(ValueError):
    """Invalid embedding data; the message names the source and the problem."""


def l2_normalize(a: np.ndarray, eps: float = 1e-12) -> np.ndarray:
    """Rows scaled to unit L2 norm (float32)."""
    a = np.asarray(a, dtype=np.float32)
    n = np.linalg.norm(a, axis=-1, keepdims=True)
    return a / np.maximum(n, eps)


def _new_temp(folder: Path, prefix: str, suffix: str, is_dir: bool) -> Path:
    """Create a new, uniquely named file or folder in ``folder`` with the mode an ordinary
    ``open()`` / ``mkdir`` would give it (0666 / 0777 minus the umask), unlike
    :mod:`tempfile`, whose files are always 0600 and folders 0700."""
    for _ in range(1000):
        tmp = folder / f"{prefix}{secrets.token_hex(6)}{suffix}"
        try:
            if is_dir:
                os.mkdir(tmp, 0o777)
            else:
                os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
        except FileExistsError:
            continue
        return tmp
    raise FileExistsError(f"{folder}: could not create a temporary {'folder' if is_dir else 'file'} {prefix}*")


def make_temp_dir(parent: str | os.PathLike, prefix: str) -> Path:
    """A new empty folder ``parent/<prefix><random>`` (mode 0777 minus the umask, as
    ``mkdir`` gives), for writing a folder that is then renamed into place."""
    parent = Path(parent)
    parent.mkdir(parents=True, exist_ok=True)
    return _new_temp(parent, prefix, "", is_dir=True)


def replace_dir(src: Path, dst: Path) -> None:
    """Move folder ``src`` onto ``dst``; an existing ``dst`` is swapped out, then removed."""
    if dst.exists():
        old = dst.with_name(f".{dst.name}.old")
        if old.exists():
            shutil.rmtree(old)
        os.replace(dst, old)
        os.replace(src, dst)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(src, dst)


def atomic_write(path: str | os.PathLike, write_fn) -> Path:
    """Call ``write_fn(tmp_path)`` then rename the temporary file onto ``path``.

    The temporary file lives in the target folder so the rename is atomic; on any
    error it is removed and an existing ``path`` is left untouched. The file gets the
    mode an ordinary write would give it (0666 minus the umask).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = str(_new_temp(path.parent, f".{path.name}.", ".tmp", is_dir=False))
    try:
        mode = os.stat(tmp).st_mode  # 0666 minus the umask, as created
        write_fn(tmp)
        os.chmod(tmp, mode)  # some writers (safetensors) replace the file with a 0600 one
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    return path


def _memmap_key(a: np.ndarray):
    """``(file, size, mtime, position in the mapping, shape, strides, dtype)`` when ``a`` is a
    view of a memory-mapped file (``np.memmap`` or an array whose base is one), else None."""
    import mmap

    m = a
    while m is not None and not (isinstance(m, np.memmap) and getattr(m, "_mmap", None) is not None):
        m = m.base if isinstance(m, np.ndarray) else None
    if m is None or not m.filename:
        return None
    try:
        st = os.stat(m.filename)
        buf = m._mmap
        start = a.__array_interface__["data"][0] - np.frombuffer(buf, np.uint8).__array_interface__["data"][0]
    except (OSError, TypeError, ValueError):
        return None
    mapped_from = m.offset - m.offset % mmap.ALLOCATIONGRANULARITY
    return (os.path.realpath(m.filename), st.st_size, st.st_mtime_ns, mapped_from + start, a.shape, a.strides,
            a.dtype.str)


_DIGESTS: dict[tuple, str] = {}


def _chunks(n: int, step: int, desc: str):
    """Start rows ``0, step, 2*step, ...`` below ``n``, with a tqdm bar when there are many (large files)."""
    starts = range(0, n, step)
    if len(starts) < 16:
        return starts
    return tqdm(starts, desc=desc, unit="chunk", mininterval=1.0, leave=False)


def array_digest(a, chunk_bytes: int = 64 * 2 ** 20) -> str:
    """SHA-256 of every value of the 2-D array ``a`` as C-ordered float32 (its shape
    included), read ``chunk_bytes`` at a time so a memory-mapped file is streamed, not
    loaded. The digest of a memory-mapped file is cached for the process, keyed by the
    file's path, size and modification time and the array's place in it."""
    key = _memmap_key(a) if isinstance(a, np.ndarray) else None
    if key is not None and key in _DIGESTS:
        return _DIGESTS[key]
    h = hashlib.sha256(f"float32{tuple(a.shape)}".encode())
    n = int(a.shape[0])
    row_bytes = 4 * max(1, int(np.prod(a.shape[1:], dtype=np.int64)))
    step = max(1, chunk_bytes // row_bytes)
    for i in _chunks(n, step, "hashing"):
        h.update(np.ascontiguousarray(a[i:i + step], dtype=np.float32))  # contiguous: hashed in place
    out = h.hexdigest()
    if key is not None:
        _DIGESTS[key] = out
    return out


@dataclass
class PairedEmbeddings:
    """Paired embeddings ``x`` (image/audio) and ``y`` (text); row i is one pair."""

    x: np.ndarray
    y: np.ndarray
    labels: np.ndarray | None = None
    captions: list[str] | list[list[str]] | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    source: str = "<memory>"

    def __post_init__(self) -> None:
        self.meta = dict(self.meta)
        self.meta.setdefault("count", int(len(self.x)) if hasattr(self.x, "__len__") else None)

    # ------------------------------------------------------------------ basics
    def __len__(self) -> int:
        return int(self.x.shape[0])

    @property
    def dim(self) -> int:
        return int(self.x.shape[1])

    def caption_lists(self) -> list[list[str]] | None:
        """Every pair's captions as a list (first: the embedded caption; ``[]`` for a pair
        without text), or ``None`` when the store has no captions."""
        if self.captions is None:
            return None
        return [[c] if isinstance(c, str) else list(c or []) for c in self.captions]

    @property
    def modalities(self) -> tuple[str, str]:
        return tuple(self.meta.get("modalities", MODALITY_NAMES))  # type: ignore[return-value]

    def validate(
        self,
        expect_normalized: bool | None = None,
        expected_dim: int | None = None,
        tol: float = 1e-2,
        check_rows: int | None = None,
        chunk_rows: int | None = None,
    ) -> "PairedEmbeddings":
        """Check shapes, finiteness and (optionally) unit norm; raise :class:`EmbeddingError`.

        ``expect_normalized=None`` follows ``meta["normalized"]`` when present. Every row is
        checked for NaN/inf (and, when normalisation is expected, for its norm), ``chunk_rows``
        rows at a time (default: about 64 MiB per chunk), so a memory-mapped store is streamed,
        not loaded. ``check_rows`` limits the scan to the first rows (default ``None``: all).
        """
        src = self.source
        x, y = self.x, self.y
        for name, a in (("x (image/audio)", x), ("y (text)", y)):
            if a.ndim != 2:
                raise EmbeddingError(f"{src}: {name} must be 2-D (N, d), got shape {tuple(a.shape)}")
        if x.shape[0] != y.shape[0]:
            raise EmbeddingError(
                f"{src}: unpaired rows: {x.shape[0]} image/audio rows but {y.shape[0]} text rows "
                "(row i of each must be one pair)"
            )
        if x.shape[1] != y.shape[1]:
            raise EmbeddingError(
                f"{src}: embedding dimensions differ: x has {x.shape[1]}, y has {y.shape[1]}"
            )
        if x.shape[0] == 0:
            raise EmbeddingError(f"{src}: no rows")
        if expected_dim is not None and x.shape[1] != expected_dim:
            raise EmbeddingError(
                f"{src}: wrong dimension: expected d={expected_dim}, got d={x.shape[1]}"
            )
        if self.labels is not None and len(self.labels) != x.shape[0]:
            raise EmbeddingError(f"{src}: {len(self.labels)} labels for {x.shape[0]} pairs")
        if self.captions is not None and len(self.captions) != x.shape[0]:
            raise EmbeddingError(f"{src}: {len(self.captions)} captions for {x.shape[0]} pairs")
        if expect_normalized is None:
            expect_normalized = bool(self.meta.get("normalized", False))
        n = x.shape[0] if check_rows is None else min(x.shape[0], check_rows)
        step = int(chunk_rows or max(1, (64 * 2 ** 20) // (4 * x.shape[1])))
        for name, a in (("x (image/audio)", x), ("y (text)", y)):
            n_bad = n_off = 0
            first_bad = first_off = None
            for i in _chunks(n, step, f"checking {src} {name[0]}"):
                block = np.asarray(a[i:min(i + step, n)], dtype=np.float32)
                finite = np.isfinite(block).all(axis=1)
                if not finite.all():
                    rows = np.flatnonzero(~finite)
                    n_bad += len(rows)
                    first_bad = i + int(rows[0]) if first_bad is None else first_bad
                if expect_normalized:
                    norms = np.linalg.norm(block, axis=1)
                    off = finite & (np.abs(norms - 1.0) > tol)
                    if off.any():
                        j = int(np.flatnonzero(off)[0])
                        n_off += int(off.sum())
                        first_off = (i + j, float(norms[j])) if first_off is None else first_off
            if n_bad:
                raise EmbeddingError(f"{src}: {name} has NaN/inf values in {n_bad} rows (first: row {first_bad})")
            if n_off:
                raise EmbeddingError(
                    f"{src}: {name} is not L2-normalised although normalisation is expected: "
                    f"{n_off} rows off unit norm by more than {tol} (row {first_off[0]} has norm "
                    f"{first_off[1]:.4f}); the notebooks and run_all.sh need unit-norm rows: divide every row by its L2 "
                    f"norm before saving (a / numpy.linalg.norm(a, axis=-1, keepdims=True)) or save "
                    f"PairedEmbeddings(...).normalized()"
                )
        return self

    def normalized(self) -> "PairedEmbeddings":
        """A copy with both modalities L2-normalised (meta['normalized'] = True)."""
        meta = dict(self.meta, normalized=True)
        return PairedEmbeddings(
            l2_normalize(self.x), l2_normalize(self.y), self.labels, self.captions, meta, self.source
        )

    def subset(self, index: Sequence[int] | np.ndarray | slice) -> "PairedEmbeddings":
        """Rows ``index`` of every field (pairing preserved)."""
        if isinstance(index, slice):
            idx = index
            caps = self.captions[idx] if self.captions is not None else None
        else:
            idx = np.asarray(index)
            caps = [self.captions[i] for i in idx] if self.captions is not None else None
        labels = self.labels[idx] if self.labels is not None else None
        out = PairedEmbeddings(
            np.asarray(self.x[idx]), np.asarray(self.y[idx]), labels, caps, dict(self.meta), self.source
        )
        out.meta["count"] = len(out)
        if isinstance(out.meta.get("item_ids"), list):
            ids = out.meta["item_ids"]
            out.meta["item_ids"] = ids[idx] if isinstance(idx, slice) else [ids[int(i)] for i in idx]
        return out

    def split(self, val_fraction: float = 0.1, seed: int = 0) -> tuple["PairedEmbeddings", "PairedEmbeddings"]:
        """Random (seeded) split into train and held-out pairs."""
        if not 0.0 < val_fraction < 1.0:
            raise ValueError("val_fraction must be in (0, 1)")
        n = len(self)
        perm = np.random.default_rng(seed).permutation(n)
        n_val = max(1, int(round(n * val_fraction)))
        return self.subset(np.sort(perm[n_val:])), self.subset(np.sort(perm[:n_val]))

    def pooled(self) -> tuple[np.ndarray, np.ndarray]:
        """All embeddings stacked ``(2N, d)`` and their modality ids (0 = x, 1 = y)."""
        u = np.concatenate([np.asarray(self.x), np.asarray(self.y)], axis=0)
        mod = np.concatenate([np.zeros(len(self), np.int64), np.ones(len(self), np.int64)])
        return u, mod

    # ------------------------------------------------------------------ I/O
    def save(self, path: str | os.PathLike) -> Path:
        """Write ``.safetensors`` (default) or ``.npz`` atomically; returns the path."""
        path = Path(path)
        meta = dict(self.meta, count=len(self), dim=self.dim)
        if path.suffix == ".safetensors":
            from safetensors.numpy import save_file

            tensors = {
                "x": np.ascontiguousarray(self.x, dtype=np.float32),
                "y": np.ascontiguousarray(self.y, dtype=np.float32),
            }
            if self.labels is not None:
                tensors["labels"] = np.ascontiguousarray(self.labels, dtype=np.int64)
            header = {"mmsae_meta": json.dumps(meta)}
            if self.captions is not None:
                header["captions"] = json.dumps(list(self.captions))
            return atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=header))
        if path.suffix == ".npz":
            def _w(tmp: str) -> None:
                arrays = dict(x=np.asarray(self.x, np.float32), y=np.asarray(self.y, np.float32),
                              meta=np.array(json.dumps(meta)))
                if self.labels is not None:
                    arrays["labels"] = np.asarray(self.labels, np.int64)
                if self.captions is not None:
                    arrays["captions"] = np.array(json.dumps(list(self.captions)))
                with open(tmp, "wb") as f:
                    np.savez(f, **arrays)
            return atomic_write(path, _w)
        raise EmbeddingError(f"{path}: unsupported suffix {path.suffix!r} (use .safetensors or .npz)")


@dataclass
class ZeroShotSet:
    """A labelled evaluation set for zero-shot classification through an SAE.

    ``emb`` (N, d): image/audio embeddings (modality 0) with integer ``labels``;
    ``class_emb`` (C, d): one text embedding per class (modality 1), usually the
    normalised mean over prompt templates; ``class_names``: C strings.
    """

    name: str
    emb: np.ndarray
    labels: np.ndarray
    class_emb: np.ndarray
    class_names: list[str]
    meta: dict[str, Any] = field(default_factory=dict)

    def validate(self, expected_dim: int | None = None, source: str | None = None) -> "ZeroShotSet":
        src = source or self.name
        if self.emb.ndim != 2 or self.class_emb.ndim != 2:
            raise EmbeddingError(f"{src}: zero-shot embeddings must be 2-D")
        if self.emb.shape[1] != self.class_emb.shape[1]:
            raise EmbeddingError(
                f"{src}: sample dim {self.emb.shape[1]} != class-prompt dim {self.class_emb.shape[1]}"
            )
        if expected_dim is not None and self.emb.shape[1] != expected_dim:
            raise EmbeddingError(f"{src}: wrong dimension: expected {expected_dim}, got {self.emb.shape[1]}")
        if len(self.labels) != len(self.emb):
            raise EmbeddingError(f"{src}: {len(self.labels)} labels for {len(self.emb)} samples")
        if len(self.class_names) != len(self.class_emb):
            raise EmbeddingError(f"{src}: {len(self.class_names)} class names for {len(self.class_emb)} class embeddings")
        if len(self.labels) and (self.labels.min() < 0 or self.labels.max() >= len(self.class_emb)):
            raise EmbeddingError(f"{src}: labels outside [0, {len(self.class_emb)})")
        for nm, a in (("emb", self.emb), ("class_emb", self.class_emb)):
            if not np.isfinite(a).all():
                raise EmbeddingError(f"{src}: {nm} has NaN/inf values")
        return self

    def save(self, path: str | os.PathLike) -> Path:
        from safetensors.numpy import save_file

        tensors = {
            "emb": np.ascontiguousarray(self.emb, np.float32),
            "labels": np.ascontiguousarray(self.labels, np.int64),
            "class_emb": np.ascontiguousarray(self.class_emb, np.float32),
        }
        header = {"name": self.name, "class_names": json.dumps(list(self.class_names)),
                  "meta": json.dumps(self.meta, sort_keys=True)}
        return atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=header))

    @classmethod
    def load(cls, path: str | os.PathLike) -> "ZeroShotSet":
        from safetensors import safe_open

        path = Path(path)
        if not path.exists():
            raise EmbeddingError(f"{path}: no such zero-shot set")
        with safe_open(str(path), framework="np") as f:
            h = f.metadata() or {}
            out = cls(h.get("name", path.stem), f.get_tensor("emb"), f.get_tensor("labels"),
                      f.get_tensor("class_emb"), json.loads(h.get("class_names", "[]")),
                      json.loads(h.get("meta", "{}")))
        return out.validate(source=str(path))
