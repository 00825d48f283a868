"""Defining behaviour of every method beyond TopK/GSAE: BatchTopK, Matryoshka,
modality-specific SAEs + Hungarian alignment, shared support; save/load of each."""

import copy

import numpy as np
import pytest
import torch

from mmsae.models import (MODEL_REGISTRY, BatchTopKSAE, MatryoshkaSAE, ModalitySpecificSAE, SAEConfig,
                          SharedSupportSAE, build_model, load_model)
from mmsae.models.modality_specific import hungarian_match, pearson_cross_correlation
from mmsae.data.synthetic import make_synthetic
from mmsae.train import train


def _pairs(n=64, d=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.nn.functional.normalize(torch.randn(n, d, generator=g), dim=1)
    y = torch.nn.functional.normalize(x + 0.3 * torch.randn(n, d, generator=g), dim=1)
    return x, y


@pytest.fixture(scope="module")
def synth():
    s = make_synthetic(n_pairs=1500, d=32, n_shared=24, n_image_only=8, n_text_only=8, seed=0)
    return s.pairs


# --------------------------------------------------------------------------- BatchTopK
def test_batchtopk_keeps_exactly_batch_times_k_in_training():
    torch.manual_seed(0)
    cfg = SAEConfig(arch="batchtopk", d=16, m=64, k=4)
    model = build_model(cfg).train()
    x, y = _pairs(32)
    model.init_from_data(x, y)
    pre, z = model._pooled_codes(x, y)
    assert z.shape == (64, 64)  # 2B pooled embeddings
    assert int((z > 0).sum()) == 2 * 32 * 4
    per_row = (z > 0).sum(1)
    assert per_row.float().mean() == 4 and (per_row.max() > 4 or per_row.min() < 4)  # batch-level, not per row
    # the kept entries are the largest of the batch
    thr = z[z > 0].min()
    assert int((pre > thr).sum()) <= 2 * 32 * 4
    # threshold buffer initialised to the smallest kept activation
    assert torch.isclose(model.threshold, thr)
    out = model.training_loss(x, y)
    assert torch.isfinite(out.loss) and "threshold" in out.stats


def test_batchtopk_threshold_running_mean_and_inference():
    torch.manual_seed(1)
    model = build_model(SAEConfig(arch="batchtopk", d=16, m=64, k=4, extra={"threshold_momentum": 0.5})).train()
    x, y = _pairs(32)
    _, z1 = model._pooled_codes(x, y)
    t1 = float(z1[z1 > 0].min().detach())
    _, z2 = model._pooled_codes(x[:16], y[:16])
    t2 = float(z2[z2 > 0].min().detach())
    assert float(model.threshold) == pytest.approx(0.5 * t1 + 0.5 * t2, rel=1e-6)
    model.eval()
    pre = model.pre_activations(x, 0)
    z = model.encode(x, 0)
    assert torch.equal(z, pre * (pre > model.threshold))
    # a fresh model (no threshold yet) falls back to per-sample TopK
    fresh = build_model(SAEConfig(arch="batchtopk", d=16, m=64, k=4)).eval()
    assert ((fresh.encode(x, 0) > 0).sum(1) <= 4).all()


# --------------------------------------------------------------------------- Matryoshka
def test_matryoshka_prefixes_each_reconstruct(synth):
    torch.manual_seed(0)
    cfg = SAEConfig(arch="matryoshka", d=32, m=64, k=4, dead_after=5000, extra={"prefixes": [8, 16, 32, 64]})
    model = build_model(cfg)
    x, y = torch.as_tensor(synth.x), torch.as_tensor(synth.y)
    out = model.training_loss(x[:64], y[:64])
    assert {f"rec_prefix{p}" for p in (8, 16, 32, 64)} <= set(out.stats)  # one loss term per prefix
    train(model, synth, steps=250, batch_size=64, lr=3e-3, progress=False, log_every=50)
    for u, mod in ((x, 0), (y, 1)):
        base = float((u - u.mean(0)).pow(2).sum(1).mean())  # mean-prediction baseline
        errs = [float((u - r).pow(2).sum(1).mean()) for r in model.prefix_reconstructions(u, mod)]
        assert all(e < base for e in errs), (errs, base)
        assert all(b <= a * 1.02 for a, b in zip(errs, errs[1:])), errs  # longer prefixes at least as good
        assert errs[-1] < 0.8 * base


def test_matryoshka_sparse_prefix_decodes_match_truncated_codes():
    torch.manual_seed(0)
    model = build_model(SAEConfig(arch="matryoshka", d=16, m=64, k=4)).train()
    x, y = _pairs(8)
    pre, vals, idx = model._pooled_sparse(x, y)
    recs = model._prefix_decodes_flat(vals, idx, 8)
    z = torch.zeros_like(pre).reshape(-1).scatter(0, idx, vals).reshape(pre.shape)
    for j, p in enumerate(model.prefixes):
        torch.testing.assert_close(recs[j], z[:, :p] @ model.W_dec[:p] + model.b_pre[0], atol=1e-5, rtol=1e-5)


def test_matryoshka_rejects_bad_prefixes():
    with pytest.raises(ValueError):
        build_model(SAEConfig(arch="matryoshka", d=8, m=32, k=2, extra={"prefixes": [16, 8, 32]}))
    with pytest.raises(ValueError):
        build_model(SAEConfig(arch="matryoshka", d=8, m=32, k=2, extra={"prefixes": [8, 16]}))


# --------------------------------------------------------------------------- modality-specific
def test_hungarian_recovers_planted_permutation_on_codes():
    rng = np.random.default_rng(0)
    n, m = 2000, 24
    zx = rng.exponential(1.0, (n, m)) * (rng.random((n, m)) < 0.2)
    q = rng.permutation(m)  # text latent j is image latent q[j]
    zy = zx[:, q] + 0.05 * rng.random((n, m)) * (zx[:, q] > 0)
    perm, matched = hungarian_match(pearson_cross_correlation(zx, zy))
    assert matched.all()
    np.testing.assert_array_equal(perm, np.argsort(q))
    np.testing.assert_allclose(zy[:, perm], zx, atol=0.06)


def test_hungarian_excludes_dead_latents():
    rng = np.random.default_rng(1)
    n, m = 1000, 10
    zx = rng.exponential(1.0, (n, m)) * (rng.random((n, m)) < 0.3)
    zx[:, 3] = 0.0  # dead image latent
    q = rng.permutation(m)
    zy = zx[:, q].copy()
    alive_x, alive_y = (zx > 0).any(0), (zy > 0).any(0)
    perm, matched = hungarian_match(pearson_cross_correlation(zx, zy), alive_x, alive_y)
    assert sorted(perm) == list(range(m))
    assert not matched[3] and matched.sum() == m - 1
    inv = np.argsort(q)
    assert all(perm[i] == inv[i] for i in range(m) if i != 3)


def test_modality_specific_align_recovers_planted_permutation():
    torch.manual_seed(0)
    d, m = 16, 32
    model = build_model(SAEConfig(arch="modality_specific", d=d, m=2 * m, k=4)).eval()
    assert model.m_per_side == m
    q = torch.randperm(m)  # text SAE = image SAE with latents shuffled: text latent j = image latent q[j]
    with torch.no_grad():
        for name in ("W_enc", "W_dec", "b_enc"):
            getattr(model.sae_y, name).copy_(getattr(model.sae_x, name)[q])
        model.sae_x.b_enc[5] = -10.0  # image latent 5 never fires: dead, excluded from the matching
        model.sae_y.b_enc[(q == 5).nonzero()[0, 0]] = -10.0
    x, _ = _pairs(3000, d)
    y = x + 1e-3 * torch.randn_like(x)
    info = model.align(x.numpy(), y.numpy())
    inv = torch.argsort(q)
    alive = torch.ones(m, dtype=torch.bool)
    alive[5] = False
    assert torch.equal(model.permutation[alive], inv[alive])
    assert not model.matched[5] and bool(model.matched[alive].all())
    assert info["n_matched"] == m - 1 and bool(model.aligned)
    # after alignment latent i means the same thing in both modalities
    torch.testing.assert_close(model.encode(x, 1), model.encode(x, 0))
    torch.testing.assert_close(model.decoder_atoms(1), model.decoder_atoms(0))
    zx = model.encode(x, 0)
    torch.testing.assert_close(model.decode(zx, 1), model.decode(zx, 0))


def test_modality_specific_default_splits_the_atom_budget():
    """Equal atoms: m in all, m/2 latents per side by default; extra['m_per_side'] changes it."""
    model = build_model(SAEConfig(arch="modality_specific", d=16, m=32, k=4))
    assert model.m_per_side == 16 and model.num_latents == 16 and model.n_atoms == 32
    assert model.sae_x.W_dec.shape == (16, 16) and model.sae_y.W_dec.shape == (16, 16)
    total_atoms = model.sae_x.W_dec.shape[0] + model.sae_y.W_dec.shape[0]
    assert total_atoms == 32  # the same budget as a 32-latent GSAE
    x, _ = _pairs(8)
    assert model.encode(x, 0).shape == (8, 16) and model.encode(x, 1).shape == (8, 16)
    assert model.decoder_atoms(1).shape == (16, 16) and model.dead_mask().shape == (16,)
    assert model.encode_numpy(x.numpy(), 1).shape == (8, 16)
    full = build_model(SAEConfig(arch="modality_specific", d=16, m=32, k=4, extra={"m_per_side": 32}))
    assert full.m_per_side == 32 and full.n_atoms == 64 and full.sae_x.W_dec.shape == (32, 16)
    with pytest.raises(ValueError, match="m_per_side"):
        build_model(SAEConfig(arch="modality_specific", d=16, m=6, k=4))  # 3 latents per side < k


def test_modality_specific_flags_both_by_construction():
    model = build_model(SAEConfig(arch="modality_specific", d=16, m=32, k=4))
    assert model.both_by_construction is True and model.both_rule == "matched"
    for arch in ("topk", "shared_support"):
        cfg = SAEConfig(arch=arch, d=16, m=32, k=4, n_modalities=2 if arch == "shared_support" else 1)
        assert not getattr(build_model(cfg), "both_by_construction", False)


def test_modality_specific_method_config_has_equal_atoms():
    from mmsae.study import experiments as ex

    prof = {"m": 64, "k": 4, "dead_after": 1000}
    cfg = ex.method_config("ModalitySpecific", prof, d=16)
    assert cfg.m == 64 and cfg.extra["m_per_side"] == 32
    assert build_model(cfg).n_atoms == build_model(ex.method_config("GSAE", {**prof, "group_lambda": 0.05},
                                                                      d=16)).W_dec.shape[0]
    assert ex.method_config("ModalitySpecific", prof, d=16, m=128).extra["m_per_side"] == 64  # follows m
    full = ex.method_config("ModalitySpecific", prof, d=16, extra={"m_per_side": 64})
    assert build_model(full).n_atoms == 128


def test_modality_specific_zero_slots_are_not_firings():
    """Each side's dead-latent counter ignores TopK slots that hold 0."""
    model = build_model(SAEConfig(arch="modality_specific", d=16, m=32, k=4, auxk_coef=0.0))
    with torch.no_grad():
        for sae in (model.sae_x, model.sae_y):
            sae.b_enc.fill_(-100.0)  # every pre-activation negative ...
            sae.b_enc[[2, 5]] = 100.0  # ... except latents 2 and 5: 2 of the 4 TopK slots hold 0
    x, y = _pairs(8)
    model.training_loss(x, y)
    for sae in (model.sae_x, model.sae_y):
        fired = (sae.since_fired == 0).nonzero().squeeze(1).tolist()
        assert fired == [2, 5], fired
        assert int(sae.since_fired.max()) == 8


def test_modality_specific_trains_each_sae_on_its_own_modality():
    torch.manual_seed(0)
    model = build_model(SAEConfig(arch="modality_specific", d=16, m=32, k=4))
    x, y = _pairs(32)
    out = model.training_loss(x, y)
    out.loss.backward()
    # the text reconstruction does not reach the image SAE: perturbing y leaves image grads unchanged
    gx = model.sae_x.W_enc.grad.clone()
    model.zero_grad()
    model.training_loss(x, torch.flip(y, [0])).loss.backward()
    torch.testing.assert_close(model.sae_x.W_enc.grad, gx)


# --------------------------------------------------------------------------- shared support
def test_shared_support_identical_supports_for_a_pair():
    torch.manual_seed(0)
    model = build_model(SAEConfig(arch="shared_support", d=16, m=64, k=5, n_modalities=2))
    x, y = _pairs(40)
    model.init_from_data(x, y)
    idx = model.shared_support(x, y)
    zx, zy = model.encode_pair(x, y)
    support = torch.zeros_like(zx, dtype=torch.bool).scatter(1, idx, True)
    assert (support.sum(1) == 5).all()
    # each member's nonzeros lie on the one shared index set, and together they fill it
    assert not ((zx > 0) & ~support).any() and not ((zy > 0) & ~support).any()
    assert torch.equal((zx > 0) | (zy > 0), support)
    # the set is TopK of the summed RAW (pre-ReLU) pre-activations
    ref = (model.raw_pre_activations(x, 0) + model.raw_pre_activations(y, 1)).topk(5, dim=1).indices
    assert torch.equal(torch.sort(idx, 1).values, torch.sort(ref, 1).values)
    # single-modality inference: TopK of that modality's own pre-activations
    pre = model.pre_activations(x, 0)
    z = model.encode(x, 0)
    assert ((z > 0).sum(1) <= 5).all()
    assert torch.equal(z.topk(5, 1).indices.sort(1).values, pre.topk(5, 1).indices.sort(1).values)


def _shared_support_by_hand():
    """d = m = 4, identity encoder, zero biases: the raw pre-activations are the inputs."""
    model = build_model(SAEConfig(arch="shared_support", d=4, m=4, k=2, n_modalities=2))
    with torch.no_grad():
        model.W_enc.copy_(torch.eye(4))
        model.b_enc.zero_()
        model.b_pre.zero_()
    hx = torch.tensor([[5.0, 3.0, -10.0, 0.5]])
    hy = torch.tensor([[-4.0, 1.0, 9.0, 0.4]])
    return model, hx, hy


def test_shared_support_is_sparc_global_topk_by_hand():
    model, hx, hy = _shared_support_by_hand()
    # sum-then-ReLU: relu(hx + hy) = [1, 4, 0, 0.9] -> top-2 = {0, 1}
    # (ReLU-then-sum would give relu(hx) + relu(hy) = [5, 4, 9, 0.9] -> top-2 = {0, 2})
    assert set(model.shared_support(hx, hy)[0].tolist()) == {0, 1}
    zx, zy = model.encode_pair(hx, hy)
    torch.testing.assert_close(zx, torch.tensor([[5.0, 3.0, 0.0, 0.0]]))  # relu(hx) on {0, 1}
    torch.testing.assert_close(zy, torch.tensor([[0.0, 1.0, 0.0, 0.0]]))  # relu(hy) on {0, 1}
    # the same rule written out on random raw pre-activations
    g = torch.Generator().manual_seed(0)
    big = build_model(SAEConfig(arch="shared_support", d=8, m=32, k=5, n_modalities=2))
    x, y = torch.randn(20, 8, generator=g), torch.randn(20, 8, generator=g)
    hx, hy = big.raw_pre_activations(x, 0), big.raw_pre_activations(y, 1)
    s = torch.relu(hx + hy)
    top = s.topk(5, dim=1).indices
    on = torch.zeros_like(s).scatter(1, top, 1.0) * (s > 0)
    zx, zy = big.encode_pair(x, y)
    torch.testing.assert_close(zx, torch.relu(hx) * on)
    torch.testing.assert_close(zy, torch.relu(hy) * on)


def test_shared_support_empty_slots_when_few_sums_are_positive():
    model, _, _ = _shared_support_by_hand()
    hx = torch.tensor([[2.0, -1.0, -3.0, 1.0]])
    hy = torch.tensor([[1.0, -1.0, -3.0, -2.0]])
    # sums [3, -2, -6, -1]: one positive -> one of the two TopK slots is empty, even though
    # latent 3 is positive on the image (its summed pre-activation is not)
    zx, zy = model.encode_pair(hx, hy)
    torch.testing.assert_close(zx, torch.tensor([[2.0, 0.0, 0.0, 0.0]]))
    torch.testing.assert_close(zy, torch.tensor([[1.0, 0.0, 0.0, 0.0]]))
    # the empty slot and a member's zero entry are not firings for the dead-latent counter
    model.train()
    model.config.auxk_coef = 0.0
    model.training_loss(hx, hy)
    assert (model.since_fired == 0).nonzero().squeeze(1).tolist() == [0]
    model.since_fired.zero_()
    model.training_loss(*_shared_support_by_hand()[1:])  # slots {0, 1}: both fire (on one member each)
    assert model.since_fired.tolist() == [0, 0, 2, 2]


def test_shared_support_training_decodes_from_the_shared_set():
    torch.manual_seed(0)
    model = build_model(SAEConfig(arch="shared_support", d=16, m=64, k=5, n_modalities=2))
    x, y = _pairs(40)
    out = model.training_loss(x, y)
    out.loss.backward()
    assert torch.isfinite(out.loss)
    assert model.W_enc.grad is not None and model.W_enc.grad.abs().sum() > 0
    with torch.no_grad():
        support = model.shared_support(x, y)
        z_x, z_y = model.encode_pair(x, y)
        # both members' codes live on the pair's one shared index set
        for z in (z_x, z_y):
            outside = torch.ones_like(z, dtype=torch.bool).scatter_(1, support, False)
            assert not (z[outside] != 0).any()
        # the loss reconstructs each member from that shared-support code ...
        rec_x = (x - model.decode(z_x, 0)).pow(2).sum(-1).mean()
        rec_y = (y - model.decode(z_y, 1)).pow(2).sum(-1).mean()
        torch.testing.assert_close(out.stats["rec_x"], rec_x, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(out.stats["rec_y"], rec_y, rtol=1e-5, atol=1e-6)
        # ... not from each modality's own TopK code (which picks other latents here)
        own_x = (x - model.decode(model.encode(x, 0), 0)).pow(2).sum(-1).mean()
        assert abs(float(own_x) - float(out.stats["rec_x"])) > 1e-4
    # decoder atoms outside every pair's shared set get no gradient
    used = torch.zeros(model.config.m, dtype=torch.bool)
    used[support.flatten()] = True
    dec_grad = model.W_dec.grad.abs().sum(-1)
    assert (dec_grad[~used] == 0).all() and (dec_grad[used] > 0).any()


# --------------------------------------------------------------------------- AuxK weighting
AUXK_CONFIGS = {
    "topk": SAEConfig(d=16, m=256, k=4, k_aux=8),
    "group_sparse": SAEConfig(arch="group_sparse", d=16, m=256, k=4, k_aux=8, n_modalities=2, group_lambda=0.05),
    "batchtopk": SAEConfig(arch="batchtopk", d=16, m=256, k=4, k_aux=8),
    "matryoshka": SAEConfig(arch="matryoshka", d=16, m=256, k=4, k_aux=8, extra={"prefixes": [32, 128, 256]}),
    "modality_specific": SAEConfig(arch="modality_specific", d=16, m=256, k=4, k_aux=8),
    "shared_support": SAEConfig(arch="shared_support", d=16, m=256, k=4, k_aux=8, n_modalities=2),
}


@pytest.mark.parametrize("arch", sorted(AUXK_CONFIGS))
def test_every_method_weights_auxk_per_modality(arch, monkeypatch):
    """Every method hands AuxK each modality's own embeddings (Gao et al.'s weight TV(u) / TV(e)
    per modality, mmsae.models.losses.auxk_loss) and adds auxk_coef times the result to its loss."""
    import mmsae.models.losses
    from mmsae.models.losses import auxk_loss

    calls = []

    def spy(residual, aux_recon, inputs, n_blocks=1, **kw):
        out = auxk_loss(residual, aux_recon, inputs, n_blocks=n_blocks, **kw)
        calls.append((inputs.detach().clone(), n_blocks, out.detach()))
        return out

    monkeypatch.setattr(mmsae.models.losses, "auxk_loss", spy)  # every method's AuxK goes through losses.fast_auxk
    torch.manual_seed(0)
    coef = AUXK_CONFIGS[arch].auxk_coef
    model = build_model(copy.deepcopy(AUXK_CONFIGS[arch])).train()  # a copy: the test edits its config
    x, y = _pairs(8)  # 2B * K = 64 slots over 256 latents: BatchTopK leaves most dead latents dead
    model.init_from_data(x, y)
    for mod in model.modules():
        if hasattr(mod, "since_fired"):
            mod.since_fired[::3] = 10 ** 9  # a third of the latents dead
    state = {k: v.clone() for k, v in model.state_dict().items()}  # parameters and counters
    out = model.training_loss(x, y)
    if arch == "modality_specific":  # one SAE per modality, one block each
        assert [n for _, n, _ in calls] == [1, 1]
        assert torch.equal(calls[0][0], x) and torch.equal(calls[1][0], y)
    else:  # [x; y] stacked, normalised per modality
        assert len(calls) == 1 and calls[0][1] == 2 and torch.equal(calls[0][0], torch.cat([x, y]))
    aux = sum(float(v) for _, _, v in calls)
    assert aux > 0 and float(out.stats["aux"]) == pytest.approx(aux, rel=1e-6)
    # the loss without AuxK, from the same model state, differs by exactly auxk_coef * aux
    model.config.auxk_coef = 0.0
    model.load_state_dict(state)
    plain = model.training_loss(x, y).loss
    assert float((out.loss - plain).detach()) == pytest.approx(coef * aux, rel=1e-4, abs=1e-6)


# --------------------------------------------------------------------------- persistence
ARCH_CONFIGS = {
    "batchtopk": SAEConfig(arch="batchtopk", d=16, m=32, k=4),
    "matryoshka": SAEConfig(arch="matryoshka", d=16, m=32, k=4, extra={"prefixes": [4, 16, 32]}),
    "modality_specific": SAEConfig(arch="modality_specific", d=16, m=32, k=4),
    "shared_support": SAEConfig(arch="shared_support", d=16, m=32, k=4, n_modalities=2),
}


@pytest.mark.parametrize("arch", sorted(ARCH_CONFIGS))
def test_save_load_round_trip(arch, tmp_path):
    assert arch in MODEL_REGISTRY
    torch.manual_seed(0)
    model = build_model(ARCH_CONFIGS[arch])
    x, y = _pairs(128)
    train(model, (x.numpy(), y.numpy()), steps=5, batch_size=32, progress=False, log_every=5)
    if arch == "modality_specific":
        model.align(x.numpy(), y.numpy())
        with torch.no_grad():  # make the permutation non-trivial so the round trip checks it
            model.permutation.copy_(torch.roll(model.permutation, 3))
    model.save(tmp_path / "m")
    loaded = load_model(tmp_path / "m")
    assert type(loaded) is type(model) and loaded.arch == arch
    assert loaded.config == model.config
    for k, v in model.state_dict().items():
        assert torch.equal(v, loaded.state_dict()[k]), k
    for mod in (0, 1):
        torch.testing.assert_close(loaded.encode(x, mod), model.encode(x, mod))
        torch.testing.assert_close(loaded(x, mod)[0], model(x, mod)[0])
    if arch in ("batchtopk", "matryoshka"):
        assert float(loaded.threshold) > 0


def test_classes_registered():
    assert MODEL_REGISTRY["batchtopk"] is BatchTopKSAE
    assert MODEL_REGISTRY["matryoshka"] is MatryoshkaSAE
    assert MODEL_REGISTRY["modality_specific"] is ModalitySpecificSAE
    assert MODEL_REGISTRY["shared_support"] is SharedSupportSAE
