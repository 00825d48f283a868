"""Sharded, resumable embedding cache.

Layout of a cache folder::

    manifest.json              identity (encoder, model, pretrained tag, dataset, normalisation,
                               shard size, dim), library versions, shard records with sha256,
                               rows done / skipped, ``complete`` flag
    shards/shard_00000.npz     rows with source index in [0, S), S = shard_size
    shards/shard_00001.npz     rows with source index in [S, 2S) ...
    x.npy, y.npy, index.npy,   consolidated arrays, written once every shard is done
    labels.npy, captions.json  (memory-mapped by :func:`load_cache`)

Shards cover fixed ranges of *source* indices (bad rows included), so a shard is the
same whichever run wrote it and an interrupted extraction resumes at the first
unfinished range. Every file is written atomically (temporary file + rename) and the
manifest, listing each finished shard with its checksum, is rewritten after it; a crash
at any point leaves either a finished shard or none. Reopening a cache with a different
identity (another encoder, checkpoint, data set, normalisation or shard size) raises
:class:`CacheMismatch` instead of mixing embeddings from two models.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import warnings
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .store import EmbeddingError, PairedEmbeddings, atomic_write

__all__ = [
    "CACHE_FORMAT",
    "CACHE_VERSION",
    "CacheMismatch",
    "EmbeddingCache",
    "read_manifest",
    "is_cache",
    "load_arrays",
    "load_cache",
    "sha256_file",
]

CACHE_FORMAT = "mmsae-embedding-cache"
CACHE_VERSION = 1
MANIFEST = "manifest.json"
_VERIFY_AUTO_BYTES = 1 << 30  # verify checksums on load automatically below 1 GiB


class CacheMismatch(EmbeddingError):
    """The cache folder was written with another encoder / data set / setting."""


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            b = f.read(chunk)
            if not b:
                break
            h.update(b)
    return h.hexdigest()


def _write_json(path: Path, obj: Any) -> None:
    def w(tmp):
        with open(tmp, "w") as f:
            json.dump(obj, f, indent=1, sort_keys=False)
    atomic_write(path, w)


def read_manifest(path: str | os.PathLike) -> dict:
    p = Path(path) / MANIFEST
    if not p.is_file():
        raise EmbeddingError(f"{path}: not an embedding cache (no {MANIFEST})")
    try:
        with open(p) as f:
            m = json.load(f)
    except ValueError as e:
        raise EmbeddingError(f"{p}: corrupt manifest ({e})") from e
    if m.get("format") != CACHE_FORMAT:
        raise EmbeddingError(f"{p}: not an mmsae embedding-cache manifest (format={m.get('format')!r})")
    if int(m.get("version", 0)) > CACHE_VERSION:
        raise EmbeddingError(f"{p}: cache version {m.get('version')} is newer than this mmsae "
                             f"understands ({CACHE_VERSION}); upgrade mmsae")
    return m


def is_cache(path: str | os.PathLike) -> bool:
    return (Path(path) / MANIFEST).is_file()


def _flatten(d: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(d, dict):
        out: dict[str, Any] = {}
        for k, v in d.items():
            out.update(_flatten(v, f"{prefix}{k}."))
        return out
    return {prefix[:-1]: d}


def _jsonable(obj: Any) -> Any:
    return json.loads(json.dumps(obj, default=str))


class EmbeddingCache:
    """Writer side of a cache folder.

    ``identity`` (JSON-able dict) must match the manifest of an existing folder, else
    :class:`CacheMismatch`; ``versions`` (library versions) only warn when they differ.
    ``fields``: the embedding arrays per row, ``("x", "y")`` for pairs or ``("x",)``
    for a labelled set. ``overwrite=True`` deletes an existing cache first.
    """

    def __init__(self, path: str | os.PathLike, identity: dict, dim: int, shard_size: int = 10_000,
                 fields: Sequence[str] = ("x", "y"), versions: dict | None = None, overwrite: bool = False):
        if shard_size < 1:
            raise ValueError("shard_size must be >= 1")
        self.path = Path(path)
        self.dim, self.shard_size, self.fields = int(dim), int(shard_size), tuple(fields)
        self.identity = _jsonable(dict(identity, dim=self.dim, shard_size=self.shard_size, fields=list(self.fields)))
        self.versions = _jsonable(versions or {})
        if overwrite and self.path.exists():
            if is_cache(self.path):
                shutil.rmtree(self.path)
            elif any(self.path.iterdir()):
                raise EmbeddingError(f"{self.path}: refusing to delete a folder that is not an embedding cache")
        if is_cache(self.path):
            self.manifest = read_manifest(self.path)
            self._check_identity()
            self._verify_shards()
        else:
            if self.path.exists() and any(p.name != "shards" for p in self.path.iterdir()):
                raise EmbeddingError(f"{self.path}: folder exists and is not an embedding cache; "
                                     "choose an empty or new folder")
            self.manifest = {
                "format": CACHE_FORMAT, "version": CACHE_VERSION, "identity": self.identity,
                "versions": self.versions, "shards": {}, "rows_done": 0, "rows_skipped": 0,
                "skipped_reasons": {}, "source_state": {}, "complete": False,
            }
            self._save_manifest()

    # ------------------------------------------------------------------ checks
    def _check_identity(self) -> None:
        old, new = _flatten(self.manifest.get("identity", {})), _flatten(self.identity)
        diff = [k for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)]
        if diff:
            lines = "\n".join(f"  {k}: cache has {old.get(k)!r}, this run asks for {new.get(k)!r}" for k in diff[:12])
            raise CacheMismatch(
                f"{self.path}: the embedding cache was written with different settings and cannot be "
                f"resumed or reused:\n{lines}\nUse another output folder, or delete this one "
                "(overwrite=True) to start again."
            )
        oldv = self.manifest.get("versions", {})
        changed = {k: (oldv.get(k), v) for k, v in self.versions.items() if oldv.get(k) not in (None, v)}
        if changed:
            warnings.warn(f"{self.path}: resuming a cache written with other library versions {changed}; "
                          "embeddings may differ slightly between shards", stacklevel=3)

    def _verify_shards(self) -> None:
        bad = []
        for k, rec in list(self.manifest["shards"].items()):
            f = self.path / rec["file"]
            if not f.is_file() or f.stat().st_size != rec.get("bytes", -1) or sha256_file(f) != rec["sha256"]:
                bad.append(k)
                del self.manifest["shards"][k]
        if bad:
            warnings.warn(f"{self.path}: {len(bad)} shard(s) missing or failing their checksum "
                          f"(first: {bad[0]}); they will be recomputed", stacklevel=3)
            self.manifest["complete"] = False
            self._recount()
            self._save_manifest()

    def _recount(self) -> None:
        sh = self.manifest["shards"].values()
        self.manifest["rows_done"] = int(sum(r["rows"] for r in sh))
        self.manifest["rows_skipped"] = int(sum(r["skipped"] for r in sh))
        reasons: dict[str, int] = {}
        for r in sh:
            for k, v in r.get("skipped_reasons", {}).items():
                reasons[k] = reasons.get(k, 0) + int(v)
        self.manifest["skipped_reasons"] = reasons

    def _save_manifest(self) -> None:
        _write_json(self.path / MANIFEST, self.manifest)

    # ------------------------------------------------------------------ progress
    def shard_of(self, index: int) -> int:
        return int(index) // self.shard_size

    def is_done(self, shard_id: int) -> bool:
        return str(int(shard_id)) in self.manifest["shards"]

    @property
    def complete(self) -> bool:
        return bool(self.manifest.get("complete"))

    @property
    def source_state(self) -> dict:
        return self.manifest.setdefault("source_state", {})

    def resume_index(self) -> int:
        """First source index of the first unfinished shard."""
        k = 0
        while self.is_done(k):
            k += 1
        return k * self.shard_size

    def write_shard(self, shard_id: int, arrays: dict[str, np.ndarray], index: Sequence[int],
                    captions: Sequence[str | None] | None = None, labels: Sequence[int | None] | None = None,
                    skipped: Sequence[tuple[int, str]] = (), end: int | None = None,
                    source_state: dict | None = None) -> None:
        """Write the rows of shard ``shard_id`` (source indices ``[id*S, end)``) and record it."""
        index = np.asarray(index, np.int64).reshape(-1)
        n = len(index)
        lo, hi = shard_id * self.shard_size, (shard_id + 1) * self.shard_size
        if n and (index.min() < lo or index.max() >= hi):
            raise ValueError(f"rows outside shard {shard_id}'s index range [{lo}, {hi})")
        out: dict[str, np.ndarray] = {"index": index}
        for f in self.fields:
            a = np.asarray(arrays[f], np.float32).reshape(n, self.dim) if n else np.zeros((0, self.dim), np.float32)
            if not np.isfinite(a).all():
                raise EmbeddingError(f"shard {shard_id}: field {f} has NaN/inf values (encoder output)")
            out[f] = a
        out["labels"] = np.asarray([-1 if v is None else int(v) for v in (labels if labels is not None else [None] * n)],
                                   np.int64)
        out["captions"] = np.array(json.dumps(list(captions) if captions is not None else [None] * n))
        reasons: dict[str, int] = {}
        for _, r in skipped:
            reasons[r] = reasons.get(r, 0) + 1
        out["skipped"] = np.array(json.dumps([[int(i), r] for i, r in skipped]))
        rel = f"shards/shard_{shard_id:05d}.npz"

        def w(tmp):
            with open(tmp, "wb") as fh:
                np.savez(fh, **out)
        p = atomic_write(self.path / rel, w)
        self.manifest["shards"][str(int(shard_id))] = {
            "file": rel, "sha256": sha256_file(p), "bytes": p.stat().st_size, "rows": int(n),
            "start": int(lo), "end": int(hi if end is None else end), "skipped": len(skipped),
            "skipped_reasons": reasons,
        }
        if source_state is not None:
            self.manifest["source_state"] = _jsonable(source_state)
        self.manifest["complete"] = False
        self._recount()
        self._save_manifest()

    def finalize(self, meta: dict | None = None, source_state: dict | None = None) -> None:
        """Mark the cache complete and write the consolidated, memory-mappable arrays."""
        if meta is not None:
            self.manifest["meta"] = _jsonable(meta)
        if source_state is not None:
            self.manifest["source_state"] = _jsonable(source_state)
        ids = sorted(int(k) for k in self.manifest["shards"])
        if ids != list(range(len(ids))):
            missing = sorted(set(range(max(ids) + 1 if ids else 0)) - set(ids))
            raise EmbeddingError(f"{self.path}: cannot finalise, shards {missing[:5]} are missing")
        self.manifest["num_shards"] = len(ids)
        self.manifest["complete"] = True
        consolidate(self.path, self.manifest)
        self._save_manifest()


# ---------------------------------------------------------------------- consolidation
def _shard_files(path: Path, manifest: dict) -> list[tuple[int, dict]]:
    return sorted(((int(k), r) for k, r in manifest["shards"].items()), key=lambda t: t[0])


def consolidate(path: str | os.PathLike, manifest: dict) -> dict:
    """Concatenate the shards into ``x.npy`` (``y.npy``, ``index.npy``, ``labels.npy``,
    ``captions.json``), streaming one shard at a time (works beyond memory); records
    their checksums in ``manifest["consolidated"]`` (the caller saves the manifest)."""
    path = Path(path)
    ident = manifest["identity"]
    fields, dim = list(ident["fields"]), int(ident["dim"])
    shards = _shard_files(path, manifest)
    total = int(sum(r["rows"] for _, r in shards))
    out_files: dict[str, dict] = {}
    has_labels = False
    captions: list = []
    for name in fields + ["index", "labels"]:
        shape = (total, dim) if name in fields else (total,)
        dtype = np.float32 if name in fields else np.int64

        def w(tmp, name=name, shape=shape, dtype=dtype):
            nonlocal has_labels
            mm = np.lib.format.open_memmap(tmp, mode="w+", dtype=dtype, shape=shape)
            pos = 0
            for _, rec in shards:
                with np.load(path / rec["file"], allow_pickle=False) as z:
                    a = z[name]
                    mm[pos:pos + len(a)] = a
                    pos += len(a)
                    if name == "labels" and (a >= 0).any():
                        has_labels = True
                    if name == "index":
                        captions.extend(json.loads(str(z["captions"])))
            mm.flush()
            del mm
        p = atomic_write(path / f"{name}.npy", w)
        out_files[name] = {"file": p.name, "sha256": sha256_file(p), "bytes": p.stat().st_size}
    if not has_labels:
        os.remove(path / "labels.npy")
        del out_files["labels"]
    if any(c is not None for c in captions):
        _write_json(path / "captions.json", captions)
        p = path / "captions.json"
        out_files["captions"] = {"file": p.name, "sha256": sha256_file(p), "bytes": p.stat().st_size}
    manifest["consolidated"] = {"rows": total, "files": out_files}
    return manifest


# ---------------------------------------------------------------------- loading
def load_arrays(path: str | os.PathLike, verify: bool | None = None, allow_partial: bool = False,
                mmap: bool = True) -> tuple[dict[str, Any], dict]:
    """Arrays of a cache folder (memory-mapped ``np.ndarray``s) and its manifest.

    Returns ``({"x", ["y"], "index", ["labels"], ["captions"]}, manifest)``. ``verify``:
    check sha256 of the consolidated files (``None``: only when they total < 1 GiB).
    An unfinished cache raises :class:`EmbeddingError` unless ``allow_partial`` (then
    the finished shards are concatenated in memory).
    """
    path = Path(path)
    m = read_manifest(path)
    ident = m["identity"]
    fields = list(ident["fields"])
    if not m.get("complete"):
        if not allow_partial:
            raise EmbeddingError(
                f"{path}: embedding cache is unfinished ({m.get('rows_done', 0)} rows in "
                f"{len(m.get('shards', {}))} shards done); rerun the extraction with the same "
                "settings to resume, or pass allow_partial=True")
        return _load_partial(path, m), m
    cons = m.get("consolidated")
    if not cons or not all((path / f["file"]).is_file() for f in cons["files"].values()):
        consolidate(path, m)  # shards finished but consolidation was interrupted
        _write_json(path / MANIFEST, m)
        cons = m["consolidated"]
    files = cons["files"]
    if verify is None:
        verify = sum(f["bytes"] for f in files.values()) < _VERIFY_AUTO_BYTES
    for name, f in files.items():
        p = path / f["file"]
        if p.stat().st_size != f["bytes"] or (verify and sha256_file(p) != f["sha256"]):
            raise EmbeddingError(
                f"{p}: checksum/size does not match the manifest (file modified or corrupted); delete "
                f"{p.name} and load again to rebuild it from the shards")
    out: dict[str, Any] = {}
    for name in fields + ["index", "labels"]:
        if name in files:
            out[name] = np.load(path / files[name]["file"], mmap_mode="r" if mmap else None, allow_pickle=False)
    if "captions" in files:
        with open(path / files["captions"]["file"]) as fh:
            out["captions"] = json.load(fh)
    return out, m


def _load_partial(path: Path, m: dict) -> dict[str, Any]:
    fields = list(m["identity"]["fields"])
    parts: dict[str, list] = {k: [] for k in fields + ["index", "labels"]}
    caps: list = []
    for _, rec in _shard_files(path, m):
        with np.load(path / rec["file"], allow_pickle=False) as z:
            for k in parts:
                parts[k].append(z[k])
            caps.extend(json.loads(str(z["captions"])))
    dim = int(m["identity"]["dim"])
    out: dict[str, Any] = {}
    for k, v in parts.items():
        empty = np.zeros((0, dim), np.float32) if k in fields else np.zeros((0,), np.int64)
        out[k] = np.concatenate(v) if v else empty
    if not (out["labels"] >= 0).any():
        del out["labels"]
    if any(c is not None for c in caps):
        out["captions"] = caps
    return out


def load_cache(path: str | os.PathLike, verify: bool | None = None, allow_partial: bool = False,
               mmap: bool = True) -> PairedEmbeddings:
    """Load a paired cache as :class:`PairedEmbeddings` with memory-mapped ``x`` / ``y``.

    ``meta`` carries the manifest's identity (encoder, dataset, normalisation), the row
    and skip counts, and ``source_index`` (the path of ``index.npy``: row i came from
    source row ``index[i]``).
    """
    path = Path(path)
    arrays, m = load_arrays(path, verify=verify, allow_partial=allow_partial, mmap=mmap)
    if "y" not in arrays:
        raise EmbeddingError(f"{path}: this cache holds one modality only ({m['identity']['fields']}), "
                             "not image/audio-text pairs")
    ident = m["identity"]
    meta = dict(m.get("meta", {}))
    enc = ident.get("encoder", {})
    meta.update({
        "encoder": enc.get("name") if isinstance(enc, dict) else enc,
        "encoder_info": enc,
        "dataset": ident.get("dataset", {}).get("name") if isinstance(ident.get("dataset"), dict) else ident.get("dataset"),
        "dataset_info": ident.get("dataset"),
        "normalized": bool(ident.get("normalized", False)),
        "modalities": list(ident.get("modalities", ["image", "text"])),
        "rows_skipped": m.get("rows_skipped", 0),
        "skipped_reasons": m.get("skipped_reasons", {}),
        "versions": m.get("versions", {}),
        "cache": str(path),
        "format": "cache",
        "complete": bool(m.get("complete")),
    })
    if (path / "index.npy").is_file():
        meta["source_index"] = str(path / "index.npy")
    labels = arrays.get("labels")
    return PairedEmbeddings(arrays["x"], arrays["y"], labels, arrays.get("captions"), meta, str(path))
