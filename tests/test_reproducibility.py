"""Same seed, same data, same thread count: bit-identical weights (issue 9, items 6 and determinism)."""

import re
from pathlib import Path

import numpy as np
import pytest
import torch

from mmsae.study import experiments as ex
from mmsae.models import build_model, load_model
from mmsae.study.profiles import get_profile
from mmsae.data.synthetic import make_synthetic
from mmsae.train import train

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def small():
    """Smoke-profile model sizes (d=64, m=256, K=6, batch 128): large enough that torch
    splits the indexed-gather backward over two threads."""
    P = get_profile("smoke")
    pairs = make_synthetic(n_pairs=1500, d=64, n_shared=48, n_image_only=12, n_text_only=12, seed=0).pairs
    return P, pairs


def _same(a: dict, b: dict) -> list[str]:
    return [k for k in a if not torch.equal(a[k], b[k])]


@pytest.mark.parametrize("name", list(ex.METHODS))
def test_build_model_seed_fixes_the_initialisation(small, name):
    P, _ = small
    cfg = ex.method_config(name, P, d=64)
    torch.manual_seed(1)
    state = torch.get_rng_state()
    a = build_model(cfg, seed=0).state_dict()
    assert torch.equal(torch.get_rng_state(), state)  # the global generator is left alone
    torch.rand(1000)  # another global RNG state
    b = build_model(cfg, seed=0).state_dict()
    assert not _same(a, b)
    assert _same(a, build_model(cfg, seed=1).state_dict())
    torch.manual_seed(0)  # what experiments._fit did before: saved models keep their meaning
    assert not _same(a, build_model(cfg).state_dict())


def test_train_seed_after_other_global_rng_use_is_reproducible(small):
    P, pairs = small
    cfg = ex.method_config("MGSAE", P, d=64)
    out = []
    for warm in (0, 7):
        torch.rand(warm)
        out.append(train(build_model(cfg, seed=0), pairs, steps=20, batch_size=64, seed=0, progress=False)
                   .model.state_dict())
    assert not _same(*out)


def test_readme_snippet_is_reproducible_as_written(tmp_path, monkeypatch, small):
    """The README's Python snippet, shrunk (fewer latents and steps), run after two different
    global RNG states, saves identical weights."""
    text = (ROOT / "README.md").read_text()
    snippet = next(b for b in re.findall(r"```python\n(.*?)```", text, re.S) if "build_model" in b)
    small_code = snippet.replace("m=8192, k=32", "m=64, k=4").replace("steps=25_000", "steps=5")
    assert small_code != snippet, "README snippet changed: update this test's substitutions"
    _, pairs = small
    pairs.subset(np.arange(300)).save(tmp_path / "pairs.safetensors")
    monkeypatch.chdir(tmp_path)
    weights = []
    for warm in (0, 13):
        torch.manual_seed(warm)
        exec(compile(small_code.replace('"mgsae"', f'"mgsae{warm}"'), "README.md", "exec"), {})
        weights.append(load_model(tmp_path / f"mgsae{warm}").state_dict())
    assert not _same(*weights)


@pytest.mark.parametrize("name", ["BatchTopK", "ModalitySpecific"])
def test_multithreaded_cpu_training_is_bit_identical(small, two_threads, name):
    """With two intra-op threads the backward of ``W_dec[indices]`` (an accumulating
    ``index_put_``) added rows in a racy order: BatchTopK, Matryoshka, ModalitySpecific and
    SharedSupport came out different on every run. train() now runs torch's deterministic
    algorithms on CPU."""
    P, pairs = small
    cfg = ex.method_config(name, P, d=64)
    runs = [train(build_model(cfg, seed=0), pairs, steps=12, batch_size=128, lr=3e-3, seed=0, progress=False,
                  log_every=3) for _ in range(2)]
    for r in runs[1:]:
        assert not _same(runs[0].model.state_dict(), r.model.state_dict())
        assert [h["loss"] for h in r.history] == [h["loss"] for h in runs[0].history]
    assert not torch.are_deterministic_algorithms_enabled()  # the global setting is restored


@pytest.mark.slow
def test_worker_pool_gives_the_in_process_weights(small, tmp_path):
    """train_methods through two spawned worker processes (one torch thread each) and in
    this process (one thread): the same weights, bit for bit."""
    P, pairs = small
    P = dict(P, steps=40, m=128, k=4)
    names = ["BatchTopK", "MGSAE", "ModalitySpecific"]
    for n_jobs, out in ((2, tmp_path / "pool"), (1, tmp_path / "main")):
        ex.train_methods(names, [0], pairs, P, out, n_jobs=n_jobs, progress=False)
    for name in names:
        a = load_model(tmp_path / "pool" / name / "seed0").state_dict()
        b = load_model(tmp_path / "main" / name / "seed0").state_dict()
        assert not _same(a, b), name
