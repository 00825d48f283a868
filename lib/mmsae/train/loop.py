"""The one training loop for every model in :mod:`mmsae.models`.

Each step draws ``batch_size`` *pairs* (shuffled without replacement, epoch by epoch,
from a seeded generator), calls ``model.training_loss(x, y, step)``, back-propagates,
applies the model's decoder-norm hooks around a fused Adam step, and every
``log_every`` steps records loss, explained variance per modality, the dead-latent
count, the learning rate and throughput (shown live in a tqdm bar).

Determinism: on CPU, the same model initialisation (``build_model(config, seed=...)``),
data, settings and torch thread count give bit-identical weights and logs, in the main
process as in the worker processes of :func:`mmsae.study.experiments.run_jobs`. The loop turns
on torch's deterministic algorithms on CPU for its duration (and restores the previous
setting): with more than one intra-op thread the backward of an indexed gather
(``W_dec[indices]``, an ``index_put_`` with accumulation) otherwise adds its rows in a
racy order, and BatchTopK, Matryoshka, ModalitySpecific and SharedSupport differed from
run to run in their last bits, then in their dead latents. CUDA runs are not bit-identical
(atomic additions, the bf16 top-K selection). A run resumed from a checkpoint continues
exactly as if it had not stopped (model, optimiser, sampler and RNG states are all
checkpointed).

Checkpoints: with ``checkpoint_dir`` set, ``<checkpoint_dir>/last/`` is written every
``checkpoint_every`` steps and at the end (model folder + ``trainer_state.pt``), each
time into a temporary folder renamed into place, so a crash never leaves a half-written
checkpoint; ``resume=True`` continues from it. A crash between the two renames of the
swap (old ``last/`` moved aside, new one not yet in place) leaves no ``last/``: resuming
then uses the newest complete checkpoint left in ``.last.*``. A checkpoint whose model
configuration, result-relevant training settings (:data:`RUN_KEYS`) or data shape differ
from the requested run is refused with :class:`~mmsae.models.base.CheckpointMismatchError`
naming both values. ``train_log.csv`` beside it holds the history.

TensorBoard: with ``log_dir`` set (needs the optional ``tensorboard`` package), the main
process also writes every history record as TensorBoard scalars ``train/<key>`` at its
step (:mod:`mmsae.train.tb`), flushed at each checkpoint; a resumed run replaces the steps
logged after its checkpoint.

Batch size: a ``batch_size`` larger than the number of training pairs is clamped to it,
with a printed note (fewer than 2 pairs is an error).
"""

from __future__ import annotations

import contextlib
import json
import random
import shutil
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd
import torch
from torch.profiler import record_function
from tqdm.auto import tqdm

from ..data.store import PairedEmbeddings, atomic_write, make_temp_dir, replace_dir
from ..engine import deferred
from ..models.base import CheckpointError, CheckpointMismatchError, Dictionary, load_model
from . import distributed as ddp
from .optim import RowAdam
from .tb import require_tensorboard, tensorboard_log

__all__ = ["TrainConfig", "TrainResult", "TrainSummary", "TRAIN_SUMMARY", "train", "seed_everything",
           "resolve_device", "RUN_KEYS"]

#: training settings that change the result: a checkpoint is resumed only when they match
RUN_KEYS = ("steps", "batch_size", "lr", "betas", "eps", "warmup_steps", "decay_fraction", "grad_clip", "seed")


@dataclass
class TrainConfig:
    """Optimisation settings. Defaults: the paper's batch (128 pairs) and CLIP steps (25k);
    Adam (Gao et al. 2024: betas 0.9/0.999, eps 6.25e-10), lr 4e-4, constant after a
    linear warm-up (default ``min(100, steps // 10)`` steps), linear decay over the last
    ``decay_fraction`` of training."""

    steps: int = 25_000
    batch_size: int = 128  # pairs per step
    lr: float = 4e-4
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 6.25e-10
    warmup_steps: int | None = None  # None: min(100, steps // 10)
    decay_fraction: float = 0.2
    grad_clip: float | None = None
    seed: int = 0
    device: str = "auto"
    log_every: int = 50
    checkpoint_every: int = 0  # 0: only at the end
    checkpoint_dir: str | None = None
    resume: bool = True
    progress: bool = True
    desc: str | None = None
    log_dir: str | None = None  # TensorBoard event files of the history (optional tensorboard package)
    # --- performance (see docs/performance.md) ---
    bf16_select: bool | str = "auto"  # CUDA: bf16 encoder matmul for top-K *selection* (values stay fp32)
    fused_adam: bool | str = "auto"  # CPU: RowAdam (decoder-norm hooks fused in); CUDA: torch's fused Adam; False: foreach
    defer_grads: bool = True  # CPU RowAdam: K-sparse weight gradients summed inside the update (engine/deferred.py)
    stream: bool | None = None  # None: stream batches from a np.memmap / data over stream_threshold_gb
    stream_threshold_gb: float = 4.0
    prefetch: int = 8  # batches read ahead by the streaming thread
    init_samples: int = 262_144  # pairs used by init_from_data when streaming

    def __post_init__(self) -> None:
        if self.log_dir is not None:  # a Path too; kept as str so the config stays JSON
            self.log_dir = str(self.log_dir)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class TrainResult:
    model: Dictionary
    history: list[dict[str, float]] = field(default_factory=list)
    wall_time_s: float = 0.0
    pairs_per_s: float = 0.0
    steps_done: int = 0
    resumed_from: int = 0
    device: str = ""
    n_train: int = 0  # training pairs

    def history_frame(self):
        import pandas as pd

        return pd.DataFrame(self.history)


TRAIN_SUMMARY = "train_summary.json"


@dataclass
class TrainSummary:
    """The one schema of ``train_summary.json``, written beside a trained model by the loop
    (``TrainConfig.checkpoint_dir``) and by :mod:`mmsae.study.experiments` (a method's run
    folder). The study fills the last four fields (``None`` when the loop writes alone):
    ``method`` (the method's name), ``train_key`` (the reuse key), ``data_fingerprint`` and
    ``alignment`` (the modality-specific SAEs' matching quality)."""

    arch: str
    seed: int
    steps: int
    resumed_from: int
    wall_time_s: float
    pairs_per_s: float
    device: str
    n_train: int
    train_config: dict[str, Any]
    model_config: dict[str, Any]
    method: str | None = None
    train_key: dict[str, Any] | None = None
    data_fingerprint: str | None = None
    alignment: dict[str, Any] | None = None

    @classmethod
    def of(cls, result: TrainResult, config: TrainConfig, **study: Any) -> "TrainSummary":
        """The summary of a finished ``train`` call (``study``: the last four fields)."""
        return cls(arch=result.model.config.arch, seed=config.seed, steps=result.steps_done,
                   resumed_from=result.resumed_from, wall_time_s=result.wall_time_s, pairs_per_s=result.pairs_per_s,
                   device=result.device, n_train=result.n_train, train_config=config.to_dict(),
                   model_config=result.model.config.to_dict(), **study)

    def to_dict(self) -> dict[str, Any]:
        return json.loads(json.dumps(asdict(self)))  # JSON types (tuples become lists), as read back

    def write(self, folder: str | Path) -> Path:
        """``folder/train_summary.json``, atomically."""
        text = json.dumps(self.to_dict(), indent=2)
        return atomic_write(Path(folder) / TRAIN_SUMMARY, lambda t: Path(t).write_text(text))


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and torch's generators."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def resolve_device(device: str = "auto") -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def _as_tensors(data, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    if isinstance(data, PairedEmbeddings):
        x, y = data.x, data.y
    else:
        x, y = data
    x = torch.as_tensor(np.ascontiguousarray(x, dtype=np.float32), device=device)
    y = torch.as_tensor(np.ascontiguousarray(y, dtype=np.float32), device=device)
    if x.shape != y.shape:
        raise ValueError(f"unpaired training data: x {tuple(x.shape)} vs y {tuple(y.shape)}")
    return x, y


def _lr_factor(step: int, cfg: TrainConfig) -> float:
    f = 1.0
    warmup = min(100, cfg.steps // 10) if cfg.warmup_steps is None else cfg.warmup_steps
    if warmup > 0:
        f = min(f, (step + 1) / warmup)
    n_decay = int(cfg.steps * cfg.decay_fraction)
    if n_decay > 0 and step >= cfg.steps - n_decay:
        f = min(f, (cfg.steps - step) / n_decay)
    return f


def _make_adam(model: Dictionary, cfg: TrainConfig, device: torch.device, defer: bool = False):
    """Adam over the model's parameters: on CPU :class:`~mmsae.train.optim.RowAdam` (the decoder's
    update with the decoder-norm hooks fused in, one compiled pass; torch's fused Adam for the
    rest; with ``defer``, every matrix through the compiled pass, which then takes the deferred
    K-sparse gradients, :mod:`mmsae.engine.deferred`), elsewhere torch's fused kernel when
    available; ``fused_adam=False``: torch's foreach Adam (and the model's hooks)."""
    opt_kw = dict(lr=cfg.lr, betas=cfg.betas, eps=cfg.eps)
    params = list(model.parameters())
    if cfg.fused_adam is True or cfg.fused_adam == "auto":
        unit = getattr(model, "unit_norm_rows", list)() if device.type == "cpu" else None
        try:
            if unit is not None:
                return RowAdam(params, unit_rows=unit, rows=[p for p in params if p.dim() == 2] if defer else (),
                               fused=True, **opt_kw)
            return torch.optim.Adam(params, fused=True, **opt_kw)
        except (RuntimeError, TypeError, ValueError):
            if cfg.fused_adam is True:
                raise
            if unit is not None:  # a torch without the fused CPU kernel: foreach for the rest
                return RowAdam(params, unit_rows=unit, foreach=True, **opt_kw)
    return torch.optim.Adam(params, foreach=True, **opt_kw)


def _is_memmap(a) -> bool:
    return isinstance(a, np.memmap) or (isinstance(a, np.ndarray) and isinstance(a.base, np.memmap))


class _Prefetcher:
    """Background thread that gathers the batches of a sampler clone from (memory-mapped)
    numpy arrays, ``depth`` steps ahead, into (pinned, on CUDA) tensors on ``device``.
    It yields exactly the batches ``x[sampler.next()]`` of the in-memory path."""

    def __init__(self, x, y, sampler: "_Sampler", n_steps: int, shard: slice, device: torch.device, depth: int):
        import queue
        import threading

        self.q: "queue.Queue" = queue.Queue(maxsize=max(1, depth))
        self.device, self.stop = device, threading.Event()
        clone = _Sampler(sampler.n, sampler.batch, 0, torch.device("cpu"))
        clone.load({k: (v.clone() if torch.is_tensor(v) else v) for k, v in sampler.state().items()})

        def work():
            try:
                pin = device.type == "cuda"
                for _ in range(n_steps):
                    if self.stop.is_set():
                        return
                    idx = clone.next()[shard].numpy()
                    xb = torch.from_numpy(np.asarray(x[idx], dtype=np.float32))
                    yb = torch.from_numpy(np.asarray(y[idx], dtype=np.float32))
                    if pin:
                        xb, yb = xb.pin_memory(), yb.pin_memory()
                    self.q.put((xb, yb))
            except BaseException as e:  # surfaced in the training thread
                self.q.put(e)

        self.thread = threading.Thread(target=work, daemon=True, name="mmsae-prefetch")
        self.thread.start()

    def next(self):
        item = self.q.get()
        if isinstance(item, BaseException):
            raise item
        xb, yb = item
        return xb.to(self.device, non_blocking=True), yb.to(self.device, non_blocking=True)

    def close(self) -> None:
        self.stop.set()
        while not self.q.empty():
            self.q.get_nowait()


class _Sampler:
    """Epoch-wise random permutation of pair indices from a seeded generator."""

    def __init__(self, n: int, batch: int, seed: int, device: torch.device):
        if batch > n:
            raise ValueError(f"batch_size {batch} exceeds the {n} training pairs")
        self.n, self.batch, self.device = n, batch, device
        self.gen = torch.Generator().manual_seed(seed)
        self.perm = torch.randperm(n, generator=self.gen)
        self.pos = 0

    def next(self) -> torch.Tensor:
        if self.pos + self.batch > self.n:
            self.perm = torch.randperm(self.n, generator=self.gen)
            self.pos = 0
        idx = self.perm[self.pos:self.pos + self.batch]
        self.pos += self.batch
        return idx.to(self.device, non_blocking=True)

    def state(self) -> dict[str, Any]:
        return {"gen": self.gen.get_state(), "perm": self.perm, "pos": self.pos}

    def load(self, s: dict[str, Any]) -> None:
        self.gen.set_state(s["gen"])
        self.perm, self.pos = s["perm"], int(s["pos"])


def _save_checkpoint(ckpt_dir: Path, model: Dictionary, opt, sampler: _Sampler, step: int,
                     history: list[dict[str, float]], cfg: TrainConfig, data_shape: tuple[int, ...]) -> None:
    tmp = make_temp_dir(ckpt_dir, ".last.")
    try:
        model.save(tmp / "model")
        state = {
            "step": step, "optimizer": opt.state_dict(), "sampler": sampler.state(),
            "torch_rng": torch.get_rng_state(), "history": history, "train_config": cfg.to_dict(),
            "data_shape": [int(s) for s in data_shape],
        }
        if torch.cuda.is_available():
            state["cuda_rng"] = torch.cuda.get_rng_state_all()
        atomic_write(tmp / "trainer_state.pt", lambda t: torch.save(state, t))
        replace_dir(tmp, ckpt_dir / "last")
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    for stale in ckpt_dir.glob(".last.*"):  # older checkpoints left by an interrupted swap
        shutil.rmtree(stale, ignore_errors=True)
    _write_log(ckpt_dir / "train_log.csv", history)


def _find_checkpoint(ckpt_dir: Path) -> tuple[Path, dict[str, Any]] | None:
    """The newest complete checkpoint in ``ckpt_dir`` as ``(folder, trainer state)``: ``last/``
    or, after a crash in the middle of a checkpoint swap, a complete ``.last.*`` folder
    (the previous ``last/`` moved aside, or the new one not yet renamed). None if there is none."""
    if not ckpt_dir.is_dir():
        return None
    found = None
    for folder in [ckpt_dir / "last"] + sorted(p for p in ckpt_dir.glob(".last.*") if p.is_dir()):
        files = (folder / "trainer_state.pt", folder / "model" / "config.json", folder / "model" / "model.safetensors")
        if not all(f.is_file() for f in files):
            continue
        try:
            state = torch.load(folder / "trainer_state.pt", map_location="cpu", weights_only=False)
            step = int(state["step"])
        except Exception as e:
            if folder.name == "last":
                raise CheckpointError(f"{folder}: cannot resume from checkpoint ({type(e).__name__}: {e})") from e
            continue  # a half-written temporary folder
        if found is None or step > int(found[1]["step"]):
            found = (folder, state)
    return found


def _jsonable(v: Any) -> Any:
    return json.loads(json.dumps(v))


def _check_same_run(folder: Path, state: dict[str, Any], model: Dictionary, cfg: TrainConfig,
                    data_shape: tuple[int, ...]) -> None:
    """Raise :class:`CheckpointMismatchError` unless the checkpoint in ``folder`` was written by
    the same run: same model configuration, same :data:`RUN_KEYS`, same data shape."""
    try:
        saved_model = json.loads((folder / "model" / "config.json").read_text())
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{folder / 'model' / 'config.json'}: unreadable ({e})") from e
    want_model = _jsonable({**model.config.to_dict(), "arch": model.arch})
    saved_train = _jsonable(state.get("train_config") or {})
    want_train = _jsonable(cfg.to_dict())
    diffs = [f"model {k}: checkpoint {saved_model.get(k)!r}, requested {want_model.get(k)!r}"
             for k in sorted(set(saved_model) | set(want_model)) if saved_model.get(k) != want_model.get(k)]
    diffs += [f"training {k}: checkpoint {saved_train.get(k)!r}, requested {want_train.get(k)!r}"
              for k in RUN_KEYS if saved_train.get(k) != want_train.get(k)]
    saved_shape = state.get("data_shape")
    if saved_shape is not None and list(saved_shape) != [int(s) for s in data_shape]:
        diffs.append(f"data shape: checkpoint {tuple(saved_shape)}, requested {tuple(data_shape)}")
    if diffs:
        raise CheckpointMismatchError(
            f"{folder}: this checkpoint belongs to another run; refusing to resume it: " + "; ".join(diffs)
            + ". Use another checkpoint_dir, or resume=False to start over (the checkpoint is then overwritten).")


def _fit_batch_size(cfg: TrainConfig, n: int, world: int, verbose: bool) -> TrainConfig:
    """``cfg`` with ``batch_size`` clamped to the ``n`` training pairs (a multiple of the world
    size), with a printed note; fewer than 2 pairs (or than processes) is an error."""
    if n < max(2, world):
        raise ValueError(f"only {n} training pair(s): training needs at least {max(2, world)}")
    if cfg.batch_size <= n:
        return cfg
    b = n - n % world
    if verbose:
        msg = f"note: batch_size {cfg.batch_size} exceeds the {n} training pairs; training with batch_size {b} instead"
        print(msg + (" (each step sees every pair)" if b == n else f" (a multiple of the {world} processes)"))
    return replace(cfg, batch_size=b)


_MALLOC_TUNED = False


def _reuse_freed_memory() -> None:
    """glibc only, once per process: keep freed memory in the heap for reuse.

    A CPU training step allocates and frees the same large buffers every step (the ``(m, d)``
    gradients, about 16 MB each at the paper's shape). With glibc's defaults those are
    returned to the kernel when freed and page-faulted back in on the next step, which cost
    a few ms per buffer here (docs/performance.md). ``mallopt`` raises the mmap threshold to
    its maximum (32 MiB) and the trim threshold to 1 GiB, so they are reused instead; the
    process keeps up to that much freed memory. Elsewhere (macOS, musl) nothing is done."""
    global _MALLOC_TUNED
    if _MALLOC_TUNED:
        return
    _MALLOC_TUNED = True
    import ctypes
    import ctypes.util
    import platform

    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
        libc.mallopt(M_MMAP_THRESHOLD, 32 * 2 ** 20)
        libc.mallopt(M_TRIM_THRESHOLD, 2 ** 30)
    except (OSError, AttributeError):  # pragma: no cover - not glibc after all
        pass


@contextmanager
def _deterministic_cpu(device: torch.device):
    """Torch's deterministic algorithms while training on CPU (see the module docstring);
    the previous setting is restored afterwards.

    Without torch's companion setting ``fill_uninitialized_memory`` (a debugging aid that
    fills every new ``torch.empty`` with NaN, i.e. one extra pass over each gradient buffer
    per step): every kernel of the loop writes the memory it allocates before reading it."""
    if device.type != "cpu" or torch.are_deterministic_algorithms_enabled():
        yield
        return
    import torch.utils.deterministic as tud

    fill = tud.fill_uninitialized_memory
    torch.use_deterministic_algorithms(True, warn_only=True)
    tud.fill_uninitialized_memory = False
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(False)
        tud.fill_uninitialized_memory = fill


def _write_log(path: Path, history: list[dict[str, float]]) -> None:
    if not history:
        return
    atomic_write(path, lambda tmp: pd.DataFrame(history).to_csv(tmp, index=False))


def train(
    model: Dictionary,
    data: PairedEmbeddings | tuple[Any, Any],
    config: TrainConfig | None = None,
    callback: Callable[[int, dict[str, float]], None] | None = None,
    **overrides: Any,
) -> TrainResult:
    """Train ``model`` on paired embeddings; returns the model, history and throughput.

    ``data``: a :class:`PairedEmbeddings` or an ``(x, y)`` pair of ``(N, d)`` arrays.
    Keyword ``overrides`` replace fields of ``config``. The initial weights are the model's
    (seed them with ``build_model(config, seed=...)``); ``seed`` seeds the batch order, the
    MGSAE masks and every other draw of the loop.
    """
    cfg = config or TrainConfig()
    if overrides:
        cfg = TrainConfig(**{**cfg.to_dict(), **overrides})
    world, rank = ddp.world_size(), ddp.rank()
    is_main = rank == 0
    tb_dir = cfg.log_dir if cfg.log_dir and is_main else None  # TensorBoard: the main process writes
    if tb_dir is not None:
        require_tensorboard(tb_dir)  # fail before any work when the package is missing
    device = resolve_device(cfg.device)
    model.to(device)
    if device.type == "cpu":
        _reuse_freed_memory()
    if hasattr(model, "select_dtype"):
        sel = cfg.bf16_select
        use_bf16 = device.type == "cuda" and (sel is True or (sel == "auto" and torch.cuda.is_bf16_supported()))
        model.select_dtype = torch.bfloat16 if use_bf16 else None
    raw_x, raw_y = (data.x, data.y) if isinstance(data, PairedEmbeddings) else data
    stream = cfg.stream
    if stream is None:
        nbytes = getattr(raw_x, "nbytes", 0) + getattr(raw_y, "nbytes", 0)
        stream = _is_memmap(raw_x) or nbytes > cfg.stream_threshold_gb * 2 ** 30
    if stream and not isinstance(raw_x, np.ndarray):
        raw_x, raw_y = np.asarray(raw_x), np.asarray(raw_y)
    if stream:
        if raw_x.shape != raw_y.shape:
            raise ValueError(f"unpaired training data: x {tuple(raw_x.shape)} vs y {tuple(raw_y.shape)}")
        x, y = raw_x, raw_y  # stay on disk / in the page cache
    else:
        x, y = _as_tensors(data, device)
    if x.shape[1] != model.config.d:
        raise ValueError(f"data dimension {x.shape[1]} != model dimension d={model.config.d}")
    data_shape = tuple(int(s) for s in x.shape)
    cfg = _fit_batch_size(cfg, len(x), world, is_main)
    shard = ddp.shard_slice(cfg.batch_size) if world > 1 else slice(None)
    if world > 1:
        model.mask_row_offset = shard.start  # global pair indices for the index-form mask

    ckpt_dir = Path(cfg.checkpoint_dir) if cfg.checkpoint_dir else None
    start, history = 0, []
    torch.manual_seed(cfg.seed)
    sampler = _Sampler(len(x), cfg.batch_size, cfg.seed, torch.device("cpu") if stream else device)
    # the K-sparse weight gradients go to the optimiser as entries (one process, no clipping: both need them dense)
    defer = cfg.defer_grads and device.type == "cpu" and world == 1 and not cfg.grad_clip
    opt = _make_adam(model, cfg, device, defer)
    deferral = (deferred.defer_gradients(opt.compiled_params) if defer and isinstance(opt, RowAdam)
                else contextlib.nullcontext())
    # the decoder-norm hooks' work that the optimiser does (models without unit_norm_rows: none)
    hook_kw = {"skip": opt.fused_unit_rows} if getattr(opt, "fused_unit_rows", None) else {}

    found = _find_checkpoint(ckpt_dir) if ckpt_dir is not None and cfg.resume else None
    if found is not None:
        folder, state = found
        _check_same_run(folder, state, model, cfg, data_shape)
        if folder.name != "last" and is_main:
            print(f"note: {ckpt_dir / 'last'} is missing (a checkpoint swap was interrupted); resuming from the "
                  f"newest complete checkpoint {folder} (step {int(state['step'])})")
        try:
            saved = load_model(folder / "model", map_location=device)
            model.load_state_dict(saved.state_dict())
            opt.load_state_dict(state["optimizer"])
            sampler.load(state["sampler"])
        except Exception as e:
            raise CheckpointError(f"{folder}: cannot resume from checkpoint ({type(e).__name__}: {e})") from e
        torch.set_rng_state(state["torch_rng"])
        if "cuda_rng" in state and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda_rng"])
        start, history = int(state["step"]), list(state["history"])
    elif stream:
        n_init = min(len(x), cfg.init_samples)
        sel = np.arange(len(x)) if n_init == len(x) else np.sort(
            np.random.default_rng(cfg.seed).choice(len(x), n_init, replace=False))
        model.init_from_data(torch.as_tensor(np.asarray(x[sel], np.float32), device=device),
                             torch.as_tensor(np.asarray(y[sel], np.float32), device=device))
    else:
        model.init_from_data(x, y)
    ddp.broadcast_model(model)
    has_firing = world > 1 and bool(ddp.firing_buffers(model))
    if not is_main:
        ckpt_dir = None
    prefetch = _Prefetcher(x, y, sampler, cfg.steps - start, shard, device, cfg.prefetch) if stream else None

    model.train()
    t0 = time.perf_counter()
    t_log, step_log = t0, start

    bar = tqdm(range(start, cfg.steps), initial=start, total=cfg.steps, disable=not (cfg.progress and is_main),
               desc=cfg.desc or model.arch, dynamic_ncols=True, mininterval=0.5)
    with _deterministic_cpu(device), deferral, tensorboard_log(tb_dir, start) as tb:
        for step in bar:
            for g in opt.param_groups:
                g["lr"] = cfg.lr * _lr_factor(step, cfg)
            idx = sampler.next()
            if prefetch is not None:
                xb, yb = prefetch.next()
            else:
                idx = idx[shard]
                # row copies into one buffer, x's rows then y's: the models' [x; y] is then a view
                # of it (mmsae.engine.sparse.stack_pair), not a third copy
                batch = x.new_empty((2 * len(idx), x.shape[1]))
                xb = torch.index_select(x, 0, idx, out=batch[:len(idx)])
                yb = torch.index_select(y, 0, idx, out=batch[len(idx):])
            before = [b.clone() for b in ddp.firing_buffers(model)] if has_firing else None
            with record_function("mmsae.forward"):
                out = model.training_loss(xb, yb, step)
            opt.zero_grad(set_to_none=True)
            with record_function("mmsae.backward"):
                out.loss.backward()
            if world > 1:
                ddp.allreduce_grads(model.parameters())
                ddp.sync_firing(model, before)
            if cfg.grad_clip:
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            with record_function("mmsae.decoder_projection"):
                model.before_optimizer_step(**hook_kw)
            with record_function("mmsae.optimizer"):
                opt.step()
            with record_function("mmsae.decoder_renorm"):
                model.after_optimizer_step(**hook_kw)

            done = step + 1
            if done % cfg.log_every == 0 or done == cfg.steps:
                now = time.perf_counter()
                rec = {"step": done, "loss": float(out.loss.detach())}
                rec.update({k: float(v) for k, v in out.stats.items()})
                if world > 1:
                    rec = {"step": done, **{k: v for k, v in ddp.allreduce_stats(rec).items() if k != "step"}}
                dead = model.dead_mask()
                rec["dead"] = int(dead.sum()) if dead is not None else -1
                rec["lr"] = float(opt.param_groups[0]["lr"])
                rec["pairs_per_s"] = (done - step_log) * cfg.batch_size / max(now - t_log, 1e-9)
                rec["wall_s"] = now - t0
                t_log, step_log = now, done
                history.append(rec)
                if tb is not None:
                    tb.write(rec)
                bar.set_postfix(loss=f"{rec['loss']:.4f}", ev_x=f"{rec.get('ev_x', float('nan')):.3f}",
                                ev_y=f"{rec.get('ev_y', float('nan')):.3f}", dead=rec["dead"], refresh=False)
                if callback is not None:
                    callback(done, rec)
                if not np.isfinite(rec["loss"]):
                    raise FloatingPointError(f"loss became {rec['loss']} at step {done}; lower the learning rate")
            if ckpt_dir and cfg.checkpoint_every and done % cfg.checkpoint_every == 0 and done < cfg.steps:
                _save_checkpoint(ckpt_dir, model, opt, sampler, done, history, cfg, data_shape)
                if tb is not None:
                    tb.flush()
    bar.close()
    if prefetch is not None:
        prefetch.close()
    wall = time.perf_counter() - t0
    n_steps = cfg.steps - start
    if ckpt_dir:
        _save_checkpoint(ckpt_dir, model, opt, sampler, cfg.steps, history, cfg, data_shape)
    model.eval()
    result = TrainResult(model, history, wall, n_steps * cfg.batch_size / max(wall, 1e-9), cfg.steps, start,
                         str(device), int(data_shape[0]))
    if ckpt_dir:
        TrainSummary.of(result, cfg).write(ckpt_dir)
    return result
