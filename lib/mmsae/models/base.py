"""The small interface every SAE in this project implements, and its save/load.

``Dictionary`` (an ``nn.Module``):

* ``encode(u, modality=0) -> z``  dense non-negative codes ``(B, m)``;
* ``decode(z, modality=0) -> u_hat``;
* ``forward(u, modality=0) -> (u_hat, z)``;
* ``decoder_atoms(modality=0) -> (m, d)`` the dictionary directions used to decode
  that modality (the same array for shared dictionaries);
* ``training_loss(x, y, step) -> LossOutput`` the method's objective on a batch of
  pairs (``x`` image/audio, ``y`` text); the one loop in :mod:`mmsae.train` calls it;
* ``before_optimizer_step(skip=())`` / ``after_optimizer_step(skip=())`` hooks (decoder-norm
  constraint) on the matrices ``unit_norm_rows()`` lists, except those whose ``id`` is in
  ``skip`` (done by the optimiser: :class:`mmsae.train.optim.RowAdam`),
  ``init_from_data(x, y)`` (pre-bias initialisation).

Modality ids: 0 = image/audio (``x``), 1 = text (``y``). Models with one pre-bias
ignore the id.

A model is saved as a folder ``config.json`` + ``model.safetensors`` and loaded in one
line with :func:`load_model`.
"""

from __future__ import annotations

from collections.abc import Mapping

import json
import os
import shutil
import stat
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Callable

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from ..data.store import make_temp_dir, replace_dir

__all__ = ["SAEConfig", "LossOutput", "Dictionary", "register", "load_model", "build_model", "MODEL_REGISTRY",
           "CheckpointError", "CheckpointMismatchError"]

MODEL_REGISTRY: dict[str, type["Dictionary"]] = {}


class CheckpointError(FileNotFoundError):
    """A missing or unreadable model checkpoint (the message names the path)."""


class CheckpointMismatchError(CheckpointError):
    """A checkpoint that belongs to another run (different model or training settings)."""


def register(name: str) -> Callable[[type["Dictionary"]], type["Dictionary"]]:
    """Class decorator: make ``name`` loadable by :func:`load_model`."""
    def deco(cls: type["Dictionary"]) -> type["Dictionary"]:
        cls.arch = name
        MODEL_REGISTRY[name] = cls
        return cls
    return deco


@dataclass
class SAEConfig:
    """Hyper-parameters of a dictionary. ``arch`` selects the class.

    Defaults follow the paper (d=512, 8192 latents, K=32, lambda=0.05, mask 0.2) and,
    where the paper is silent, the TopK recipe of Gao et al. (2024): unit-norm decoder
    atoms with gradient projection, AuxK with coefficient 1/32 and k_aux = d/2, the
    pre-bias initialised at the data mean (``prebias_init="mean"``; or
    ``"geometric_median"``), the encoder initialised as the decoder's transpose.
    """

    arch: str = "topk"
    d: int = 512
    m: int = 8192
    k: int = 32
    n_modalities: int = 1  # pre-biases: 1 = pooled, 2 = one per modality
    group_lambda: float = 0.0  # l2,1 weight (GSAE: 0.05)
    mask_rate: float = 0.0  # cross-modal latent drop probability (MGSAE: 0.2)
    mask_mode: str = "pair"  # "pair": one mask per pair; "batch": one per batch
    auxk_coef: float = 1.0 / 32.0  # 0 disables AuxK
    k_aux: int | None = None  # default d // 2
    dead_after: int = 100_000  # a latent is dead after this many samples without firing
    prebias_init: str = "mean"
    extra: dict[str, Any] = field(default_factory=dict)  # arch-specific settings

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "SAEConfig":
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown SAEConfig fields {sorted(unknown)}")
        return cls(**d)

    def replace(self, **kw: Any) -> "SAEConfig":
        return SAEConfig.from_dict({**self.to_dict(), **kw})


@dataclass
class LossOutput:
    """What ``training_loss`` returns: the scalar to minimise and detached statistics."""

    loss: torch.Tensor
    stats: dict[str, float] = field(default_factory=dict)


class Dictionary(nn.Module):
    """Base class; subclasses set ``arch`` with :func:`register`."""

    arch = "base"

    def __init__(self, config: SAEConfig):
        super().__init__()
        self.config = config

    # --- interface -------------------------------------------------------------------
    def encode(self, u: torch.Tensor, modality: int = 0) -> torch.Tensor:  # pragma: no cover
        raise NotImplementedError

    def decode(self, z: torch.Tensor, modality: int = 0) -> torch.Tensor:  # pragma: no cover
        raise NotImplementedError

    def forward(self, u: torch.Tensor, modality: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        z = self.encode(u, modality)
        return self.decode(z, modality), z

    def decoder_atoms(self, modality: int = 0) -> torch.Tensor:  # pragma: no cover
        raise NotImplementedError

    def training_loss(self, x: torch.Tensor, y: torch.Tensor, step: int = 0) -> LossOutput:  # pragma: no cover
        raise NotImplementedError

    def init_from_data(self, x: torch.Tensor, y: torch.Tensor) -> None:
        """Data-dependent initialisation before training (default: nothing)."""

    def unit_norm_rows(self) -> list[torch.nn.Parameter]:
        """The matrices whose rows (dictionary atoms) are kept at unit norm by the two hooks
        below (default: none). An optimiser that does the hooks' work inside its update takes
        them from here (:class:`mmsae.train.optim.RowAdam`)."""
        return []

    def before_optimizer_step(self, skip=()) -> None:
        """Called after ``backward`` and before ``optimizer.step``; ``skip``: ``id`` of the
        parameters whose hook work the optimiser does."""

    def after_optimizer_step(self, skip=()) -> None:
        """Called after ``optimizer.step`` (``skip`` as above)."""

    def dead_mask(self) -> torch.Tensor | None:
        """Latents that have not fired for ``dead_after`` training samples (or None)."""
        return None

    @property
    def num_latents(self) -> int:
        return self.config.m

    @torch.no_grad()
    def _map_numpy(self, fn, u, width: int, batch_size: int):
        """``fn`` over row batches of ``u`` (an ``(N, ...)`` array, or a tuple of arrays with the same rows, passed
        to ``fn`` as as many tensors), concatenated as float32 numpy ``(N, width)``."""
        import numpy as np

        dev = next(self.parameters()).device
        arrays = u if isinstance(u, tuple) else (u,)
        n = len(arrays[0])
        out = [fn(*(torch.as_tensor(np.asarray(a[i:i + batch_size], np.float32), device=dev) for a in arrays))
               .float().cpu().numpy() for i in range(0, n, batch_size)]
        return np.concatenate(out) if out else np.zeros((0, width), np.float32)

    def encode_numpy(self, u, modality: int = 0, batch_size: int = 4096):
        """Codes for a (N, d) array, batched, as a float32 numpy array."""
        return self._map_numpy(lambda ub: self.encode(ub, modality), u, self.num_latents, batch_size)

    def reconstruct_numpy(self, u, modality: int = 0, batch_size: int = 4096):
        """Reconstructions for a (N, d) array, batched, as float32 numpy."""
        return self._map_numpy(lambda ub: self(ub, modality)[0], u, self.config.d, batch_size)

    # --- persistence -----------------------------------------------------------------
    def save(self, path: str | os.PathLike) -> Path:
        """Write ``path/config.json`` and ``path/model.safetensors`` atomically."""


        path = Path(path)
        tmp = make_temp_dir(path.parent, f".{path.name}.")
        try:
            cfg = self.config.to_dict()
            cfg["arch"] = self.arch
            (tmp / "config.json").write_text(json.dumps(cfg, indent=2))
            state = {k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()}
            save_file(state, str(tmp / "model.safetensors"))
            # safetensors writes 0600 files: give the weights the mode of an ordinary write
            os.chmod(tmp / "model.safetensors", stat.S_IMODE((tmp / "config.json").stat().st_mode))
            replace_dir(tmp, path)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return path


def build_model(config: SAEConfig | dict[str, Any], seed: int | None = None) -> Dictionary:
    """Instantiate the class registered for ``config.arch``.

    ``seed``: the random initialisation is drawn from a CPU generator seeded with it (the
    same weights as ``torch.manual_seed(seed)`` followed by ``build_model(config)``), and
    the global torch generator is left as it was. ``None`` draws from the global torch
    generator, so the weights then depend on everything that used it before.
    """
    cfg = config if isinstance(config, SAEConfig) else SAEConfig.from_dict(config)
    if cfg.arch not in MODEL_REGISTRY:
        raise ValueError(f"unknown arch {cfg.arch!r}; known: {sorted(MODEL_REGISTRY)}")
    if seed is None:
        return MODEL_REGISTRY[cfg.arch](cfg)
    with torch.random.fork_rng(devices=[]):
        torch.default_generator.manual_seed(int(seed))
        return MODEL_REGISTRY[cfg.arch](cfg)


def load_model(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> Dictionary:
    """Load a model saved with :meth:`Dictionary.save` (``config.json`` + ``model.safetensors``)."""
    path = Path(path)
    cfg_file, weights = path / "config.json", path / "model.safetensors"
    if not cfg_file.exists() or not weights.exists():
        raise CheckpointError(
            f"{path}: missing checkpoint (expected {cfg_file.name} and {weights.name} in this folder); "
            "train the model first (notebooks 02/03) or point to an existing run"
        )
    try:
        cfg = json.loads(cfg_file.read_text())
        model = build_model(cfg)
        state = load_file(str(weights), device=str(map_location))
        model.load_state_dict(state)
    except CheckpointError:
        raise
    except Exception as e:
        raise CheckpointError(f"{path}: could not load checkpoint ({type(e).__name__}: {e})") from e
    return model.to(map_location)


class StepStats(Mapping):
    """The per-step statistics of a loss (a read-only mapping of 0-d tensors). Entries given as
    functions are computed on first access and kept: the loop reads the statistics only on the
    steps it logs, so on the others they cost nothing."""

    def __init__(self, keys: list[str], values: dict, lazy: dict):
        self._keys, self._values, self._lazy = list(keys), dict(values), dict(lazy)

    def __getitem__(self, key):
        if key not in self._values:
            self._values[key] = self._lazy.pop(key)()
        return self._values[key]

    def __iter__(self):
        return iter(self._keys)

    def __len__(self):
        return len(self._keys)


def step_stats(x, y, rec_x, rec_y, **extra) -> StepStats:
    """Per-step statistics of a paired loss, kept as tensors (the loop syncs them only when it logs).

    ``ev_u = 1 - sum ||u - u_hat||^2 / sum ||u - mean(u)||^2 = 1 - rec_u / TV(u)`` (``rec_u`` the
    batch-mean squared error the loss already holds, ``TV`` the batch's total variance), so
    only the variance is computed, and only when the statistic is read."""
    def ev(u, rec):  # TV(u) = mean ||u||^2 - ||mean u||^2: two fast reductions
        n = max(u.shape[0], 1)
        with torch.no_grad():
            tv = torch.linalg.vector_norm(u).square() / n - torch.linalg.vector_norm(u.sum(0) / n).square()
            return 1.0 - rec.detach() / tv.clamp_min(1e-12)

    rec_x, rec_y = rec_x.detach(), rec_y.detach()
    values = {"rec_x": rec_x, "rec_y": rec_y}
    values.update({k: v.detach() if torch.is_tensor(v) else torch.tensor(float(v)) for k, v in extra.items()})
    return StepStats(["rec_x", "rec_y", "ev_x", "ev_y", *extra], values,
                     {"ev_x": lambda: ev(x, rec_x), "ev_y": lambda: ev(y, rec_y)})
