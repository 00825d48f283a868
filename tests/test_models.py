import numpy as np
import pytest
import torch

from mmsae.models import (CheckpointError, GroupSparseSAE, SAEConfig, TopKSAE, build_model, gsae_config, load_model,
                          mgsae_config)


def _tiny(arch_cfg):
    torch.manual_seed(0)
    return build_model(arch_cfg)


def test_topk_after_relu_by_hand():
    m = _tiny(SAEConfig(d=3, m=4, k=2))
    with torch.no_grad():
        m.W_enc.copy_(torch.eye(4, 3))
        m.b_enc.copy_(torch.tensor([0.0, 0.0, 0.0, -5.0]))
        m.b_pre.zero_()
    u = torch.tensor([[3.0, -1.0, 2.0]])
    # pre = relu([3, -1, 2, -5]) = [3, 0, 2, 0]; top-2 keeps latents 0 and 2
    z = m.encode(u)
    torch.testing.assert_close(z, torch.tensor([[3.0, 0.0, 2.0, 0.0]]))
    # decode: z @ W_dec + b_pre
    torch.testing.assert_close(m.decode(z), z @ m.W_dec)
    assert (m.encode(torch.randn(50, 3)) > 0).sum(1).le(2).all()


def test_decoder_norm_constraint_and_gradient_projection():
    m = _tiny(SAEConfig(d=8, m=16, k=4))
    torch.testing.assert_close(m.W_dec.norm(dim=1), torch.ones(16))
    x, y = torch.randn(32, 8), torch.randn(32, 8)
    out = m.training_loss(x, y)
    out.loss.backward()
    m.before_optimizer_step()
    # projected gradient is orthogonal to each atom
    assert (m.W_dec.grad * m.W_dec).sum(1).abs().max() < 1e-6
    with torch.no_grad():
        m.W_dec.mul_(3.0)
    m.after_optimizer_step()
    torch.testing.assert_close(m.W_dec.norm(dim=1), torch.ones(16))


def test_prebias_init_per_modality():
    x, y = torch.randn(100, 6) + 2.0, torch.randn(100, 6) - 2.0
    pooled = _tiny(SAEConfig(d=6, m=12, k=3))
    pooled.init_from_data(x, y)
    torch.testing.assert_close(pooled.b_pre[0], torch.cat([x, y]).mean(0))
    g = _tiny(gsae_config(6, 12, 3))
    g.init_from_data(x, y)
    torch.testing.assert_close(g.b_pre[0], x.mean(0))
    torch.testing.assert_close(g.b_pre[1], y.mean(0))
    # each modality is centred by its own pre-bias
    assert not torch.allclose(g.encode(x[:4], 0), g.encode(x[:4], 1))


def test_mask_is_shared_across_a_pair():
    torch.manual_seed(1)
    m = build_model(mgsae_config(8, 64, 4, mask_rate=0.5))
    keep = m.draw_mask().dense(10, 64)
    assert keep.shape == (10, 64)
    assert 0.35 < keep.float().mean() < 0.65
    # training_loss draws ONE mask (draw_mask) and both members choose their top K among its survivors
    drawn = []
    orig = m.draw_mask
    m.draw_mask = lambda: drawn.append(orig()) or drawn[-1]
    m.train()
    x, y = torch.randn(10, 8), torch.randn(10, 8)
    out = m.training_loss(x, y)
    assert len(drawn) == 1
    kept = drawn[0].dense(10, 64)
    # the loss is that of the masked codes of both members: the same mask on x and y
    def masked_code(u, mod):
        pre = m.pre_activations(u, mod).masked_fill(~kept, 0.0)
        v, i = pre.topk(4, dim=-1)
        return torch.zeros_like(pre).scatter(1, i, v)
    zx, zy = masked_code(x, 0), masked_code(y, 1)
    assert kept[zx > 0].all() and kept[zy > 0].all()
    rec_x = ((x - m.decode(zx, 0)) ** 2).sum(1).mean()
    rec_y = ((y - m.decode(zy, 1)) ** 2).sum(1).mean()
    torch.testing.assert_close(out.stats["rec_x"], rec_x.detach(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out.stats["rec_y"], rec_y.detach(), rtol=1e-5, atol=1e-6)
    # with an unmasked code the reconstruction would differ (the mask removed some top latents)
    assert not torch.allclose(((x - m.decode(m.encode(x, 0), 0)) ** 2).sum(1).mean(), rec_x)


def test_mask_per_batch_and_no_mask_at_inference():
    torch.manual_seed(2)
    m = build_model(mgsae_config(8, 64, 4, mask_rate=0.3, mask_mode="batch"))
    assert m.draw_mask().dense(10, 64).shape == (1, 64)
    m.eval()
    u = torch.randn(5, 8)
    # at inference the code is the unmasked TopK code: that of the same weights with no mask
    plain = build_model(mgsae_config(8, 64, 4, mask_rate=0.0))
    plain.load_state_dict(m.state_dict())
    plain.eval()
    z = m.encode(u, 0)
    torch.testing.assert_close(z, plain.encode(u, 0))
    pre = m.pre_activations(u, 0)
    top = pre.topk(4, dim=-1).indices
    assert ((z > 0).sum(1) <= 4).all() and bool((z.gather(1, top) == torch.relu(pre.gather(1, top))).all())
    m.train()  # while training, the mask does remove latents from the code
    assert any(not torch.equal(m.training_loss(u, u).stats["ev_x"], plain.training_loss(u, u).stats["ev_x"])
               for _ in range(5))
    with pytest.raises(ValueError, match="mask_mode"):
        build_model(mgsae_config(8, 64, 4, mask_mode="sometimes"))
    with pytest.raises(ValueError, match="drop probability"):
        build_model(mgsae_config(8, 64, 4, mask_rate=1.0))


def test_gsae_loss_is_reconstruction_plus_lambda_group():
    torch.manual_seed(3)
    m = build_model(gsae_config(8, 32, 4, group_lambda=0.5, auxk_coef=0.0))
    x, y = torch.randn(6, 8), torch.randn(6, 8)
    out = m.training_loss(x, y)
    zx, zy = m.encode(x, 0), m.encode(y, 1)
    rec = ((x - m.decode(zx, 0)) ** 2).sum(1).mean() + ((y - m.decode(zy, 1)) ** 2).sum(1).mean()
    group = torch.sqrt(zx ** 2 + zy ** 2).sum(1).mean()
    torch.testing.assert_close(out.loss, rec + 0.5 * group, rtol=1e-5, atol=1e-6)


def test_auxk_revives_dead_latents():
    torch.manual_seed(4)
    m = build_model(SAEConfig(d=8, m=32, k=2, dead_after=1, auxk_coef=1.0))
    x, y = torch.randn(16, 8), torch.randn(16, 8)
    m.training_loss(x, y)  # marks non-firing latents as dead
    assert m.dead_mask().sum() > 0
    out = m.training_loss(x, y)
    assert float(out.stats["aux"]) > 0


def test_save_load_round_trip(tmp_path):
    for cfg in (SAEConfig(d=8, m=16, k=2), mgsae_config(8, 16, 2)):
        m = _tiny(cfg)
        path = m.save(tmp_path / cfg.arch)
        m2 = load_model(path)
        assert type(m2) is type(m) and m2.config == m.config
        u = torch.randn(4, 8)
        torch.testing.assert_close(m2.encode(u, 1), m.encode(u, 1))
        m.save(path)  # overwrite in place leaves a single clean folder
        assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []
    assert isinstance(load_model(tmp_path / "group_sparse"), GroupSparseSAE)
    assert isinstance(load_model(tmp_path / "topk"), TopKSAE)


def test_missing_checkpoint_is_named(tmp_path):
    with pytest.raises(CheckpointError, match=r"nowhere.*missing checkpoint"):
        load_model(tmp_path / "nowhere")


def test_numpy_helpers():
    m = _tiny(SAEConfig(d=8, m=16, k=2))
    u = np.random.default_rng(0).normal(size=(10, 8)).astype(np.float32)
    z = m.encode_numpy(u, batch_size=3)
    assert z.shape == (10, 16) and ((z > 0).sum(1) <= 2).all()
    assert m.reconstruct_numpy(u, batch_size=4).shape == (10, 8)


def test_step_stats_compute_explained_variance_only_when_read():
    from mmsae.models.base import step_stats

    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(50, 8, generator=g), torch.randn(50, 8, generator=g)
    rec_x, rec_y = torch.tensor(0.3), torch.tensor(0.5)
    st = step_stats(x, y, rec_x, rec_y, aux=2.0)
    assert list(st) == ["rec_x", "rec_y", "ev_x", "ev_y", "aux"] and len(st) == 5
    assert set(st._lazy) == {"ev_x", "ev_y"}  # nothing computed yet
    tv = (x - x.mean(0)).square().sum(1).mean()
    torch.testing.assert_close(st["ev_x"], 1 - rec_x / tv)
    assert set(st._lazy) == {"ev_y"} and float(st["aux"]) == 2.0
    d = {k: float(v) for k, v in st.items()}
    assert d["ev_y"] == pytest.approx(float(1 - rec_y / (y - y.mean(0)).square().sum(1).mean()), rel=1e-5)
