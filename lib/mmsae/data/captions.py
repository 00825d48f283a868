"""Captions that travel with paired embeddings: reading a captions file, checking it
against the embeddings it belongs to, and finding it beside them.

A pair's text is a list of strings: the **first** is the caption whose embedding is row
``i`` of ``y``; any further ones are other captions of the same item (COCO has five per
image). :attr:`mmsae.data.PairedEmbeddings.captions` holds one such list per pair (a plain
string is read as a list of one).

Captions files
--------------
``.json``  either a list with one entry per pair (a string, or a list of strings whose first
           is the embedded caption), or an object ``{"rows": [...]}`` whose row ``i`` is
           ``{"row": i, "captions": [...], "embedded_caption": "..."}`` (the layout of
           ``data/clip_vitb16_coco500_captions.json``; ``row`` and ``embedded_caption`` are
           optional; when given, ``row`` must equal the row's position and the embedded
           caption is put first). An ``"ids"`` entry per row (``image_id``) is kept in the
           store's meta (``caption_ids``).
``.txt``   one caption per line, line ``i`` for pair ``i`` (UTF-8).

:func:`find_captions` looks for ``<stem>_captions.json`` (or ``.txt``) beside an embeddings
file, so ``clip_vitb16_coco500.npy`` finds ``clip_vitb16_coco500_captions.json``. Every
problem (not UTF-8, not JSON, a row count or a row id that does not match the embeddings, an
empty caption) raises :class:`~mmsae.data.store.EmbeddingError` naming the file.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Sequence

from .store import EmbeddingError, PairedEmbeddings

__all__ = ["CAPTION_SUFFIXES", "find_captions", "read_captions", "normalize_captions", "attach_captions"]

CAPTION_SUFFIXES = ("_captions.json", "_captions.txt")


def find_captions(embeddings_path: str | os.PathLike) -> Path | None:
    """The captions file beside an embeddings file or cache folder (``<stem>_captions.json``
    or ``.txt``), or ``None``."""
    p = Path(embeddings_path)
    stem = p.name if p.is_dir() else p.stem
    for suffix in CAPTION_SUFFIXES:
        c = p.parent / f"{stem}{suffix}"
        if c.is_file():
            return c
    return None


def normalize_captions(entries: Sequence[Any], source: str) -> list[list[str]]:
    """Entries (a string or a list of strings each) as lists of non-empty strings; an error
    naming ``source`` and the first bad row otherwise."""
    out = []
    for i, e in enumerate(entries):
        caps = [e] if isinstance(e, str) else e
        if not isinstance(caps, (list, tuple)) or not caps:
            raise EmbeddingError(f"{source}: row {i}: expected a caption or a non-empty list of captions, "
                                 f"got {type(e).__name__}")
        if not all(isinstance(c, str) and c.strip() for c in caps):
            raise EmbeddingError(f"{source}: row {i}: every caption must be a non-empty string")
        out.append(list(caps))
    return out


def _rows_object(rows: Any, path: Path) -> tuple[list[list[str]], list | None]:
    if not isinstance(rows, list):
        raise EmbeddingError(f"{path}: 'rows' must be a list of objects, one per pair")
    caps, ids = [], []
    for i, r in enumerate(rows):
        if not isinstance(r, dict) or "captions" not in r:
            raise EmbeddingError(f"{path}: row {i} has no 'captions' list")
        if "row" in r and r["row"] != i:
            raise EmbeddingError(f"{path}: row {i} says 'row': {r['row']!r}; the rows must be in the order of the "
                                 "embeddings (row i of the file = pair i)")
        c = normalize_captions([r["captions"]], f"{path}: row {i}")[0] if isinstance(r["captions"], list) else None
        if c is None:
            raise EmbeddingError(f"{path}: row {i}: 'captions' must be a list of strings")
        emb = r.get("embedded_caption")
        if emb is not None:
            if emb not in c and emb.strip() not in c:
                raise EmbeddingError(f"{path}: row {i}: the embedded caption {emb!r} is not among its captions")
            c = [emb] + [x for x in c if x not in (emb, emb.strip())]
        caps.append(c)
        ids.append(r.get("image_id", r.get("id")))
    return caps, (ids if any(v is not None for v in ids) else None)


def read_captions(path: str | os.PathLike, n_pairs: int | None = None) -> tuple[list[list[str]], list | None]:
    """Captions of every pair from ``path`` (see the module docstring) and the items' ids
    (``None`` when the file has none). ``n_pairs``: the number of embedding pairs the file
    must describe, row by row."""
    path = Path(path)
    if not path.is_file():
        raise EmbeddingError(f"{path}: no such captions file")
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise EmbeddingError(f"{path}: not UTF-8 text (byte {e.start}: {raw[e.start:e.start + 1]!r}); save the "
                             "captions as UTF-8") from None
    ids = None
    if path.suffix == ".txt":
        caps = normalize_captions(text.splitlines(), str(path))
    elif path.suffix == ".json":
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as e:
            raise EmbeddingError(f"{path}: not valid JSON ({e})") from None
        if isinstance(obj, dict) and "rows" in obj:
            caps, ids = _rows_object(obj["rows"], path)
        elif isinstance(obj, list):
            caps = normalize_captions(obj, str(path))
        else:
            raise EmbeddingError(f"{path}: expected a JSON list (one entry per pair) or an object with 'rows'")
    else:
        raise EmbeddingError(f"{path}: unsupported captions file {path.suffix!r} (use .json or .txt)")
    if n_pairs is not None and len(caps) != n_pairs:
        raise EmbeddingError(f"{path}: {len(caps)} caption rows for {n_pairs} embedding pairs (row i of the "
                             "captions must describe pair i)")
    return caps, ids


def attach_captions(pairs: PairedEmbeddings, captions_path: str | os.PathLike) -> PairedEmbeddings:
    """A copy of ``pairs`` carrying the captions of ``captions_path`` (:func:`read_captions`):
    its row count must equal the number of pairs, and its item ids, when both it and the
    pairs (``meta["item_ids"]``) have them, must be the same."""
    caps, ids = read_captions(captions_path, n_pairs=len(pairs))
    have = pairs.meta.get("item_ids")
    if ids is not None and have is not None and list(have) != list(ids):
        bad = next(i for i, (a, b) in enumerate(zip(have, ids)) if a != b)
        raise EmbeddingError(f"{captions_path}: row {bad} describes item {ids[bad]!r}, but pair {bad} of "
                             f"{pairs.source} is item {have[bad]!r}: the captions belong to other embeddings")
    meta = dict(pairs.meta, captions_file=Path(captions_path).name)
    if ids is not None:
        meta["item_ids"] = list(ids)
    return PairedEmbeddings(pairs.x, pairs.y, pairs.labels, caps, meta, pairs.source)
