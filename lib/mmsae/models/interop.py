"""Our SAEs in the formats other SAE libraries read, and theirs in ours.

**SAELens** (``cfg.json`` + ``sae_weights.safetensors``, architecture ``topk``): :func:`export_saelens` writes one
SAELens SAE per modality of a model (a model with one pre-bias per modality, CentredSAE, GSAE, MGSAE, MaskedSAE,
becomes two SAEs that share the encoder and the decoder and differ in ``b_dec``, the pre-bias of that modality);
:func:`import_saelens` reads a SAELens TopK SAE into a :class:`mmsae.models.TopKSAE`. The two encoders agree:

* mmsae: ``z = TopK(ReLU(W_enc (u - b_pre) + b_enc))``, ``u_hat = W_dec^T z + b_pre``;
* SAELens ``topk``: ``z = TopK(ReLU((x - b_dec) @ W_enc + b_enc))`` (with ``apply_b_dec_to_input``),
  ``x_hat = z @ W_dec + b_dec``; so ``W_enc`` is ours transposed, ``b_dec`` our ``b_pre``.

**sparsify** (EleutherAI; ``cfg.json`` + ``sae.safetensors`` with ``encoder.weight``, ``encoder.bias``, ``W_dec``,
``b_dec``): the same algebra with ``encoder.weight`` our ``W_enc``. :func:`export_sparsify` and
:func:`import_sparsify` read and write it from the format alone (the package is not a dependency).

What neither format can hold is refused with :class:`InteropError` naming the file and what is unsupported, before
anything is written: BatchTopK's inference threshold, Matryoshka prefixes, the modality-specific pair of SAEs,
SharedSupport's pair encoding; on import, SAELens architectures other than ``topk``, activation normalisation,
``rescale_acts_by_decoder_norm``, and widths that do not match their weights.

    python -m mmsae.models.interop export-saelens runs/smoke-synthetic/models/MGSAE/seed0 out/mgsae_saelens
    python -m mmsae.models.interop import-saelens path/to/saelens_sae runs/smoke-synthetic/models/MySAE/seed0
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from ..data.store import make_temp_dir, replace_dir
from .base import Dictionary, SAEConfig, build_model, load_model

__all__ = ["InteropError", "export_saelens", "import_saelens", "export_sparsify", "import_sparsify", "main"]

SAELENS_CFG, SAELENS_WEIGHTS = "cfg.json", "sae_weights.safetensors"
SPARSIFY_CFG, SPARSIFY_WEIGHTS = "cfg.json", "sae.safetensors"
EXPORTABLE = ("topk", "group_sparse")
MODALITY_NAMES = ("image", "text")


class InteropError(ValueError):
    """A model or a file another library wrote that this conversion cannot represent; nothing was written."""


def _check_exportable(model: Dictionary, fmt: str) -> SAEConfig:
    cfg = model.config
    if cfg.arch not in EXPORTABLE:
        raise InteropError(f"{fmt}: a {cfg.arch!r} model cannot be written as a TopK SAE (supported: "
                           f"{', '.join(EXPORTABLE)}: the pooled SAE and the centred / group-sparse ones)")
    return cfg


def _atomic_dir(dest: Path, write) -> Path:
    """Write a folder under a temporary name beside ``dest`` and move it in place (the store's
    :func:`~mmsae.data.store.make_temp_dir` / :func:`~mmsae.data.store.replace_dir`): a failure leaves nothing. A
    ``dest`` that holds files is refused, so nothing a user had is replaced."""
    dest = Path(dest)
    if dest.exists() and any(dest.iterdir()):
        raise InteropError(f"{dest}: exists and is not empty; choose a new folder")
    tmp = make_temp_dir(dest.parent, f".{dest.name}.")
    try:
        write(tmp)
        replace_dir(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return dest


def _weights(model: Dictionary) -> dict[str, torch.Tensor]:
    return {k: v.detach().float().cpu().contiguous() for k, v in model.state_dict().items()}


def _save_new(model: Dictionary, dest: Path) -> None:
    """``model.save`` (atomic itself) into a folder that is new or empty."""
    if dest.exists() and any(dest.iterdir()):
        raise InteropError(f"{dest}: exists and is not empty; choose a new folder")
    model.save(dest)


def export_saelens(model: Dictionary | str | Path, dest: str | Path, model_name: str = "mmsae") -> list[Path]:
    """Write ``model`` as SAELens TopK SAEs: ``dest`` itself for a pooled SAE (one pre-bias), else one sub-folder
    per modality (``image``, ``text``). Returns the SAE folders."""
    if not isinstance(model, Dictionary):
        model = load_model(model)
    cfg = _check_exportable(model, "SAELens")
    w = _weights(model)
    n = w["b_pre"].shape[0]
    folders = [Path(dest)] if n == 1 else [Path(dest) / MODALITY_NAMES[i] for i in range(n)]

    def write(root: Path) -> None:
        for i in range(n):
            out = root if n == 1 else root / MODALITY_NAMES[i]
            out.mkdir(parents=True, exist_ok=True)
            save_file({"W_enc": w["W_enc"].t().contiguous(), "b_enc": w["b_enc"], "W_dec": w["W_dec"],
                       "b_dec": w["b_pre"][i].contiguous()}, str(out / SAELENS_WEIGHTS))
            meta = {"model_name": model_name, "hook_name": f"mmsae.{MODALITY_NAMES[i] if n > 1 else 'pooled'}",
                    "hook_head_index": None, "prepend_bos": False, "dataset_path": None, "context_size": None,
                    "sae_lens_training_version": None}
            (out / SAELENS_CFG).write_text(json.dumps({
                "architecture": "topk", "d_in": cfg.d, "d_sae": cfg.m, "k": cfg.k, "dtype": "float32",
                "device": "cpu", "apply_b_dec_to_input": True, "normalize_activations": "none",
                "reshape_activations": "none", "rescale_acts_by_decoder_norm": False, "metadata": meta,
                "mmsae": {"arch": cfg.arch, "modality": i, "n_modalities": n}}, indent=1))

    _atomic_dir(Path(dest), write)
    return folders


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise InteropError(f"{path}: not found (expected {path.name} beside the weights)") from None
    except json.JSONDecodeError as e:
        raise InteropError(f"{path}: not valid JSON ({e})") from None


def _read_weights(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise InteropError(f"{path}: not found")
    try:
        return load_file(str(path))
    except Exception as e:  # noqa: BLE001 - any unreadable file is the same problem for the user
        raise InteropError(f"{path}: not a readable safetensors file ({e})") from None


def _topk_model(d: int, m: int, k: int, W_enc: torch.Tensor, b_enc: torch.Tensor, W_dec: torch.Tensor,
                b_pre: torch.Tensor, where: Path) -> Dictionary:
    shapes = {"W_enc (ours: m x d)": (W_enc.shape, (m, d)), "b_enc": (b_enc.shape, (m,)),
              "W_dec": (W_dec.shape, (m, d)), "b_dec": (b_pre.shape, (d,))}
    bad = [f"{n} is {tuple(s)}, expected {e}" for n, (s, e) in shapes.items() if tuple(s) != e]
    if bad:
        raise InteropError(f"{where}: weights do not match d_in = {d}, d_sae = {m}: {'; '.join(bad)}")
    if not 0 < k <= m:
        raise InteropError(f"{where}: k = {k} must be between 1 and d_sae = {m}")
    model = build_model(SAEConfig(arch="topk", d=d, m=m, k=k, n_modalities=1))
    with torch.no_grad():
        model.W_enc.copy_(W_enc.float())
        model.b_enc.copy_(b_enc.float())
        model.W_dec.copy_(W_dec.float())
        model.b_pre.copy_(b_pre.float()[None])
    return model.eval()


def import_saelens(src: str | Path, dest: str | Path | None = None) -> Dictionary:
    """A SAELens TopK SAE folder (``cfg.json`` + ``sae_weights.safetensors``) as an mmsae TopK SAE, saved to ``dest``
    when given (the folder notebook 04 reads: ``runs/<profile>-<data>/models/<name>/seed<k>``)."""
    src = Path(src)
    cfg = _read_json(src / SAELENS_CFG)
    arch = cfg.get("architecture", "standard")
    if arch != "topk":
        raise InteropError(f"{src / SAELENS_CFG}: architecture {arch!r} is not supported (only 'topk': the pooled "
                           "TopK SAE of the paper's baseline)")
    if cfg.get("normalize_activations", "none") not in ("none", None):
        raise InteropError(f"{src / SAELENS_CFG}: normalize_activations = {cfg['normalize_activations']!r} is not "
                           "supported (only 'none': the embeddings are used as they are)")
    if cfg.get("rescale_acts_by_decoder_norm"):
        raise InteropError(f"{src / SAELENS_CFG}: rescale_acts_by_decoder_norm is not supported")
    if cfg.get("reshape_activations", "none") not in ("none", None):
        raise InteropError(f"{src / SAELENS_CFG}: reshape_activations = {cfg['reshape_activations']!r} is not "
                           "supported")
    try:
        d, m, k = int(cfg["d_in"]), int(cfg["d_sae"]), int(cfg["k"])
    except (KeyError, TypeError, ValueError) as e:
        raise InteropError(f"{src / SAELENS_CFG}: needs d_in, d_sae and k ({e})") from None
    w = _read_weights(src / SAELENS_WEIGHTS)
    missing = [n for n in ("W_enc", "b_enc", "W_dec", "b_dec") if n not in w]
    if missing:
        raise InteropError(f"{src / SAELENS_WEIGHTS}: missing {', '.join(missing)}")
    W_enc, b_enc, b_dec = w["W_enc"].float(), w["b_enc"].float(), w["b_dec"].float()
    if W_enc.shape != (d, m):
        raise InteropError(f"{src / SAELENS_WEIGHTS}: W_enc is {tuple(W_enc.shape)}, expected (d_in, d_sae) = "
                           f"{(d, m)}")
    if not cfg.get("apply_b_dec_to_input", True):  # x @ W_enc + b_enc = (x - b_dec) @ W_enc + (b_enc + b_dec @ W_enc)
        b_enc = b_enc + b_dec @ W_enc
    model = _topk_model(d, m, k, W_enc.t(), b_enc, w["W_dec"].float(), b_dec, src / SAELENS_WEIGHTS)
    if dest is not None:
        _save_new(model, Path(dest))
    return model


def export_sparsify(model: Dictionary | str | Path, dest: str | Path) -> list[Path]:
    """Write ``model`` in sparsify's layout (one folder per modality for a model with one pre-bias per modality)."""
    if not isinstance(model, Dictionary):
        model = load_model(model)
    cfg = _check_exportable(model, "sparsify")
    w = _weights(model)
    n = w["b_pre"].shape[0]
    folders = [Path(dest)] if n == 1 else [Path(dest) / MODALITY_NAMES[i] for i in range(n)]

    def write(root: Path) -> None:
        for i in range(n):
            out = root if n == 1 else root / MODALITY_NAMES[i]
            out.mkdir(parents=True, exist_ok=True)
            save_file({"encoder.weight": w["W_enc"], "encoder.bias": w["b_enc"], "W_dec": w["W_dec"],
                       "b_dec": w["b_pre"][i].contiguous()}, str(out / SPARSIFY_WEIGHTS))
            (out / SPARSIFY_CFG).write_text(json.dumps({
                "activation": "topk", "expansion_factor": max(1, cfg.m // cfg.d), "normalize_decoder": True,
                "num_latents": cfg.m, "k": cfg.k, "multi_topk": False, "skip_connection": False, "transcode": False,
                "d_in": cfg.d}, indent=1))

    _atomic_dir(Path(dest), write)
    return folders


def import_sparsify(src: str | Path, dest: str | Path | None = None) -> Dictionary:
    """A sparsify SAE folder (``cfg.json`` + ``sae.safetensors``) as an mmsae TopK SAE."""
    src = Path(src)
    cfg = _read_json(src / SPARSIFY_CFG)
    for key in ("skip_connection", "transcode", "multi_topk"):
        if cfg.get(key):
            raise InteropError(f"{src / SPARSIFY_CFG}: {key} is not supported (only a plain TopK SAE)")
    if cfg.get("activation", "topk") != "topk":
        raise InteropError(f"{src / SPARSIFY_CFG}: activation {cfg['activation']!r} is not supported (only 'topk')")
    w = _read_weights(src / SPARSIFY_WEIGHTS)
    missing = [n for n in ("encoder.weight", "encoder.bias", "W_dec", "b_dec") if n not in w]
    if missing:
        raise InteropError(f"{src / SPARSIFY_WEIGHTS}: missing {', '.join(missing)}")
    m, d = w["encoder.weight"].shape
    try:
        k = int(cfg["k"])
    except (KeyError, TypeError, ValueError):
        raise InteropError(f"{src / SPARSIFY_CFG}: needs k") from None
    if int(cfg.get("d_in", d)) != d or int(cfg.get("num_latents", m) or m) != m:
        raise InteropError(f"{src / SPARSIFY_CFG}: d_in / num_latents ({cfg.get('d_in')}, {cfg.get('num_latents')}) "
                           f"do not match encoder.weight {tuple(w['encoder.weight'].shape)}")
    model = _topk_model(d, m, k, w["encoder.weight"].float(), w["encoder.bias"].float(), w["W_dec"].float(),
                        w["b_dec"].float(), src / SPARSIFY_WEIGHTS)
    if dest is not None:
        _save_new(model, Path(dest))
    return model


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m mmsae.models.interop", description=__doc__.split("\n\n")[0])
    p.add_argument("command", choices=["export-saelens", "import-saelens", "export-sparsify", "import-sparsify"])
    p.add_argument("src", help="the model folder to read")
    p.add_argument("dest", help="the folder to write (new or empty)")
    a = p.parse_args(argv)
    try:
        if a.command == "export-saelens":
            out = export_saelens(a.src, a.dest)
        elif a.command == "export-sparsify":
            out = export_sparsify(a.src, a.dest)
        elif a.command == "import-saelens":
            import_saelens(a.src, a.dest)
            out = [a.dest]
        else:
            import_sparsify(a.src, a.dest)
            out = [a.dest]
    except (InteropError, FileNotFoundError) as e:  # a missing mmsae checkpoint is a CheckpointError (FileNotFoundError)
        p.exit(2, f"error: {e}\n")
    print("wrote " + ", ".join(str(o) for o in out))
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
