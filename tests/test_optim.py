"""RowAdam (mmsae.train.optim) against torch's Adam and the model's decoder-norm hooks: the
compiled Adam pass, the fused projection and renormalisation, the state it shares with
torch's Adam (checkpoints), the fallbacks, and the training loop with and without it."""

import copy

import numpy as np
import pytest
import torch

from mmsae.models import SAEConfig, build_model, mgsae_config
from mmsae.engine.kernels import adam_rows
from mmsae.train import TrainConfig, train
from mmsae.train.optim import RowAdam


def _unit(m, d, seed):
    return torch.nn.functional.normalize(torch.randn(m, d, generator=torch.Generator().manual_seed(seed)), dim=1)


def _grads(n, shape, seed):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(*shape, generator=g) * 10.0 ** float(torch.randint(-3, 1, (), generator=g))
            for _ in range(n)]


def test_adam_rows_plain_is_torch_adam():
    """``unit=False``: exactly Adam's update (moments, bias corrections, eps), over steps."""
    P = _unit(300, 40, 0)
    ref = torch.nn.Parameter(P.clone())
    opt = torch.optim.Adam([ref], lr=3e-3, betas=(0.8, 0.95), eps=1e-6, foreach=False)
    M, V = torch.zeros_like(P), torch.zeros_like(P)
    for t, g in enumerate(_grads(6, P.shape, 1), start=1):
        ref.grad = g.clone()
        opt.step()
        f = np.float32
        adam_rows(P.numpy(), g.numpy(), M.numpy(), V.numpy(), f(3e-3 / (1 - 0.8 ** t)), f(0.8), f(0.95), f(1e-6),
                  f(np.sqrt(1 - 0.95 ** t)), False, 0, 300)
        torch.testing.assert_close(P, ref.detach(), rtol=1e-5, atol=1e-7)
        torch.testing.assert_close(M, opt.state[ref]["exp_avg"], rtol=1e-5, atol=1e-8)
        torch.testing.assert_close(V, opt.state[ref]["exp_avg_sq"], rtol=1e-5, atol=1e-10)


def _reference_step(model, opt):
    """The unfused order: project (hook), torch's Adam, renormalise (hook)."""
    model.before_optimizer_step()
    opt.step()
    model.after_optimizer_step()


@pytest.mark.parametrize("arch", ["topk", "modality_specific"])
def test_row_adam_fuses_the_decoder_hooks(arch, threads):
    """RowAdam + the loop's hook skipping == hooks around torch's Adam, for a model with one
    decoder and for the two of the modality-specific pair; the result does not depend on the
    thread count; every atom stays at unit norm and W_dec.grad is left as it was."""
    cfg = SAEConfig(arch=arch, d=24, m=2048, k=4)
    grads_per_step = None
    out = {}
    for name, n in (("fused1", 1), ("fused2", 2), ("reference", 1)):
        threads(n)
        model = build_model(cfg, seed=0)
        params = list(model.parameters())
        unit = [i for i, p in enumerate(params) if any(p is W for W in model.unit_norm_rows())]
        if grads_per_step is None:
            grads_per_step = [[torch.randn(p.shape, generator=torch.Generator().manual_seed(10 * s + i))
                               for i, p in enumerate(params)] for s in range(4)]
        if name == "reference":
            opt = torch.optim.Adam(params, lr=1e-2, foreach=False)
        else:
            opt = RowAdam(params, unit_rows=model.unit_norm_rows(), lr=1e-2, fused=True)
            assert opt.fused_unit_rows == frozenset(id(W) for W in model.unit_norm_rows())
        for gs in grads_per_step:
            for p, g in zip(params, gs):
                p.grad = g.clone()
            if name == "reference":
                _reference_step(model, opt)
            else:
                model.before_optimizer_step(skip=opt.fused_unit_rows)
                opt.step()
                model.after_optimizer_step(skip=opt.fused_unit_rows)
                for p, g in zip(params, gs):
                    assert torch.equal(p.grad, g)  # not projected in place
        out[name] = [p.detach().clone() for p in params]
    assert len(unit) == (2 if arch == "modality_specific" else 1)
    assert all(torch.equal(a, b) for a, b in zip(out["fused1"], out["fused2"]))
    for a, b in zip(out["fused1"], out["reference"]):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
    for i in unit:
        nrm = out["fused1"][i].norm(dim=1)
        torch.testing.assert_close(nrm, torch.ones_like(nrm))


def test_row_adam_state_is_torch_adams():
    """A RowAdam state dict loads into torch's Adam and the other way round, and training goes
    on the same (checkpoints from either resume with the other)."""
    W = torch.nn.Parameter(_unit(512, 16, 3))
    b = torch.nn.Parameter(torch.zeros(512))
    opt = RowAdam([W, b], unit_rows=[W], lr=1e-2)
    for g in _grads(3, (512, 16), 4):
        W.grad, b.grad = g, g[:, 0].clone()
        opt.step()
    sd = copy.deepcopy(opt.state_dict())  # as saved to disk: no tensor shared with opt
    assert set(sd["state"][0]) == {"step", "exp_avg", "exp_avg_sq"} and float(sd["state"][0]["step"]) == 3.0
    W2 = torch.nn.Parameter(W.detach().clone())
    b2 = torch.nn.Parameter(b.detach().clone())
    plain = torch.optim.Adam([W2, b2], lr=1e-2)
    plain.load_state_dict(sd)
    back = RowAdam([W2, b2], unit_rows=[W2], lr=1e-2)
    back.load_state_dict(copy.deepcopy(plain.state_dict()))
    for s in ("exp_avg", "exp_avg_sq"):
        assert torch.equal(back.state[W2][s], opt.state[W][s])
    g = _grads(1, (512, 16), 5)[0]
    W.grad, b.grad, W2.grad, b2.grad = g, g[:, 0].clone(), g.clone(), g[:, 0].clone()
    opt.step()
    back.step()
    assert torch.equal(W, W2) and torch.equal(b, b2)
    assert float(back.state[W2]["step"]) == 4.0


def test_row_adam_falls_back_to_torch_and_the_hooks():
    """A decoder the compiled pass cannot take (weight decay here) is updated by torch's Adam,
    is not reported as fused, and so the model's hooks still project and renormalise it."""
    model = build_model(SAEConfig(d=8, m=64, k=4), seed=0)
    opt = RowAdam(model.parameters(), unit_rows=model.unit_norm_rows(), lr=1e-2, weight_decay=0.1)
    assert opt.fused_unit_rows == frozenset()
    ref_model = build_model(SAEConfig(d=8, m=64, k=4), seed=0)
    ref = torch.optim.Adam(ref_model.parameters(), lr=1e-2, weight_decay=0.1)
    for s in range(3):
        for p, q in zip(model.parameters(), ref_model.parameters()):
            p.grad = torch.randn(p.shape, generator=torch.Generator().manual_seed(s))
            q.grad = p.grad.clone()
        _reference_step(model, opt)
        _reference_step(ref_model, ref)
    for p, q in zip(model.parameters(), ref_model.parameters()):
        torch.testing.assert_close(p, q)


@pytest.mark.parametrize("make", [lambda: SAEConfig(d=32, m=256, k=8), lambda: mgsae_config(d=32, m=256, k=8)])
def test_training_with_row_adam_matches_torch_adam(make):
    """The loop's CPU optimiser (RowAdam, hooks skipped) against torch's foreach Adam with the
    hooks (``fused_adam=False``): the same model after 30 steps, to float32 rounding."""
    g = torch.Generator().manual_seed(7)
    x = torch.nn.functional.normalize(torch.randn(400, 32, generator=g), dim=1)
    y = torch.nn.functional.normalize(x + 0.5 * torch.randn(400, 32, generator=g), dim=1)
    models = {}
    for fused in ("auto", False):
        model = build_model(make(), seed=0)
        train(model, (x, y), TrainConfig(steps=30, batch_size=64, lr=1e-3, progress=False, fused_adam=fused))
        models[fused] = model
    for (n, a), b in zip(models["auto"].state_dict().items(), models[False].state_dict().values()):
        torch.testing.assert_close(a, b, rtol=2e-4, atol=2e-5, msg=n)
    torch.testing.assert_close(models["auto"].W_dec.norm(dim=1), torch.ones(256))
