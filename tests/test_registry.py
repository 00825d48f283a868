"""One method record (mmsae.models.registry) is read by the comparison, the command-line presets, the benchmark
and the figures: a toy method, one model file's worth of class plus one record, shows up in all of them."""

import importlib
import sys
from pathlib import Path

import numpy as np
import pytest

from mmsae.models import SAEConfig, base, registry
from mmsae.models.topk import TopKSAE
from mmsae.study import experiments as ex
from mmsae.study import methods as M
from mmsae.study import plots

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def toy():
    """The toy's model file: a TopK SAE whose encoder output is halved, under its own arch; and its record."""

    @base.register("toy_halftopk")
    class HalfTopK(TopKSAE):
        pass

    rec = registry.register(registry.Method(
        "ToySAE", lambda P, ov: SAEConfig(arch="toy_halftopk", d=int(ov.get("d", P.get("synthetic_d", 8))),
                                          m=int(ov.get("m", P["m"])), k=int(ov.get("k", P["k"]))),
        "#123456", "a toy method for the registry test"))
    yield rec
    registry.REGISTRY.pop("ToySAE")
    base.MODEL_REGISTRY.pop("toy_halftopk")


def test_builtin_records_follow_the_names():
    assert registry.names() == M.METHOD_ORDER == list(ex.METHODS)
    assert all(registry.get(n).description for n in M.METHOD_ORDER)
    assert len({registry.get(n).color for n in M.METHOD_ORDER}) == len(M.METHOD_ORDER)
    assert registry.by_cli("topk").name == M.SAE and registry.by_cli("mgsae").name == M.MGSAE
    with pytest.raises(ValueError, match="already registered"):
        registry.register(registry.get(M.SAE))


def test_a_toy_method_is_one_record(toy, tmp_path):
    from mmsae.data.store import PairedEmbeddings
    from mmsae.train import cli

    P = {"m": 16, "k": 2, "synthetic_d": 8, "dead_after": 100, "steps": 20, "batch_size": 16, "lr": 1e-3,
         "seeds": [0], "tensorboard": False}
    assert "ToySAE" in ex.METHODS and ex.method_config("ToySAE", P, d=8).arch == "toy_halftopk"
    rng = np.random.default_rng(0)
    x = rng.standard_normal((64, 8)).astype(np.float32)
    pairs = PairedEmbeddings(x / np.linalg.norm(x, axis=1, keepdims=True), x / np.linalg.norm(x, axis=1,
                                                                                               keepdims=True))
    model = ex.train_method("ToySAE", pairs, P, seed=0, out_dir=tmp_path, progress=False, device="cpu")
    assert model.config.arch == "toy_halftopk" and (tmp_path / "ToySAE" / "seed0" / "config.json").exists()
    assert plots.model_color("ToySAE") == "#123456"
    args = cli.main.__globals__["argparse"].Namespace(preset="toysae", d=8, m=16, k=2)
    assert cli._build(args).config.arch == "toy_halftopk"
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        bench = importlib.import_module("benchmark")
        assert bench.methods()["toysae"] == "ToySAE"
        assert bench.method_config("toysae", 8, 16, 2).arch == "toy_halftopk"
    finally:
        sys.path.remove(str(ROOT / "scripts"))
