"""Peer TopK SAE trainers for ``scripts/benchmark.py``, each driven the way its own library trains.

The peers need numpy 2 (SAELens -> datasets -> pyarrow), which the project's lock does not
allow, so they live in a SEPARATE env made by ``scripts/setup_bench_env.sh`` (``.venv-bench``;
versions pinned in ``scripts/bench-constraints.txt``). In the main env every peer reports
"not installed"; nothing here imports a peer at module import time.

Every runner has the same signature::

    run_<peer>(batches, d, m, k, lr, dev, model_out=None) -> float

``batches`` is a list of ``(rows, d)`` float32 tensors already on ``dev``; the runner builds the
peer's TopK SAE with ``d`` inputs, ``m`` latents and ``k`` active latents (seeded with
``torch.manual_seed(0)``), an Adam optimiser at a constant ``lr``, and runs ONE training step per
tensor. It returns the wall-clock seconds of the training loop only: construction is excluded,
and on CUDA the clock is read after ``torch.cuda.synchronize()`` at both ends. Everything the
peer's own training step does (its bookkeeping, logging reads, first-step data-dependent
initialisation, gradient clipping, decoder renormalisation) is inside the timed loop.
``model_out``, if given, gets the peer's module appended right after construction (before
training); it is trained in place, so after the call it holds the trained weights.

Learning-rate schedules: every runner uses a constant ``lr`` with no warm-up, so every timed
step is a real update (dictionary_learning's trainer defaults to a 1000-step warm-up and
sparsify's Adam path to a 1000-step warm-up + linear decay; both are turned off, see below).

``peer_status()`` says which peers can be used here (None) or why not (a short reason).
"""

from __future__ import annotations

import contextlib
import functools
import importlib.metadata
import logging
import time
import warnings
from collections.abc import Callable

import torch

PEERS = ["overcomplete", "saelens", "sparsify", "dictionary_learning"]

#: top-level module and PyPI distribution of each peer
PEER_MODULES = {"overcomplete": "overcomplete", "saelens": "sae_lens", "sparsify": "sparsify",
                "dictionary_learning": "dictionary_learning"}
PEER_DISTRIBUTIONS = {"overcomplete": "overcomplete", "saelens": "sae-lens", "sparsify": "eai-sparsify",
                      "dictionary_learning": "dictionary-learning"}
SETUP_HINT = "run scripts/setup_bench_env.sh and use .venv-bench/bin/python"


# --------------------------------------------------------------------------- helpers
def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def _check_args(peer: str, batches, d: int, m: int, k: int, lr: float) -> None:
    """Clear errors for bad input, naming the peer and the problem."""
    if not batches:
        raise ValueError(f"run_{peer}: batches is empty (need one (rows, d) tensor per training step)")
    if not (0 < k <= m):
        raise ValueError(f"run_{peer}: need 0 < k <= m, got k={k}, m={m}")
    if d <= 0 or lr < 0:
        raise ValueError(f"run_{peer}: need d > 0 and lr >= 0, got d={d}, lr={lr}")
    for i, b in enumerate(batches):
        if b.ndim != 2 or b.shape[1] != d or b.dtype != torch.float32:
            raise ValueError(f"run_{peer}: batches[{i}] must be a (rows, {d}) float32 tensor, "
                             f"got shape {tuple(b.shape)} dtype {b.dtype}")


@contextlib.contextmanager
def _patched(obj, name: str, value):
    """Set ``obj.name = value`` for the duration of the block, then restore it."""
    old = getattr(obj, name)
    setattr(obj, name, value)
    try:
        yield
    finally:
        setattr(obj, name, old)


@contextlib.contextmanager
def _quiet_logger(name: str, level: int = logging.ERROR):
    """Raise one library logger's level for the block (not the global logging switch)."""
    lg = logging.getLogger(name)
    old = lg.level
    lg.setLevel(level)
    try:
        yield
    finally:
        lg.setLevel(old)


# --------------------------------------------------------------------------- imports
def _import_overcomplete():
    import matplotlib
    import matplotlib.cm

    # overcomplete 0.3 calls matplotlib.cm.get_cmap at import; matplotlib >= 3.9 removed it
    if not hasattr(matplotlib.cm, "get_cmap"):
        matplotlib.cm.get_cmap = matplotlib.colormaps.get_cmap
    from overcomplete.sae import TopKSAE
    from overcomplete.sae.losses import top_k_auxiliary_loss
    from overcomplete.sae.train import train_sae

    return TopKSAE, top_k_auxiliary_loss, train_sae


def _import_saelens():
    # its import chain (transformer_lens) emits DeprecationWarnings that are not ours to fix
    with _quiet_logger("sae_lens"), warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        import sae_lens.training.sae_trainer as sae_trainer_mod
        from sae_lens.config import SAETrainerConfig
        from sae_lens.saes.topk_sae import TopKTrainingSAE, TopKTrainingSAEConfig

    return TopKTrainingSAE, TopKTrainingSAEConfig, SAETrainerConfig, sae_trainer_mod


def _import_sparsify():
    import sparsify.sparse_coder as sparse_coder_mod
    import sparsify.utils as sparsify_utils
    from sparsify.config import SparseCoderConfig, TrainConfig

    return sparse_coder_mod, sparsify_utils, SparseCoderConfig, TrainConfig


def _import_dictionary_learning():
    from dictionary_learning.trainers.top_k import AutoEncoderTopK, TopKTrainer

    return AutoEncoderTopK, TopKTrainer


_IMPORTERS: dict[str, Callable[[], object]] = {
    "overcomplete": _import_overcomplete,
    "saelens": _import_saelens,
    "sparsify": _import_sparsify,
    "dictionary_learning": _import_dictionary_learning,
}


def peer_status() -> dict[str, str | None]:
    """For each peer: None if it imports and can be driven here, else a short reason."""
    out: dict[str, str | None] = {}
    for peer in PEERS:
        try:
            _IMPORTERS[peer]()
            out[peer] = None
        except ModuleNotFoundError as e:
            if (e.name or "").split(".")[0] == PEER_MODULES[peer]:
                out[peer] = f"not installed ({SETUP_HINT})"
            else:
                out[peer] = f"import failed: ModuleNotFoundError: {e} ({SETUP_HINT})"[:240]
        except Exception as e:  # noqa: BLE001 - any import-time failure is a reason, not a crash
            out[peer] = f"import failed: {type(e).__name__}: {e} ({SETUP_HINT})"[:240]
    return out


def peer_versions() -> dict[str, str | None]:
    """Installed version of each peer's distribution (None if not installed)."""
    out: dict[str, str | None] = {}
    for peer, dist in PEER_DISTRIBUTIONS.items():
        try:
            out[peer] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            out[peer] = None
    return out


# --------------------------------------------------------------------------- runners
def run_overcomplete(batches: list[torch.Tensor], d: int, m: int, k: int, lr: float, dev: torch.device,
                     model_out: list | None = None) -> float:
    """overcomplete ``TopKSAE`` trained by its own ``overcomplete.sae.train.train_sae`` (one epoch
    over ``batches``, ``monitoring=0`` so it logs and prints nothing).

    Model: ``encoder_module="linear"`` (one Linear d->m + ReLU, the library's default when no
    encoder is named), top-k by ``torch.topk`` scattered into a dense (rows, m) code; decoder =
    its ``DictionaryLayer`` with the default ``normalization="l2"`` (every dictionary row is
    renormalised to unit norm each time the dictionary is read in training mode).
    Loss: the library's ``top_k_auxiliary_loss`` (MSE + 0.1 x AuxK on the top half of the
    non-selected pre-codes; it has no notion of "dead" latents, the AuxK term is computed every
    step). Its ``DeadCodeTracker`` is updated every step. Gradient clipping: ``train_sae``'s
    default ``clip_grad=1.0``. Optimiser: ``torch.optim.Adam(lr, betas=(0.9, 0.999))``, no
    scheduler.
    """
    _check_args("overcomplete", batches, d, m, k, lr)
    TopKSAE, criterion, train_sae = _import_overcomplete()
    torch.manual_seed(0)
    model = TopKSAE(d, m, top_k=k, encoder_module="linear", device=str(dev))
    opt = torch.optim.Adam(model.parameters(), lr=lr, betas=(0.9, 0.999))
    if model_out is not None:
        model_out.append(model)
    _sync(dev)
    t0 = time.perf_counter()
    train_sae(model, batches, criterion, opt, nb_epochs=1, monitoring=0, device=str(dev))
    _sync(dev)
    return time.perf_counter() - t0


def run_saelens(batches: list[torch.Tensor], d: int, m: int, k: int, lr: float, dev: torch.device,
                model_out: list | None = None) -> float:
    """SAELens ``TopKTrainingSAE`` trained by its own ``SAETrainer.fit()``, fed ``iter(batches)``
    as the data provider (one ``next()`` per step).

    Kept SAELens defaults: ``rescale_acts_by_decoder_norm=True`` (pre-activations are scaled by
    the decoder row norms, the decoder itself is never renormalised), ``decoder_init_norm=0.1``,
    ``apply_b_dec_to_input=True``, dense TopK activations (``use_sparse_activations=False``),
    ``normalize_activations="none"``, AuxK with ``aux_loss_coefficient=1.0`` on latents dead for
    more than ``dead_feature_window=1000`` steps (so it is inactive in short runs, but the trainer
    still counts dead latents every step, one host sync), gradient-norm clipping at 1.0,
    per-step firing statistics, no autocast. Optimiser: its own ``Adam`` with
    ``adam_beta1=0.9, adam_beta2=0.999`` and the ``"constant"`` lr scheduler (``lr_end=lr``).
    No wandb, no checkpoints; its tqdm bar is disabled and its logger set to ERROR.
    """
    _check_args("saelens", batches, d, m, k, lr)
    TopKTrainingSAE, TopKTrainingSAEConfig, SAETrainerConfig, sae_trainer_mod = _import_saelens()
    rows = [int(b.shape[0]) for b in batches]
    with _quiet_logger("sae_lens"):
        torch.manual_seed(0)
        sae = TopKTrainingSAE(TopKTrainingSAEConfig(d_in=d, d_sae=m, k=k, dtype="float32", device=str(dev)))
        cfg = SAETrainerConfig(total_training_samples=sum(rows), train_batch_size_samples=rows[0], lr=lr,
                               lr_end=lr, lr_scheduler_name="constant", adam_beta1=0.9, adam_beta2=0.999,
                               device=str(dev))
        trainer = sae_trainer_mod.SAETrainer(cfg=cfg, sae=sae, data_provider=iter(batches))
        if model_out is not None:
            model_out.append(sae)
        quiet_tqdm = functools.partial(sae_trainer_mod.tqdm, disable=True)
        with _patched(sae_trainer_mod, "tqdm", quiet_tqdm):
            _sync(dev)
            t0 = time.perf_counter()
            trainer.fit()  # stops after sum(rows) samples = len(batches) steps
            _sync(dev)
            elapsed = time.perf_counter() - t0
    if trainer.n_training_steps != len(batches):
        raise RuntimeError(f"run_saelens: SAETrainer ran {trainer.n_training_steps} steps, expected {len(batches)}")
    return elapsed


def run_sparsify(batches: list[torch.Tensor], d: int, m: int, k: int, lr: float, dev: torch.device,
                 model_out: list | None = None) -> float:
    """EleutherAI sparsify ``SparseCoder`` (``activation="topk"``, ``num_latents=m``) with its fused
    encoder (Linear + ReLU + topk forward, sparse ``index_add`` backward) and its sparse decoder.

    Not its ``Trainer``: that one needs a Hugging Face ``PreTrainedModel`` and a token dataset and
    trains on activations captured by forward hooks, so it cannot be fed tensors. This is a loop
    that does, per step, what the Trainer's hook + step do on the ``fvu`` loss path:
    first step only: ``b_dec`` := batch mean (its data-dependent init); then
    ``set_decoder_norm_to_unit_norm()`` (``normalize_decoder=True`` default), forward with
    ``total_variance`` of the batch, loss ``fvu + auxk_alpha*auxk_loss + multi_topk_fvu/8``,
    reading the FVU to the host for its running average (one sync per step, as the Trainer does),
    backward, ``remove_gradient_parallel_to_decoder_directions()``, optimiser step, and its
    dead-latent counters (``did_fire`` / ``num_tokens_since_fired``). Its defaults are kept:
    ``auxk_alpha=0.0`` (AuxK off, so no dead mask is passed), ``dead_feature_threshold=1e7``
    tokens, ``multi_topk=False``, ``skip_connection=False``.
    Optimiser: sparsify's default is ``"signum"`` (ScheduleFree SignSGD); here its ``"adam"``
    choice, ``torch.optim.Adam(lr)`` with torch's default betas (0.9, 0.999) (bitsandbytes' 8-bit
    Adam is not installed, which is also what its Trainer falls back to), constant lr (its
    1000-step warm-up + linear decay schedule is left out). Like ``Trainer.fit`` the loop sets
    ``torch.set_float32_matmul_precision("high")`` (TF32 on CUDA; restored afterwards).
    On CUDA its forward runs under its own bf16 autocast and the decoder is its Triton kernel
    (when triton imports); on CPU the decoder is its eager ``embedding_bag`` fallback.
    """
    _check_args("sparsify", batches, d, m, k, lr)
    sparse_coder_mod, sparsify_utils, SparseCoderConfig, TrainConfig = _import_sparsify()
    coder_cfg = SparseCoderConfig(activation="topk", num_latents=m, k=k)
    train_cfg = TrainConfig(sae=coder_cfg, optimizer="adam", lr=lr)  # only to read its defaults
    auxk_alpha, dead_threshold = train_cfg.auxk_alpha, train_cfg.dead_feature_threshold
    torch.manual_seed(0)
    sae = sparse_coder_mod.SparseCoder(d, coder_cfg, device=dev, dtype=torch.float32)
    opt = torch.optim.Adam(sae.parameters(), lr=lr)
    tokens_since_fired = torch.zeros(sae.num_latents, device=dev, dtype=torch.long)
    did_fire = torch.zeros(sae.num_latents, device=dev, dtype=torch.bool)
    if model_out is not None:
        model_out.append(sae)
    # the Triton decoder only runs on CUDA tensors; elsewhere use sparsify's eager fallback
    decoder = sparse_coder_mod.decoder_impl if dev.type == "cuda" else sparsify_utils.eager_decode
    old_precision = torch.get_float32_matmul_precision()
    fvu_sum = 0.0
    try:
        with _patched(sparse_coder_mod, "decoder_impl", decoder):
            torch.set_float32_matmul_precision("high")
            _sync(dev)
            t0 = time.perf_counter()
            for step, x in enumerate(batches):
                if step == 0:
                    sae.b_dec.data = x.mean(0).to(sae.dtype)
                if coder_cfg.normalize_decoder:
                    sae.set_decoder_norm_to_unit_norm()
                dead_mask = tokens_since_fired > dead_threshold if auxk_alpha > 0 else None
                total_variance = (x - x.mean(0)).pow(2).sum()
                out = sae(x=x, y=x, dead_mask=dead_mask, total_variance=total_variance)
                did_fire[out.latent_indices.flatten()] = True
                fvu_sum += float(out.fvu.detach())
                loss = out.fvu + auxk_alpha * out.auxk_loss + out.multi_topk_fvu / 8
                loss.backward()
                if coder_cfg.normalize_decoder:
                    sae.remove_gradient_parallel_to_decoder_directions()
                opt.step()
                opt.zero_grad()
                with torch.no_grad():
                    tokens_since_fired += x.shape[0]
                    tokens_since_fired[did_fire] = 0
                    did_fire.zero_()
            _sync(dev)
            elapsed = time.perf_counter() - t0
    finally:
        torch.set_float32_matmul_precision(old_precision)
    if fvu_sum != fvu_sum:
        raise RuntimeError("run_sparsify: the loss became NaN")
    return elapsed


def run_dictionary_learning(batches: list[torch.Tensor], d: int, m: int, k: int, lr: float, dev: torch.device,
                            model_out: list | None = None) -> float:
    """saprmarks dictionary_learning ``AutoEncoderTopK`` trained by its own
    ``TopKTrainer.update(step, x)``, once per batch.

    ``TopKTrainer(steps=len(batches), warmup_steps=0, decay_start=None)``: constant lr (its
    default 1000-step warm-up would need more than 1000 steps and give lr 0 at step 0).
    Kept defaults: Adam with its hard-coded ``betas=(0.9, 0.999)``; step 0 sets ``b_dec`` to the
    batch's geometric median (up to 100 reweighting iterations, inside the timed loop); dense
    TopK codes decoded by an ``nn.Linear``; AuxK with ``auxk_alpha=1/32`` on latents that have not
    fired for ``1e7`` tokens (inactive in short runs; it still counts them every step, one host
    sync); gradient parallel to the decoder columns removed, gradient-norm clipping at 1.0,
    decoder columns renormalised to unit norm after every step; ``update`` returns
    ``loss.item()`` (one host sync per step); the inference threshold starts after step 1000.
    ``layer``/``lm_name`` are required bookkeeping fields only (0 / "mmsae-benchmark").
    """
    _check_args("dictionary_learning", batches, d, m, k, lr)
    _, TopKTrainer = _import_dictionary_learning()
    torch.manual_seed(0)
    trainer = TopKTrainer(steps=len(batches), activation_dim=d, dict_size=m, k=k, layer=0,
                          lm_name="mmsae-benchmark", lr=lr, warmup_steps=0, decay_start=None, device=str(dev))
    if model_out is not None:
        model_out.append(trainer.ae)
    losses = []
    _sync(dev)
    t0 = time.perf_counter()
    for step, x in enumerate(batches):
        losses.append(trainer.update(step, x))
    _sync(dev)
    elapsed = time.perf_counter() - t0
    if any(v != v for v in losses):
        raise RuntimeError("run_dictionary_learning: the loss became NaN")
    return elapsed


RUNNERS: dict[str, Callable[..., float]] = {
    "overcomplete": run_overcomplete,
    "saelens": run_saelens,
    "sparsify": run_sparsify,
    "dictionary_learning": run_dictionary_learning,
}
