"""Data-parallel training: 2 CPU processes (gloo) end with the weights of 1 process on the
same global batch.

Tolerance: max |w_ddp - w_single| <= 1e-5 + 1e-4 |w_single| for every parameter (the two
runs sum the batch gradient in a different order, float32); the dead-latent counters
(``since_fired``) are equal exactly.
"""

from __future__ import annotations

import socket

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from mmsae.models import GroupSparseSAE, TopKSAE, SAEConfig, mgsae_config
from mmsae.train import TrainConfig, train

STEPS, BATCH = 8, 32


def _data(n=256, d=16):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((n, d)).astype(np.float32)
    y = (x + 0.3 * rng.standard_normal((n, d))).astype(np.float32)
    return x, y


def _model(which: str):
    torch.manual_seed(0)
    if which == "topk":
        # auxk off: AuxK normalises by the shard's residual variance (documented difference)
        return TopKSAE(SAEConfig(d=16, m=64, k=4, auxk_coef=0.0, dead_after=100))
    return GroupSparseSAE(mgsae_config(d=16, m=64, k=4, auxk_coef=0.0, dead_after=100))


def _cfg() -> TrainConfig:
    return TrainConfig(steps=STEPS, batch_size=BATCH, lr=3e-3, warmup_steps=2, log_every=4, progress=False,
                       device="cpu")


def _worker(rank: int, world: int, port: int, out: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        results = {}
        for which in ("topk", "mgsae"):
            model = _model(which)
            if rank == 1:  # a different local init: the loop broadcasts rank 0's weights
                with torch.no_grad():
                    model.W_enc.add_(1.0)
            res = train(model, _data(), _cfg())
            results[which] = {"state": model.state_dict(), "history": res.history}
        if rank == 0:
            torch.save(results, out)
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def ddp_results(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("ddp") / "ddp.pt")
    mp.spawn(_worker, args=(2, _free_port(), out), nprocs=2, join=True)
    return torch.load(out, weights_only=False)


@pytest.mark.parametrize("which", ["topk", "mgsae"])
def test_two_gloo_processes_match_single_process(ddp_results, which):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    got = ddp_results[which]
    try:
        single = _model(which)
        res = train(single, _data(), _cfg())
    finally:
        torch.set_num_threads(threads)
    ref = single.state_dict()
    for k, v in ref.items():
        w = got["state"][k]
        if v.dtype.is_floating_point:
            assert torch.allclose(w, v, rtol=1e-4, atol=1e-5), f"{k}: max diff {(w - v).abs().max():.2e}"
        else:
            assert torch.equal(w, v), k
    # logged (rank-averaged) losses match the single-process ones
    for a, b in zip(got["history"], res.history):
        assert a["step"] == b["step"] and abs(a["loss"] - b["loss"]) < 1e-3 * max(1.0, abs(b["loss"]))
    assert int((ref["since_fired"] > 0).sum()) > 0  # bookkeeping exercised


def test_shard_slice_single_process():
    from mmsae.train import distributed as ddp

    assert ddp.world_size() == 1 and ddp.rank() == 0
    assert ddp.shard_slice(128) == slice(0, 128)
