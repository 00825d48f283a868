"""scripts/peers.py: the benchmark's peer SAE trainers (overcomplete, SAELens, sparsify,
dictionary_learning) and scripts/setup_bench_env.sh, the separate env they live in.

Runs in both envs: in the main .venv the peers are absent and every runner test is skipped
(peer_status must then give a reason for each); in .venv-bench the runners are exercised.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))

import peers  # noqa: E402


@pytest.fixture(scope="module")
def status():
    return peers.peer_status()


def test_peer_lists_agree(status):
    assert peers.PEERS == ["overcomplete", "saelens", "sparsify", "dictionary_learning"]
    assert list(peers.RUNNERS) == peers.PEERS
    assert set(status) == set(peers.PEERS) == set(peers.PEER_MODULES) == set(peers.PEER_DISTRIBUTIONS)


def test_status_gives_a_reason_for_every_peer_not_installed(status):
    for peer in peers.PEERS:
        installed = importlib.util.find_spec(peers.PEER_MODULES[peer]) is not None
        if not installed:
            assert isinstance(status[peer], str) and "not installed" in status[peer], (peer, status[peer])
            assert "setup_bench_env.sh" in status[peer]
            assert peers.peer_versions()[peer] is None
        elif status[peer] is not None:  # installed but broken: the import error is the reason
            assert status[peer].startswith("import failed:"), (peer, status[peer])


def test_status_reports_an_import_error_as_the_reason(monkeypatch):
    def broken():
        raise ImportError("pyarrow requires NumPy 2.0 or newer, found 1.26.4")

    def missing_dependency():
        raise ModuleNotFoundError("No module named 'pyarrow'", name="pyarrow")

    monkeypatch.setitem(peers._IMPORTERS, "saelens", broken)
    monkeypatch.setitem(peers._IMPORTERS, "sparsify", missing_dependency)
    st = peers.peer_status()
    assert "ImportError" in st["saelens"] and "NumPy 2.0" in st["saelens"]
    assert "pyarrow" in st["sparsify"] and "not installed" not in st["sparsify"]


def test_runner_rejects_bad_batches():
    dev = torch.device("cpu")
    with pytest.raises(ValueError, match="empty"):
        peers.run_overcomplete([], 32, 128, 4, 1e-3, dev)
    with pytest.raises(ValueError, match=r"batches\[0\].*\(rows, 32\)"):
        peers.run_saelens([torch.zeros(8, 16)], 32, 128, 4, 1e-3, dev)
    with pytest.raises(ValueError, match="k <= m"):
        peers.run_sparsify([torch.zeros(8, 32)], 32, 8, 16, 1e-3, dev)


class _SnapshotList(list):
    """Records the module's weights at the moment the runner hands it over (before training)."""

    def append(self, module):
        self.initial = {n: p.detach().clone() for n, p in module.named_parameters()}
        super().append(module)


@pytest.mark.parametrize("peer", ["overcomplete", "saelens", "sparsify", "dictionary_learning"])
def test_runner_trains_the_peer_model(peer, status):
    if status[peer] is not None:
        pytest.skip(f"{peer}: {status[peer]}")
    d, m, k = 32, 128, 4
    g = torch.Generator().manual_seed(0)
    batches = [torch.randn(16, d, generator=g) for _ in range(2)]
    out = _SnapshotList()
    seconds = peers.RUNNERS[peer](batches, d, m, k, 1e-2, torch.device("cpu"), model_out=out)
    assert isinstance(seconds, float) and seconds > 0
    assert len(out) == 1
    trained = dict(out[0].named_parameters())
    # the encoder weight (m x d) moves only through optimiser steps in all four peers
    enc = [n for n, p in trained.items() if "enc" in n.lower() and p.ndim == 2]
    assert len(enc) == 1 and tuple(trained[enc[0]].shape) in {(m, d), (d, m)}, enc
    assert not torch.equal(trained[enc[0]].detach(), out.initial[enc[0]]), f"{peer}: encoder weight unchanged"
    assert all(torch.isfinite(p).all() for p in trained.values())


def test_setup_bench_env_script_is_executable_and_makes_venv_bench():
    script = ROOT / "scripts" / "setup_bench_env.sh"
    assert os.access(script, os.X_OK), f"{script} is not executable"
    text = script.read_text()
    assert ".venv-bench" in text and "bench-constraints.txt" in text and "requirements-lock.txt" in text
    constraints = (ROOT / "scripts" / "bench-constraints.txt").read_text()
    for dist in peers.PEER_DISTRIBUTIONS.values():
        assert f"\n{dist}==" in constraints, f"scripts/bench-constraints.txt does not pin {dist}"
    assert ".venv-bench/" in (ROOT / ".gitignore").read_text().splitlines()
