"""Data sources for embedding extraction: image/audio + caption pairs and labelled sets.

Every source yields :class:`Row` ``(index, media, caption, label)`` in a fixed,
deterministic order. ``index`` is the row's position in the source (counting bad
rows too), so a cache can resume at any index and a row can be traced back to its
file. ``media`` is a decoded ``PIL.Image`` (RGB) or a mono ``float32`` waveform at
``sample_rate`` Hz. Bad rows (unreadable/corrupt media, empty caption) are skipped
and counted in :attr:`Source.skipped` (reason -> count) and
:attr:`Source.skipped_rows` (first few ``(index, reason)``); they never abort an
extraction and never shift the pairing, since media and caption travel together.

Sources
-------
:class:`CocoCaptions`      COCO-style ``captions_*.json`` + image folder.
:class:`WebDatasetSource`  WebDataset ``.tar`` shards (img2dataset output, audio sets):
                           one image/audio member and a ``.txt`` or ``.json`` caption per key.
:class:`CsvSource`         CSV/TSV rows ``path, caption`` (images or audio).
:class:`LabelledFolder`    ``root/<class>/<files>`` (ImageNet val, GTZAN ``genres_original``).
:class:`CifarSource`       the python pickles of CIFAR-10/100 (``cifar-10-batches-py``).
:class:`NSynthSource`      an NSynth split (``examples.json`` + ``audio/*.wav``).

:func:`open_source` builds one from a spec string (``coco:ANN.json:IMAGE_DIR``, a ``.tar``
pattern, a ``.csv``/``.tsv`` file, a folder).
"""

from __future__ import annotations

import csv
import glob
import io
import json
import os
import pickle
import tarfile
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, Iterator, NamedTuple, Sequence

import numpy as np

from .prompts import CIFAR10_CLASSES, CIFAR100_CLASSES, NSYNTH_FAMILIES

__all__ = [
    "Row",
    "Source",
    "BadRow",
    "CocoCaptions",
    "WebDatasetSource",
    "CsvSource",
    "LabelledFolder",
    "CifarSource",
    "NSynthSource",
    "open_source",
    "load_image",
    "load_audio",
    "IMAGE_EXTS",
    "AUDIO_EXTS",
]

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")
AUDIO_EXTS = (".wav", ".flac", ".mp3", ".ogg", ".opus", ".m4a", ".au", ".aiff")
CLAP_SAMPLE_RATE = 48_000


class Row(NamedTuple):
    """One good row: ``index`` in the source, decoded ``media``, ``caption``, ``label`` (or None)."""

    index: int
    media: Any
    caption: str | None
    label: int | None = None


class BadRow(Exception):
    """Raised by decoders for a row that must be skipped; the message is the reason."""


# --------------------------------------------------------------------------- decoding
def load_image(src: str | os.PathLike | bytes) -> "Any":
    """Decode an image (path or bytes) to an RGB ``PIL.Image``; :class:`BadRow` when unreadable."""
    from PIL import Image

    try:
        im = Image.open(io.BytesIO(src) if isinstance(src, (bytes, bytearray)) else src)
        im.load()
        im = im.convert("RGB")
    except Exception as e:
        raise BadRow(f"unreadable image ({type(e).__name__})") from e
    if im.width < 2 or im.height < 2:
        raise BadRow("image smaller than 2x2")
    return im


def load_audio(src: str | os.PathLike | bytes, sample_rate: int = CLAP_SAMPLE_RATE) -> np.ndarray:
    """Decode audio (path or bytes) to mono float32 at ``sample_rate``; :class:`BadRow` when broken."""
    wav = sr = None
    try:
        import soundfile as sf

        wav, sr = sf.read(io.BytesIO(src) if isinstance(src, (bytes, bytearray)) else str(src),
                          dtype="float32", always_2d=True)
        wav = wav.mean(axis=1)
    except Exception:
        wav = None
    if wav is None:  # formats libsndfile cannot read (some mp3/m4a): librosa/audioread
        try:
            import warnings

            import librosa

            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                if isinstance(src, (bytes, bytearray)):
                    wav, sr = librosa.load(io.BytesIO(src), sr=None, mono=True)
                else:
                    wav, sr = librosa.load(str(src), sr=None, mono=True)
        except Exception as e:
            raise BadRow(f"unreadable audio ({type(e).__name__})") from e
    wav = np.asarray(wav, dtype=np.float32)
    if wav.size == 0:
        raise BadRow("empty audio")
    if not np.isfinite(wav).all():
        raise BadRow("audio has NaN/inf samples")
    if sr != sample_rate:
        wav = resample(wav, int(sr), sample_rate)
    return wav


def resample(wav: np.ndarray, sr: int, target: int) -> np.ndarray:
    """Band-limited resampling (soxr, which librosa uses; scipy's polyphase filter otherwise)."""
    try:
        import soxr

        return np.asarray(soxr.resample(wav, sr, target), np.float32)
    except ImportError:
        from math import gcd

        from scipy.signal import resample_poly

        g = gcd(sr, target)
        return resample_poly(wav, target // g, sr // g).astype(np.float32)


def _clean_caption(c: Any) -> str | None:
    if c is None:
        return None
    if isinstance(c, bytes):
        c = c.decode("utf-8", errors="replace")
    c = " ".join(str(c).split())
    return c or None


# --------------------------------------------------------------------------- base
class Source:
    """Base class. Subclasses implement :meth:`_raw` (cheap: paths/bytes + caption) and
    set ``modality``; decoding happens in :meth:`rows`, optionally in worker threads."""

    modality: str = "image"
    paired: bool = True
    max_recorded_skips = 1000

    def __init__(self, limit: int | None = None, sample_rate: int = CLAP_SAMPLE_RATE, workers: int = 0):
        self.limit = limit
        self.sample_rate = sample_rate
        self.workers = workers
        self.skipped: Counter = Counter()
        self.skipped_rows: list[tuple[int, str]] = []
        self.class_names: list[str] | None = None
        # applied to decoded media in the (worker) decode step, e.g. an encoder's preprocessing
        self.transform: Callable[[Any], Any] | None = None
        # called as on_skip(index, reason) for every bad row (the cache records them per shard)
        self.on_skip: Callable[[int, str], None] | None = None

    # -- to implement
    def _raw(self, start: int) -> Iterator[tuple[int, Any, Any, int | None]]:
        """Yield ``(index, payload, caption, label)`` for indices >= start (payload: path or bytes)."""
        raise NotImplementedError

    def describe(self) -> dict[str, Any]:
        """JSON-able identity of the data (goes into the cache manifest)."""
        raise NotImplementedError

    def num_rows(self) -> int | None:
        """Rows in the source (bad ones included) when known cheaply, else None."""
        return None

    # -- shared
    def decode(self, payload: Any) -> Any:
        if self.modality == "audio":
            if isinstance(payload, np.ndarray):
                return np.asarray(payload, np.float32)
            return load_audio(payload, self.sample_rate)
        if hasattr(payload, "convert") and hasattr(payload, "size"):  # already a PIL image
            return payload.convert("RGB")
        return load_image(payload)

    def skip(self, index: int, reason: str) -> None:
        self.skipped[reason] += 1
        if len(self.skipped_rows) < self.max_recorded_skips:
            self.skipped_rows.append((int(index), reason))
        if self.on_skip is not None:
            self.on_skip(int(index), reason)

    @property
    def n_skipped(self) -> int:
        return int(sum(self.skipped.values()))

    def _bounded_raw(self, start: int) -> Iterator[tuple[int, Any, Any, int | None]]:
        for item in self._raw(start):
            if self.limit is not None and item[0] >= self.limit:
                return
            yield item

    def _decode_item(self, item) -> Row | tuple[int, str]:
        index, payload, caption, label = item
        if self.paired:
            caption = _clean_caption(caption)
            if caption is None:
                return (index, "empty caption")
        if isinstance(payload, BadRow):
            return (index, str(payload))
        try:
            media = self.decode(payload)
            if self.transform is not None:
                media = self.transform(media)
        except BadRow as e:
            return (index, str(e))
        except Exception as e:  # anything else a decoder throws is one bad row, not a crash
            return (index, f"unreadable media ({type(e).__name__})")
        return Row(int(index), media, caption, None if label is None else int(label))

    def rows(self, start: int = 0) -> Iterator[Row]:
        """Good rows with ``index >= start`` in source order; bad ones are counted and skipped."""
        raw = self._bounded_raw(start)
        if self.workers and self.workers > 0:
            results = _ordered_parallel_map(self._decode_item, raw, self.workers)
        else:
            results = map(self._decode_item, raw)
        for r in results:
            if isinstance(r, Row):
                yield r
            else:
                self.skip(*r)

    def __iter__(self) -> Iterator[Row]:
        return self.rows(0)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.describe()})"


def _ordered_parallel_map(fn: Callable, items: Iterator, workers: int, chunk: int | None = None) -> Iterator:
    """``map(fn, items)`` on a thread pool, in order, with bounded read-ahead."""
    chunk = chunk or max(32, 8 * workers)
    with ThreadPoolExecutor(max_workers=workers) as ex:
        batch: list = []
        for it in items:
            batch.append(it)
            if len(batch) >= chunk:
                yield from ex.map(fn, batch)
                batch = []
        if batch:
            yield from ex.map(fn, batch)


# --------------------------------------------------------------------------- COCO
class CocoCaptions(Source):
    """COCO-style captions: ``{"images": [{id, file_name}], "annotations": [{image_id, caption}]}``.

    ``captions="first"`` (default) gives one pair per image (its lowest-id caption);
    ``"all"`` gives one pair per annotation (images repeat). Order: image id, then
    annotation id. Images whose file is missing are bad rows.
    """

    def __init__(self, annotations: str | os.PathLike, image_dir: str | os.PathLike,
                 captions: str = "first", **kw):
        super().__init__(**kw)
        self.annotations, self.image_dir = Path(annotations), Path(image_dir)
        if captions not in ("first", "all"):
            raise ValueError("captions must be 'first' or 'all'")
        self.captions_mode = captions
        if not self.annotations.is_file():
            raise FileNotFoundError(f"COCO annotations file not found: {self.annotations}")
        if not self.image_dir.is_dir():
            raise FileNotFoundError(f"COCO image folder not found: {self.image_dir}")
        with open(self.annotations) as f:
            d = json.load(f)
        try:
            files = {int(im["id"]): im["file_name"] for im in d["images"]}
            anns = sorted(d["annotations"], key=lambda a: (int(a["image_id"]), int(a.get("id", 0))))
        except (KeyError, TypeError) as e:
            raise ValueError(f"{self.annotations}: not a COCO captions file (needs 'images' and "
                             f"'annotations' with image_id/caption): {e}") from e
        self._items: list[tuple[str, str, int]] = []
        seen: set[int] = set()
        for a in anns:
            iid = int(a["image_id"])
            if self.captions_mode == "first" and iid in seen:
                continue
            seen.add(iid)
            self._items.append((files.get(iid, ""), a.get("caption", ""), iid))

    def num_rows(self) -> int:
        n = len(self._items)
        return n if self.limit is None else min(n, self.limit)

    def _raw(self, start):
        for i in range(start, len(self._items)):
            fn, cap, _ = self._items[i]
            p = self.image_dir / fn
            yield i, (p if fn and p.is_file() else BadRow(f"missing image file {fn!r}")), cap, None

    def describe(self):
        return {"kind": "coco", "annotations": str(self.annotations.resolve()),
                "image_dir": str(self.image_dir.resolve()), "captions": self.captions_mode,
                "rows": len(self._items), "limit": self.limit}


# --------------------------------------------------------------------------- CSV / TSV
_PATH_COLS = ("path", "filepath", "file", "filename", "image", "image_path", "audio", "audio_path", "url")
_CAPTION_COLS = ("caption", "text", "title", "description", "captions")
_LABEL_COLS = ("label", "class", "target")


class CsvSource(Source):
    """CSV/TSV of ``path, caption`` rows (a header naming the columns is optional).

    Relative paths are resolved against ``root`` (default: the table's folder).
    ``modality`` is ``"image"`` or ``"audio"``; ``"auto"`` guesses from the extensions.
    A ``label`` column, when present, is kept.
    """

    def __init__(self, path: str | os.PathLike, root: str | os.PathLike | None = None,
                 modality: str = "auto", path_col: str | None = None, caption_col: str | None = None,
                 delimiter: str | None = None, **kw):
        super().__init__(**kw)
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"caption table not found: {self.path}")
        self.root = Path(root) if root is not None else self.path.parent
        if delimiter is None:
            delimiter = "\t" if self.path.suffix.lower() in (".tsv", ".tab") else ","
        with open(self.path, newline="", encoding="utf-8") as f:
            table = [r for r in csv.reader(f, delimiter=delimiter)]
        if not table:
            raise ValueError(f"{self.path}: empty table")
        head = [h.strip().lower() for h in table[0]]
        pc = cc = lc = None
        if path_col or caption_col or any(h in _PATH_COLS for h in head) and any(h in _CAPTION_COLS for h in head):
            pc = head.index(path_col.lower()) if path_col else next(i for i, h in enumerate(head) if h in _PATH_COLS)
            cc = (head.index(caption_col.lower()) if caption_col
                  else next(i for i, h in enumerate(head) if h in _CAPTION_COLS))
            lc = next((i for i, h in enumerate(head) if h in _LABEL_COLS), None)
            table = table[1:]
        else:
            pc, cc = 0, 1
        self._items = []
        for r in table:
            p = r[pc].strip() if len(r) > pc else ""
            c = r[cc] if len(r) > cc else ""
            lab = None
            if lc is not None and len(r) > lc and r[lc].strip().lstrip("-").isdigit():
                lab = int(r[lc])
            self._items.append((p, c, lab))
        if modality == "auto":
            exts = Counter(Path(p).suffix.lower() for p, _, _ in self._items[:1000])
            n_audio = sum(v for k, v in exts.items() if k in AUDIO_EXTS)
            modality = "audio" if n_audio > sum(exts.values()) / 2 else "image"
        if modality not in ("image", "audio"):
            raise ValueError("modality must be 'image', 'audio' or 'auto'")
        self.modality = modality

    def num_rows(self):
        n = len(self._items)
        return n if self.limit is None else min(n, self.limit)

    def _raw(self, start):
        for i in range(start, len(self._items)):
            p, c, lab = self._items[i]
            full = Path(p) if os.path.isabs(p) else self.root / p
            if not p or not full.is_file():
                yield i, BadRow(f"missing file {p!r}"), c, lab
            else:
                yield i, full, c, lab

    def describe(self):
        return {"kind": "csv", "path": str(self.path.resolve()), "root": str(self.root.resolve()),
                "modality": self.modality, "rows": len(self._items), "limit": self.limit}


# --------------------------------------------------------------------------- WebDataset
def _expand_shards(spec: str | Sequence[str]) -> list[str]:
    specs = [spec] if isinstance(spec, (str, os.PathLike)) else list(spec)
    out: list[str] = []
    for s in specs:
        s = str(s)
        try:
            from braceexpand import braceexpand

            parts = list(braceexpand(s))
        except ImportError:
            parts = [s]
        for p in parts:
            if os.path.isdir(p):
                out.extend(sorted(glob.glob(os.path.join(p, "*.tar")) + glob.glob(os.path.join(p, "*.tar.gz"))))
            elif any(ch in p for ch in "*?["):
                out.extend(sorted(glob.glob(p)))
            else:
                out.append(p)
    return out


class WebDatasetSource(Source):
    """WebDataset shards: members grouped by key (the name up to the first dot), one sample per key.

    Media: the first member with an image (``jpg/png/webp``) or audio (``flac/wav/mp3``)
    extension, per ``modality`` (``"auto"``: whichever comes first). Caption: ``.txt``,
    ``.caption``, or ``.json`` (keys ``caption``/``text``/``captions``). ``shards``:
    a list, a glob, a folder or a brace pattern ``cc3m/{00000..00331}.tar``.

    Samples are numbered in shard order. Reading resumes by skipping whole shards whose
    sample counts are known (:attr:`shard_counts`, stored by the cache), so a resumed
    extraction does not re-read finished tars.
    """

    def __init__(self, shards: str | Sequence[str], modality: str = "auto", **kw):
        super().__init__(**kw)
        self.shards = _expand_shards(shards)
        if not self.shards:
            raise FileNotFoundError(f"no WebDataset shards match {shards!r}")
        missing = [s for s in self.shards if not os.path.isfile(s)]
        if missing:
            raise FileNotFoundError(f"{len(missing)} WebDataset shard(s) not found, first: {missing[0]}")
        self.modality = modality
        self.shard_counts: dict[str, int] = {}

    def _pick(self, members: dict[str, bytes]):
        media = None
        for ext, data in members.items():
            e = "." + ext.split(".")[-1].lower()
            if self.modality in ("image", "auto") and e in IMAGE_EXTS:
                media = data
                if self.modality == "auto":
                    self.modality = "image"
                break
            if self.modality in ("audio", "auto") and e in AUDIO_EXTS:
                media = data
                if self.modality == "auto":
                    self.modality = "audio"
                break
        caption = None
        for ext in ("txt", "caption", "text"):
            if ext in members:
                caption = members[ext].decode("utf-8", errors="replace")
                break
        if caption is None and "json" in members:
            try:
                j = json.loads(members["json"])
                for k in ("caption", "text", "captions", "description"):
                    v = j.get(k) if isinstance(j, dict) else None
                    if isinstance(v, list):
                        v = v[0] if v else None
                    if v:
                        caption = str(v)
                        break
            except (ValueError, AttributeError):
                pass
        label = None
        if "cls" in members:
            try:
                label = int(members["cls"].decode().strip())
            except ValueError:
                pass
        return media, caption, label

    def _samples(self, shard: str) -> Iterator[dict[str, bytes] | BadRow]:
        """Members of one tar grouped by key; a corrupt tail ends the shard as one bad row."""
        cur_key, cur = None, {}
        try:
            with tarfile.open(shard, "r|*") as tf:
                for m in tf:
                    if not m.isfile():
                        continue
                    name = os.path.basename(m.name)
                    if name.startswith("."):
                        continue
                    key, _, ext = name.partition(".")
                    key = os.path.join(os.path.dirname(m.name), key)
                    if key != cur_key:
                        if cur_key is not None:
                            yield cur
                        cur_key, cur = key, {}
                    f = tf.extractfile(m)
                    cur[ext.lower()] = f.read() if f is not None else b""
        except (tarfile.TarError, OSError, EOFError) as e:
            if cur_key is not None:
                yield cur
            yield BadRow(f"corrupt tar shard {os.path.basename(shard)} ({type(e).__name__})")
            return
        if cur_key is not None:
            yield cur

    def _raw(self, start):
        offset = 0
        for shard in self.shards:
            known = self.shard_counts.get(shard)
            if known is not None and offset + known <= start:
                offset += known
                continue
            n = 0
            for s in self._samples(shard):
                i = offset + n
                n += 1
                if i < start:
                    continue
                if isinstance(s, BadRow):
                    yield i, s, "x", None
                    continue
                media, caption, label = self._pick(s)
                if media is None:
                    yield i, BadRow(f"no {self.modality} member"), caption, label
                else:
                    yield i, media, caption, label
                if self.limit is not None and i + 1 >= self.limit:
                    return
            self.shard_counts[shard] = n
            offset += n

    def num_rows(self):
        if len(self.shard_counts) == len(self.shards):
            n = sum(self.shard_counts.values())
            return n if self.limit is None else min(n, self.limit)
        return None

    def describe(self):
        return {"kind": "webdataset", "shards": [os.path.abspath(s) for s in self.shards],
                "modality": self.modality, "limit": self.limit}


# --------------------------------------------------------------------------- labelled sets
class _LabelledFiles(Source):
    """A list ``_items`` of ``(path, label)`` with ``class_names``; a missing file is a bad row."""

    _items: list

    def num_rows(self):
        n = len(self._items)
        return n if self.limit is None else min(n, self.limit)

    def _raw(self, start):
        for i in range(start, len(self._items)):
            p, lab = self._items[i]
            yield i, (p if p.is_file() else BadRow(f"missing file {p.name}")), self.class_names[lab], lab


class LabelledFolder(_LabelledFiles):
    """``root/<class>/<file>``: one row per file, label = class position, caption = class name.

    Classes are the sorted sub-folders; pass ``class_names`` (e.g. a prompt set's
    ``classes``) to fix the label order: sub-folders are matched by name
    (case/``_``/space-insensitive), or by position when there are exactly as many
    folders as names and none match (ImageNet val in WordNet-id folders).
    ``max_per_class`` keeps the first files of each class.
    """

    paired = False

    def __init__(self, root: str | os.PathLike, modality: str = "auto", class_names: Sequence[str] | None = None,
                 max_per_class: int | None = None, **kw):
        super().__init__(**kw)
        self.root = Path(root)
        if not self.root.is_dir():
            raise FileNotFoundError(f"labelled folder not found: {self.root}")
        folders = sorted(d.name for d in self.root.iterdir() if d.is_dir() and not d.name.startswith("."))
        if not folders:
            raise ValueError(f"{self.root}: no class sub-folders (expected root/<class>/<files>)")
        norm = lambda s: s.lower().replace("_", " ").replace("-", " ").strip()  # noqa: E731
        if class_names is None:
            mapping = {f: i for i, f in enumerate(folders)}
            self.class_names = list(folders)
        else:
            self.class_names = list(class_names)
            by_name = {norm(c): i for i, c in enumerate(self.class_names)}
            mapping = {f: by_name[norm(f)] for f in folders if norm(f) in by_name}
            if not mapping and len(folders) == len(self.class_names):
                mapping = {f: i for i, f in enumerate(folders)}
            unmatched = [f for f in folders if f not in mapping]
            if unmatched:
                raise ValueError(f"{self.root}: {len(unmatched)} class folder(s) match no class name, "
                                 f"first {unmatched[:3]}; known names start {self.class_names[:5]}")
        exts = {"image": IMAGE_EXTS, "audio": AUDIO_EXTS}.get(modality, IMAGE_EXTS + AUDIO_EXTS)
        self._items: list[tuple[Path, int]] = []
        for f in folders:
            files = sorted(p for p in (self.root / f).iterdir() if p.is_file() and p.suffix.lower() in exts)
            if max_per_class is not None:
                files = files[:max_per_class]
            self._items.extend((p, mapping[f]) for p in files)
        if not self._items:
            raise ValueError(f"{self.root}: no {modality if modality != 'auto' else 'image/audio'} files found")
        if modality == "auto":
            n_audio = sum(p.suffix.lower() in AUDIO_EXTS for p, _ in self._items)
            modality = "audio" if n_audio > len(self._items) / 2 else "image"
        self.modality = modality
        self.max_per_class = max_per_class


    def describe(self):
        return {"kind": "folder", "root": str(self.root.resolve()), "modality": self.modality,
                "classes": len(self.class_names), "rows": len(self._items),
                "max_per_class": self.max_per_class, "limit": self.limit}


class CifarSource(Source):
    """CIFAR-10/100 test (or train) split from the python pickles that torchvision downloads.

    ``root`` is the folder holding ``cifar-10-batches-py`` / ``cifar-100-python`` (or the
    batch folder itself).
    """

    paired = False

    def __init__(self, root: str | os.PathLike, which: str = "cifar10", split: str = "test", **kw):
        super().__init__(**kw)
        root = Path(root)
        which = which.lower().replace("-", "")
        sub = {"cifar10": "cifar-10-batches-py", "cifar100": "cifar-100-python"}[which]
        folder = root / sub if (root / sub).is_dir() else root
        if which == "cifar10":
            files = ["test_batch"] if split == "test" else [f"data_batch_{i}" for i in range(1, 6)]
            meta_file, names_key, label_key = "batches.meta", "label_names", "labels"
        else:
            files = [split]
            meta_file, names_key, label_key = "meta", "fine_label_names", "fine_labels"
        if not all((folder / f).is_file() for f in files):
            raise FileNotFoundError(
                f"{which} {split} split not found under {root}: expected {folder / files[0]} "
                f"(the python version, as written by torchvision.datasets."
                f"{'CIFAR10' if which == 'cifar10' else 'CIFAR100'}(root, download=True))")
        xs, ys = [], []
        for f in files:
            with open(folder / f, "rb") as fh:
                d = pickle.load(fh, encoding="bytes")
            xs.append(np.asarray(d[b"data"], np.uint8).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
            ys.extend(int(v) for v in d[label_key.encode()])
        self._x = np.concatenate(xs)
        self._y = np.asarray(ys, np.int64)
        names = None
        if (folder / meta_file).is_file():
            with open(folder / meta_file, "rb") as fh:
                m = pickle.load(fh, encoding="bytes")
            names = [n.decode() for n in m.get(names_key.encode(), [])] or None

        self.class_names = names or list(CIFAR10_CLASSES if which == "cifar10" else CIFAR100_CLASSES)
        self.which, self.split, self.folder = which, split, folder

    def decode(self, payload):
        from PIL import Image

        return Image.fromarray(payload, "RGB")

    def num_rows(self):
        n = len(self._y)
        return n if self.limit is None else min(n, self.limit)

    def _raw(self, start):
        for i in range(start, len(self._y)):
            yield i, self._x[i], self.class_names[self._y[i]], int(self._y[i])

    def describe(self):
        return {"kind": self.which, "folder": str(self.folder.resolve()), "split": self.split,
                "rows": int(len(self._y)), "limit": self.limit}


class NSynthSource(_LabelledFiles):
    """An NSynth split folder: ``examples.json`` (note -> ``instrument_family``) and ``audio/<note>.wav``."""

    paired = False
    modality = "audio"

    def __init__(self, root: str | os.PathLike, max_per_class: int | None = None, **kw):
        super().__init__(**kw)
        self.root = Path(root)
        ex = self.root / "examples.json"
        if not ex.is_file():
            raise FileNotFoundError(f"NSynth examples.json not found in {self.root}")
        with open(ex) as f:
            d = json.load(f)

        self.class_names = list(NSYNTH_FAMILIES)
        per: Counter = Counter()
        self._items = []
        for note in sorted(d):
            fam = int(d[note]["instrument_family"])
            if max_per_class is not None and per[fam] >= max_per_class:
                continue
            per[fam] += 1
            self._items.append((self.root / "audio" / f"{note}.wav", fam))
        self.max_per_class = max_per_class


    def describe(self):
        return {"kind": "nsynth", "root": str(self.root.resolve()), "rows": len(self._items),
                "max_per_class": self.max_per_class, "limit": self.limit}


# --------------------------------------------------------------------------- factory
def open_source(spec: str | os.PathLike | dict | Source, modality: str = "auto", **kw) -> Source:
    """Build a source from a spec.

    * ``coco:ANNOTATIONS.json:IMAGE_DIR`` (or a dict ``{"coco": ann, "images": dir}``)
    * ``*.tar`` / ``*.tar.gz`` path, glob, brace pattern, or ``wds:FOLDER`` - WebDataset shards
    * ``*.csv`` / ``*.tsv`` - a caption table
    * ``cifar10:ROOT`` / ``cifar100:ROOT`` - CIFAR pickles; ``nsynth:ROOT`` - an NSynth split
    * a folder - with ``examples.json``: NSynth; with ``*.tar``: WebDataset; else class sub-folders
    Extra keywords (``limit``, ``workers``, ``sample_rate``, ``max_per_class``, ``captions``,
    ``class_names``...) go to the source class.
    """
    if isinstance(spec, Source):
        return spec
    if isinstance(spec, dict):
        spec = dict(spec)
        if "coco" in spec:
            return CocoCaptions(spec.pop("coco"), spec.pop("images"), **{**kw, **spec})
        kind = spec.pop("kind", None)
        path = spec.pop("path")
        return open_source(f"{kind}:{path}" if kind else path, modality=modality, **{**kw, **spec})
    s = str(spec)
    low = s.lower()

    def _only(*names):
        return {k: v for k, v in kw.items() if k in ("limit", "sample_rate", "workers") + names}

    if low.startswith("coco:"):
        ann, _, imgs = s[5:].rpartition(":") if s.count(":") >= 2 else (s[5:], "", "")
        if not imgs:
            raise ValueError("coco spec is coco:ANNOTATIONS.json:IMAGE_DIR")
        return CocoCaptions(ann, imgs, **_only("captions"))
    if low.startswith(("cifar10:", "cifar100:", "cifar-10:", "cifar-100:")):
        which, _, root = s.partition(":")
        return CifarSource(root, which=which, **_only("split"))
    if low.startswith("nsynth:"):
        return NSynthSource(s[7:], **_only("max_per_class"))
    if low.startswith("wds:"):
        return WebDatasetSource(s[4:], modality=modality, **_only())
    if low.startswith(("folder:", "csv:")):
        _, _, s = s.partition(":")
        low = s.lower()
    if low.endswith((".csv", ".tsv")):
        return CsvSource(s, modality=modality, **_only("root", "path_col", "caption_col", "delimiter"))
    if ".tar" in low or "{" in s:
        return WebDatasetSource(s, modality=modality, **_only())
    p = Path(s)
    if p.is_dir():
        if (p / "examples.json").is_file():
            return NSynthSource(p, **_only("max_per_class"))
        if (p / "cifar-10-batches-py").is_dir():
            return CifarSource(p, "cifar10", **_only("split"))
        if (p / "cifar-100-python").is_dir():
            return CifarSource(p, "cifar100", **_only("split"))
        if glob.glob(str(p / "*.tar")):
            return WebDatasetSource(str(p), modality=modality, **_only())
        return LabelledFolder(p, modality=modality, **_only("class_names", "max_per_class"))
    raise FileNotFoundError(f"data source not found or not understood: {s!r} "
                            "(expected coco:ANN.json:IMAGES, shards *.tar, a .csv/.tsv, or a folder)")
