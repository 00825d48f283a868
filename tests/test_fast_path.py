"""The models' K-sparse objectives against a dense evaluation of the same objectives.

``TopKSAE.training_loss`` and ``GroupSparseSAE.training_loss`` are the one definition of
their objective and are evaluated with :mod:`mmsae.engine.sparse`. The dense forms below
(:func:`dense_topk_loss`, :func:`dense_group_sparse_loss`, :func:`dense_group_l21`) exist
only here, to check them: every ``(B, m)`` matrix is built and autograd goes through it.
The same holds for BatchTopK, Matryoshka, the modality-specific SAEs and the shared-support
SAE (their dense forms, :func:`dense_batchtopk_loss` and the others, are at the end).

Tolerance: losses and every parameter gradient agree to a relative error of 1e-5
(max |g_sparse - g_dense| / max |g_dense|, float32); the same top-K sets are selected.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mmsae.engine.sparse import HashMask
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


def _dense_auxk(model, pre, residual, inputs, n_blocks=2, W_dec=None):
    """Top-k_aux of the dead latents' dense pre-activations decode the residual (``n_blocks``
    stacked modalities; 1: a single modality) with ``W_dec`` (default the model's)."""
    dead = model.dead_mask()
    n_dead = int(dead.sum())
    if model.config.auxk_coef <= 0 or n_dead == 0:
        return pre.new_zeros(())
    k_aux = min(model.config.k_aux or model.config.d // 2, n_dead)
    v, j = pre.masked_fill(~dead, 0.0).topk(k_aux, dim=-1, sorted=False)
    e_hat = torch.zeros_like(pre).scatter(1, j, v) @ (model.W_dec if W_dec is None else W_dec)
    return auxk_loss(residual.detach(), e_hat, inputs, n_blocks=n_blocks)


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
    return type("Out", (), {"loss": loss, "stats": step_stats(x, y, rec_x, rec_y, aux=aux, **extra)})


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
    from mmsae.engine.sparse import fast_branch

    ix = fast_branch(model, x, 0, mask)[3]
    iy = fast_branch(model, x + 0.1, 1, mask)[3]
    dense = mask.dense(x.shape[0], 256)
    assert dense.gather(1, ix).all() and dense.gather(1, iy).all()


@pytest.mark.parametrize("compiled", [True, False])
def test_group_l21_matches_dense_value_and_gradient(compiled, monkeypatch):
    import mmsae.models.losses as losses

    if not compiled:  # the torch matching (sort + binary search) the GPU uses
        monkeypatch.setattr(losses, "_compiled_match", lambda i_x, i_y: False)
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


# ----------------------------------------------------------------------- every method on the sparse path
# Dense references of BatchTopK, Matryoshka, the modality-specific SAEs and the shared-support
# SAE: the definitions their ``training_loss`` had before the K-sparse evaluation, written
# here with every ``(B, m)`` / ``(2B, m)`` matrix in the autograd graph and dense decodes.
def _dense_pre(model, u, modality):
    """Raw (pre-ReLU) pre-activations ``W_enc (u - b_pre) + b_enc`` in the graph."""
    return (u - model.b_pre[model._mod(modality)]) @ model.W_enc.t() + model.b_enc


def _dense_batch_codes(model, x, y):
    """BatchTopK's training code of the pooled batch: ``(pre, z)``, the ReLU pre-activations
    ``(2B, m)`` and the dense code keeping their ``2B * K`` largest entries. In training mode
    updates the threshold (running mean of the smallest positive kept value; copied at the
    first step) and the firing counters (zero-valued kept entries are not firings)."""
    pre = torch.relu(torch.cat([_dense_pre(model, x, 0), _dense_pre(model, y, 1)]))
    m = model.config.m
    vals, flat = pre.reshape(-1).topk(min(pre.shape[0] * model.config.k, pre.numel()), sorted=False)
    if model.training:
        with torch.no_grad():
            pos = vals[vals > 0]
            if pos.numel():
                if float(model.threshold) < 0:
                    model.threshold.copy_(pos.min())
                else:
                    mom = float(model.config.extra.get("threshold_momentum", 0.01))
                    model.threshold.copy_((1.0 - mom) * model.threshold + mom * pos.min())
        model._update_firing((vals, flat % m), n_samples=pre.shape[0])
    z = torch.zeros_like(pre).reshape(-1).scatter(0, flat, vals).reshape(pre.shape)
    return pre, z


def _pooled_bias(model, b):
    return torch.cat([model.b_pre[model._mod(0)].expand(b, -1), model.b_pre[model._mod(1)].expand(b, -1)])


def dense_batchtopk_loss(model, x, y):
    """Dense form of ``BatchTopKSAE.training_loss``."""
    b = x.shape[0]
    pre, z = _dense_batch_codes(model, x, y)
    u_hat = z @ model.W_dec + _pooled_bias(model, b)
    x_hat, y_hat = u_hat[:b], u_hat[b:]
    rec_x, rec_y = reconstruction_loss(x, x_hat), reconstruction_loss(y, y_hat)
    aux = _dense_auxk(model, pre, torch.cat([x - x_hat, y - y_hat]), torch.cat([x, y]), 2)
    loss = rec_x + rec_y + model.config.auxk_coef * aux
    return type("Out", (), {"loss": loss, "stats": step_stats(x, y, rec_x, rec_y, aux=aux,
                                                              threshold=model.threshold.clone())})


def dense_matryoshka_loss(model, x, y):
    """Dense form of ``MatryoshkaSAE.training_loss``: every prefix decodes the truncated code."""
    b = x.shape[0]
    pre, z = _dense_batch_codes(model, x, y)
    u = torch.cat([x, y])
    recs = [z[:, :p] @ model.W_dec[:p] + _pooled_bias(model, b) for p in model.prefixes]
    terms = [reconstruction_loss(x, r[:b]) + reconstruction_loss(y, r[b:]) for r in recs]
    loss = sum(terms)
    if model.config.extra.get("prefix_reduce", "sum") == "mean":
        loss = loss / len(model.prefixes)
    x_hat, y_hat = recs[-1][:b], recs[-1][b:]
    rec_x, rec_y = reconstruction_loss(x, x_hat), reconstruction_loss(y, y_hat)
    aux = _dense_auxk(model, pre, u - recs[-1], u, 2)
    loss = loss + model.config.auxk_coef * aux
    stats = step_stats(x, y, rec_x, rec_y, aux=aux, threshold=model.threshold.clone(),
                       **{f"rec_prefix{p}": t for p, t in zip(model.prefixes, terms)})
    return type("Out", (), {"loss": loss, "stats": stats})


def dense_modality_specific_loss(model, x, y):
    """Dense form of ``ModalitySpecificSAE.training_loss``: each TopK SAE's own objective on
    its own modality (AuxK of one modality each, firing counted after AuxK)."""
    out = []
    for sae, u in ((model.sae_x, x), (model.sae_y, y)):
        pre = torch.relu(_dense_pre(sae, u, 0))
        vals, idx = pre.topk(sae.config.k, dim=-1, sorted=False)
        u_hat = torch.zeros_like(pre).scatter(1, idx, vals) @ sae.W_dec + sae.b_pre[0]
        rec = reconstruction_loss(u, u_hat)
        aux = _dense_auxk(sae, pre, u - u_hat, u, 1)
        sae._update_firing((vals, idx), n_samples=u.shape[0])
        out.append((rec, aux, u_hat))
    (rec_x, aux_x, x_hat), (rec_y, aux_y, y_hat) = out
    loss = rec_x + rec_y + model.config.auxk_coef * (aux_x + aux_y)
    return type("Out", (), {"loss": loss, "stats": step_stats(x, y, rec_x, rec_y, aux=aux_x + aux_y)})


def dense_shared_support_loss(model, x, y):
    """Dense form of ``SharedSupportSAE.training_loss``: one TopK of ``ReLU(h_x + h_y)`` per
    pair; each member's ReLU value on that support (0 on slots whose summed value is 0)."""
    h_x, h_y = _dense_pre(model, x, 0), _dense_pre(model, y, 1)
    s, idx = torch.relu(h_x + h_y).topk(model.config.k, dim=-1, sorted=False)
    on = (s > 0).to(h_x.dtype)
    vx, vy = torch.relu(h_x.gather(1, idx)) * on, torch.relu(h_y.gather(1, idx)) * on
    x_hat = torch.zeros_like(h_x).scatter(1, idx, vx) @ model.W_dec + model.b_pre[model._mod(0)]
    y_hat = torch.zeros_like(h_y).scatter(1, idx, vy) @ model.W_dec + model.b_pre[model._mod(1)]
    rec_x, rec_y = reconstruction_loss(x, x_hat), reconstruction_loss(y, y_hat)
    aux = _dense_auxk(model, torch.relu(torch.cat([h_x, h_y])), torch.cat([x - x_hat, y - y_hat]),
                             torch.cat([x, y]), 2)
    loss = rec_x + rec_y + model.config.auxk_coef * aux
    model._update_firing((vx, idx), (vy, idx), n_samples=2 * x.shape[0])
    return type("Out", (), {"loss": loss, "stats": step_stats(x, y, rec_x, rec_y, aux=aux)})


def dense_usae_loss(model, x, y):
    """Dense form of ``UniversalSAE.training_loss``: each member's full ``(B, m)`` code from its own encoder,
    decoded by both decoders; AuxK per encoder with its own decoder."""
    out, zs = {}, []
    for mod, u in ((0, x), (1, y)):
        W, b = model._enc(mod)
        pre = torch.relu((u - model.b_pre[mod]) @ W.t() + b)
        v, i = pre.topk(model.config.k, dim=-1, sorted=False)
        z = torch.zeros_like(pre).scatter(1, i, v)
        u_hat = z @ model._dec(mod) + model.b_pre[mod]
        out[mod] = (reconstruction_loss(u, u_hat),
                    reconstruction_loss(y if mod == 0 else x, z @ model._dec(1 - mod) + model.b_pre[1 - mod]),
                    _dense_auxk(model, pre, u - u_hat, u, 1, W_dec=model._dec(mod)))
        zs.append((v, i))
    rec_x, rec_y = out[0][0], out[1][0]
    cross, aux = out[0][1] + out[1][1], out[0][2] + out[1][2]
    model._update_firing(*zs, n_samples=2 * x.shape[0])
    return type("Out", (), {"loss": rec_x + rec_y + cross + model.config.auxk_coef * aux,
                            "stats": step_stats(x, y, rec_x, rec_y, cross=cross, aux=aux)})


_DENSE_FORMS = {"batchtopk": dense_batchtopk_loss, "matryoshka": dense_matryoshka_loss,
                "modality_specific": dense_modality_specific_loss, "shared_support": dense_shared_support_loss,
                "usae": dense_usae_loss}


def _model_with_dead(cfg, x, y):
    """``build_model(cfg)`` in training mode with a third of the latents of every TopK
    dictionary dead (every ``since_fired`` buffer), so that AuxK is active."""
    torch.manual_seed(1)
    model = build_model(cfg)
    model.init_from_data(x, y)
    model.train()
    for name, buf in model.named_buffers():
        if name.endswith("since_fired"):
            buf[::3] = 10 ** 9
    return model


def _run_with_buffers(model, fn, x, y):
    """``fn(model, x, y)`` and its backward: ``(out, grads, buffers after)``; the buffers are
    restored afterwards so that the next evaluation starts from the same state."""
    model.zero_grad(set_to_none=True)
    before = {n: b.clone() for n, b in model.named_buffers()}
    out = fn(model, x, y)
    out.loss.backward()
    after = {n: b.clone() for n, b in model.named_buffers()}
    for n, b in model.named_buffers():
        b.copy_(before[n])
    grads = {n: (torch.zeros_like(p) if p.grad is None else p.grad.detach().clone())
             for n, p in model.named_parameters()}
    return out, grads, after


def _assert_matches_dense_form(model, x, y):
    """Loss, every stat, every parameter gradient and every buffer update of
    ``model.training_loss`` equal those of the dense form (relative 1e-5)."""
    ref, g_ref, b_ref = _run_with_buffers(model, _DENSE_FORMS[model.arch], x, y)
    out, g_out, b_out = _run_with_buffers(model, lambda mdl, a, b: mdl.training_loss(a, b), x, y)
    assert torch.allclose(out.loss, ref.loss, rtol=RTOL, atol=1e-6), (out.loss.item(), ref.loss.item())
    assert set(out.stats) == set(ref.stats)
    for k in ref.stats:
        assert torch.allclose(out.stats[k], ref.stats[k], rtol=RTOL, atol=1e-6), (k, out.stats[k], ref.stats[k])
    for n in g_ref:
        scale = g_ref[n].abs().max().clamp_min(1e-12)
        err = (g_out[n] - g_ref[n]).abs().max() / scale
        assert err < RTOL, f"{n}: relative gradient error {err:.2e}"
    for n in b_ref:
        if b_ref[n].is_floating_point():
            assert torch.allclose(b_out[n], b_ref[n], rtol=RTOL, atol=0.0), (n, b_out[n], b_ref[n])
        else:  # same latents fired -> same dead-latent bookkeeping
            assert torch.equal(b_out[n], b_ref[n]), n
    return ref


# m = 256 (and 512 = 2 x 256 for the modality-specific pair): the numba top-k path engages
# (m a multiple of 64, m / 64 >= 2); m = 16: a tiny dictionary (torch.topk fallback).
_EQUIV_CONFIGS = {
    "batchtopk": (SAEConfig(arch="batchtopk", d=32, m=256, k=8, k_aux=16),
                  SAEConfig(arch="batchtopk", d=32, m=16, k=4)),
    "matryoshka": (SAEConfig(arch="matryoshka", d=32, m=256, k=8, k_aux=16),
                   SAEConfig(arch="matryoshka", d=32, m=16, k=4, extra={"prefixes": [3, 8, 16]})),
    "modality_specific": (SAEConfig(arch="modality_specific", d=32, m=512, k=8, k_aux=16),
                          SAEConfig(arch="modality_specific", d=32, m=32, k=4)),
    "shared_support": (SAEConfig(arch="shared_support", d=32, m=256, k=8, k_aux=16, n_modalities=2),
                       SAEConfig(arch="shared_support", d=32, m=16, k=4, n_modalities=2)),
    "usae": (SAEConfig(arch="usae", d=32, m=256, k=8, k_aux=16, n_modalities=2),
             SAEConfig(arch="usae", d=32, m=16, k=4, n_modalities=2)),
}


@pytest.mark.parametrize("size", ["m256", "m16"])
@pytest.mark.parametrize("arch", ["batchtopk", "matryoshka", "modality_specific", "shared_support", "usae"])
def test_every_method_sparse_matches_dense(arch, size):
    batch = arch in ("batchtopk", "matryoshka")
    # BatchTopK / Matryoshka take the dead set after this step's firing update: with 16 latents
    # a batch of 48 pairs fires them all, so the tiny case uses 6 pairs and damped dead latents
    x, y = _data(n=6) if batch and size == "m16" else _data()
    cfg = _EQUIV_CONFIGS[arch][0 if size == "m256" else 1]
    model = _model_with_dead(cfg, x, y)
    if batch and size == "m16":
        with torch.no_grad():
            model.b_enc[::3] -= 1.0
    assert model.dead_mask().any()
    ref = _assert_matches_dense_form(model, x, y)
    assert float(ref.stats["aux"]) > 0  # AuxK active


@pytest.mark.parametrize("arch", ["batchtopk", "matryoshka"])
def test_batch_methods_threshold_running_mean_matches_dense(arch):
    """The threshold's running-mean branch (a threshold already estimated), and Matryoshka's
    ``prefix_reduce="mean"``."""
    x, y = _data()
    extra = {"threshold_momentum": 0.3}
    if arch == "matryoshka":
        extra["prefix_reduce"] = "mean"
    model = _model_with_dead(SAEConfig(arch=arch, d=32, m=256, k=8, k_aux=16, extra=extra), x, y)
    model.threshold.fill_(0.25)
    ref = _assert_matches_dense_form(model, x, y)
    assert float(ref.stats["threshold"]) != 0.25


@pytest.mark.parametrize("arch", ["batchtopk", "matryoshka"])
def test_batch_methods_with_zero_valued_kept_entries_match_dense(arch):
    """Fewer than 2B * K positive pre-activations: many kept entries hold 0 (value 0,
    gradient 0, not firings) and the objective still equals the dense form."""
    x, y = _data()
    model = _model_with_dead(SAEConfig(arch=arch, d=32, m=256, k=8, k_aux=16), x, y)
    with torch.no_grad():
        model.b_enc.fill_(-2.5)
        n_pos = int((torch.relu(torch.cat([_dense_pre(model, x, 0), _dense_pre(model, y, 1)])) > 0).sum())
    assert 0 < n_pos < 2 * x.shape[0] * model.config.k
    _assert_matches_dense_form(model, x, y)


@pytest.mark.parametrize("arch", ["batchtopk", "matryoshka"])
def test_batch_methods_with_a_pre_bias_per_modality_match_dense(arch):
    """``n_modalities=2``: the flat entries of the x rows and of the y rows take different
    pre-bias rows (the gradient of each ``b_pre`` row from its own entries)."""
    x, y = _data()
    model = _model_with_dead(SAEConfig(arch=arch, d=32, m=256, k=8, k_aux=16, n_modalities=2), x, y)
    assert not torch.allclose(model.b_pre[0], model.b_pre[1])
    _assert_matches_dense_form(model, x, y)


def test_batchtopk_eval_mode_leaves_buffers_and_matches_dense():
    """Outside training mode neither the threshold nor the firing counters change."""
    x, y = _data()
    model = _model_with_dead(SAEConfig(arch="batchtopk", d=32, m=256, k=8, k_aux=16), x, y).eval()
    before = {n: b.clone() for n, b in model.named_buffers()}
    _assert_matches_dense_form(model, x, y)
    model.training_loss(x, y)
    for n, b in model.named_buffers():
        assert torch.equal(b, before[n]), n


def test_batchtopk_gradient_wrt_data_matches_dense():
    x, y = _data()
    model = _model_with_dead(SAEConfig(arch="batchtopk", d=32, m=256, k=8, k_aux=16), x, y)
    grads = []
    for fn in (dense_batchtopk_loss, lambda mdl, a, b: mdl.training_loss(a, b)):
        xg, yg = x.clone().requires_grad_(), y.clone().requires_grad_()
        _run_with_buffers(model, lambda mdl, a, b: fn(mdl, xg, yg), x, y)
        grads.append((xg.grad, yg.grad))
    for g_ref, g_out in zip(*grads):
        assert (g_out - g_ref).abs().max() / g_ref.abs().max() < RTOL


def test_batch_topk_entries_are_the_flat_top_sorted_by_row():
    from mmsae.engine.sparse import batch_topk_entries

    g = torch.Generator().manual_seed(0)
    pre = torch.relu(torch.randn(12, 40, generator=g))
    vals, rows, cols = batch_topk_entries(pre, 12 * 5)
    assert vals.shape == rows.shape == cols.shape == (60,)
    assert torch.equal(vals, pre[rows, cols])
    flat = rows * 40 + cols
    assert (flat[1:] > flat[:-1]).all()  # sorted by row, then column, no repeats
    kept = torch.zeros_like(pre, dtype=torch.bool)
    kept[rows, cols] = True
    assert pre[kept].min() >= pre[~kept].max()  # the largest entries of the whole matrix
    assert batch_topk_entries(pre, 10 ** 6)[0].numel() == pre.numel()  # at most every entry


@pytest.mark.parametrize("arch", ["modality_specific", "shared_support"])
def test_topk_methods_with_empty_slots_match_dense(arch):
    """Rows with fewer than K positive (summed, for the shared support) pre-activations: the
    empty TopK slots hold 0, get no gradient and are not firings, as in the dense form."""
    x, y = _data()
    model = _model_with_dead(_EQUIV_CONFIGS[arch][0], x, y)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("b_enc"):
                p.fill_(-2.5)
        if arch == "shared_support":
            n_pos = (torch.relu(_dense_pre(model, x, 0) + _dense_pre(model, y, 1)) > 0).sum(1)
        else:
            n_pos = (_dense_pre(model.sae_x, x, 0) > 0).sum(1)
    assert (n_pos < model.config.k).any()
    _assert_matches_dense_form(model, x, y)


# ----------------------------------------------------------------------- top-k kernel, blocks
def _same_topk(pre, k, got):
    """Same multiset of values as torch.topk and the indices point at those values."""
    v, i = got
    want = pre.topk(k, dim=-1).values
    assert torch.equal(v.sort(dim=1, descending=True).values, want)
    assert torch.equal(pre.gather(1, i), v)
    assert all(len(set(r.tolist())) == k for r in i)  # no latent twice in a row


@pytest.mark.parametrize("m,k", [(256, 8), (512, 54), (8192, 32), (1024, 128), (96, 5), (64, 40)])
def test_topk_rows_matches_torch_topk(m, k):
    from mmsae.engine.sparse import _chunk_size, topk_rows

    g = torch.Generator().manual_seed(m + k)
    pre = torch.randn(37, m, generator=g)
    pre[3] = pre[3].sort().values  # sorted rows: the bound is loosest at one end
    pre[4] = pre[4].sort(descending=True).values
    _same_topk(pre, k, topk_rows(pre, k))
    assert _chunk_size(m, k) == {256: 16, 512: 8, 8192: 16, 1024: 8, 96: 16, 64: 0}[m]  # 16, fewer, or torch


def test_topk_rows_ties_nan_and_threads():
    from mmsae.engine.sparse import topk_rows

    g = torch.Generator().manual_seed(0)
    pre = torch.relu(torch.randn(300, 512, generator=g) - 2.5)  # mostly zeros: ties at the k-th value
    pre[5] = 1.0  # a constant row
    v, i = topk_rows(pre, 16)
    _same_topk(pre, 16, (v, i))
    assert i[5].sort().values.tolist() == list(range(16))  # ties: the lowest indices
    nan = pre.clone()
    nan[7, 100] = float("nan")  # no bound holds on that row: torch.topk's answer there
    v2, i2 = topk_rows(nan, 16)
    want = nan[7].topk(16)
    assert torch.equal(i2[7].sort().values, want.indices.sort().values)
    assert torch.equal(v2[:7], v[:7]) and torch.equal(i2[8:], i[8:])
    n = torch.get_num_threads()
    torch.set_num_threads(2)
    try:  # rows split over two threads: the same answer
        v3, i3 = topk_rows(pre, 16)
    finally:
        torch.set_num_threads(n)
    assert torch.equal(v3, v) and torch.equal(i3, i)


@pytest.mark.parametrize("masked", [False, True])
def test_select_codes_blocks_match_one_block(masked, monkeypatch):
    """Blocks of rows (and AuxK's dead latents) give the selection of one whole-matrix pass."""
    import mmsae.engine.sparse as sp

    x, y = _data(n=100, d=32)
    model = _model(GroupSparseSAE, mgsae_config(d=32, m=256, k=8, k_aux=12), x, y)
    u_c = torch.cat([x - model.b_pre[0], y - model.b_pre[1]]).detach()
    mask = HashMask(salt=5, rate=0.3) if masked else None
    pairs = torch.arange(100).repeat(2) if masked else None
    whole = sp.select_codes(model, u_c, mask, pairs)
    monkeypatch.setattr(sp, "CPU_BLOCK_BYTES", 16 * 256 * 4)  # 16-row blocks
    blocks = sp.select_codes(model, u_c, mask, pairs)
    assert whole.aux is not None
    for a, b in ((whole.raw, blocks.raw), (whole.idx, blocks.idx), (whole.aux_raw, blocks.aux_raw),
                 (whole.aux_idx, blocks.aux_idx)):
        assert torch.equal(a, b)


@pytest.mark.parametrize("masked", [False, True])
def test_select_codes_bias_in_scan_matches_addmm(masked, monkeypatch):
    """On CPU the compiled scan adds b_enc to a plain matmul's output; the selection is the
    torch path's (addmm, torch top-k): the same latents, values equal to rounding."""
    import mmsae.engine.sparse as sp

    x, y = _data(n=100, d=32)
    model = _model(GroupSparseSAE, mgsae_config(d=32, m=256, k=8, k_aux=12), x, y)
    with torch.no_grad():
        model.b_enc.normal_()  # a bias that changes the ranking
    u_c = torch.cat([x - model.b_pre[0], y - model.b_pre[1]]).detach()
    mask = HashMask(salt=5, rate=0.3) if masked else None
    pairs = torch.arange(100).repeat(2) if masked else None
    got = sp.select_codes(model, u_c, mask, pairs)
    monkeypatch.setattr(sp, "_chunk_size", lambda m, kc: 0)  # addmm and torch's top-k
    ref = sp.select_codes(model, u_c, mask, pairs)
    exact = (u_c @ model.W_enc.t() + model.b_enc).detach()
    pairs_of = ((ref.raw, ref.idx, (got.raw, got.idx)), (ref.aux_raw, ref.aux_idx, (got.aux_raw, got.aux_idx)))
    for a, b, (rv, ri) in pairs_of:
        assert torch.equal(b.sort(1).values, ri.sort(1).values)
        torch.testing.assert_close(rv, exact.gather(1, ri), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(a, exact.gather(1, b), rtol=1e-5, atol=1e-5)


def test_training_loop_restores_determinism_settings():
    import torch.utils.deterministic as tud

    x, y = _data(n=32, d=16)
    before = (torch.are_deterministic_algorithms_enabled(), tud.fill_uninitialized_memory)
    train(TopKSAE(SAEConfig(d=16, m=64, k=4)), (x.numpy(), y.numpy()),
          TrainConfig(steps=2, batch_size=8, progress=False))
    assert (torch.are_deterministic_algorithms_enabled(), tud.fill_uninitialized_memory) == before


def test_flat_topk_bound_matches_torch_topk():
    from mmsae.engine.sparse import _flat_topk

    g = torch.Generator().manual_seed(1)
    for flat in (torch.randn(64 * 512, generator=g), torch.relu(torch.randn(64 * 512, generator=g) - 1.0)):
        for n in (64 * 8, 2000):
            v, i = _flat_topk(flat, n)
            assert torch.equal(v.sort().values, flat.topk(n).values.sort().values)
            assert torch.equal(flat[i], v) and i.unique().numel() == n


def test_flat_topk_ties_go_to_the_lowest_indices_and_infinity_is_kept():
    """The compiled flat top-n (kernels.flat_topn): among entries equal to the n-th value the lowest indices are
    taken; +inf is a value like any other (only NaN sends the vector to torch.topk)."""
    from mmsae.engine.sparse import _flat_topk

    g = torch.Generator().manual_seed(3)
    flat = torch.randint(0, 6, (64 * 512,), generator=g).float()  # many ties at every value
    flat[77] = float("inf")
    for n in (100, 1500):
        v, i = _flat_topk(flat, n)
        kth = flat.topk(n).values[-1]
        above = (flat > kth).nonzero().squeeze(1)
        ties = (flat == kth).nonzero().squeeze(1)[: n - above.numel()]
        assert torch.equal(i.sort().values, torch.cat([above, ties]).sort().values)
        assert torch.equal(flat[i], v) and 77 in i.tolist()


def test_batch_topk_entries_add_the_bias_and_relu_in_the_selection():
    """batch_topk_entries(pre, n, bias=b) leaves ReLU(pre + b) in pre and selects from it, whether the compiled
    top-n takes the matrix (m a multiple of 16) or torch does; a NaN still goes to torch.topk."""
    from mmsae.engine.sparse import batch_topk_entries

    g = torch.Generator().manual_seed(6)
    for m in (256, 250):
        pre = torch.randn(64, m, generator=g)
        b = torch.randn(m, generator=g)
        want = torch.relu(pre + b)
        if m == 256:
            pre[3, 7] = float("nan")
            want[3, 7] = float("nan")
        got_pre = pre.clone()
        vals, rows, cols = batch_topk_entries(got_pre, 64 * 3, bias=b)
        assert torch.equal(torch.isnan(got_pre), torch.isnan(want))
        torch.testing.assert_close(got_pre.nan_to_num(-1.0), want.nan_to_num(-1.0), rtol=0, atol=1e-6)
        ref_v, ref_rows, ref_cols = batch_topk_entries(want.clone(), 64 * 3)
        assert torch.equal(rows * m + cols, ref_rows * m + ref_cols) or torch.equal(
            torch.sort(vals).values.nan_to_num(), torch.sort(ref_v).values.nan_to_num())


def test_flat_topk_with_nan_falls_back_to_torch_topk():
    from mmsae.engine.sparse import _flat_topk

    flat = torch.randn(64 * 512, generator=torch.Generator().manual_seed(2))
    flat[1000] = float("nan")
    v, i = _flat_topk(flat, 300)
    want = flat.topk(300)
    assert torch.equal(i.sort().values, want.indices.sort().values)


def test_stack_pair_is_a_view_only_of_adjacent_rows():
    """[x; y] without a copy when y's rows follow x's in one buffer (as the loop gathers a batch),
    a copy otherwise (separate tensors, the halves swapped, a gradient needed)."""
    from mmsae.engine.sparse import stack_pair

    buf = torch.randn(10, 4)
    x, y = buf[:5], buf[5:]
    u = stack_pair(x, y)
    assert u.data_ptr() == buf.data_ptr() and torch.equal(u, torch.cat([x, y]))
    swapped = stack_pair(y, x)
    assert swapped.data_ptr() != buf.data_ptr() and torch.equal(swapped, torch.cat([y, x]))
    apart = stack_pair(x.clone(), y.clone())
    assert torch.equal(apart, buf)
    gx = x.clone().requires_grad_()
    assert stack_pair(gx, y).requires_grad
    gap = torch.randn(11, 4)
    assert torch.equal(stack_pair(gap[:5], gap[6:]), torch.cat([gap[:5], gap[6:]]))
