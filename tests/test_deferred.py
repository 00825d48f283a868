"""Deferred weight gradients (mmsae.engine.deferred): the K-sparse backward hands W_enc's and W_dec's gradients to
RowAdam as entries; the update is the one of the dense gradient."""

import numpy as np
import pytest
import torch

from mmsae.engine import deferred
from mmsae.models import build_model
from mmsae.study.experiments import method_config
from mmsae.study.methods import CROSSCODER, METHOD_ORDER
from mmsae.study.profiles import get_profile
from mmsae.train import TrainConfig, train
from mmsae.train.optim import RowAdam


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _data(n=96, d=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g)
    return x, x + 0.5 * torch.randn(n, d, generator=g)


def _model(name, d=32, m=256, k=8):
    P = get_profile("smoke", synthetic_d=d, m=m, k=k, dead_after=200)
    torch.manual_seed(0)
    return build_model(method_config(name, P, d=d))


def _dense_grads(model, x, y):
    model.zero_grad(set_to_none=True)
    torch.manual_seed(5)  # the same mask draw (MGSAE, MaskedSAE) as the deferred step below
    model.training_loss(x, y).loss.backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("name", [n for n in METHOD_ORDER if n != CROSSCODER])
def test_the_entries_make_the_dense_gradient(name):
    """Under deferral W_enc/W_dec get no .grad; their entries sum to the dense backward's gradient, and every other
    gradient is unchanged."""
    x, y = _data()
    model = _model(name)
    model.init_from_data(x, y)
    buffers = {n: b.clone() for n, b in model.named_buffers()}
    dense = _dense_grads(model, x, y)
    for n, b in model.named_buffers():
        b.copy_(buffers[n])
    mats = [p for p in model.parameters() if p.dim() == 2]
    with deferred.defer_gradients(mats):
        model.zero_grad(set_to_none=True)
        torch.manual_seed(5)
        model.training_loss(x, y).loss.backward()
        names = {id(p): n for n, p in model.named_parameters()}
        took, deferred_names, prebias = 0, set(), 0
        for p in mats:
            parts = deferred.take(p)
            if parts:
                took += 1
                deferred_names.add(names[id(p)])
                assert p.grad is None, names[id(p)]
                got = deferred.materialize(parts, p)
                torch.testing.assert_close(got, dense[names[id(p)]], rtol=1e-5, atol=1e-6 * float(dense[names[id(p)]].abs().max()))
                for b, gb in deferred.prebias_grads(parts, p):  # an encoder's entries carry its pre-bias gradient
                    deferred.add_grad(b, gb)
                    prebias += 1
        assert took >= 2  # an encoder and a decoder at least
        assert prebias >= 1  # and the encoder's pre-bias gradient
    for n, p in model.named_parameters():
        if n in dense and n not in deferred_names:
            torch.testing.assert_close(p.grad, dense[n], rtol=1e-5, atol=1e-6 * float(dense[n].abs().max()), msg=n)
    assert not any(deferred.deferring(p) for p in mats)  # the context is gone


@pytest.mark.parametrize("name", METHOD_ORDER)
def test_training_with_deferred_gradients_matches_dense_gradients(name):
    """30 steps of the loop with and without deferral: the same losses and weights up to float32 drift (the W_enc
    update moves from torch's fused Adam to the compiled pass, which orders its arithmetic differently; over 30
    steps that moves a loss by at most about 3e-4 here). The exact check is the test above."""
    x, y = _data(n=256)

    def run(defer):
        model = _model(name)
        res = train(model, (x, y), TrainConfig(steps=30, batch_size=64, lr=2e-3, warmup_steps=5, log_every=1,
                                               progress=False, defer_grads=defer))
        return np.array([h["loss"] for h in res.history]), model

    a, ma = run(True)
    b, mb = run(False)
    np.testing.assert_allclose(a, b, rtol=1e-3)
    for (n, p), q in zip(ma.state_dict().items(), mb.state_dict().values()):
        if p.is_floating_point():
            torch.testing.assert_close(p, q, rtol=1e-2, atol=1e-3 * float(q.abs().max()), msg=n)


def test_a_matrix_with_entries_and_a_dense_gradient_uses_both():
    """Something else in the step also uses W_dec densely: RowAdam adds the entries to .grad; the step equals
    torch's Adam on the dense gradient."""
    x, y = _data()
    ref, mod = _model(METHOD_ORDER[0]), _model(METHOD_ORDER[0])
    for m in (ref, mod):
        m.init_from_data(x, y)

    def loss(m):
        return m.training_loss(x, y).loss + 1e-2 * m.W_dec.square().sum()

    # reference: dense gradients, RowAdam without deferral (it projects and renormalises W_dec)
    o_ref = RowAdam(list(ref.parameters()), unit_rows=ref.unit_norm_rows(), lr=1e-3)
    o_ref.zero_grad()
    loss(ref).backward()
    o_ref.step()
    params = list(mod.parameters())
    o = RowAdam(params, unit_rows=mod.unit_norm_rows(), rows=[p for p in params if p.dim() == 2], lr=1e-3)
    with deferred.defer_gradients(o.compiled_params):
        o.zero_grad()
        loss(mod).backward()
        assert mod.W_dec.grad is not None and deferred.pending(mod.W_dec)  # both kinds
        assert mod.W_enc.grad is None and deferred.pending(mod.W_enc)
        o.step()
        assert not deferred.pending(mod.W_dec) and not deferred.pending(mod.W_enc)
    for (n, p), q in zip(mod.named_parameters(), ref.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6, msg=n)


def test_zero_grad_drops_entries_and_outside_the_context_grads_are_dense():
    x, y = _data()
    model = _model(METHOD_ORDER[0])
    model.init_from_data(x, y)
    params = list(model.parameters())
    o = RowAdam(params, unit_rows=model.unit_norm_rows(), rows=[p for p in params if p.dim() == 2], lr=1e-3)
    with deferred.defer_gradients(o.compiled_params):
        model.training_loss(x, y).loss.backward()
        assert deferred.pending(model.W_enc)
        o.zero_grad()
        assert not deferred.pending(model.W_enc) and not deferred.pending(model.W_dec)
    model.training_loss(x, y).loss.backward()
    assert model.W_enc.grad is not None and model.W_dec.grad is not None


@pytest.mark.parametrize("dead", [False, True])
@pytest.mark.parametrize("name", ["GSAE", METHOD_ORDER[0]])
def test_the_update_with_the_pre_bias_in_the_pass_is_the_dense_update(name, dead, monkeypatch):
    """One RowAdam step with the encoder's entries (and its pre-bias gradient summed inside the encoder's pass) equals
    the step on the dense gradients, on one thread and, bit for bit, on two; with a third of the latents dead, the
    TopK and AuxK entries of the encoder share their source rows (deferred.grouped)."""
    x, y = _data()
    ref = _model(name)
    ref.init_from_data(x, y)
    if dead:
        with torch.no_grad():
            ref.since_fired[::3] = ref.config.dead_after
    state = {k: v.clone() for k, v in ref.state_dict().items()}
    o_ref = RowAdam(list(ref.parameters()), unit_rows=ref.unit_norm_rows(), lr=1e-3)
    o_ref.zero_grad()
    torch.manual_seed(5)
    ref.training_loss(x, y).loss.backward()
    o_ref.step()
    got = []
    for threads in (1, 2):
        torch.set_num_threads(threads)
        mod = _model(name)
        mod.load_state_dict(state)
        params = list(mod.parameters())
        o = RowAdam(params, unit_rows=mod.unit_norm_rows(), rows=[p for p in params if p.dim() == 2], lr=1e-3)
        with deferred.defer_gradients(o.compiled_params):
            o.zero_grad()
            torch.manual_seed(5)
            mod.training_loss(x, y).loss.backward()
            parts = [e for e in getattr(mod.W_enc, deferred._ATTR)]
            assert any(e.prebias is mod.b_pre for e in parts)  # the pre-bias gradient goes with the entries
            assert len(parts) == (2 if dead else 1)  # AuxK's entries too
            if dead:
                assert deferred.grouped(parts, mod.W_enc.shape[0]).S is parts[0].S  # one copy of the rows
            o.step()
        for (n, p), q in zip(mod.named_parameters(), ref.parameters()):
            torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6, msg=n)
        got.append([p.detach().clone() for p in mod.parameters()])
    assert all(torch.equal(a, b) for a, b in zip(*got))
