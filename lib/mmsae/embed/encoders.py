"""Real encoders: CLIP (open_clip) for image-text and LAION-CLAP (laion_clap) for audio-text.

Both return L2-normalised ``float32`` numpy arrays, run batched, on CUDA with fp16
autocast when available (``device="cuda"``/``"auto"``) and in fp32 on CPU.

Weights are never replaced silently: a missing checkpoint raises
:class:`EncoderUnavailable` naming the file, where it was looked for and how to supply
it. Random weights only when asked for explicitly (``pretrained="random"`` /
``checkpoint="random"``, seeded), e.g. as a negative control or in tests.

``laion_clap`` is imported lazily (only by :class:`ClapEncoder`): its import loads
Hugging Face tokenizers and would retry for a long time without network. Before
importing it we check the Hugging Face cache for the RoBERTa tokenizer files and, when
the hub is unreachable, import in offline mode; anything missing is one clear error.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import socket
import sys
from pathlib import Path
from typing import Any, Iterable, Sequence
from urllib.parse import urlparse

import numpy as np

from ..data.store import l2_normalize
from .sources import load_audio, load_image

__all__ = [
    "EncoderUnavailable",
    "ClipEncoder",
    "ClapEncoder",
    "get_encoder",
    "network_available",
    "resolve_device",
    "CLAP_CHECKPOINTS",
    "CLAP_HF_REPO",
    "CLAP_TEXT_MODEL",
]

RANDOM_TAGS = ("random", "none", "random-init", "")
CLAP_HF_REPO = "lukewys/laion_clap"
CLAP_TEXT_MODEL = "roberta-base"
CLAP_TOKENIZER_FILES = ("vocab.json", "merges.txt")
# name -> (file in lukewys/laion_clap, audio model, fusion)
CLAP_CHECKPOINTS = {
    "music": ("music_audioset_epoch_15_esc_90.14.pt", "HTSAT-base", False),
    "music_speech": ("music_speech_audioset_epoch_15_esc_89.98.pt", "HTSAT-base", False),
    "music_speech_audioset": ("music_speech_audioset_epoch_15_esc_89.98.pt", "HTSAT-base", False),
    "630k": ("630k-best.pt", "HTSAT-tiny", False),
    "630k-audioset": ("630k-audioset-best.pt", "HTSAT-tiny", False),
    "630k-fusion": ("630k-fusion-best.pt", "HTSAT-tiny", True),
    "630k-audioset-fusion": ("630k-audioset-fusion-best.pt", "HTSAT-tiny", True),
}
CLAP_SAMPLE_RATE = 48_000
CLAP_MAX_SAMPLES = 480_000  # 10 s at 48 kHz


class EncoderUnavailable(RuntimeError):
    """The encoder cannot be built here (missing weights/tokenizer offline, missing package)."""


# --------------------------------------------------------------------------- helpers
_NET_CACHE: dict[str, bool] = {}


def _truthy(v: str | None) -> bool:
    return str(v or "").strip().lower() in ("1", "true", "yes", "on")


def network_available(url: str | None = None, timeout: float = 2.0) -> bool:
    """Whether the Hugging Face hub (or ``url``) is reachable; False when HF_HUB_OFFLINE is set.

    A TCP connect with a short timeout (to the proxy when one is configured), cached per host.
    """
    if _truthy(os.environ.get("HF_HUB_OFFLINE")) or _truthy(os.environ.get("TRANSFORMERS_OFFLINE")):
        return False
    url = url or os.environ.get("HF_ENDPOINT", "https://huggingface.co")
    proxy = os.environ.get("HTTPS_PROXY") or os.environ.get("https_proxy")
    target = urlparse(proxy if proxy else url)
    host = target.hostname or "huggingface.co"
    port = target.port or (443 if (target.scheme or "https") == "https" else 80)
    key = f"{host}:{port}"
    if key not in _NET_CACHE:
        try:
            socket.create_connection((host, port), timeout=timeout).close()
            _NET_CACHE[key] = True
        except OSError:
            _NET_CACHE[key] = False
    return _NET_CACHE[key]


@contextlib.contextmanager
def _hf_offline(enabled: bool = True):
    """Set HF_HUB_OFFLINE / TRANSFORMERS_OFFLINE for the duration (no retry loops offline)."""
    if not enabled:
        yield
        return
    keys = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE")
    old = {k: os.environ.get(k) for k in keys}
    try:
        for k in keys:
            os.environ[k] = "1"
        _refresh_hf_constants(True)
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        _refresh_hf_constants(_truthy(old["HF_HUB_OFFLINE"]))


def _refresh_hf_constants(offline: bool) -> None:
    # huggingface_hub reads HF_HUB_OFFLINE at import time; keep an imported copy in sync.
    hub = sys.modules.get("huggingface_hub.constants")
    if hub is not None and hasattr(hub, "HF_HUB_OFFLINE"):
        hub.HF_HUB_OFFLINE = offline


def hf_cache_dir() -> str:
    try:
        from huggingface_hub import constants

        return str(constants.HF_HUB_CACHE)
    except Exception:  # pragma: no cover
        return os.path.join(os.environ.get("HF_HOME", os.path.expanduser("~/.cache/huggingface")), "hub")


def _hf_cached(repo: str, filename: str, cache_dir: str | None = None) -> str | None:
    try:
        from huggingface_hub import try_to_load_from_cache

        p = try_to_load_from_cache(repo, filename, cache_dir=cache_dir)
    except Exception:
        return None
    return p if isinstance(p, str) and os.path.isfile(p) else None


def resolve_device(device: str | None = None) -> str:
    import torch

    if device in (None, "auto"):
        return "cuda" if torch.cuda.is_available() else "cpu"
    if str(device).startswith("cuda") and not torch.cuda.is_available():
        raise EncoderUnavailable(f"device {device!r} requested but CUDA is not available (use device='cpu')")
    return str(device)


def _autocast(device: str, precision: str):
    import torch

    if str(device).startswith("cuda") and precision in ("auto", "fp16", "amp", "float16"):
        return torch.autocast("cuda", dtype=torch.float16)
    if str(device).startswith("cuda") and precision in ("bf16", "bfloat16"):
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _is_random(tag: Any) -> bool:
    return tag is None or (isinstance(tag, str) and tag.strip().lower() in RANDOM_TAGS)


def file_fingerprint(path: str | os.PathLike, block: int = 1 << 22) -> str:
    """sha256 of size + first and last 4 MiB: identifies a checkpoint quickly."""
    p = Path(path)
    size = p.stat().st_size
    h = hashlib.sha256(str(size).encode())
    with open(p, "rb") as f:
        h.update(f.read(block))
        if size > block:
            f.seek(max(block, size - block))
            h.update(f.read(block))
    return h.hexdigest()[:16]


def _looks_like_path(s: str) -> bool:
    return os.sep in s or s.startswith((".", "~")) or s.endswith((".pt", ".pth", ".bin", ".safetensors", ".ckpt"))


def _batched(seq: Sequence, n: int) -> Iterable[Sequence]:
    for i in range(0, len(seq), n):
        yield seq[i:i + n]


class _Encoder:
    name = "encoder"
    modality = "image"
    dim: int
    device: str
    batch_size: int

    def identity(self) -> dict:
        raise NotImplementedError

    def _identity(self, **fields) -> dict:
        """``fields`` plus what tells two weight sets apart: the seed of random weights and
        the fingerprint of a checkpoint file."""
        d = dict(fields, dim=getattr(self, "dim", None))
        if self.random:
            d["seed"] = self.seed
        if self.checkpoint_fingerprint:
            d["checkpoint_fingerprint"] = self.checkpoint_fingerprint
        return d

    def versions(self) -> dict:
        import torch

        return {"torch": torch.__version__, "numpy": np.__version__}

    def encode_media(self, items: Sequence) -> np.ndarray:
        return self.encode_images(items) if self.modality == "image" else self.encode_audio(items)

    def _encode_batches(self, items: Sequence, batch_size: int, encode_chunk) -> np.ndarray:
        """``encode_chunk(list) -> tensor`` over batches (no grad, autocast on CUDA); (N, d) unit rows."""
        import torch

        out = []
        for chunk in _batched(list(items), batch_size):
            with torch.no_grad(), _autocast(self.device, self.precision):
                e = encode_chunk(list(chunk))
            out.append(e.float().cpu().numpy())
        if not out:
            return np.zeros((0, getattr(self, "dim", 0)), np.float32)
        return l2_normalize(np.concatenate(out))

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.identity()})"


# --------------------------------------------------------------------------- CLIP
class ClipEncoder(_Encoder):
    """OpenCLIP image/text encoder.

    ``model``/``pretrained``: any pair ``open_clip.list_pretrained()`` knows (default
    ``ViT-B-16``/``openai``, the paper's encoder), a local checkpoint file as
    ``pretrained``, or ``pretrained="random"`` (seeded random weights, explicitly).
    ``precision``: ``"auto"`` = fp16 autocast on CUDA, fp32 on CPU; ``"fp32"`` forces fp32.
    ``cache_dir``: where open_clip downloads / looks for weights (default: the HF cache).
    """

    name = "clip"
    modality = "image"

    def __init__(self, model: str = "ViT-B-16", pretrained: str | None = "openai", device: str | None = None,
                 precision: str = "auto", batch_size: int = 64, seed: int = 0, cache_dir: str | None = None):
        try:
            import open_clip
            import torch
        except ImportError as e:
            raise EncoderUnavailable("CLIP needs open_clip: pip install open_clip_torch torchvision") from e
        self.model_name, self.device = model, resolve_device(device)
        self.precision, self.batch_size, self.seed = precision, int(batch_size), int(seed)
        if model not in open_clip.list_models() and not model.startswith(("hf-hub:", "local-dir:")):
            raise EncoderUnavailable(f"open_clip has no model {model!r}; known models include "
                                     f"{', '.join(m for m in open_clip.list_models() if m.startswith('ViT-B'))}, ...")
        self.random = _is_random(pretrained)
        self.checkpoint: str | None = None
        self.checkpoint_fingerprint: str | None = None
        offline = False
        if self.random:
            self.pretrained = "random"
            weights = None
        elif os.path.isfile(os.path.expanduser(str(pretrained))):
            self.checkpoint = str(Path(os.path.expanduser(str(pretrained))).resolve())
            self.checkpoint_fingerprint = file_fingerprint(self.checkpoint)
            self.pretrained = "file:" + Path(self.checkpoint).name
            weights = self.checkpoint
        elif _looks_like_path(str(pretrained)):
            raise EncoderUnavailable(
                f"CLIP checkpoint file not found: {pretrained}. Pass an existing open_clip checkpoint "
                f"(.bin/.pt/.safetensors), a pretrained tag such as 'openai', or 'random' for random weights.")
        else:
            self.pretrained = str(pretrained)
            tags = open_clip.list_pretrained_tags_by_model(model)
            if self.pretrained not in tags and not model.startswith(("hf-hub:", "local-dir:")):
                raise EncoderUnavailable(f"open_clip knows no pretrained weights {self.pretrained!r} for {model}; "
                                         f"available: {', '.join(tags) or 'none'}")
            weights = self.pretrained
            if not network_available():
                found = self._cached_weights(open_clip, cache_dir)
                if found is None:
                    raise EncoderUnavailable(self._missing_weights_message(open_clip, cache_dir))
                offline = True
        ctx = _hf_offline(offline)
        with ctx, torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            try:
                net, _, preprocess = open_clip.create_model_and_transforms(
                    model, pretrained=weights, device=self.device, cache_dir=cache_dir)
            except Exception as e:
                if self.random:
                    raise
                raise EncoderUnavailable(
                    f"could not load CLIP weights {model}/{pretrained} ({type(e).__name__}: {e}).\n"
                    + (self._missing_weights_message(open_clip, cache_dir) if not self.checkpoint else "")
                ) from e
        self.model = net.eval()
        self.preprocess = preprocess
        self.tokenizer = open_clip.get_tokenizer(model)
        self.open_clip_version = open_clip.__version__
        with torch.no_grad():
            self.dim = int(self.encode_texts(["a"]).shape[1])

    # -- weights lookup -------------------------------------------------------------
    def _hub_repo(self, open_clip) -> tuple[str | None, list[str]]:
        cfg = open_clip.get_pretrained_cfg(self.model_name, self.pretrained) or {}
        hub = cfg.get("hf_hub") or ""
        if not hub:
            return None, []
        parts = hub.strip("/").split("/")
        repo = "/".join(parts[:2])
        files = ["/".join(parts[2:])] if len(parts) > 2 else ["open_clip_model.safetensors", "open_clip_pytorch_model.bin"]
        return repo, files

    def _cached_weights(self, open_clip, cache_dir: str | None) -> str | None:
        repo, files = self._hub_repo(open_clip)
        for f in files:
            p = _hf_cached(repo, f, cache_dir) if repo else None
            if p:
                return p
        cfg = open_clip.get_pretrained_cfg(self.model_name, self.pretrained) or {}
        if cfg.get("url"):
            p = os.path.join(cache_dir or os.path.expanduser("~/.cache/clip"), os.path.basename(cfg["url"]))
            if os.path.isfile(p):
                return p
        return None

    def _missing_weights_message(self, open_clip, cache_dir: str | None) -> str:
        repo, files = self._hub_repo(open_clip)
        where = cache_dir or hf_cache_dir()
        lines = [f"CLIP weights {self.model_name}/{self.pretrained} are not available offline."]
        if repo:
            lines.append(f"Expected the Hugging Face hub file {repo}/{files[0]} in the cache {where} "
                         "(and huggingface.co is not reachable).")
            lines.append("To supply them: on a machine with internet run\n"
                         f"  huggingface-cli download {repo} {files[0]}\n"
                         "then copy the Hugging Face cache folder (~/.cache/huggingface) here or point HF_HOME at it; "
                         "or download the file and pass its path as pretrained (clip_pretrained=/path/to/file).")
        else:
            lines.append(f"Download them with open_clip on a machine with internet (cache_dir={where}) "
                         "or pass a local checkpoint path.")
        lines.append("Random weights are used only on request: pretrained='random'.")
        return "\n".join(lines)

    # -- encoding -------------------------------------------------------------------
    def identity(self) -> dict:
        return self._identity(name="clip", library="open_clip", model=self.model_name, pretrained=self.pretrained)

    def versions(self) -> dict:
        return dict(super().versions(), open_clip=self.open_clip_version)

    def prepare(self, item: Any):
        """Decode (if a path/array) and preprocess one image to a tensor (thread-safe)."""
        from PIL import Image

        if isinstance(item, (str, os.PathLike)):
            item = load_image(item)
        elif isinstance(item, np.ndarray):
            item = Image.fromarray(np.asarray(item, np.uint8)).convert("RGB")
        elif hasattr(item, "convert"):
            item = item.convert("RGB")
        else:
            import torch

            if isinstance(item, torch.Tensor):
                return item
            raise TypeError(f"cannot encode an image of type {type(item).__name__}")
        return self.preprocess(item)

    def encode_images(self, images: Sequence, batch_size: int | None = None) -> np.ndarray:
        """Images (PIL, paths, HWC uint8 arrays or preprocessed tensors) -> (N, d) unit rows."""
        import torch

        def chunk_fn(chunk):
            x = torch.stack([self.prepare(im) for im in chunk]).to(self.device, non_blocking=True)
            return self.model.encode_image(x)

        return self._encode_batches(images, batch_size or self.batch_size, chunk_fn)

    def encode_texts(self, texts: Sequence[str], batch_size: int | None = None) -> np.ndarray:
        """Captions/prompts -> (N, d) unit rows (open_clip tokenizer, context 77)."""
        return self._encode_batches(texts, batch_size or max(self.batch_size, 256),
                                    lambda chunk: self.model.encode_text(self.tokenizer(chunk).to(self.device)))


# --------------------------------------------------------------------------- CLAP
_ROBERTA_BASE_CONFIG = dict(  # the published roberta-base config.json (architecture only)
    vocab_size=50265, hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072,
    hidden_act="gelu", hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1, max_position_embeddings=514,
    type_vocab_size=1, initializer_range=0.02, layer_norm_eps=1e-5, pad_token_id=1, bos_token_id=0, eos_token_id=2,
)


def _import_laion_clap(offline: bool):
    """Import laion_clap once (lazily); offline it loads tokenizers in offline mode, no retries."""
    if "laion_clap" in sys.modules:
        return sys.modules["laion_clap"]
    import importlib.util
    import warnings

    if importlib.util.find_spec("laion_clap") is None:
        raise EncoderUnavailable("CLAP needs the laion_clap package: pip install laion_clap librosa soundfile")
    try:
        with _hf_offline(offline), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import laion_clap  # noqa: F401  (its import loads bert/roberta/bart tokenizers)
            from laion_clap.training import data as _  # noqa: F401
    except Exception as e:
        for m in [m for m in sys.modules if m == "laion_clap" or m.startswith(("laion_clap.", "clap_module", "training"))]:
            sys.modules.pop(m, None)
        raise EncoderUnavailable(
            f"importing laion_clap failed ({type(e).__name__}: {e}).\n"
            "laion_clap loads the Hugging Face tokenizers 'roberta-base', 'bert-base-uncased' and "
            "'facebook/bart-base' when imported; without network they must be in the Hugging Face cache "
            f"({hf_cache_dir()}). On a machine with internet run\n"
            "  huggingface-cli download roberta-base vocab.json merges.txt config.json\n"
            "  huggingface-cli download bert-base-uncased vocab.txt tokenizer_config.json config.json\n"
            "  huggingface-cli download facebook/bart-base vocab.json merges.txt config.json\n"
            "and copy ~/.cache/huggingface here (or set HF_HOME).") from e
    return sys.modules["laion_clap"]


@contextlib.contextmanager
def _roberta_from_config():
    """Build CLAP's RoBERTa text tower from its config (no weight download): the CLAP
    checkpoint supplies every text-tower weight, and random mode needs none."""
    import transformers

    mods = [m for k, m in list(sys.modules.items()) if k.endswith("clap_module.model") and hasattr(m, "RobertaModel")]
    real = transformers.RobertaModel

    class _FromConfig(real):  # type: ignore[misc, valid-type]
        @classmethod
        def from_pretrained(cls, name, *a, **k):
            cfg_path = _hf_cached(str(name), "config.json")
            cfg = (transformers.RobertaConfig.from_json_file(cfg_path) if cfg_path
                   else transformers.RobertaConfig(**_ROBERTA_BASE_CONFIG))
            return real(cfg)

    old = [(m, m.RobertaModel) for m in mods]
    try:
        for m in mods:
            m.RobertaModel = _FromConfig
        yield
    finally:
        for m, v in old:
            m.RobertaModel = v


class ClapEncoder(_Encoder):
    """LAION-CLAP audio/text encoder (lazy ``laion_clap`` import).

    ``checkpoint``: a name from :data:`CLAP_CHECKPOINTS` (default ``"music"`` =
    ``music_audioset_epoch_15_esc_90.14.pt``, HTSAT-base, the paper's music
    checkpoint), a local ``.pt`` path, or ``"random"`` (seeded random weights, explicitly).
    Named checkpoints are looked for in ``checkpoint_dir`` (default
    ``$MMSAE_CLAP_DIR`` or ``~/.cache/mmsae/clap``), the Hugging Face cache
    (``lukewys/laion_clap``) and the laion_clap package folder; they are downloaded from
    the hub only when it is reachable. ``amodel`` overrides the audio tower (needed for a
    local file that is not HTSAT-base, e.g. ``HTSAT-tiny`` for the 630k checkpoints).
    ``tokenizer``: a folder with the ``roberta-base`` tokenizer files (``vocab.json``,
    ``merges.txt``); default the Hugging Face cache.

    Audio is mono at 48 kHz (paths are loaded and resampled), center-cropped to 10 s or
    repeat-padded (laion_clap's ``repeatpad``), quantised to int16 like laion_clap does.
    """

    name = "clap"
    modality = "audio"

    def __init__(self, checkpoint: str | None = "music", amodel: str | None = None, enable_fusion: bool | None = None,
                 device: str | None = None, precision: str = "auto", batch_size: int = 16, seed: int = 0,
                 checkpoint_dir: str | None = None, tokenizer: str | None = None):
        self.device, self.precision = resolve_device(device), precision
        self.batch_size, self.seed = int(batch_size), int(seed)
        self.random = _is_random(checkpoint)
        online = network_available()
        # 1. weights (checked before any heavy import)
        self.checkpoint_path: str | None = None
        self.checkpoint_fingerprint: str | None = None
        fusion_default = False
        if self.random:
            self.checkpoint = "random"
            amodel = amodel or "HTSAT-base"
        elif str(checkpoint) in CLAP_CHECKPOINTS:
            fname, am, fusion_default = CLAP_CHECKPOINTS[str(checkpoint)]
            amodel = amodel or am
            self.checkpoint = str(checkpoint)
            self.checkpoint_path = self._find_named(fname, checkpoint_dir, online)
        elif os.path.isfile(os.path.expanduser(str(checkpoint))):
            self.checkpoint_path = str(Path(os.path.expanduser(str(checkpoint))).resolve())
            self.checkpoint = "file:" + Path(self.checkpoint_path).name
            known = {v[0]: v for v in CLAP_CHECKPOINTS.values()}
            if Path(self.checkpoint_path).name in known:
                _, am, fusion_default = known[Path(self.checkpoint_path).name]
                amodel = amodel or am
            amodel = amodel or "HTSAT-base"
        else:
            raise EncoderUnavailable(
                f"CLAP checkpoint {checkpoint!r} is neither a known name ({', '.join(CLAP_CHECKPOINTS)}), "
                "an existing .pt file, nor 'random'.")
        self.amodel = amodel
        self.enable_fusion = bool(fusion_default if enable_fusion is None else enable_fusion)
        if self.checkpoint_path:
            self.checkpoint_fingerprint = file_fingerprint(self.checkpoint_path)
        # 2. tokenizer files (the text tower is useless without them; transformers>=5 would
        #    silently build an empty tokenizer offline, so check explicitly)
        tok_dir = self._find_tokenizer(tokenizer, online)
        # 3. lazy import, offline mode when the hub is unreachable
        _import_laion_clap(offline=not online)
        import torch
        from transformers import RobertaTokenizer

        with _hf_offline(not online):
            self.tokenizer = RobertaTokenizer.from_pretrained(tok_dir or CLAP_TEXT_MODEL)
        if len(self.tokenizer) < 10:
            raise EncoderUnavailable(f"the RoBERTa tokenizer loaded from {tok_dir or CLAP_TEXT_MODEL} is empty "
                                     f"({len(self.tokenizer)} tokens): its vocab.json/merges.txt are missing")
        from clap_module import create_model  # laion_clap puts its folder on sys.path

        with _roberta_from_config(), torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            try:
                model, cfg = create_model(self.amodel, "roberta", precision="fp32", device=self.device,
                                          enable_fusion=self.enable_fusion,
                                          **({"fusion_type": "aff_2d"} if self.enable_fusion else {}))
            except Exception as e:
                raise EncoderUnavailable(f"could not build CLAP {self.amodel} ({type(e).__name__}: {e})") from e
        if self.checkpoint_path:
            self._load_weights(model, self.checkpoint_path)
        self.model, self.model_cfg = model.eval(), cfg
        import laion_clap

        self.laion_clap_version = getattr(laion_clap, "__version__", None) or _dist_version("laion_clap")
        self.dim = int(self.encode_texts(["a"]).shape[1])

    # -- lookup ---------------------------------------------------------------------
    @staticmethod
    def default_checkpoint_dir() -> str:
        return os.environ.get("MMSAE_CLAP_DIR", os.path.expanduser("~/.cache/mmsae/clap"))

    def _find_named(self, fname: str, checkpoint_dir: str | None, online: bool) -> str:
        import importlib.util

        d = checkpoint_dir or self.default_checkpoint_dir()
        cands = [os.path.join(d, fname)]
        spec = importlib.util.find_spec("laion_clap")
        if spec and spec.submodule_search_locations:
            cands.append(os.path.join(list(spec.submodule_search_locations)[0], fname))
        for c in cands:
            if os.path.isfile(c):
                return c
        hit = _hf_cached(CLAP_HF_REPO, fname)
        if hit:
            return hit
        if online:
            from huggingface_hub import hf_hub_download

            try:
                return hf_hub_download(CLAP_HF_REPO, fname)
            except Exception as e:
                raise EncoderUnavailable(f"downloading {CLAP_HF_REPO}/{fname} failed: {e}") from e
        raise EncoderUnavailable(
            f"CLAP checkpoint {fname} not found and the Hugging Face hub is unreachable.\n"
            f"Looked in: {', '.join(cands)} and the Hugging Face cache {hf_cache_dir()} ({CLAP_HF_REPO}).\n"
            f"To supply it: download https://huggingface.co/{CLAP_HF_REPO}/resolve/main/{fname} "
            f"(e.g. huggingface-cli download {CLAP_HF_REPO} {fname}) and put it in {d} "
            "(or set MMSAE_CLAP_DIR), or pass its path as checkpoint (clap_checkpoint=/path/to/file.pt).\n"
            "Random weights are used only on request: checkpoint='random'.")

    def _find_tokenizer(self, tokenizer: str | None, online: bool) -> str | None:
        if tokenizer:
            missing = [f for f in CLAP_TOKENIZER_FILES if not os.path.isfile(os.path.join(tokenizer, f))]
            if missing:
                raise EncoderUnavailable(f"tokenizer folder {tokenizer} lacks {', '.join(missing)} "
                                         "(the roberta-base tokenizer files)")
            return tokenizer
        missing = [f for f in CLAP_TOKENIZER_FILES if not _hf_cached(CLAP_TEXT_MODEL, f)]
        if missing and not online:
            raise EncoderUnavailable(
                f"CLAP's text tower needs the '{CLAP_TEXT_MODEL}' tokenizer files {', '.join(missing)}, which are "
                f"not in the Hugging Face cache ({hf_cache_dir()}), and huggingface.co is unreachable.\n"
                "To supply them: on a machine with internet run\n"
                f"  huggingface-cli download {CLAP_TEXT_MODEL} vocab.json merges.txt config.json\n"
                "and copy ~/.cache/huggingface here (or set HF_HOME), or put vocab.json and merges.txt in a "
                "folder and pass it as tokenizer=FOLDER (clap_tokenizer=FOLDER).")
        return None

    def _load_weights(self, model, path: str) -> None:
        import torch

        try:
            ckpt = torch.load(path, map_location="cpu", weights_only=False)
        except Exception as e:
            raise EncoderUnavailable(f"cannot read CLAP checkpoint {path} ({type(e).__name__}: {e})") from e
        sd = ckpt.get("state_dict", ckpt) if isinstance(ckpt, dict) else ckpt
        sd = {k[7:] if k.startswith("module.") else k: v for k, v in sd.items()}
        own = model.state_dict()
        sd = {k: v for k, v in sd.items() if k in own}  # e.g. position_ids buffers of old transformers
        missing = [k for k in own if k not in sd and not k.endswith(("position_ids", "num_batches_tracked"))]
        if missing:
            raise EncoderUnavailable(
                f"CLAP checkpoint {path} does not fit audio model {self.amodel} (fusion={self.enable_fusion}): "
                f"{len(missing)} weights missing, e.g. {missing[:3]}; pass amodel='HTSAT-tiny' / 'HTSAT-base' "
                "or enable_fusion to match the checkpoint")
        model.load_state_dict(sd, strict=False)

    # -- encoding -------------------------------------------------------------------
    def identity(self) -> dict:
        return self._identity(name="clap", library="laion_clap", model=self.amodel, pretrained=self.checkpoint,
                              fusion=self.enable_fusion)

    def versions(self) -> dict:
        return dict(super().versions(), laion_clap=self.laion_clap_version)

    def prepare(self, item: Any) -> np.ndarray:
        """Path or mono waveform (48 kHz) -> 10 s float32 waveform, deterministic (thread-safe)."""
        if isinstance(item, (str, os.PathLike, bytes)):
            item = load_audio(item, CLAP_SAMPLE_RATE)
        w = np.asarray(item, np.float32).reshape(-1)
        if w.size == 0:
            raise ValueError("empty waveform")
        if w.size > CLAP_MAX_SAMPLES and not self.enable_fusion:  # deterministic centre crop
            s = (w.size - CLAP_MAX_SAMPLES) // 2
            w = w[s:s + CLAP_MAX_SAMPLES]
        w = np.clip(w, -1.0, 1.0)
        return (np.round(w * 32767.0).astype(np.int16).astype(np.float32) / 32767.0)  # laion_clap's quantisation

    def encode_audio(self, audio: Sequence, batch_size: int | None = None) -> np.ndarray:
        """Audio (paths or 48 kHz mono arrays) -> (N, d) unit rows."""
        import torch
        from laion_clap.training.data import get_audio_features

        def chunk_fn(chunk):
            np.random.seed(self.seed)  # fusion picks random chunks of long audio
            feats = [get_audio_features({}, torch.from_numpy(self.prepare(a)), CLAP_MAX_SAMPLES,
                                        data_truncating="fusion" if self.enable_fusion else "rand_trunc",
                                        data_filling="repeatpad", audio_cfg=self.model_cfg["audio_cfg"])
                     for a in chunk]
            return self.model.get_audio_embedding(feats)

        return self._encode_batches(audio, batch_size or self.batch_size, chunk_fn)

    def encode_texts(self, texts: Sequence[str], batch_size: int | None = None) -> np.ndarray:
        """Captions/prompts -> (N, d) unit rows (RoBERTa tokenizer, 77 tokens, like laion_clap)."""
        def chunk_fn(chunk):
            tok = self.tokenizer(chunk, padding="max_length", truncation=True, max_length=77, return_tensors="pt")
            return self.model.get_text_embedding({k: v for k, v in tok.items()
                                                  if k in ("input_ids", "attention_mask")})

        return self._encode_batches(texts, batch_size or max(self.batch_size, 64), chunk_fn)


def _dist_version(name: str) -> str | None:
    try:
        from importlib.metadata import version

        return version(name)
    except Exception:
        return None


def get_encoder(kind: str, **options) -> _Encoder:
    """``get_encoder("clip", model=..., pretrained=...)`` or ``get_encoder("clap", checkpoint=...)``."""
    kind = kind.lower()
    if kind == "clip":
        return ClipEncoder(**options)
    if kind == "clap":
        return ClapEncoder(**options)
    raise ValueError(f"unknown encoder {kind!r} (clip or clap)")
