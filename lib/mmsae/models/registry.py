"""One record per method: everything the study, the command line, the benchmark and the figures need.

A method is a way to configure one of the model classes (``arch``, registered by
:func:`mmsae.models.base.register` in its own file): the pooled TopK SAE, the ladder's rungs, the
paper's GSAE and MGSAE, and the other designs. Its :class:`Method` record holds

* ``name``: how every table and figure calls it;
* ``config(profile, overrides) -> SAEConfig``: its settings under a profile (d, m, K, lambda, ...);
* ``color``: its colour in every figure;
* ``needs``: what it needs to encode one input (``"one modality"``, or ``"a pair"`` for a design
  that reads both members together, so that single-modality metrics do not apply);
* ``description``: one line for tables of methods;
* ``cli``: its lower-case name for ``python -m mmsae.train --preset`` and ``scripts/benchmark.py``.

:data:`REGISTRY` holds the built-in methods in the order of every table (the names are typed once,
in :mod:`mmsae.study.methods`); :func:`register` adds one. Adding a method is a model file (a class
registered under its ``arch``) and one :func:`register` call: the comparison
(:data:`mmsae.study.experiments.METHODS`), the presets, the benchmark and the colours read this
registry (``tests/test_registry.py`` adds a toy method and finds it everywhere).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

from .base import SAEConfig
from .group_sparse import gsae_config, mgsae_config
from .matryoshka import default_prefixes

__all__ = ["Method", "REGISTRY", "register", "get", "names", "config_for", "by_cli", "model_colors", "encodes_pairs",
           "SAE", "CENTRED_SAE", "GSAE", "MGSAE", "MASKED_SAE", "BATCHTOPK", "MATRYOSHKA", "MODALITY_SPECIFIC",
           "SHARED_SUPPORT", "USAE", "CROSSCODER"]

# the names, typed once here for the models package (mmsae.study.methods re-exports them in the same order)
SAE, CENTRED_SAE, GSAE, MGSAE, MASKED_SAE = "SAE", "CentredSAE", "GSAE", "MGSAE", "MaskedSAE"
BATCHTOPK, MATRYOSHKA, MODALITY_SPECIFIC, SHARED_SUPPORT = "BatchTopK", "Matryoshka", "ModalitySpecific", "SharedSupport"
USAE, CROSSCODER = "USAE", "Crosscoder"


@dataclass(frozen=True)
class Method:
    name: str
    config: Callable[[Mapping[str, Any], Mapping[str, Any]], SAEConfig]
    color: str
    description: str
    needs: str = "one modality"
    cli: str | None = None

    @property
    def cli_name(self) -> str:
        return self.cli or self.name.lower()


# --------------------------------------------------------------------------- config builders
def _common(profile: Mapping[str, Any], ov: Mapping[str, Any]) -> dict[str, Any]:
    return dict(d=int(ov.get("d", profile.get("synthetic_d", 512))), m=int(ov.get("m", profile["m"])),
                k=int(ov.get("k", profile["k"])), dead_after=int(ov.get("dead_after", profile["dead_after"])))


_GENERAL = ("auxk_coef", "k_aux", "prebias_init", "extra")


def _rest(ov: Mapping[str, Any], allowed: Sequence[str] = ()) -> dict[str, Any]:
    """The overrides a method accepts beyond d/m/k/dead_after (settings of other methods,
    e.g. ``group_lambda`` for the SAE in the width/K sweep, are ignored)."""
    return {k: v for k, v in ov.items() if k in set(_GENERAL) | set(allowed)}


def _sae(profile, ov):
    return SAEConfig(arch="topk", n_modalities=1, **_common(profile, ov), **_rest(ov))


def _batchtopk(profile, ov):
    return SAEConfig(arch="batchtopk", n_modalities=1, **_common(profile, ov), **_rest(ov))


def _prefixes(profile, m: int) -> list[int]:
    fr = profile.get("matryoshka_fractions")
    if not fr:
        return default_prefixes(m)
    return sorted({max(1, int(round(f * m))) for f in fr} | {m})


def _matryoshka(profile, ov):
    c = _common(profile, ov)
    extra = dict(ov.get("extra") or {})
    extra.setdefault("prefixes", _prefixes(profile, c["m"]))
    rest = {k: v for k, v in _rest(ov).items() if k != "extra"}
    return SAEConfig(arch="matryoshka", n_modalities=1, extra=extra, **c, **rest)


def _gsae(profile, ov):
    return gsae_config(group_lambda=float(ov.get("group_lambda", profile["group_lambda"])), **_common(profile, ov),
                       **_rest(ov))


def _mgsae(profile, ov):
    return mgsae_config(group_lambda=float(ov.get("group_lambda", profile["group_lambda"])),
                        mask_rate=float(ov.get("mask_rate", profile["mask_rate"])),
                        mask_mode=str(ov.get("mask_mode", profile["mask_mode"])), **_common(profile, ov),
                        **_rest(ov))


def _centred_sae(profile, ov):
    """The ladder's second rung: the GSAE architecture (one pre-bias per modality, shared encoder and
    decoder, pairs in each batch) with no group penalty and no mask: a TopK SAE whose only change
    from the pooled SAE is that each modality is centred by its own pre-bias."""
    return gsae_config(group_lambda=0.0, **_common(profile, ov), **_rest(ov))


def _masked_sae(profile, ov):
    """MGSAE without its penalty: centring per modality plus the shared cross-modal mask."""
    return mgsae_config(group_lambda=0.0, mask_rate=float(ov.get("mask_rate", profile["mask_rate"])),
                        mask_mode=str(ov.get("mask_mode", profile["mask_mode"])), **_common(profile, ov), **_rest(ov))


def _modality_specific(profile, ov):
    """Two TopK SAEs sharing the atom budget: ``m`` atoms in all, ``m // 2`` latents per
    modality unless an ``extra={"m_per_side": ...}`` override says otherwise (``m`` gives
    the old full-width SAE per side, ``2m`` atoms); the value is written into ``extra`` so
    the saved config states it."""
    c = _common(profile, ov)
    extra = dict(ov.get("extra") or {})
    extra.setdefault("m_per_side", c["m"] // 2)
    rest = {k: v for k, v in _rest(ov).items() if k != "extra"}
    return SAEConfig(arch="modality_specific", n_modalities=1, extra=extra, **c, **rest)


def _usae(profile, ov):
    """The Universal SAE (:mod:`mmsae.models.usae`): an encoder, a decoder and a pre-bias per modality, one code."""
    return SAEConfig(arch="usae", n_modalities=2, **_common(profile, ov), **_rest(ov))


def _crosscoder(profile, ov):
    """The sparse crosscoder (:mod:`mmsae.models.crosscoder`): one code per pair, an encoder, a decoder and a
    pre-bias per modality, its decoder-norm penalty weighted by the profile's ``group_lambda``."""
    return SAEConfig(arch="crosscoder", n_modalities=2,
                     group_lambda=float(ov.get("group_lambda", profile["group_lambda"])), **_common(profile, ov),
                     **_rest(ov))


def _shared_support(profile, ov):
    """GSAE architecture with SPARC's global TopK (ReLU and TopK of the summed raw
    pre-activations of a pair; :mod:`mmsae.models.shared_support`)."""
    return SAEConfig(arch="shared_support", n_modalities=2, **_common(profile, ov), **_rest(ov))


# --------------------------------------------------------------------------- the registry
REGISTRY: dict[str, Method] = {}


def register(method: Method) -> Method:
    """Add ``method`` (after the built-in ones); its name and its command-line name must be new."""
    if method.name in REGISTRY:
        raise ValueError(f"method {method.name!r} is already registered")
    if method.cli_name in {m.cli_name for m in REGISTRY.values()}:
        raise ValueError(f"command-line name {method.cli_name!r} of {method.name!r} is taken")
    if method.needs not in ("one modality", "a pair"):
        raise ValueError(f"{method.name}: needs must be 'one modality' or 'a pair', got {method.needs!r}")
    REGISTRY[method.name] = method
    return method


for _m in (
    Method(SAE, _sae, "#999999", "TopK SAE on pooled embeddings (the paper's baseline)", cli="topk"),
    Method(CENTRED_SAE, _centred_sae, "#6A3D9A", "the same TopK SAE with one pre-bias per modality (GSAE at lambda 0)",
           cli="centred_sae"),
    Method(GSAE, _gsae, "#0072B2", "shared dictionary, pre-bias per modality, l2,1 penalty over each latent's pair"),
    Method(MGSAE, _mgsae, "#D55E00", "GSAE + one cross-modal random mask per pair"),
    Method(MASKED_SAE, _masked_sae, "#B15928", "CentredSAE + the cross-modal mask (MGSAE at lambda 0)",
           cli="masked_sae"),
    Method(BATCHTOPK, _batchtopk, "#56B4E9", "pooled; TopK over the whole batch, learned threshold at inference"),
    Method(MATRYOSHKA, _matryoshka, "#F0E442", "pooled BatchTopK; nested prefixes of the dictionary each reconstruct"),
    Method(MODALITY_SPECIFIC, _modality_specific, "#009E73",
           "one TopK SAE per modality, latents matched after training (Hungarian, on training pairs)",
           cli="modality_specific"),
    Method(SHARED_SUPPORT, _shared_support, "#CC79A7", "one TopK over the summed pre-activations of a pair",
           cli="shared_support"),
    Method(USAE, _usae, "#882255", "an encoder and a decoder per modality around one code; each code decoded into "
           "both modalities (Thasarathan et al. 2025)"),
    Method(CROSSCODER, _crosscoder, "#44AA99", "one code per pair read from both members, penalised by the sum of its "
           "per-modality decoder norms (Lindsey et al. 2024)", needs="a pair"),
):
    register(_m)


def get(name: str) -> Method:
    if name not in REGISTRY:
        raise ValueError(f"unknown method {name!r}; choose from {list(REGISTRY)}")
    return REGISTRY[name]


def names() -> list[str]:
    """Every registered method, built-in ones first in the order of every table."""
    return list(REGISTRY)


def by_cli(cli_name: str) -> Method:
    for m in REGISTRY.values():
        if m.cli_name == cli_name:
            return m
    raise ValueError(f"unknown method {cli_name!r}; choose from {[m.cli_name for m in REGISTRY.values()]}")


#: the paper's settings where a command line gives only d, m and K (lambda 0.05, mask rate 0.2 per pair)
PAPER_DEFAULTS = {"group_lambda": 0.05, "mask_rate": 0.2, "mask_mode": "pair", "dead_after": SAEConfig.dead_after}


def config_for(name: str, d: int, m: int, k: int, **settings: Any) -> SAEConfig:
    """A method's config from sizes alone (the command line, the benchmark): the paper's lambda and mask rate
    unless ``settings`` say otherwise (``dead_after`` too)."""
    prof = {**PAPER_DEFAULTS, **settings, "synthetic_d": d, "m": m, "k": k}
    return get(name).config(prof, {})


def encodes_pairs(name: str) -> bool:
    """Whether the method ``name`` needs a pair to encode (its single-modality metrics do not apply); False for
    a name that is not registered (a user's or another library's SAE encodes one modality)."""
    m = REGISTRY.get(name)
    return m is not None and m.needs == "a pair"


def model_colors() -> dict[str, str]:
    return {m.name: m.color for m in REGISTRY.values()}
