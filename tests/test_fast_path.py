"""The sparse fast path (mmsae.fast) against the dense reference path.

Tolerance: losses and every parameter gradient agree to a relative error of 1e-5
(max |g_fast - g_ref| / max |g_ref|, float32); the same top-K sets are selected.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mmsae.fast import HashMask, group_l21_sparse
from mmsae.losses import group_l21
from mmsae.models import GroupSparseSAE, SAEConfig, TopKSAE, gsae_config, mgsae_config
from mmsae.train import TrainConfig, train

RTOL = 1e-5


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny shapes: one intra-op thread avoids OpenMP overhead on a busy 2-core machine."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _data(n=48, d=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g)
    y = x + 0.5 * torch.randn(n, d, generator=g)
    return x, y


def _loss_and_grads(model, x, y, fast: bool, **kw):
    model.fast_path = fast
    model.zero_grad(set_to_none=True)
    state = model.since_fired.clone()
    out = model.training_loss(x, y, **kw)
    out.loss.backward()
    fired = model.since_fired.clone()
    model.since_fired.copy_(state)
    return out, {n: p.grad.detach().clone() for n, p in model.named_parameters()}, fired


def _assert_same(model, x, y, **kw):
    ref, g_ref, f_ref = _loss_and_grads(model, x, y, False, **kw)
    fast, g_fast, f_fast = _loss_and_grads(model, x, y, True, **kw)
    assert torch.allclose(fast.loss, ref.loss, rtol=RTOL, atol=1e-6)
    for k in ("rec_x", "rec_y", "ev_x", "ev_y", "aux", "group"):
        if k in ref.stats:
            assert torch.allclose(fast.stats[k], ref.stats[k], rtol=RTOL, atol=1e-6), k
    for n in g_ref:
        scale = g_ref[n].abs().max().clamp_min(1e-12)
        err = (g_fast[n] - g_ref[n]).abs().max() / scale
        assert err < RTOL, f"{n}: relative gradient error {err:.2e}"
    assert torch.equal(f_fast, f_ref)  # same latents fired -> same dead-latent bookkeeping


def _model(cls, cfg, x, y):
    torch.manual_seed(1)
    model = cls(cfg)
    model.init_from_data(x, y)
    model.train()
    model.since_fired[::3] = 10 ** 9  # a third of the latents dead: exercises AuxK
    return model


def test_topk_fast_matches_reference():
    x, y = _data()
    model = _model(TopKSAE, SAEConfig(d=32, m=256, k=8, k_aux=16), x, y)
    _assert_same(model, x, y)
    assert model.dead_mask().any()


def test_gsae_fast_matches_reference():
    x, y = _data()
    _assert_same(_model(GroupSparseSAE, gsae_config(d=32, m=256, k=8), x, y), x, y)


@pytest.mark.parametrize("mode", ["pair", "batch"])
def test_mgsae_fast_matches_reference_same_mask(mode):
    x, y = _data()
    model = _model(GroupSparseSAE, mgsae_config(d=32, m=256, k=8, mask_mode=mode), x, y)
    mask = HashMask(salt=1234, rate=0.2, per_pair=mode == "pair")
    _assert_same(model, x, y, keep=mask)  # reference path densifies the same mask


def test_mgsae_dense_mask_and_fallback_rows():
    """A dense keep mask that drops every top candidate of some rows forces the exact fallback."""
    x, y = _data()
    model = _model(GroupSparseSAE, mgsae_config(d=32, m=256, k=8), x, y)
    keep = torch.rand(x.shape[0], 256, generator=torch.Generator().manual_seed(3)) >= 0.2
    with torch.no_grad():
        pre = model.pre_activations(x, 0)
    top = pre[:4].topk(40, dim=-1).indices
    keep[torch.arange(4)[:, None], top] = False
    _assert_same(model, x, y, keep=keep)


def test_hash_mask_properties():
    mask = HashMask(salt=7, rate=0.2)
    dense = mask.dense(512, 1024)
    assert dense.shape == (512, 1024)
    assert abs(1 - dense.float().mean().item() - 0.2) < 0.01  # drop rate
    assert (dense[0] != dense[1]).any()  # a different mask per pair
    assert not torch.equal(dense, HashMask(salt=8, rate=0.2).dense(512, 1024))  # per step
    rows, lat = torch.tensor([[3], [100]]), torch.tensor([[5, 900, 17]])
    assert torch.equal(mask.keep(rows, lat), dense[[3, 100]][:, [5, 900, 17]])
    # one mask for the whole batch
    b = HashMask(salt=7, rate=0.2, per_pair=False)
    kb = b.keep(torch.tensor([[0], [9]]), lat.expand(2, 3))
    assert torch.equal(kb[0], kb[1])
    # data-parallel shards see the global mask
    off = HashMask(salt=7, rate=0.2, row_offset=256)
    assert torch.equal(off.dense(256, 1024), dense[256:])


def test_mask_is_shared_across_pair_in_fast_path():
    """Both members of a pair pick their latents among the same surviving latents."""
    x, _ = _data()
    model = _model(GroupSparseSAE, mgsae_config(d=32, m=256, k=8), x, x)
    mask = HashMask(salt=99, rate=0.5)
    from mmsae.fast import fast_branch

    _, _, _, ix, _ = fast_branch(model, x, 0, mask)
    _, _, _, iy, _ = fast_branch(model, x + 0.1, 1, mask)
    dense = mask.dense(x.shape[0], 256)
    assert dense.gather(1, ix).all() and dense.gather(1, iy).all()


def test_group_l21_sparse_value_and_gradient():
    g = torch.Generator().manual_seed(0)
    B, K, m = 16, 6, 20
    ix = torch.stack([torch.randperm(m, generator=g)[:K] for _ in range(B)])
    iy = torch.stack([torch.randperm(m, generator=g)[:K] for _ in range(B)])
    vx = torch.rand(B, K, generator=g, dtype=torch.float64).requires_grad_()
    vy = torch.rand(B, K, generator=g, dtype=torch.float64).requires_grad_()
    with torch.no_grad():
        vx[0, 0] = 0.0  # a zero activation: subgradient 0 on both paths
    dense = group_l21(TopKSAE.densify(vx, ix, m), TopKSAE.densify(vy, iy, m))
    sparse = group_l21_sparse(vx, ix, vy, iy)
    assert torch.allclose(dense, sparse, rtol=1e-12)
    gd = torch.autograd.grad(dense, (vx, vy))
    gs = torch.autograd.grad(sparse, (vx, vy))
    for a, b in zip(gd, gs):
        assert torch.allclose(a, b, rtol=1e-12, atol=1e-12)


def test_fast_path_skipped_for_overriding_subclass():
    class MyTopK(TopKSAE):
        def topk(self, pre, keep=None):
            return super().topk(pre, keep)

    model = MyTopK(SAEConfig(d=8, m=32, k=4))
    model.train()
    assert not model._use_fast(TopKSAE)
    assert TopKSAE(SAEConfig(d=8, m=32, k=4)).train()._use_fast(TopKSAE)


def test_bf16_selection_keeps_float32_values():
    x, y = _data()
    model = _model(TopKSAE, SAEConfig(d=32, m=256, k=8), x, y)
    ref, _, _ = _loss_and_grads(model, x, y, True)
    model.fast_select_dtype = torch.bfloat16
    out, grads, _ = _loss_and_grads(model, x, y, True)
    assert all(g.dtype == torch.float32 for g in grads.values())
    assert torch.allclose(out.loss, ref.loss, rtol=0.05)


def _train_data(n=1024, d=32, seed=0):
    rng = np.random.default_rng(seed)
    atoms = rng.standard_normal((64, d)).astype(np.float32)
    codes = rng.random((n, 64)).astype(np.float32) * (rng.random((n, 64)) < 0.1)
    x = codes @ atoms
    y = (x + 0.1 * rng.standard_normal((n, d))).astype(np.float32)
    return x, y


@pytest.mark.parametrize("which", ["topk", "mgsae"])
def test_same_metrics_after_short_training(which):
    x, y = _train_data()
    finals = {}
    for path in ("reference", "fast"):
        torch.manual_seed(0)
        cfg = SAEConfig(d=32, m=128, k=8) if which == "topk" else mgsae_config(d=32, m=128, k=8)
        model = TopKSAE(cfg) if which == "topk" else GroupSparseSAE(cfg)
        res = train(model, (x, y), TrainConfig(steps=150, batch_size=64, lr=2e-3, warmup_steps=10,
                                               log_every=150, progress=False, path=path))
        finals[path] = res.history[-1]
    r, f = finals["reference"], finals["fast"]
    # TopK: same computation, float32 summation order only; MGSAE: other mask draws (hash vs rand)
    tol = 0.01 if which == "topk" else 0.03
    for k in ("ev_x", "ev_y"):
        assert abs(r[k] - f[k]) < tol, (k, r[k], f[k])
    assert r["ev_x"] > 0.5


def test_streaming_memmap_matches_in_memory(tmp_path):
    x, y = _train_data(n=512)
    path = tmp_path / "pairs.npy"
    np.save(path, np.stack([x, y]))
    from mmsae.data import load_paired

    mm = load_paired(path, expect_normalized=False, mmap=True)
    assert isinstance(mm.x, np.memmap) or isinstance(mm.x.base, np.memmap)
    weights = []
    for data, stream in (((x, y), False), (mm, None)):  # None: auto-detects the memmap
        torch.manual_seed(0)
        model = GroupSparseSAE(mgsae_config(d=32, m=64, k=4))
        train(model, data, TrainConfig(steps=40, batch_size=32, progress=False, log_every=40, stream=stream,
                                       prefetch=3))
        weights.append({k: v.clone() for k, v in model.state_dict().items()})
    for k in weights[0]:
        assert torch.equal(weights[0][k], weights[1][k]), k
