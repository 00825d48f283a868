"""The models' K-sparse objectives against a dense evaluation of the same objectives.

``TopKSAE.training_loss`` and ``GroupSparseSAE.training_loss`` are the one definition of
their objective and are evaluated with :mod:`mmsae.models.sparse`. The dense forms below
(:func:`dense_topk_loss`, :func:`dense_group_sparse_loss`, :func:`dense_group_l21`) exist
only here, to check them: every ``(B, m)`` matrix is built and autograd goes through it.

Tolerance: losses and every parameter gradient agree to a relative error of 1e-5
(max |g_sparse - g_dense| / max |g_dense|, float32); the same top-K sets are selected.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mmsae.models.sparse import HashMask
from mmsae.models.losses import auxk_loss, group_l21, reconstruction_loss
from mmsae.models import GroupSparseSAE, SAEConfig, TopKSAE, build_model, gsae_config, mgsae_config
from mmsae.models.base import step_stats
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


# ----------------------------------------------------------------------- dense references
def dense_group_l21(z_x: torch.Tensor, z_y: torch.Tensor) -> torch.Tensor:
    """``mean_b sum_i sqrt(z_x,bi^2 + z_y,bi^2)`` on dense ``(B, m)`` codes (subgradient 0 at 0)."""
    return torch.linalg.vector_norm(torch.stack([z_x, z_y], dim=-1), dim=-1).sum(dim=-1).mean()


def _dense_branch(model, u, modality, keep=None):
    """Dense encoder: full ``(B, m)`` ReLU pre-activations in the graph, masked TopK, dense decode."""
    b_pre = model.b_pre[model._mod(modality)]
    pre = torch.relu((u - b_pre) @ model.W_enc.t() + model.b_enc)
    sel = pre if keep is None else pre.masked_fill(~keep, 0.0)
    vals, idx = sel.topk(model.config.k, dim=-1, sorted=False)
    z = torch.zeros_like(pre).scatter(1, idx, vals)
    return pre, vals, idx, z, z @ model.W_dec + b_pre


def _dense_auxk(model, pre, residual, inputs):
    """Top-k_aux of the dead latents' dense pre-activations decode the residual."""
    dead = model.dead_mask()
    n_dead = int(dead.sum())
    if model.config.auxk_coef <= 0 or n_dead == 0:
        return pre.new_zeros(())
    k_aux = min(model.config.k_aux or model.config.d // 2, n_dead)
    v, j = pre.masked_fill(~dead, 0.0).topk(k_aux, dim=-1, sorted=False)
    e_hat = torch.zeros_like(pre).scatter(1, j, v) @ model.W_dec
    return auxk_loss(residual.detach(), e_hat, inputs, n_blocks=2)


def dense_topk_loss(model, x, y, keep=None, group_lambda=None):
    """Dense form of ``TopKSAE.training_loss`` (and, with ``group_lambda``, of GSAE/MGSAE's)."""
    pre_x, vx, ix, zx, x_hat = _dense_branch(model, x, 0, keep)
    pre_y, vy, iy, zy, y_hat = _dense_branch(model, y, 1, keep)
    rec_x, rec_y = reconstruction_loss(x, x_hat), reconstruction_loss(y, y_hat)
    loss, extra = rec_x + rec_y, {}
    if group_lambda is not None:
        extra["group"] = dense_group_l21(zx, zy)
        loss = loss + group_lambda * extra["group"]
    aux = _dense_auxk(model, torch.cat([pre_x, pre_y]), torch.cat([x - x_hat, y - y_hat]), torch.cat([x, y]))
    loss = loss + model.config.auxk_coef * aux
    model._update_firing((vx, ix), (vy, iy), n_samples=2 * x.shape[0])
    return type("Out", (), {"loss": loss, "stats": step_stats(x, y, x_hat, y_hat, rec_x, rec_y, aux=aux, **extra)})


def dense_group_sparse_loss(model, x, y, keep=None):
    """Dense form of ``GroupSparseSAE.training_loss``; the mask (HashMask or bool, or drawn by
    the model's ``draw_mask`` as in training) is densified to ``(B, m)``."""
    if keep is None and model.training and model.config.mask_rate > 0:
        keep = model.draw_mask()
    if keep is not None and not torch.is_tensor(keep):
        keep = keep.dense(x.shape[0], model.config.m)
    return dense_topk_loss(model, x, y, keep, group_lambda=model.config.group_lambda)


def _evaluate(model, x, y, dense: bool, **kw):
    """The model's objective (``dense=False``) or its dense form written above."""
    if not dense:
        return model.training_loss(x, y, **kw)
    fn = dense_group_sparse_loss if isinstance(model, GroupSparseSAE) else dense_topk_loss
    return fn(model, x, y, **kw)


def _loss_and_grads(model, x, y, dense: bool, **kw):
    model.zero_grad(set_to_none=True)
    state = model.since_fired.clone()
    out = _evaluate(model, x, y, dense, **kw)
    out.loss.backward()
    fired = model.since_fired.clone()
    model.since_fired.copy_(state)
    return out, {n: p.grad.detach().clone() for n, p in model.named_parameters()}, fired


def _assert_same(model, x, y, **kw):
    ref, g_ref, f_ref = _loss_and_grads(model, x, y, True, **kw)
    out, g_out, f_out = _loss_and_grads(model, x, y, False, **kw)
    assert torch.allclose(out.loss, ref.loss, rtol=RTOL, atol=1e-6)
    for k in ("rec_x", "rec_y", "ev_x", "ev_y", "aux", "group"):
        if k in ref.stats:
            assert torch.allclose(out.stats[k], ref.stats[k], rtol=RTOL, atol=1e-6), k
    for n in g_ref:
        scale = g_ref[n].abs().max().clamp_min(1e-12)
        err = (g_out[n] - g_ref[n]).abs().max() / scale
        assert err < RTOL, f"{n}: relative gradient error {err:.2e}"
    assert torch.equal(f_out, f_ref)  # same latents fired -> same dead-latent bookkeeping


def _model(cls, cfg, x, y):
    torch.manual_seed(1)
    model = cls(cfg)
    model.init_from_data(x, y)
    model.train()
    model.since_fired[::3] = 10 ** 9  # a third of the latents dead: exercises AuxK
    return model


def test_topk_sparse_matches_dense():
    x, y = _data()
    model = _model(TopKSAE, SAEConfig(d=32, m=256, k=8, k_aux=16), x, y)
    _assert_same(model, x, y)
    assert model.dead_mask().any()


def test_gsae_sparse_matches_dense():
    x, y = _data()
    _assert_same(_model(GroupSparseSAE, gsae_config(d=32, m=256, k=8), x, y), x, y)


@pytest.mark.parametrize("mode", ["pair", "batch"])
def test_mgsae_sparse_matches_dense_same_mask(mode):
    x, y = _data()
    model = _model(GroupSparseSAE, mgsae_config(d=32, m=256, k=8, mask_mode=mode), x, y)
    mask = HashMask(salt=1234, rate=0.2, per_pair=mode == "pair")
    _assert_same(model, x, y, keep=mask)  # the dense form densifies the same mask


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


def test_mask_is_shared_across_pair_in_sparse_selection():
    """Both members of a pair pick their latents among the same surviving latents."""
    x, _ = _data()
    model = _model(GroupSparseSAE, mgsae_config(d=32, m=256, k=8), x, x)
    mask = HashMask(salt=99, rate=0.5)
    from mmsae.models.sparse import fast_branch

    _, _, _, ix, _ = fast_branch(model, x, 0, mask)
    _, _, _, iy, _ = fast_branch(model, x + 0.1, 1, mask)
    dense = mask.dense(x.shape[0], 256)
    assert dense.gather(1, ix).all() and dense.gather(1, iy).all()


def test_group_l21_matches_dense_value_and_gradient():
    g = torch.Generator().manual_seed(0)
    B, K, m = 16, 6, 20
    ix = torch.stack([torch.randperm(m, generator=g)[:K] for _ in range(B)])
    iy = torch.stack([torch.randperm(m, generator=g)[:K] for _ in range(B)])
    vx = torch.rand(B, K, generator=g, dtype=torch.float64).requires_grad_()
    vy = torch.rand(B, K, generator=g, dtype=torch.float64).requires_grad_()
    with torch.no_grad():
        vx[0, 0] = 0.0  # a zero activation: subgradient 0 in both forms
    ix[1, :3], iy[1, :3] = torch.arange(3), torch.arange(3)  # latents shared by a pair
    dense = dense_group_l21(TopKSAE.densify(vx, ix, m), TopKSAE.densify(vy, iy, m))
    sparse = group_l21(vx, ix, vy, iy)
    assert torch.allclose(dense, sparse, rtol=1e-12)
    gd = torch.autograd.grad(dense, (vx, vy))
    gs = torch.autograd.grad(sparse, (vx, vy))
    for a, b in zip(gd, gs):
        assert torch.allclose(a, b, rtol=1e-12, atol=1e-12)


def test_bf16_selection_keeps_float32_values():
    x, y = _data()
    model = _model(TopKSAE, SAEConfig(d=32, m=256, k=8), x, y)
    ref, _, _ = _loss_and_grads(model, x, y, False)
    model.select_dtype = torch.bfloat16
    out, grads, _ = _loss_and_grads(model, x, y, False)
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
    """The training loop with the models' objectives and with their dense forms (the same
    masks: both draw them with ``draw_mask`` from the same seeded generator)."""
    x, y = _train_data()
    finals = {}
    for form in ("dense", "model"):
        torch.manual_seed(0)
        cfg = SAEConfig(d=32, m=128, k=8) if which == "topk" else mgsae_config(d=32, m=128, k=8)
        model = TopKSAE(cfg) if which == "topk" else GroupSparseSAE(cfg)
        if form == "dense":  # the loop calls model.training_loss(x, y, step)
            model.training_loss = lambda xb, yb, step=0, _m=model: _evaluate(_m, xb, yb, True)
        res = train(model, (x, y), TrainConfig(steps=150, batch_size=64, lr=2e-3, warmup_steps=10,
                                               log_every=150, progress=False))
        finals[form] = res.history[-1]
    r, f = finals["dense"], finals["model"]
    tol = 0.01  # float32 summation order only
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


# ----------------------------------------------------------------------- AuxK and firing
def _by_hand_model(arch: str, coef: float = 0.5):
    """d = 2, m = 3, K = 1, k_aux = 1; atoms e0, e1, (0.6, 0.8); encoder = decoder; zero biases.
    Latent 1 is dead before the step."""
    cfg = (SAEConfig(d=2, m=3, k=1, k_aux=1, auxk_coef=coef) if arch == "topk"
           else gsae_config(d=2, m=3, k=1, group_lambda=0.0, k_aux=1, auxk_coef=coef))
    model = (TopKSAE if arch == "topk" else GroupSparseSAE)(cfg).train()
    with torch.no_grad():
        atoms = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]])
        model.W_enc.copy_(atoms)
        model.W_dec.copy_(atoms)
        model.b_enc.zero_()
        model.b_pre.zero_()
    model.since_fired[1] = 10 ** 9
    return model


@pytest.mark.parametrize("arch", ["topk", "gsae"])
@pytest.mark.parametrize("dense", [False, True])
def test_auxk_gao_weight_by_hand(arch, dense):
    """aux = sum over modalities of TV(u) * mean ||e - e_hat||^2 / TV(e) (Gao et al.'s relative weight)."""
    model = _by_hand_model(arch, coef=0.5)
    x = torch.tensor([[1.0, 0.2], [0.2, 1.0]])
    y = torch.tensor([[0.3, 1.0], [1.0, 0.4]])
    out = _evaluate(model, x, y, dense)
    # pre-activations (atoms e0, e1, (0.6, 0.8)) and the TopK (K = 1) latent:
    # x1: [1, 0.2, 0.76] -> 0: x_hat = (1, 0),  e = (0, 0.2)  | x2: [0.2, 1, 0.92] -> 1: x_hat = (0, 1), e = (0.2, 0)
    # y1: [0.3, 1, 0.98] -> 1: y_hat = (0, 1),  e = (0.3, 0)  | y2: [1, 0.4, 0.92] -> 0: y_hat = (1, 0), e = (0, 0.4)
    # rec_x = (0.04 + 0.04) / 2 = 0.04;  rec_y = (0.09 + 0.16) / 2 = 0.125
    # AuxK, dead latent 1 only (k_aux = 1): e_hat = (0, pre_1): x: (0, 0.2), (0, 1); y: (0, 1), (0, 0.4)
    # x: errors 0 and 0.04 + 1 -> mean 0.52; TV(x) = 0.32 (mean (0.6, 0.6)); TV(e_x) = 0.02 (mean (0.1, 0.1))
    # y: errors 0.09 + 1 and 0 -> mean 0.545; TV(y) = 0.2125; TV(e_y) = 0.0625
    aux_x, aux_y = 0.32 * 0.52 / 0.02, 0.2125 * 0.545 / 0.0625  # 8.32, 1.853
    assert out.stats["rec_x"].item() == pytest.approx(0.04, rel=1e-5)
    assert out.stats["rec_y"].item() == pytest.approx(0.125, rel=1e-5)
    assert out.stats["aux"].item() == pytest.approx(aux_x + aux_y, rel=1e-5)
    assert out.loss.item() == pytest.approx(0.04 + 0.125 + 0.5 * (aux_x + aux_y), rel=1e-5)
    # the plain squared error of the fit would be (0.52 + 0.545) = 1.065: ~10x smaller here
    assert out.stats["aux"].item() > 9 * (0.52 + 0.545)


@pytest.mark.parametrize("arch", ["topk", "gsae"])
def test_auxk_of_both_forms_matches_direct_computation_on_a_batch(arch):
    """Random batch with dead latents: AuxK of both forms equals a direct computation in
    Gao et al.'s terms, sum over modalities of ``TV(u) * NMSE(e_hat, e)`` (NMSE as in their
    code: element-mean squared error over that of the residual's batch mean)."""
    x, y = _data()
    cfg = SAEConfig(d=32, m=256, k=8, k_aux=16) if arch == "topk" else gsae_config(d=32, m=256, k=8, k_aux=16)
    model = _model(TopKSAE if arch == "topk" else GroupSparseSAE, cfg, x, y)
    with torch.no_grad():
        dead = model.dead_mask()
        want = 0.0
        for u, mod in ((x, 0), (y, 1)):
            pre = model.pre_activations(u, mod)
            u_hat = model.decode(model.encode(u, mod), mod)
            v, j = pre.masked_fill(~dead, 0.0).topk(16, dim=1)
            e_hat = torch.stack([(v[r, :, None] * model.W_dec[j[r]]).sum(0) for r in range(len(u))])
            e = u - u_hat
            tv_u = u.var(0, unbiased=False).sum()
            nmse = F.mse_loss(e_hat, e) / F.mse_loss(e.mean(0, keepdim=True).expand_as(e), e)
            want += float(tv_u * nmse)
    for dense in (False, True):
        out, _, _ = _loss_and_grads(model, x, y, dense)
        assert out.stats["aux"].item() == pytest.approx(want, rel=1e-5)
        rest = out.stats["rec_x"] + out.stats["rec_y"] + cfg.group_lambda * out.stats.get("group", 0.0)
        assert out.loss.item() == pytest.approx((rest + cfg.auxk_coef * out.stats["aux"]).item(), rel=1e-5)


def _few_positive(model):
    """Every pre-activation negative except latents 3 and 7: 2 of the K = 4 TopK slots hold 0."""
    with torch.no_grad():
        model.b_enc.fill_(-100.0)
        model.b_enc[[3, 7]] = 100.0
    model.since_fired.zero_()
    return model


_FIRING_CONFIGS = {
    "topk": SAEConfig(d=8, m=16, k=4, auxk_coef=0.0),
    "gsae": gsae_config(d=8, m=16, k=4, auxk_coef=0.0),
    "batchtopk": SAEConfig(arch="batchtopk", d=8, m=16, k=4, auxk_coef=0.0),
    "matryoshka": SAEConfig(arch="matryoshka", d=8, m=16, k=4, auxk_coef=0.0, extra={"prefixes": [4, 8, 16]}),
}


@pytest.mark.parametrize("arch,dense", [("topk", False), ("topk", True), ("gsae", False), ("gsae", True),
                                        ("batchtopk", False), ("matryoshka", False)])
def test_zero_valued_topk_slots_are_not_firings(arch, dense):
    """BatchTopK / Matryoshka: 2B * K = 48 entries are kept but only 24 are positive."""
    model = _few_positive(build_model(_FIRING_CONFIGS[arch]).train())
    x, y = _data(n=6, d=8)
    _evaluate(model, x, y, dense)
    # only latents with a value > 0 were reset; the zero-valued slots aged like every other latent
    assert (model.since_fired == 0).nonzero().squeeze(1).tolist() == [3, 7]
    assert int(model.since_fired.max()) == 12


def test_update_firing_value_and_index_forms():
    model = TopKSAE(SAEConfig(d=4, m=6, k=2))
    idx = torch.tensor([[0, 1], [2, 1]])
    model._update_firing((torch.tensor([[0.5, 0.0], [0.0, 0.0]]), idx), n_samples=2)
    assert model.since_fired.tolist() == [0, 2, 2, 2, 2, 2]  # only latent 0 held a positive value
    model._update_firing(idx, n_samples=1)  # bare indices: every slot counts
    assert model.since_fired.tolist() == [0, 0, 0, 3, 3, 3]
