"""Every method side by side: what notebooks 02-04 call to train, evaluate and sweep.

Methods (:data:`METHODS`, name -> ``fn(profile, overrides) -> SAEConfig``):

==================  ======================  ==============================================
name                arch                    what
==================  ======================  ==============================================
SAE                 ``topk``                TopK SAE on pooled embeddings (paper baseline)
CentredSAE          ``group_sparse``        the same TopK SAE with one pre-bias per modality (lambda 0, no mask)
GSAE                ``group_sparse``        shared dictionary, pre-bias per modality, l2,1 penalty
MGSAE               ``group_sparse``        GSAE + cross-modal random masking
MaskedSAE           ``group_sparse``        CentredSAE + cross-modal random masking (MGSAE at lambda 0)
BatchTopK           ``batchtopk``           TopK over the batch, learned threshold at inference
Matryoshka          ``matryoshka``          BatchTopK with nested prefixes that each reconstruct
ModalitySpecific    ``modality_specific``   one TopK SAE per modality + Hungarian alignment
SharedSupport       ``shared_support``      one TopK over the summed pre-activations of a pair
==================  ======================  ==============================================

* :func:`train_method` trains one method with :func:`mmsae.train.train` (aligning the
  modality-specific SAEs afterwards) and saves it as ``<out_dir>/<name>/seed<k>/``
  with ``train_log.csv`` and ``train_summary.json`` beside the weights. A saved model
  whose configuration, training settings and data fingerprint match is loaded instead
  of retrained, so notebook 04 (and a re-run of 03) reuses what 03 trained. With
  ``tensorboard_dir`` (see :func:`tensorboard_dir`) the training statistics also go to
  TensorBoard event files in ``<tensorboard_dir>/<name>/seed<k>/`` (a reused model is not
  retrained, so it adds none).
* :func:`evaluate_model` is one flat dict of every metric of the comparison table
  (:func:`mmsae.eval.analysis.analyze` plus the training-side dead count and, for the
  modality-specific SAEs, the alignment quality).
* :func:`aggregate_seeds` gives mean and ``<col>_std`` columns over seeds; tables are
  written by :func:`mmsae.study.runs.write_table` (CSV and booktabs LaTeX, atomically).
* Sweeps (:func:`run_sweep` with :data:`SWEEPS`: ``lambda``, ``mask_rate``, ``mask_mode``,
  ``width_k``; :func:`sweep_alpha` regenerates synthetic data per alpha). Sweep models
  live under ``<models_dir>/sweeps/<data>/<arch>-<hash>/seed<k>/`` keyed by a hash of the
  configuration and training settings, so a configuration shared by two sweeps (e.g.
  GSAE at the default lambda = MGSAE at mask rate 0) is trained once.

Sizes are profile keys (``profiles.py``): ``methods``, ``ablation_steps``, ``lambda_grid``,
``mask_grid``, ``mask_modes``, ``expansion_grid``, ``k_grid``, ``alpha_grid``,
``sweep_seeds`` and friends.
"""

from __future__ import annotations

import functools
import hashlib
import json
import multiprocessing as mp
import shlex
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import fields
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from ..data.store import PairedEmbeddings, array_digest, atomic_write
from ..data.synthetic import config_from_profile, make_synthetic
from ..eval.analysis import analyze, mms_reference
from ..models.base import MODEL_REGISTRY, CheckpointError, Dictionary, SAEConfig, build_model, load_model
from ..models import registry
from ..train.loop import TRAIN_SUMMARY, TrainConfig, TrainSummary, seed_everything, train
from ..train.tb import INSTALL_HINT, tensorboard_missing
from .plots import PALETTE, legend_outside, model_color, panel_grid
from . import methods as M
from .methods import METHOD_ORDER

__all__ = [
    "METHODS", "METHOD_ORDER", "SWEEPS", "method_config", "train_method", "evaluate_model", "aggregate_seeds",
    "run_sweep", "sweep_alpha", "comparison_table", "COMPARISON_COLUMNS", "synthetic_split",
    "train_methods", "run_jobs", "add_derived", "plot_sweep", "markdown_table", "SWEEP_METRICS", "ALPHA_METRICS",
    "tensorboard_dir",
]

_SAE_FIELDS = {f.name for f in fields(SAEConfig)}
_TRAIN_FIELDS = {f.name for f in fields(TrainConfig)}


# --------------------------------------------------------------------------- methods
class _Configs(Mapping):
    """name -> ``fn(profile, overrides) -> SAEConfig`` for every method of :data:`mmsae.models.registry.REGISTRY`
    (a live view: a method registered later is here too)."""

    def __getitem__(self, name: str):
        if name not in registry.REGISTRY:
            raise KeyError(name)
        return registry.REGISTRY[name].config

    def __iter__(self):
        return iter(registry.REGISTRY)

    def __len__(self) -> int:
        return len(registry.REGISTRY)


METHODS: Mapping[str, Callable[[Mapping[str, Any], Mapping[str, Any]], SAEConfig]] = _Configs()
if list(METHODS)[: len(METHOD_ORDER)] != METHOD_ORDER:  # pragma: no cover - a registry edit that forgot one side
    raise RuntimeError("the method registry must start with METHOD_ORDER, in that order")


def method_config(name: str, profile: Mapping[str, Any], **overrides: Any) -> SAEConfig:
    """The :class:`SAEConfig` of method ``name`` under ``profile`` (SAEConfig-field overrides)."""
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; choose from {list(METHODS)}")
    bad = set(overrides) - _SAE_FIELDS
    if bad:
        raise ValueError(f"not SAEConfig fields: {sorted(bad)}")
    return METHODS[name](profile, overrides)


# --------------------------------------------------------------------------- training
def _split_overrides(overrides: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    sae, tr = {}, {}
    for k, v in overrides.items():
        if k in _SAE_FIELDS:
            sae[k] = v
        elif k in _TRAIN_FIELDS:
            tr[k] = v
        else:
            raise ValueError(f"unknown override {k!r}: neither an SAEConfig nor a TrainConfig field")
    return sae, tr


def _fingerprint(pairs) -> str:
    """Digest of every value of the training pairs (:func:`mmsae.data.array_digest`, streamed
    in chunks; cached per memory-mapped file): a saved model is reused only on the same data."""
    x, y = (pairs.x, pairs.y) if isinstance(pairs, PairedEmbeddings) else pairs
    h = hashlib.sha256(b"pairs-v2")
    for a in (x, y):
        h.update(array_digest(a).encode())
    return h.hexdigest()[:32]


def _train_config(profile: Mapping[str, Any], seed: int, tr: Mapping[str, Any]) -> TrainConfig:
    base = dict(steps=int(profile["steps"]), batch_size=int(profile["batch_size"]), lr=float(profile["lr"]), seed=seed)
    base.update(tr)
    base["seed"] = seed
    return TrainConfig(**base)


@functools.lru_cache(maxsize=None)
def training_code_version(arch: str = "topk") -> str:
    """Digest of the source files that decide what training ``arch`` produces: the model files its class is built
    from (the modules of its class and of every base class in ``mmsae.models``), the losses, the K-sparse engine
    and the training loop. Part of the reuse key, so a model saved by older code is retrained instead of silently
    reused after its objective or the loop changed, while adding another method's file (or the command line,
    the method records, format conversion) retrains nothing. Computed once per process and arch."""
    import inspect

    here = Path(__file__).resolve().parents[1]
    cls = MODEL_REGISTRY.get(arch)
    model_files = {Path(inspect.getfile(c)).resolve() for c in (cls.__mro__ if cls else ())
                   if c.__module__.startswith("mmsae.models")}
    model_files |= {here / "models" / "base.py", here / "models" / "losses.py"}
    files = sorted(model_files) + sorted((here / "engine").glob("*.py")) \
        + sorted(f for f in (here / "train").glob("*.py") if f.name not in ("cli.py", "__main__.py"))
    h = hashlib.sha256(b"code-v2")
    h.update(arch.encode())
    for f in files:
        if f.exists():
            h.update(f.name.encode())
            h.update(f.read_bytes())
    return h.hexdigest()[:16]


def _train_key(tc: TrainConfig, arch: str = "topk") -> dict[str, Any]:
    """Training settings that change the result (not device/progress/logging), and the
    version of the training code of ``arch`` (:func:`training_code_version`)."""
    d = tc.to_dict()
    key = {k: d[k] for k in ("steps", "batch_size", "lr", "betas", "eps", "warmup_steps", "decay_fraction",
                             "grad_clip", "seed")}
    key["code"] = training_code_version(arch)
    return key


def _try_reuse(path: Path, cfg: SAEConfig, key: dict[str, Any], fp: str) -> Dictionary | None:
    summ = path / TRAIN_SUMMARY
    if not (summ.exists() and (path / "config.json").exists()):
        return None
    try:
        s = json.loads(summ.read_text())
        saved_cfg = json.loads((path / "config.json").read_text())
    except (OSError, ValueError):
        return None
    want = json.loads(json.dumps({**cfg.to_dict(), "arch": cfg.arch}))
    if saved_cfg != want or s.get("train_key") != json.loads(json.dumps(key)) or s.get("data_fingerprint") != fp:
        return None
    try:
        model = load_model(path)
    except CheckpointError:
        return None
    model.train_info = s
    return model


def _fit(name: str, cfg: SAEConfig, data, tc: TrainConfig, path: Path | None, reuse: bool,
         align: bool = True, missing: str | None = None, callback=None) -> Dictionary:
    """Train, or reuse an identical saved run. ``missing`` (load-only): no training; a run
    not on disk raises :class:`CheckpointError` with this hint (the notebook to run).
    ``callback(step, record)``: passed to :func:`mmsae.train.train` (not called on a reuse)."""
    fp = _fingerprint(data)
    key = _train_key(tc, cfg.arch)
    if path is not None and (reuse or missing):
        model = _try_reuse(path, cfg, key, fp)
        if model is not None:
            return model
    if missing:
        raise CheckpointError(f"{path}: no saved {name} seed {tc.seed} for these settings (steps={tc.steps}, "
                              f"lr={tc.lr}); {missing}")
    seed_everything(tc.seed)
    model = build_model(cfg, seed=tc.seed)
    res = train(model, data, tc, callback=None if callback is None else lambda step, rec: callback(model, step, rec))
    alignment = None
    if align and hasattr(model, "align"):
        x, y = (data.x, data.y) if isinstance(data, PairedEmbeddings) else data
        t0 = time.perf_counter()
        alignment = model.align(np.asarray(x), np.asarray(y))
        alignment["wall_time_s"] = time.perf_counter() - t0
    summary = TrainSummary.of(res, tc, method=name, train_key=key, data_fingerprint=fp, alignment=alignment)
    model.train_info = summary.to_dict()
    if path is not None:
        model.save(path)
        if res.history:
            atomic_write(path / "train_log.csv", lambda tmp: pd.DataFrame(res.history).to_csv(tmp, index=False))
        summary.write(path)
    return model


def tensorboard_dir(run_root: str | Path, enabled: bool) -> Path | None:
    """Where the notebooks' models write TensorBoard event files: ``<run_root>/tensorboard``
    when ``enabled`` (the profile's ``tensorboard`` key) and the tensorboard package can be
    imported, else None. Prints the command that shows the curves, or one line saying why
    logging is skipped (a missing package does not stop a run)."""
    if not enabled:
        return None
    why = tensorboard_missing()
    if why is not None:
        print(f"TensorBoard logging skipped: the tensorboard package cannot be imported ({why}); "
              f"install it with {INSTALL_HINT}")
        return None
    root = Path(run_root) / "tensorboard"
    print(f"TensorBoard logging on; watch the training curves live with: tensorboard --logdir {shlex.quote(str(root))}")
    return root


def _log_dir(tensorboard_dir: str | Path | None, name: str, seed: int) -> str | None:
    return str(Path(tensorboard_dir) / name / f"seed{seed}") if tensorboard_dir is not None else None


def train_method(name: str, train_pairs, profile: Mapping[str, Any], seed: int = 0,
                 out_dir: str | Path | None = None, reuse: bool = True, tensorboard_dir: str | Path | None = None,
                 callback=None, **overrides: Any) -> Dictionary:
    """Train method ``name`` (a key of :data:`METHODS`) on ``train_pairs`` with ``profile``'s sizes.

    ``overrides``: :class:`SAEConfig` fields (``m``, ``k``, ``group_lambda``, ``mask_rate``,
    ``extra`` ...) and :class:`~mmsae.train.TrainConfig` fields (``steps``, ``lr``,
    ``device``, ``progress`` ...). ``d`` is the data's. ``callback(model, step, record)`` is called
    at every logged step of a training (not on a reuse). ``ModalitySpecific`` is aligned on
    ``train_pairs`` after training. With ``out_dir`` the model goes to
    ``out_dir/name/seed{seed}`` (with ``train_log.csv``, ``train_summary.json``) and, when
    ``reuse`` and an identical run is there, is loaded instead of retrained. The model's
    ``train_info`` attribute holds the summary (wall time, throughput, alignment). With
    ``tensorboard_dir`` the training writes TensorBoard event files to
    ``tensorboard_dir/name/seed{seed}`` (``TrainConfig.log_dir``)."""
    sae_ov, tr_ov = _split_overrides(overrides)
    if tensorboard_dir is not None:
        tr_ov.setdefault("log_dir", _log_dir(tensorboard_dir, name, seed))
    x = train_pairs.x if isinstance(train_pairs, PairedEmbeddings) else train_pairs[0]
    sae_ov["d"] = int(np.asarray(x[:1]).shape[1])
    cfg = method_config(name, profile, **sae_ov)
    tr_ov.setdefault("desc", f"{name} seed {seed}")
    tc = _train_config(profile, seed, tr_ov)
    path = Path(out_dir) / name / f"seed{seed}" if out_dir is not None else None
    return _fit(name, cfg, train_pairs, tc, path, reuse, callback=callback)


# --------------------------------------------------------------------------- evaluation
def _truth_dict(truth) -> dict[str, Any] | None:
    if truth is None:
        return None
    if isinstance(truth, Mapping):
        return dict(truth)
    return {k: getattr(truth, k) for k in ("atoms_x", "atoms_y", "concept_kind", "codes_x", "codes_y")}


def evaluate_model(model: Dictionary, val_pairs: PairedEmbeddings, ref_x=None, ref_y=None,
                   zero_shot_sets: Mapping[str, Any] | None = None, truth=None, details: dict | None = None,
                   **analyze_kw: Any) -> dict[str, Any]:
    """Every metric of the comparison table for one model on held-out pairs, as one flat dict.

    Keys (from :func:`mmsae.eval.analysis.analyze`): ``image_only``, ``text_only``, ``both``,
    ``dead`` (neuron categories on ``val_pairs``), ``frac_both``; ``mms_{img_img,txt_txt,
    img_txt}_{mean,median,frac_gt_0.5}``; ``{explained_variance,nmse,cosine,mse}_{x,y}``;
    ``{code,recon}_{x2y,y2x}_{R@1,R@5,R@10,MRR}``; ``zs_<set>_{dense,code,recon}`` per
    zero-shot set; ``gt_*`` (:func:`mmsae.eval.metrics.ground_truth_report`) when ``truth`` (a
    :class:`~mmsae.data.synthetic.SyntheticData` of the val pairs or the dict of
    :func:`~mmsae.data.synthetic.load_truth`) is given. Added here: ``dead_train`` (latents dead
    at the end of training), ``mms_reference`` and, for ModalitySpecific, ``n_matched`` and
    ``mean_match_corr``. MMS reference: ``ref_x``/``ref_y`` if given, else the true concept
    codes (synthetic), else the embeddings themselves. Codes of a single modality are
    used throughout (SharedSupport: its single-modality encoder). ``details``, if a dict,
    receives the :class:`~mmsae.eval.analysis.ModelAnalysis` under ``"analysis"``.
    """
    t = _truth_dict(truth)
    if ref_x is None or ref_y is None:
        ref_x, ref_y, kind = mms_reference(val_pairs, t)
    else:
        kind = "given"
    a = analyze(model, val_pairs, ref_x, ref_y, zero_shot_sets, t, **analyze_kw)
    out = dict(a.summary)
    dm = model.dead_mask()
    out["dead_train"] = int(dm.sum()) if dm is not None else -1
    out["mms_reference"] = kind
    # "both" of aligned modality-specific SAEs counts matched latent pairs: true by construction
    out["both_rule"] = getattr(model, "both_rule", "fires on both")
    if hasattr(model, "matched"):
        mt = model.matched.cpu().numpy()
        out["n_matched"] = int(mt.sum())
        mc = model.match_corr.cpu().numpy()
        out["mean_match_corr"] = float(mc[mt].mean()) if mt.any() else float("nan")
    if details is not None:
        details["analysis"] = a
    return out


def aggregate_seeds(df: pd.DataFrame, by: str | Sequence[str], seed_col: str = "seed") -> pd.DataFrame:
    """Mean and sample std (ddof=1; NaN with one seed) of every numeric column over the rows of
    each ``by`` group: column ``c`` holds the mean, ``c_std`` the std, ``n_seeds`` the count.
    Group order follows first appearance; non-numeric columns other than ``by`` are dropped."""
    by = [by] if isinstance(by, str) else list(by)
    num = [c for c in df.columns if c not in by and c != seed_col and pd.api.types.is_numeric_dtype(df[c])
           and not pd.api.types.is_bool_dtype(df[c])]
    g = df.groupby(by, sort=False, dropna=False)
    mean = g[num].mean()
    std = g[num].std(ddof=1).add_suffix("_std")
    out = mean.join(std)
    out["n_seeds"] = g.size()
    cols = [c for pair in zip(num, [f"{c}_std" for c in num]) for c in pair] + ["n_seeds"]
    return out[cols].reset_index()


# --------------------------------------------------------------------------- comparison
COMPARISON_COLUMNS = [
    "image_only", "text_only", "both", "dead", "dead_train",
    "mms_img_img_mean_alive", "mms_txt_txt_mean_alive", "mms_img_txt_mean_alive", "mms_img_txt_mean_all",
    "mms_img_txt_auc", "unimodal_share",
    "explained_variance_x", "explained_variance_y", "shrinkage_x", "shrinkage_y", "dense_latents",
    "recon_x2y_R@1", "recon_x2y_R@10", "recon_x2y_MRR", "recon_y2x_R@1", "recon_y2x_R@10", "recon_y2x_MRR",
    "code_x2y_R@1", "code_x2y_R@10", "code_x2y_MRR", "code_y2x_R@1", "code_y2x_R@10", "code_y2x_MRR",
]


def comparison_table(per_seed: pd.DataFrame, by: str = "model", columns: Sequence[str] | None = None,
                     order: Sequence[str] | None = METHOD_ORDER) -> pd.DataFrame:
    """Mean and std over seeds of the comparison metrics (plus every ``zs_*`` and ``gt_*`` column),
    methods in ``order``."""
    cols = list(columns or COMPARISON_COLUMNS)
    cols += [c for c in per_seed.columns if (c.startswith("zs_") or c.startswith("gt_")) and c not in cols
             and pd.api.types.is_numeric_dtype(per_seed[c])]
    cols = [c for c in cols if c in per_seed.columns]
    agg = aggregate_seeds(per_seed[[by, "seed", *cols]], by)
    if order is not None:
        rank = {n: i for i, n in enumerate(order)}
        agg = agg.sort_values(by, key=lambda s: s.map(lambda v: rank.get(v, len(rank)))).reset_index(drop=True)
    return agg


# --------------------------------------------------------------------------- sweeps
def _sweep_path(models_dir: Path | None, data_tag: str, cfg: SAEConfig, tc: TrainConfig) -> Path | None:
    if models_dir is None:
        return None
    blob = json.dumps({"cfg": cfg.to_dict(), "train": _train_key(tc, cfg.arch)}, sort_keys=True, default=str)
    h = hashlib.sha1(blob.encode()).hexdigest()[:10]
    return Path(models_dir) / "sweeps" / data_tag / f"{cfg.arch}-{h}" / f"seed{tc.seed}"


def _mask_overrides(v):
    return {"mask_rate": float(v)}


def _width_k_overrides(v, profile, d):
    e, k = v
    return {"m": int(round(e * d)), "k": int(k), "group_lambda": float(profile.get("width_k_lambda",
                                                                                  profile["group_lambda"]))}


#: name -> (parameter column(s), profile key of default methods, default grid builder, overrides builder)
SWEEPS: dict[str, dict[str, Any]] = {
    "lambda": {"param": "group_lambda", "methods_key": "lambda_methods",
               "default_methods": list(M.GROUP_SPARSE_METHODS),
               "grid": lambda P: P.get("lambda_grid", [0.0, 0.01, 0.05, 0.2]),
               "overrides": lambda v, P, d: {"group_lambda": float(v)}},
    "mask_rate": {"param": "mask_rate", "methods_key": "mask_methods", "default_methods": [M.MGSAE],
                  "grid": lambda P: P.get("mask_grid", [0.0, 0.1, 0.2, 0.4]),
                  "overrides": lambda v, P, d: _mask_overrides(v)},
    "mask_mode": {"param": "mask_mode", "methods_key": "mask_methods", "default_methods": [M.MGSAE],
                  "grid": lambda P: P.get("mask_modes", ["pair", "batch"]),
                  "overrides": lambda v, P, d: {"mask_mode": str(v)}},
    "k": {"param": "k", "methods_key": "pareto_methods", "default_methods": list(M.LADDER[:4]),
          "grid": lambda P: P.get("pareto_k_grid", [2, 3, 6, 12, 24]),
          "overrides": lambda v, P, d: {"k": int(v)}},
    "width_k": {"param": ("expansion", "k"), "methods_key": "width_k_methods",
                "default_methods": list(M.PAPER_METHODS),
                "grid": lambda P: [(e, k) for e in P.get("expansion_grid", [4, 8, 16])
                                   for k in P.get("k_grid", [16, 32, 64])],
                "overrides": _width_k_overrides},
}


def _iter_bar(items, desc: str, progress: bool, total: int | None = None):
    return tqdm(items, desc=desc, total=total, disable=not progress, dynamic_ncols=True, mininterval=0.5)


# --------------------------------------------------------------------------- job runner
# Small models train fastest one thread each: on the 2 CPU cores of the smoke runs a
# second torch thread buys little and, when the machine is shared, OpenMP spinning can
# slow a step ten-fold. So sweeps run ``n_jobs`` single-threaded worker processes.
_DATA: dict[str, dict[str, Any]] = {}


class _num_threads:
    def __init__(self, n: int | None):
        self.n = n

    def __enter__(self):
        self.old = torch.get_num_threads()
        if self.n:
            torch.set_num_threads(int(self.n))

    def __exit__(self, *exc):
        torch.set_num_threads(self.old)


def _init_worker(datasets: dict[str, dict[str, Any]], threads: int | None) -> None:
    if threads:
        torch.set_num_threads(int(threads))
    _DATA.clear()
    _DATA.update(datasets)


def _run_job(job: dict[str, Any], datasets: dict[str, dict[str, Any]] | None = None) -> dict[str, Any]:
    b = (datasets if datasets is not None else _DATA)[job["data"]]
    cfg, tc = SAEConfig.from_dict(job["cfg"]), TrainConfig(**job["tc"])
    path = Path(job["path"]) if job.get("path") else None
    model = _fit(job["name"], cfg, b["train"], tc, path, reuse=job.get("reuse", True), missing=job.get("missing"))
    info = getattr(model, "train_info", {})
    row = dict(job["meta"])
    row["wall_time_s"] = float(info.get("wall_time_s", float("nan")))
    if job.get("evaluate"):
        row.update(evaluate_model(model, b["val"], b.get("ref_x"), b.get("ref_y"), b.get("zero_shot_sets"),
                                  b.get("truth")))
    return row


def run_jobs(jobs: Sequence[dict[str, Any]], datasets: dict[str, dict[str, Any]], n_jobs: int = 1,
             threads: int | None = 1, progress: bool = True, desc: str = "runs") -> list[dict[str, Any]]:
    """Run training/evaluation jobs, in order of the returned rows; ``n_jobs > 1`` uses that many
    spawned worker processes with ``threads`` torch threads each (the data bundles are sent to
    each worker once). A job: ``name``, ``cfg`` (SAEConfig dict), ``tc`` (TrainConfig dict),
    ``path`` (or None), ``data`` (a key of ``datasets``: ``train``, and for ``evaluate``
    ``val``, ``truth``, ``zero_shot_sets``, ``ref_x``, ``ref_y``), ``meta`` (row fields)."""
    jobs = list(jobs)
    if n_jobs <= 1 or len(jobs) <= 1:
        with _num_threads(threads):
            return [_run_job(j, datasets) for j in _iter_bar(jobs, desc, progress)]
    out: list[dict[str, Any] | None] = [None] * len(jobs)
    with ProcessPoolExecutor(max_workers=min(n_jobs, len(jobs)), mp_context=mp.get_context("spawn"),
                             initializer=_init_worker, initargs=(datasets, threads)) as ex:
        futs = {ex.submit(_run_job, j): i for i, j in enumerate(jobs)}
        for f in _iter_bar(as_completed(futs), desc, progress, total=len(futs)):
            out[futs[f]] = f.result()
    return out  # type: ignore[return-value]


def _job(name: str, cfg: SAEConfig, tc: TrainConfig, path: Path | None, data: str, meta: dict[str, Any],
         evaluate: bool, missing: str | None = None) -> dict[str, Any]:
    return {"name": name, "cfg": cfg.to_dict(), "tc": tc.to_dict(), "path": str(path) if path else None,
            "data": data, "meta": meta, "evaluate": evaluate, "missing": missing}


# --------------------------------------------------------------------------- sweep manifests
TRAIN_NOTEBOOK = "notebooks/03_train_group_sparse"


def sweep_manifest_path(models_dir: str | Path, sweep: str) -> Path:
    """``<models_dir>/sweeps/<sweep>.json``: what notebook 03 trained for ``sweep``."""
    return Path(models_dir) / "sweeps" / f"{sweep}.json"


def write_sweep_manifest(models_dir: str | Path, sweep: str, **settings: Any) -> Path:
    path = sweep_manifest_path(models_dir, sweep)
    path.parent.mkdir(parents=True, exist_ok=True)
    body = json.dumps({"sweep": sweep, **settings}, indent=2, default=lambda v: list(v) if isinstance(v, tuple) else str(v))
    return atomic_write(path, lambda tmp: Path(tmp).write_text(body))


def read_sweep_manifest(models_dir: str | Path | None, sweep: str, hint: str = "") -> dict[str, Any]:
    """The settings notebook 03 trained ``sweep`` with; a missing manifest is a
    :class:`CheckpointError` naming notebook 03 (and ``hint``: the parameters to run it with)."""
    if models_dir is None:
        raise CheckpointError(f"sweep {sweep!r}: no models folder given; run {TRAIN_NOTEBOOK} first {hint}".rstrip())
    path = sweep_manifest_path(models_dir, sweep)
    if not path.is_file():
        raise CheckpointError(f"{path}: missing: sweep {sweep!r} was not trained; run {TRAIN_NOTEBOOK} first "
                              f"{hint}".rstrip())
    m = json.loads(path.read_text())
    m["values"] = [tuple(v) if isinstance(v, list) else v for v in m.get("values", [])]
    return m


def _as_pairs(p) -> PairedEmbeddings:
    if isinstance(p, PairedEmbeddings):
        return PairedEmbeddings(np.asarray(p.x, np.float32), np.asarray(p.y, np.float32), p.labels, None,
                                dict(p.meta), p.source)
    return PairedEmbeddings(np.asarray(p[0], np.float32), np.asarray(p[1], np.float32))


def _bundle(train_pairs, val_pairs=None, truth=None, zero_shot_sets=None, ref_x=None, ref_y=None):
    b: dict[str, Any] = {"train": _as_pairs(train_pairs)}
    if val_pairs is not None:
        b.update(val=_as_pairs(val_pairs), truth=_truth_dict(truth), zero_shot_sets=zero_shot_sets,
                 ref_x=ref_x, ref_y=ref_y)
    return b


def train_methods(names: Sequence[str], seeds: Sequence[int], train_pairs, profile: Mapping[str, Any],
                  out_dir: str | Path, n_jobs: int | None = None, threads: int | None = 1, progress: bool = True,
                  tensorboard_dir: str | Path | None = None, **overrides: Any) -> pd.DataFrame:
    """:func:`train_method` for every ``name x seed`` (saved under ``out_dir/name/seed<k>``,
    reused when already there), ``n_jobs`` at a time (default ``profile["sweep_jobs"]``);
    with ``tensorboard_dir``, TensorBoard event files in ``tensorboard_dir/name/seed<k>``.
    Returns one row per model: ``model``, ``seed``, ``wall_time_s`` (of the training that
    produced the saved model)."""
    sae_ov, tr_ov = _split_overrides(overrides)
    d = int(_as_pairs(train_pairs).dim)
    jobs = []
    for name in names:
        cfg = method_config(name, profile, d=d, **sae_ov)
        for s in seeds:
            tc = _train_config(profile, s, {"progress": False, "log_dir": _log_dir(tensorboard_dir, name, s), **tr_ov})
            jobs.append(_job(name, cfg, tc, Path(out_dir) / name / f"seed{s}", "main",
                             {"model": name, "seed": s}, False))
    rows = run_jobs(jobs, {"main": _bundle(train_pairs)}, n_jobs or int(profile.get("sweep_jobs", 1)), threads,
                    progress, desc="train methods")
    return pd.DataFrame(rows)


def run_sweep(sweep: str, train_pairs, val_pairs, profile: Mapping[str, Any], *,
              methods: Sequence[str] | None = None, values: Sequence[Any] | None = None,
              seeds: Sequence[int] | None = None, steps: int | None = None, models_dir: str | Path | None = None,
              data_tag: str = "main", evaluate: bool = True, truth=None, zero_shot_sets=None, ref_x=None,
              ref_y=None, progress: bool = True, n_jobs: int | None = None, threads: int | None = 1,
              train: bool = True, hint: str = "", **train_overrides: Any) -> pd.DataFrame:
    """Train (or reuse) every ``method x value x seed`` of sweep ``sweep`` (a key of
    :data:`SWEEPS`) and, with ``evaluate``, score each with :func:`evaluate_model`.

    Defaults come from ``profile``: the sweep's grid key, ``sweep_seeds`` (else ``seeds``),
    ``ablation_steps`` (else ``steps``), ``sweep_jobs`` worker processes. Returns one row
    per run: ``sweep``, ``model``, the parameter column(s), ``seed``, ``wall_time_s`` and,
    with ``evaluate``, the metrics. ``train_overrides``: TrainConfig fields (``device`` ...).

    ``train=True`` (notebook 03) trains what is missing and writes the sweep's manifest
    (:func:`write_sweep_manifest`) under ``models_dir``; ``train=False`` (notebook 04) only
    loads: the grid, seeds and steps come from that manifest, and a missing manifest or
    model raises :class:`CheckpointError` naming notebook 03 (plus ``hint``).
    """
    if sweep not in SWEEPS:
        raise ValueError(f"unknown sweep {sweep!r}; choose from {list(SWEEPS)}")
    spec = SWEEPS[sweep]
    man = {} if train else read_sweep_manifest(models_dir, sweep, hint)
    methods = list(methods or man.get("methods") or profile.get(spec["methods_key"]) or spec["default_methods"])
    values = list(values if values is not None else man.get("values") or spec["grid"](profile))
    seeds = list(seeds if seeds is not None else man.get("seeds") or profile.get("sweep_seeds", profile["seeds"]))
    steps = int(steps or man.get("steps") or profile.get("ablation_steps", profile["steps"]))
    missing = None if train else f"run {TRAIN_NOTEBOOK} first {hint}".rstrip()
    sweep_lr = float(profile.get("sweep_lr", profile["lr"]))  # short sweep runs may use a larger step size
    d = _as_pairs(train_pairs).dim
    jobs = []
    for mth in methods:
        for v in values:
            cfg = method_config(mth, profile, d=d, **spec["overrides"](v, profile, d))
            param = spec["param"]
            for s in seeds:
                tc = _train_config(profile, s, {"steps": steps, "lr": sweep_lr, "progress": False,
                                                **train_overrides})
                meta: dict[str, Any] = {"sweep": sweep, "model": mth}
                if isinstance(param, tuple):
                    meta.update(dict(zip(param, v)))
                    meta["m"] = cfg.m
                else:
                    meta[param] = v
                meta["seed"] = s
                jobs.append(_job(mth, cfg, tc, _sweep_path(models_dir, data_tag, cfg, tc), "main", meta, evaluate,
                                 missing))
    data = {"main": _bundle(train_pairs, val_pairs if evaluate else None, truth, zero_shot_sets, ref_x, ref_y)}
    rows = run_jobs(jobs, data, n_jobs or int(profile.get("sweep_jobs", 1)), threads, progress, f"sweep {sweep}")
    if train and models_dir is not None:
        write_sweep_manifest(models_dir, sweep, methods=methods, values=values, seeds=seeds, steps=steps)
    return pd.DataFrame(rows)


def synthetic_split(profile: Mapping[str, Any], alpha: float, data_seed: int = 0, n_pairs: int | None = None):
    """Synthetic pairs at concept cosine ``alpha`` with the profile's sizes, split like notebook 01:
    ``(train, val, truth_of_val)`` (``truth_of_val`` a :class:`~mmsae.data.synthetic.SyntheticData`)."""
    n = int(n_pairs or profile.get("alpha_n_pairs", profile["n_pairs"]))
    cfg = config_from_profile(profile, n_pairs=n, alpha=float(alpha), seed=data_seed)
    synth = make_synthetic(cfg)
    perm = np.random.default_rng(data_seed).permutation(n)
    n_val = int(round(n * profile["val_fraction"]))
    tr, va = np.sort(perm[n_val:]), np.sort(perm[:n_val])
    sv = synth.subset(va)
    return synth.pairs.subset(tr), sv.pairs, sv


def sweep_alpha(profile: Mapping[str, Any], *, alphas: Sequence[float] | None = None,
                methods: Sequence[str] | None = None, seeds: Sequence[int] | None = None, steps: int | None = None,
                n_pairs: int | None = None, models_dir: str | Path | None = None, evaluate: bool = True,
                data_seed: int = 0, progress: bool = True, n_jobs: int | None = None, threads: int | None = 1,
                train: bool = True, hint: str = "", **train_overrides: Any) -> pd.DataFrame:
    """The synthetic alpha sweep: for each concept cosine ``alpha`` regenerate the data
    (:func:`synthetic_split`) and train every method; score atom recovery, alignment error
    and collapse (the ``gt_*`` columns) plus every other metric.

    Defaults: ``alpha_grid``, ``alpha_methods`` (else ``methods``), ``sweep_seeds``,
    ``alpha_steps`` (else ``ablation_steps``), ``alpha_n_pairs``, ``sweep_jobs`` from ``profile``.
    ``train``: as in :func:`run_sweep` (manifest ``alpha``; ``False`` only loads)."""
    man = {} if train else read_sweep_manifest(models_dir, "alpha", hint)
    alphas = list(alphas if alphas is not None else man.get("values")
                  or profile.get("alpha_grid", [0.0, 0.25, 0.5, 0.75, 1.0]))
    methods = list(methods or man.get("methods") or profile.get("alpha_methods") or profile.get("methods")
                   or METHOD_ORDER)
    seeds = list(seeds if seeds is not None else man.get("seeds") or profile.get("sweep_seeds", profile["seeds"]))
    steps = int(steps or man.get("steps") or profile.get("alpha_steps", profile.get("ablation_steps", profile["steps"])))
    n_pairs = n_pairs or man.get("n_pairs")
    missing = None if train else f"run {TRAIN_NOTEBOOK} first {hint}".rstrip()
    sweep_lr = float(profile.get("sweep_lr", profile["lr"]))
    data, jobs = {}, []
    for a in alphas:
        key = f"alpha{a:g}"
        tr, va, sv = synthetic_split(profile, a, data_seed, n_pairs)
        zs = {"synthetic_classes": sv.zero_shot_set("synthetic_classes")} if evaluate else None
        data[key] = _bundle(tr, va if evaluate else None, sv, zs)
        for mth in methods:
            cfg = method_config(mth, profile, d=tr.dim)
            for s in seeds:
                tc = _train_config(profile, s, {"steps": steps, "lr": sweep_lr, "progress": False,
                                                **train_overrides})
                jobs.append(_job(mth, cfg, tc, _sweep_path(models_dir, key, cfg, tc), key,
                                 {"sweep": "alpha", "model": mth, "alpha": float(a), "seed": s}, evaluate, missing))
    rows = run_jobs(jobs, data, n_jobs or int(profile.get("sweep_jobs", 1)), threads, progress, "alpha sweep")
    if train and models_dir is not None:
        write_sweep_manifest(models_dir, "alpha", methods=methods, values=alphas, seeds=seeds, steps=steps,
                             n_pairs=int(n_pairs or profile.get("alpha_n_pairs", profile["n_pairs"])))
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------- reporting
#: headline metrics of the ablation / alpha-sweep figures (column -> panel title)
SWEEP_METRICS = {
    "frac_both": "latents firing on both",
    "mms_img_txt_mean_alive": "MMS image-text (alive in both)",
    "ev_mean": "explained variance",
    "recon_x2y_R@1": "retrieval R@1 (image->text)",
    "gt_recovery_mean": "atom recovery (truth)",
}
ALPHA_METRICS = {
    "gt_recovery_mean": "atom recovery",
    "gt_alignment_error": "alignment error",
    "gt_collapse_rate": "collapse rate",
    "ev_mean": "explained variance",
    "recon_x2y_R@1": "retrieval R@1 (image->text)",
}


def add_derived(df: pd.DataFrame) -> pd.DataFrame:
    """Add ``ev_mean`` (mean explained variance of the two modalities) and, with ground truth,
    ``gt_recovery_mean`` (mean atom recovery of the image and text atoms)."""
    df = df.copy()
    if {"explained_variance_x", "explained_variance_y"} <= set(df.columns):
        df["ev_mean"] = (df["explained_variance_x"] + df["explained_variance_y"]) / 2
    if {"gt_recovery_x_mean", "gt_recovery_y_mean"} <= set(df.columns):
        df["gt_recovery_mean"] = (df["gt_recovery_x_mean"] + df["gt_recovery_y_mean"]) / 2
    return df


def plot_sweep(agg: pd.DataFrame, x: str, metrics: Mapping[str, str] | None = None, hue: str = "model",
               xlabel: str | None = None, title: str | None = None):
    """One panel per metric: mean over seeds against ``x`` with +-1 std error bars (``<metric>_std``),
    one line per ``hue`` value (model colours for ``hue="model"``). A non-numeric ``x`` (e.g. the
    mask mode) is drawn as grouped bars."""
    metrics = {k: v for k, v in (metrics or SWEEP_METRICS).items() if k in agg.columns}
    if not metrics:
        raise ValueError(f"none of the metrics are columns of the table: {list(agg.columns)}")
    fig, axes = panel_grid(len(metrics), 2.9, 2.5, max_cols=3, legend_w=1.4)
    numeric = pd.api.types.is_numeric_dtype(agg[x])
    groups = list(agg.groupby(hue, sort=False)) if hue in agg else [("", agg)]
    xs = list(dict.fromkeys(agg[x]))
    for ax, (col, label) in zip(axes, metrics.items()):
        for i, (name, g) in enumerate(groups):
            color = model_color(str(name)) if hue == "model" else PALETTE[i % len(PALETTE)]
            err = g[f"{col}_std"].to_numpy(float) if f"{col}_std" in g else None
            lab = f"{hue}={name}" if hue != "model" else str(name)
            if numeric:
                g = g.sort_values(x)
                err = g[f"{col}_std"].to_numpy(float) if f"{col}_std" in g else None
                ax.errorbar(g[x].to_numpy(float), g[col].to_numpy(float), yerr=err, marker="o", ms=3, capsize=2,
                            color=color, label=lab)
            else:
                w = 0.8 / max(len(groups), 1)
                pos = np.array([xs.index(v) for v in g[x]]) + (i - (len(groups) - 1) / 2) * w
                ax.bar(pos, g[col].to_numpy(float), width=w, yerr=err, capsize=2, color=color, label=lab)
        if not numeric:
            ax.set_xticks(range(len(xs)), [str(v) for v in xs])
        ax.set_title(label, fontsize=9)
        ax.set_xlabel(xlabel or x)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    legend_outside(fig, axes[0], fontsize="small")
    return fig


def markdown_table(agg: pd.DataFrame, columns: Sequence[str], by: str = "model", digits: int = 3,
                   headers: Mapping[str, str] | None = None) -> str:
    """A GitHub-markdown table of ``columns`` as ``mean ± std`` (from ``<col>_std``) per ``by``."""
    headers = dict(headers or {})
    cols = [c for c in columns if c in agg.columns]
    lines = ["| " + " | ".join([by] + [headers.get(c, c) for c in cols]) + " |",
             "|" + "---|" * (len(cols) + 1)]
    for _, r in agg.iterrows():
        cells = [str(r[by])]
        for c in cols:
            v, s = r[c], r.get(f"{c}_std", np.nan)
            count = c in ("image_only", "text_only", "both", "dead", "dead_train")
            fm, fs = ("{:.0f}", "{:.1f}") if count else (f"{{:.{digits}f}}", f"{{:.{digits}f}}")
            if pd.isna(v):  # a metric the model cannot have (a crosscoder's codes of one modality)
                cells.append("n/a")
                continue
            cells.append(fm.format(v) if pd.isna(s) else f"{fm.format(v)} ± {fs.format(s)}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
