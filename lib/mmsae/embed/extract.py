"""Embedding extraction: the entry point behind notebook 01_extract.

* :func:`extract_pairs` - encode an image/audio-caption data set with CLIP or CLAP into a
  resumable cache folder and return it as :class:`~mmsae.data.PairedEmbeddings`
  (memory-mapped).
* :func:`build_zero_shot_sets` - encode labelled evaluation sets (CIFAR-10/100, ImageNet,
  GTZAN, NSynth or any folder-per-class set) and their class prompts; saves
  ``<out_dir>/zeroshot_<name>.safetensors``.
* :func:`extract_from_params` - everything the notebook's parameters ask for
  (``data`` = ``clip`` | ``clap`` | ``embeddings:PATH``).
* :func:`extraction_help` - what to pass, as text.

Option keys (notebook parameters use the same names)
-----------------------------------------------------
encoder      ``clip_model`` (ViT-B-16), ``clip_pretrained`` (openai | tag | file | random),
             ``clip_cache_dir``; ``clap_checkpoint`` (music | name | file.pt | random),
             ``clap_amodel``, ``clap_fusion``, ``clap_checkpoint_dir``, ``clap_tokenizer``;
             ``device`` (auto | cpu | cuda), ``precision`` (auto | fp32 | fp16 | bf16), ``seed``
running      ``batch_size``, ``workers`` (decode threads), ``shard_size``, ``limit``,
             ``overwrite``, ``progress``, ``dataset_name``, ``coco_captions`` (first | all),
             ``modality`` (auto | image | audio)
data         ``train_source``, ``val_source`` (see :func:`mmsae.embed.sources.open_source`),
             ``captions``, ``val_captions`` (``embeddings:PATH``: a captions file for the pairs,
             :mod:`mmsae.data.captions`; default: ``<stem>_captions.json`` beside the file),
             ``zeroshot_cifar10``, ``zeroshot_cifar100``, ``zeroshot_imagenet``,
             ``zeroshot_gtzan``, ``zeroshot_nsynth`` (paths), ``zeroshot_max_per_class``
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from ..data.cache import EmbeddingCache, load_arrays, load_cache
from ..data.load import load_paired
from ..data.store import EmbeddingError, PairedEmbeddings, ZeroShotSet, l2_normalize
from .encoders import ClapEncoder, ClipEncoder
from .prompts import PromptSet, available_prompt_sets, get_prompt_set
from .sources import CifarSource, LabelledFolder, Source, open_source

__all__ = [
    "ENCODER_OPTION_KEYS",
    "RUN_OPTION_KEYS",
    "make_encoder",
    "extract_pairs",
    "build_zero_shot_sets",
    "extract_from_params",
    "extraction_help",
]

ENCODER_OPTION_KEYS = {
    "clip": {"clip_model": "model", "clip_pretrained": "pretrained", "clip_cache_dir": "cache_dir"},
    "clap": {"clap_checkpoint": "checkpoint", "clap_amodel": "amodel", "clap_fusion": "enable_fusion",
             "clap_checkpoint_dir": "checkpoint_dir", "clap_tokenizer": "tokenizer"},
    "common": {"device": "device", "precision": "precision", "batch_size": "batch_size", "seed": "seed"},
}
RUN_OPTION_KEYS = ("encoder", "data", "batch_size", "workers", "shard_size", "limit", "overwrite", "progress",
                   "dataset_name", "coco_captions", "modality")
ZEROSHOT_KEYS = tuple(f"zeroshot_{n}" for n in available_prompt_sets())


def _all_option_keys() -> set[str]:
    keys = set(RUN_OPTION_KEYS)
    for d in ENCODER_OPTION_KEYS.values():
        keys |= set(d)
    return keys


def make_encoder(source: str, **options) -> ClipEncoder | ClapEncoder:
    """Build the encoder for ``source`` (``clip`` / ``clap``) from option keys (``clip_model``...)."""
    source = source.lower()
    if source not in ("clip", "clap"):
        raise ValueError(f"unknown encoder source {source!r}: use 'clip' or 'clap' "
                         "(or 'embeddings:PATH' for precomputed embeddings)")
    kw = {}
    for key, arg in {**ENCODER_OPTION_KEYS[source], **ENCODER_OPTION_KEYS["common"]}.items():
        if key in options and options[key] is not None:
            kw[arg] = options[key]
    return ClipEncoder(**kw) if source == "clip" else ClapEncoder(**kw)


def _progress(total: int | None, desc: str, enabled: bool):
    try:
        from tqdm.auto import tqdm
    except ImportError:  # pragma: no cover
        return None
    return tqdm(total=total, desc=desc, unit="row", disable=not enabled, smoothing=0.05)


def _encode_batch(enc, media: list, captions: list | None) -> tuple[np.ndarray, np.ndarray | None, list[int]]:
    """Encode one batch; on failure fall back to one item at a time. Returns x, y, failed positions."""
    try:
        x = enc.encode_media(media)
        bad: list[int] = []
        keep = list(range(len(media)))
    except Exception:
        xs, keep, bad = [], [], []
        for i, m in enumerate(media):
            try:
                xs.append(enc.encode_media([m]))
                keep.append(i)
            except Exception:
                bad.append(i)
        x = np.concatenate(xs) if xs else np.zeros((0, enc.dim), np.float32)
    y = None
    if captions is not None:
        y = enc.encode_texts([captions[i] for i in keep]) if keep else np.zeros((0, enc.dim), np.float32)
    return x, y, bad


def _run(enc, src: Source, cache: EmbeddingCache, with_text: bool, batch_size: int, progress: bool,
         desc: str, meta: dict) -> None:
    """Encode ``src`` into ``cache`` shard by shard, skipping finished shards."""
    if hasattr(src, "shard_counts"):
        src.shard_counts.update(cache.source_state.get("shard_counts", {}))
    src.transform = enc.prepare
    start = cache.resume_index()
    skipped: dict[int, list[tuple[int, str]]] = {}
    src.on_skip = lambda i, r: skipped.setdefault(cache.shard_of(i), []).append((i, r))
    n_total = src.num_rows()
    bar = _progress(n_total, desc, progress)
    if bar is not None and start:
        bar.update(min(start, n_total or start))

    cur: int | None = None
    buf: dict[str, list] = {"index": [], "media": [], "caption": [], "label": []}
    done: dict[str, list] = {"index": [], "x": [], "y": [], "caption": [], "label": []}
    last_index = start - 1

    def encode_pending() -> None:
        if not buf["index"]:
            return
        x, y, bad = _encode_batch(enc, buf["media"], buf["caption"] if with_text else None)
        badset = set(bad)
        for j, i in enumerate(buf["index"]):
            if j in badset:
                skipped.setdefault(cache.shard_of(i), []).append((i, "encoder error"))
                src.skipped["encoder error"] += 1
        keep = [j for j in range(len(buf["index"])) if j not in badset]
        done["index"].extend(buf["index"][j] for j in keep)
        done["caption"].extend(buf["caption"][j] for j in keep)
        done["label"].extend(buf["label"][j] for j in keep)
        done["x"].append(x)
        if y is not None:
            done["y"].append(y)
        for k in buf:
            buf[k].clear()

    def state() -> dict:
        return {"shard_counts": dict(getattr(src, "shard_counts", {}))}

    def flush(k: int) -> None:
        encode_pending()
        arrays = {"x": np.concatenate(done["x"]) if done["x"] else np.zeros((0, enc.dim), np.float32)}
        if with_text:
            arrays["y"] = np.concatenate(done["y"]) if done["y"] else np.zeros((0, enc.dim), np.float32)
        if not cache.is_done(k):
            cache.write_shard(k, arrays, done["index"], captions=done["caption"], labels=done["label"],
                              skipped=sorted(skipped.pop(k, [])), source_state=state())
        for v in done.values():
            v.clear()

    def write_empty(upto: int) -> None:
        """Shards in [cur+1, upto) with no good row (all bad or beyond a gap) are still done."""
        lo = (cur + 1) if cur is not None else cache.shard_of(start)
        for k in range(lo, upto):
            if not cache.is_done(k):
                cache.write_shard(k, {"x": np.zeros((0, enc.dim)), "y": np.zeros((0, enc.dim))},
                                  [], skipped=sorted(skipped.pop(k, [])), source_state=state())

    for row in src.rows(start):
        k = cache.shard_of(row.index)
        if bar is not None:
            bar.update(row.index - last_index)
        last_index = row.index
        if k != cur:
            if cur is not None:
                flush(cur)
            write_empty(k)
            cur = k
        if cache.is_done(k):
            continue  # finished by an earlier run (shard after a recomputed one)
        buf["index"].append(row.index)
        buf["media"].append(row.media)
        buf["caption"].append(row.caption)
        buf["label"].append(row.label)
        if len(buf["index"]) >= batch_size:
            encode_pending()
    if bar is not None:
        bar.close()
    if cur is not None:
        flush(cur)
    last_bad = max((i for v in skipped.values() for i, _ in v), default=-1)
    end_index = max(last_index, last_bad, (n_total or 0) - 1)
    if end_index >= 0:
        write_empty(cache.shard_of(end_index) + 1)
    if cache.manifest["rows_done"] == 0:
        raise EmbeddingError(
            f"{desc}: no usable rows ({cache.manifest['rows_skipped']} skipped: "
            f"{cache.manifest['skipped_reasons']}); check the data path and format")
    cache.finalize(meta=meta, source_state=state())


def _dataset_name(spec: Any, src: Source, given: str | None) -> str:
    if given:
        return given
    d = src.describe()
    for key in ("annotations", "path", "root", "folder"):
        if key in d:
            return Path(d[key]).stem
    if "shards" in d and d["shards"]:
        return Path(d["shards"][0]).parent.name
    return str(spec)


def extract_pairs(source: str, out_dir: str | os.PathLike, data: Any = None, *,
                  encoder: ClipEncoder | ClapEncoder | None = None, batch_size: int | None = None,
                  workers: int = 0, shard_size: int = 10_000, limit: int | None = None, overwrite: bool = False,
                  progress: bool = True, dataset_name: str | None = None, coco_captions: str = "first",
                  modality: str = "auto", **encoder_options) -> PairedEmbeddings:
    """Encode the pairs of ``data`` with ``source`` (``"clip"`` or ``"clap"``) into the cache ``out_dir``.

    ``data``: a source spec (``coco:ANN.json:IMAGES``, WebDataset ``*.tar`` pattern or
    ``wds:FOLDER``, ``*.csv``/``*.tsv``, ...; see :func:`mmsae.embed.sources.open_source`) or a
    :class:`~mmsae.embed.sources.Source`. Rerunning resumes: finished shards are kept, a cache
    written by another encoder / data set is refused (:class:`~mmsae.data.cache.CacheMismatch`).
    ``encoder`` reuses a built encoder; otherwise ``encoder_options`` (``clip_model``,
    ``clip_pretrained``, ``clap_checkpoint``, ``device``, ``precision``, ``seed``...) build one.
    Returns the cache as memory-mapped :class:`PairedEmbeddings` (L2-normalised).
    """
    source = str(source).lower()
    if data is None:
        raise EmbeddingError(f"extract_pairs({source!r}): no data given.\n\n" + extraction_help())
    unknown = set(encoder_options) - _all_option_keys()
    if unknown:
        raise TypeError(f"unknown extraction option(s) {sorted(unknown)}; known: {sorted(_all_option_keys())}")
    enc = encoder or make_encoder(source, batch_size=batch_size, **encoder_options)
    if enc.name != source:
        raise ValueError(f"encoder {enc.name!r} given for source {source!r}")
    src = open_source(data, modality=enc.modality if modality == "auto" else modality, limit=limit,
                      workers=workers, captions=coco_captions)
    if src.modality != enc.modality:
        raise EmbeddingError(f"{data}: a {src.modality} data set cannot be encoded by {source} "
                             f"(a {enc.modality}-text encoder)")
    name = _dataset_name(data, src, dataset_name)
    identity = {"encoder": enc.identity(), "dataset": dict(src.describe(), name=name), "normalized": True,
                "modalities": [enc.modality, "text"]}
    cache = EmbeddingCache(out_dir, identity, dim=enc.dim, shard_size=shard_size, fields=("x", "y"),
                           versions=enc.versions(), overwrite=overwrite)
    if not cache.complete:
        _run(enc, src, cache, True, batch_size or enc.batch_size, progress, f"{source}:{name}",
             meta={"encoder": enc.name, "dataset": name})
    out = load_cache(out_dir)
    return out


# --------------------------------------------------------------------------- zero-shot
def _class_embeddings(enc, ps: PromptSet) -> np.ndarray:
    rows = []
    for i in range(len(ps)):
        e = enc.encode_texts(ps.prompts(i))
        rows.append(l2_normalize(e.mean(axis=0, keepdims=True))[0])
    return np.stack(rows).astype(np.float32)


def _zero_shot_source(name: str, spec: Any, ps: PromptSet | None, max_per_class: int | None,
                      limit: int | None, workers: int) -> Source:
    if isinstance(spec, Source):
        return spec
    s = str(spec)
    key = name.lower().replace("-", "").replace("_", "")
    p = Path(s)
    if key in ("cifar10", "cifar100") and p.is_dir() and not any(
            d.is_dir() and d.name.lower() in {c.lower() for c in (ps.classes if ps else [])} for d in p.iterdir()):
        try:
            return CifarSource(p, which=key, limit=limit, workers=workers)
        except FileNotFoundError:
            pass
    if p.is_dir() and not (p / "examples.json").is_file() and ps is not None:
        return LabelledFolder(p, modality=ps.modality, class_names=list(ps.classes), max_per_class=max_per_class,
                              limit=limit, workers=workers)
    return open_source(spec, modality=ps.modality if ps else "auto", limit=limit, workers=workers,
                       max_per_class=max_per_class)


def build_zero_shot_sets(encoder: ClipEncoder | ClapEncoder, sets: dict[str, Any], out_dir: str | os.PathLike, *,
                         max_per_class: int | None = None, limit: int | None = None, shard_size: int = 10_000,
                         workers: int = 0, progress: bool = True, overwrite: bool = False) -> dict[str, ZeroShotSet]:
    """Encode labelled sets and their class prompts; save ``<out_dir>/zeroshot_<name>.safetensors``.

    ``sets`` maps a name to a data spec: a path (CIFAR pickles folder, a folder per class
    such as ImageNet val in WordNet-id folders or GTZAN ``genres_original``, an NSynth split
    folder) or a dict ``{"data": spec, "classes": prompt-set name or list, "templates": [...],
    "max_per_class": n}``. Class names and templates come from :mod:`mmsae.embed.prompts` by name
    (``cifar10``, ``cifar100``, ``imagenet``, ``gtzan``, ``nsynth``). Sample embeddings go
    through a resumable cache (``<out_dir>/zeroshot_<name>.cache``); an existing saved set
    made with the same encoder is reused.
    """
    out_dir = Path(out_dir)
    out: dict[str, ZeroShotSet] = {}
    ident = encoder.identity()
    for name, spec in sets.items():
        if spec is None or spec == "":
            continue
        cfg = dict(spec) if isinstance(spec, dict) else {"data": spec}
        classes = cfg.get("classes", name)
        ps: PromptSet | None = None
        if isinstance(classes, str):
            try:
                ps = get_prompt_set(classes)
            except KeyError:
                ps = None
        elif classes is not None:
            tmpl = cfg.get("templates") or (["a photo of a {}."] if encoder.modality == "image" else ["the sound of {}."])
            ps = PromptSet(name, tuple(classes), tuple(c.replace("_", " ") for c in classes), tuple(tmpl),
                           encoder.modality)
        if ps is not None and cfg.get("templates"):
            ps = PromptSet(ps.name, ps.classes, ps.display, tuple(cfg["templates"]), ps.modality)
        mpc = cfg.get("max_per_class", max_per_class)
        target = out_dir / f"zeroshot_{name}.safetensors"
        if target.is_file() and not overwrite:
            try:
                old = ZeroShotSet.load(target)
                if old.meta.get("encoder") == ident and old.meta.get("max_per_class") == mpc \
                        and old.meta.get("limit") == cfg.get("limit", limit):
                    out[name] = old
                    continue
            except EmbeddingError:
                pass
        src = _zero_shot_source(name, cfg["data"], ps, mpc, cfg.get("limit", limit), workers)
        if src.modality != encoder.modality:
            raise EmbeddingError(f"zero-shot set {name}: {src.modality} data cannot be encoded by {encoder.name}")
        if ps is None:
            if not src.class_names:
                raise EmbeddingError(f"zero-shot set {name}: no class names (give 'classes')")
            tmpl = cfg.get("templates") or (["a photo of a {}."] if encoder.modality == "image" else ["the sound of {}."])
            ps = PromptSet(name, tuple(src.class_names), tuple(c.replace("_", " ") for c in src.class_names),
                           tuple(tmpl), encoder.modality)
        identity = {"encoder": ident, "dataset": dict(src.describe(), name=name), "normalized": True,
                    "modalities": [encoder.modality]}
        cpath = out_dir / f"zeroshot_{name}.cache"
        cache = EmbeddingCache(cpath, identity, dim=encoder.dim, shard_size=shard_size, fields=("x",),
                               versions=encoder.versions(), overwrite=overwrite)
        if not cache.complete:
            _run(encoder, src, cache, False, encoder.batch_size, progress, f"zeroshot:{name}",
                 meta={"encoder": encoder.name, "dataset": name})
        arrays, m = load_arrays(cpath)
        labels = np.asarray(arrays.get("labels", np.zeros(0, np.int64)))
        if len(labels) != len(arrays["x"]):
            raise EmbeddingError(f"zero-shot set {name}: the data has no labels")
        zs = ZeroShotSet(
            name=name, emb=np.asarray(arrays["x"], np.float32), labels=labels.astype(np.int64),
            class_emb=_class_embeddings(encoder, ps), class_names=list(ps.display),
            meta={"encoder": ident, "dataset": src.describe(), "templates": list(ps.templates),
                  "classes": list(ps.classes), "normalized": True, "max_per_class": mpc,
                  "limit": cfg.get("limit", limit), "rows_skipped": m.get("rows_skipped", 0),
                  "skipped_reasons": m.get("skipped_reasons", {})},
        ).validate(expected_dim=encoder.dim)
        zs.save(target)
        out[name] = zs
    return out


# --------------------------------------------------------------------------- notebook glue
def extract_from_params(data: str, params: dict[str, Any], out_dir: str | os.PathLike) -> dict[str, Any]:
    """What notebook 01_extract runs for ``data`` = ``clip`` | ``clap`` | ``embeddings:PATH``.

    Returns ``{"train": PairedEmbeddings, "val": PairedEmbeddings | None,
    "zeroshot": {name: ZeroShotSet}}``; writes caches under ``out_dir``
    (``<out_dir>/train``, ``<out_dir>/val``, ``<out_dir>/zeroshot_*.safetensors``).
    ``params`` holds the option keys listed in this module's docstring; unknown keys are ignored
    (the notebook passes all its parameters).
    """
    out_dir = Path(out_dir)
    data = str(data)
    params = _coerce_params(params)
    if data.startswith("embeddings:"):
        path = data.split(":", 1)[1]
        train = load_paired(path, captions=params.get("captions") or "auto")
        val = (load_paired(params["val_source"], captions=params.get("val_captions") or "auto")
               if params.get("val_source") else None)
        return {"train": train, "val": val, "zeroshot": {}}
    if data not in ("clip", "clap"):
        raise ValueError(f"data={data!r}: expected 'clip', 'clap' or 'embeddings:PATH' here")
    if not params.get("train_source"):
        raise EmbeddingError(f"data={data} needs the parameter train_source.\n\n" + extraction_help())
    run_keys = ("batch_size", "workers", "shard_size", "overwrite", "progress", "coco_captions", "modality")
    enc_keys = set(ENCODER_OPTION_KEYS[data]) | set(ENCODER_OPTION_KEYS["common"])
    enc = make_encoder(data, **{k: params[k] for k in enc_keys if params.get(k) is not None})
    run = {k: params[k] for k in run_keys if params.get(k) is not None}
    run.pop("batch_size", None)
    train = extract_pairs(data, out_dir / "train", params["train_source"], encoder=enc,
                          limit=params.get("train_limit", params.get("limit")), **run)
    val = None
    if params.get("val_source"):
        val = extract_pairs(data, out_dir / "val", params["val_source"], encoder=enc,
                            limit=params.get("val_limit", params.get("limit")), **run)
    zs_specs = {k[len("zeroshot_"):]: params[k] for k in ZEROSHOT_KEYS if params.get(k)}
    extra = params.get("zeroshot_sets") or {}
    zs_specs.update(extra)
    zs = {}
    if zs_specs:
        zs = build_zero_shot_sets(enc, zs_specs, out_dir, max_per_class=params.get("zeroshot_max_per_class"),
                                  workers=int(params.get("workers") or 0), progress=bool(params.get("progress", True)))
    return {"train": train, "val": val, "zeroshot": zs}


_INT_KEYS = ("batch_size", "workers", "shard_size", "limit", "train_limit", "val_limit", "seed",
             "zeroshot_max_per_class")
_BOOL_KEYS = ("overwrite", "progress", "clap_fusion")


def _coerce_params(params: dict[str, Any]) -> dict[str, Any]:
    """Command-line parameters arrive as strings: ints and booleans are converted, ''/none -> None."""
    out = dict(params)
    for k, v in params.items():
        if isinstance(v, str) and v.strip().lower() in ("", "none", "null"):
            out[k] = None
        elif k in _INT_KEYS and isinstance(v, str):
            out[k] = int(v)
        elif k in _BOOL_KEYS and isinstance(v, str):
            if v.strip().lower() not in ("1", "0", "true", "false", "yes", "no"):
                raise ValueError(f"parameter {k}={v!r}: expected true or false")
            out[k] = v.strip().lower() in ("1", "true", "yes")
    return out


def extraction_help() -> str:
    """How to point extraction at data and weights (also printed by errors)."""
    return """\
Real-encoder extraction (notebook 01_extract, data=clip | clap | embeddings:PATH)

Data (train_source / val_source):
  coco:ANNOTATIONS.json:IMAGE_DIR      COCO-style captions (e.g. captions_val2017.json + val2017/)
  /data/cc3m/{00000..00331}.tar        WebDataset shards (img2dataset output; audio sets: .flac + .json)
  wds:/data/cc3m                       every .tar in a folder
  pairs.csv / pairs.tsv                rows 'path,caption' (header optional; paths relative to the file)
Captions of precomputed embeddings (data=embeddings:PATH):
  captions=FILE / val_captions=FILE    .json (one entry per pair, or {"rows": [...]}) or .txt (a line per pair);
                                       default: <stem>_captions.json beside the embeddings file
Zero-shot sets (zeroshot_<name> = PATH):
  zeroshot_cifar10 / zeroshot_cifar100 folder with cifar-10-batches-py / cifar-100-python (torchvision layout)
  zeroshot_imagenet                    ImageNet val in 1000 WordNet-id folders (label = sorted folder order)
  zeroshot_gtzan                       GTZAN genres_original/ (one folder per genre)
  zeroshot_nsynth                      an NSynth split folder (examples.json + audio/)
  zeroshot_max_per_class               cap samples per class (quick runs)
Encoders:
  clip_model=ViT-B-16 clip_pretrained=openai   (any open_clip model/tag, a checkpoint file, or random)
  clap_checkpoint=music                        (music_audioset_epoch_15_esc_90.14.pt; a .pt path; or random)
  clap_tokenizer=FOLDER                        roberta-base vocab.json + merges.txt when offline
  device=auto precision=auto batch_size=... workers=8 shard_size=10000 limit=N
Weights are downloaded on first use when the Hugging Face hub is reachable; offline they must be in the
HF cache (~/.cache/huggingface) or given as files. Random weights only with clip_pretrained=random /
clap_checkpoint=random. Rerunning resumes from the finished shards of <out_dir>/train and <out_dir>/val.
See docs/real_data.md for the full reproduction recipe."""
