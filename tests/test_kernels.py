"""The compiled CPU kernels (mmsae.engine.kernels) against plain torch definitions: the masked
top-k scan, the latent-by-latent sparse backward, the decoder-norm hooks; and that splitting
each over two threads gives bit-identical results."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import mmsae.engine.sparse as sp
from mmsae.models import SAEConfig, build_model
from mmsae.engine import kernels
from mmsae.engine.kernels import entries_by_latent


def test_entries_by_latent_is_a_stable_grouping():
    idx = torch.randint(0, 50, (1000,), generator=torch.Generator().manual_seed(0))
    order, ptr = entries_by_latent(idx.numpy(), 64)
    ref = np.argsort(idx.numpy(), kind="stable")
    assert np.array_equal(order, ref)
    assert np.array_equal(np.diff(ptr), np.bincount(idx.numpy(), minlength=64)) and ptr[0] == 0


def _dense_masked_topk(pre, k, mask, pairs):
    R, m = pre.shape
    rows = pairs[:, None] if mask.per_pair else torch.zeros(R, 1, dtype=torch.long)
    keep = mask.keep(rows, torch.arange(m)[None]).expand(R, m)
    return pre.masked_fill(~keep, float("-inf")).topk(k, dim=-1), keep


@pytest.mark.parametrize("per_pair,offset", [(True, 0), (True, 77), (False, 0)])
def test_masked_scan_is_the_dense_masked_topk(per_pair, offset, threads):
    g = torch.Generator().manual_seed(1)
    R, m, k = 300, 1024, 16
    pre = torch.randn(R, m, generator=g)
    pre[3] = pre[3].sort().values  # the bound is loosest on sorted rows
    pre[4] = torch.relu(pre[4] - 2.0)  # mostly zeros: ties at the k-th value
    pre[6, 10] = float("nan")  # no bound holds: the exact fallback answers
    pairs = torch.arange(R) % 120
    mask = sp.HashMask(98765, 0.3, per_pair, offset)
    threads(1)
    v, i = sp._select(pre, k, mask, pairs)
    (rv, _), keep = _dense_masked_topk(pre, k, mask, pairs)
    ok = torch.isfinite(rv).all(1) & ~pre.isnan().any(1)
    assert ok.sum() >= R - 2
    assert torch.equal(v[ok].sort(1).values, rv[ok].sort(1).values)
    assert keep.gather(1, i).all()
    kept4 = torch.arange(m)[keep[4]]
    tie = rv[4, -1]
    above = kept4[pre[4, kept4] > tie].tolist()
    want = above + kept4[pre[4, kept4] == tie].tolist()[:k - len(above)]
    assert sorted(i[4].tolist()) == sorted(want)  # ties: the lowest kept indices
    threads(2)
    v2, i2 = sp._select(pre, k, mask, pairs)
    assert torch.equal(v2[ok], v[ok]) and torch.equal(i2[ok], i[ok])  # the scan's rows: the same order
    assert torch.equal(i2.sort(1).values, i.sort(1).values)  # (torch.topk's fallback rows: any order)


def test_rows_the_mask_starves_are_scanned_again_with_more_candidates(monkeypatch):
    """A row whose largest entries the mask mostly drops (fewer than k kept among the first
    candidates): the compiled scan runs again on that row with 4x the candidates and still gives
    the exact masked top-k, without the dense fallback."""
    g = torch.Generator().manual_seed(5)
    R, m, k = 64, 4096, 16
    pre = torch.randn(R, m, generator=g)
    pairs = torch.arange(R)
    mask = sp.HashMask(2024, 0.2, True)
    keep = mask.dense(R, m)
    dropped = torch.arange(m)[~keep[7]]
    pre[7, dropped[:200]] = 10.0 + torch.rand(200, generator=g)  # the row's top 200: all dropped
    kc = sp._candidates(k, m, mask.rate)
    first = sp._chunk_scan(pre, k, kc, mask, pairs)
    assert first[2][7] and first[2].sum() == 1  # the first scan cannot answer row 7
    monkeypatch.setattr(sp.HashMask, "keep", lambda *a, **kw: pytest.fail("dense fallback used"))
    v, i = sp._select(pre, k, mask, pairs)
    rv = pre.masked_fill(~keep, float("-inf")).topk(k, dim=-1).values
    assert torch.equal(v.sort(1).values, rv.sort(1).values)
    assert keep.gather(1, i).all()


def test_dense_fallback_keeps_dropped_latents_at_zero():
    """Fewer than k kept positive entries (the dense definition pads with zeros): a padding slot
    may point at a dropped latent, and its value is 0 even where that latent's raw value is
    positive, so it does not fire."""
    R, m, k = 4, 64, 8
    mask = sp.HashMask(11, 0.5, True)
    keep = mask.dense(R, m)
    pre = torch.full((R, m), -1.0)
    pre[~keep] = 5.0  # every dropped latent strongly positive
    pre[0, torch.arange(m)[keep[0]][:3]] = 2.0  # row 0: three kept positive entries
    v, i = sp._select(pre, k, mask, torch.arange(R))
    dense = torch.relu(pre).masked_fill(~keep, 0.0).topk(k, dim=-1).values
    assert torch.equal(torch.relu(v).sort(1).values, dense.sort(1).values)
    assert (torch.relu(v)[~keep.gather(1, i)] == 0).all()


@pytest.mark.parametrize("m,k,masked", [(1000, 16, False), (1000, 16, True), (8192, 32, True), (200, 40, False)])
def test_scan_adds_the_bias_and_handles_tails_and_infinities(m, k, masked, threads):
    """The scan of ``pre + b``: the same entries as the dense (masked) top-k of the sum, with
    a short last chunk (m not a multiple of 16), chunks shorter than 16 where k needs more
    chunks (m=200, k=40), and rows with infinities or a bias with NaN left to torch."""
    g = torch.Generator().manual_seed(m + k)
    R = 256
    pre = torch.randn(R, m, generator=g)
    b = torch.randn(m, generator=g)
    pre[5, 3] = float("inf")
    pre[6, m - 1] = float("-inf")
    pre[7, m - 1] = 50.0  # the largest entry in the short last chunk
    pairs = torch.arange(R) % 100
    mask = sp.HashMask(777, 0.4, True) if masked else None
    threads(1)
    v, i = sp._select(pre, k, mask, pairs, b)
    full = pre + b
    if masked:
        (rv, _), keep = _dense_masked_topk(full, k, mask, pairs)
        assert keep.gather(1, i).all()
    else:
        rv = full.topk(k, dim=-1).values
    assert torch.equal(v.sort(1, descending=True).values, rv)
    assert torch.equal(full.gather(1, i), v)
    if not masked:
        assert m - 1 in i[7].tolist()  # found in the short last chunk
    threads(2)
    v2, i2 = sp._select(pre, k, mask, pairs, b)
    assert torch.equal(v2, v) and torch.equal(i2, i)
    threads(1)
    b_nan = b.clone()
    b_nan[0] = float("nan")  # every row holds NaN: torch's answer (NaN ranks first)
    v3, i3 = sp.topk_rows(pre, k, b_nan)
    assert (i3 == 0).any(1).all() and v3.isnan().any(1).all()


def _grads(fn, *inputs):
    leaves = [t.detach().clone().requires_grad_(t.is_floating_point()) for t in inputs]
    out = fn(*leaves)
    g = torch.randn(out.shape, generator=torch.Generator().manual_seed(5))
    out.backward(g)
    return out.detach(), [t.grad for t in leaves if t.is_floating_point()]


@pytest.mark.parametrize("flat", [False, True])
def test_sparse_decode_backward_matches_embedding_bag(flat, threads):
    gen = torch.Generator().manual_seed(2)
    R, K, m, d = 512, 16, 300, 24  # 8192 entries: the backward runs on two threads below
    W = torch.randn(m, d, generator=gen)
    b_pre = torch.randn(2, d, generator=gen)
    idx = torch.stack([torch.randperm(m, generator=gen)[:K] for _ in range(R)])
    vals = torch.rand(R, K, generator=gen)
    mod = [(slice(0, R // 2), 0), (slice(R // 2, R), 1)]
    if flat:
        rows = torch.arange(R).repeat_interleave(K)
        counts = torch.bincount(rows, minlength=R)
        offsets = torch.cumsum(counts, 0) - counts
        ours = lambda W_, v_, b_: sp.sparse_decode(W_, v_.reshape(-1), idx.reshape(-1), rows, offsets, b_, mod)
        ref = lambda W_, v_, b_: F.embedding_bag(idx.reshape(-1), W_, offsets, per_sample_weights=v_.reshape(-1),
                                                  mode="sum") + torch.cat([b_[0].expand(R // 2, -1),
                                                                           b_[1].expand(R // 2, -1)])
    else:
        ours = lambda W_, v_, b_: sp.sparse_decode(W_, v_, idx, b_pre=b_, mod=mod)
        ref = lambda W_, v_, b_: F.embedding_bag(idx, W_, per_sample_weights=v_, mode="sum") + torch.cat(
            [b_[0].expand(R // 2, -1), b_[1].expand(R // 2, -1)])
    threads(1)
    o1, g1 = _grads(ours, W, vals, b_pre)
    o0, g0 = _grads(ref, W, vals, b_pre)
    torch.testing.assert_close(o1, o0, rtol=1e-5, atol=1e-6)
    for a, b in zip(g1, g0):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    threads(2)
    o2, g2 = _grads(ours, W, vals, b_pre)
    assert torch.equal(o2, o1) and all(torch.equal(a, b) for a, b in zip(g2, g1))


def test_sparse_encoder_values_backward_matches_torch_path(monkeypatch, threads):
    gen = torch.Generator().manual_seed(3)
    R, K, m, d = 512, 16, 300, 24
    u_c = torch.randn(R, d, generator=gen)
    W = torch.randn(m, d, generator=gen)
    b_enc = torch.randn(m, generator=gen)
    b_pre = torch.randn(2, d, generator=gen)
    idx = torch.stack([torch.randperm(m, generator=gen)[:K] for _ in range(R)])
    raw = torch.randn(R, K, generator=gen)  # some negative: ReLU gradient 0 there
    mod = [(slice(0, R // 2), 0), (slice(R // 2, R), 1)]
    fn = lambda W_, be, bp: sp.sparse_encoder_values(raw, u_c, idx, W_, be, bp, mod)
    threads(1)
    _, g_kernel = _grads(fn, W, b_enc, b_pre)
    threads(2)
    _, g_two = _grads(fn, W, b_enc, b_pre)
    assert all(torch.equal(a, b) for a, b in zip(g_two, g_kernel))
    threads(1)
    monkeypatch.setattr(sp, "_kernel_ok", lambda *ts: False)  # torch's sparse matmul and index_add
    _, g_ref = _grads(fn, W, b_enc, b_pre)
    for a, b in zip(g_kernel, g_ref):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_decoder_hooks_match_torch_and_threads(monkeypatch, threads):
    import mmsae.models.topk as tk

    model = build_model(SAEConfig(d=24, m=4096, k=4), seed=0)
    g = torch.Generator().manual_seed(4)
    grad = torch.randn(4096, 24, generator=g)
    grad[7] = 0.0  # a latent without gradient
    W_next = model.W_dec.detach() * 3.0 + 0.1 * torch.randn(4096, 24, generator=g)
    out = {}
    for name, n, kernel in (("kernel1", 1, True), ("kernel2", 2, True), ("torch", 1, False)):
        threads(n)
        monkeypatch.setattr(tk, "_rows_kernel_ok", (lambda *ts: True) if kernel else (lambda *ts: False))
        model.W_dec.grad = grad.clone()
        model.before_optimizer_step()
        assert not model.W_dec.grad.requires_grad  # the hook runs without autograd
        projected = model.W_dec.grad.clone()
        with torch.no_grad():
            saved = model.W_dec.detach().clone()
            model.W_dec.copy_(W_next)
        model.after_optimizer_step()
        out[name] = (projected, model.W_dec.detach().clone())
        with torch.no_grad():
            model.W_dec.copy_(saved)
    assert all(torch.equal(a, b) for a, b in zip(out["kernel1"], out["kernel2"]))
    for a, b in zip(out["kernel1"], out["torch"]):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    projected, renormed = out["kernel1"]
    assert (projected * model.W_dec.detach()).sum(1).abs().max() < 1e-5
    assert torch.equal(projected[7], torch.zeros(24))
    torch.testing.assert_close(renormed.norm(dim=1), torch.ones(4096))


def test_torch_fallbacks_match_the_kernels(monkeypatch):
    """What runs off CPU (CUDA, other dtypes): the torch forms of the masked selection and of
    the decode with pre-biases give what the kernels give."""
    g = torch.Generator().manual_seed(6)
    pre = torch.randn(200, 512, generator=g)
    pairs = torch.arange(200) % 90
    mask = sp.HashMask(4242, 0.2, True)
    v, i = sp._select(pre, 8, mask, pairs)
    R, m, K, d = 64, 100, 8, 12
    W = torch.randn(m, d, generator=g, requires_grad=True)
    vals = torch.rand(R, K, generator=g, requires_grad=True)
    b_pre = torch.randn(2, d, generator=g, requires_grad=True)
    idx = torch.stack([torch.randperm(m, generator=g)[:K] for _ in range(R)])
    mod = [(slice(0, R // 2), 0), (slice(R // 2, R), 1)]
    out = sp.sparse_decode(W, vals, idx, b_pre=b_pre, mod=mod)
    grads = torch.autograd.grad(out.square().sum(), (W, vals, b_pre))
    monkeypatch.setattr(sp, "_chunk_scan", lambda *a, **k: None)  # the torch hash on the top candidates
    monkeypatch.setattr(sp, "_kernel_ok", lambda *ts: False)  # embedding_bag and an add
    v0, i0 = sp._select(pre, 8, mask, pairs)
    assert torch.equal(v.sort(1).values, v0.sort(1).values) and torch.equal(i.sort(1).values, i0.sort(1).values)
    out0 = sp.sparse_decode(W, vals, idx, b_pre=b_pre, mod=mod)
    torch.testing.assert_close(out, out0)
    for a, b in zip(grads, torch.autograd.grad(out0.square().sum(), (W, vals, b_pre))):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)



def test_latent_grouping_is_reused_only_for_the_same_unchanged_tensor():
    """The decode's and the encoder values' backward share one grouping of ``idx``: reused for
    the same tensor, recomputed after an in-place change or for another tensor."""
    from mmsae.engine.sparse import _entries_by_latent

    m = 50
    idx = torch.randint(0, m, (40, 6))
    order, ptr = _entries_by_latent(idx, m)
    again = _entries_by_latent(idx, m)
    assert again[0] is order and again[1] is ptr
    ref = kernels.entries_by_latent(idx.reshape(-1).numpy(), m)
    np.testing.assert_array_equal(order, ref[0])
    np.testing.assert_array_equal(ptr, ref[1])
    idx[0, 0] = (idx[0, 0] + 1) % m  # in place: the version counter moves
    changed = _entries_by_latent(idx, m)
    assert changed[0] is not order
    ref = kernels.entries_by_latent(idx.reshape(-1).numpy(), m)
    np.testing.assert_array_equal(changed[0], ref[0])
    np.testing.assert_array_equal(changed[1], ref[1])
    other = idx.clone()
    assert _entries_by_latent(other, m)[0] is not changed[0]
    assert _entries_by_latent(other, m + 1)[1].shape == (m + 2,)


@pytest.mark.parametrize("B", [64, 3000])  # 3000 pairs: split over two threads
def test_compiled_group_l21_matches_the_torch_form(monkeypatch, B, threads):
    """float32 as in training: the compiled pass (value and derivatives) against the torch form
    the GPU uses, with shared latents, zero activations (at a shared and at a y-only latent),
    a zero group, different K for x and y, and a y value of another dtype."""
    import mmsae.models.losses as losses

    g = torch.Generator().manual_seed(3)
    m, Kx, Ky = 500, 8, 6
    perm = torch.stack([torch.randperm(m, generator=g) for _ in range(B)])
    ix = perm[:, :Kx]
    iy = torch.cat([perm[:, 2:5], perm[:, Kx:Kx + Ky - 3]], dim=1)  # three latents shared by every pair
    vx = torch.rand(B, Kx, generator=g)
    vy = torch.rand(B, Ky, generator=g, dtype=torch.float64)
    vx[0, 2], vy[0, 0] = 0.0, 0.0  # a shared latent silent in both: the group is 0
    vx[1, 3] = 0.0  # zero on one side of a shared latent
    vy[2, 5] = 0.0  # a y-only slot at 0
    vx.requires_grad_()
    vy.requires_grad_()
    assert losses._compiled_match(ix, iy)
    value = losses.group_l21(vx, ix, vy, iy)
    grads = torch.autograd.grad(2.5 * value, (vx, vy))
    monkeypatch.setattr(losses, "_compiled_match", lambda i_x, i_y: False)
    ref = losses.group_l21(vx, ix.contiguous(), vy.float(), iy)
    ref_grads = torch.autograd.grad(2.5 * ref, (vx, vy))
    assert value.dtype == torch.float32
    torch.testing.assert_close(value, ref, rtol=1e-6, atol=0)
    for a, b in zip(grads, ref_grads):
        assert a.dtype == b.dtype
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-9)
    assert grads[0][0, 2] == 0 and grads[1][0, 0] == 0 and grads[1][2, 5] == 0


@pytest.mark.parametrize("R", [1100, 2600])  # above the row count where the compiled decode takes over
def test_blocked_decode_matches_embedding_bag(R, threads):
    """Large batches decode with kernels.decode_rows (blocks of rows, latent by latent): the
    same reconstruction and gradients as embedding_bag, with repeated latents and zero values,
    on one and on two threads (bit-identical)."""
    assert R >= sp._DECODE_ROWS
    g = torch.Generator().manual_seed(8)
    m, d, K = 300, 24, 6
    W = torch.randn(m, d, generator=g, requires_grad=True)
    vals = torch.rand(R, K, generator=g)
    vals[::7, 0] = 0.0
    vals.requires_grad_()
    b_pre = torch.randn(2, d, generator=g, requires_grad=True)
    idx = torch.stack([torch.randperm(m, generator=g)[:K] for _ in range(R)])
    idx[:, 1] = idx[0, 1]  # one atom in every row
    mod = [(slice(0, R // 2), 0), (slice(R // 2, R), 1)]
    threads(1)
    out = sp.sparse_decode(W, vals, idx, b_pre=b_pre, mod=mod)
    G = torch.randn(R, d, generator=g)
    grads = torch.autograd.grad((out * G).sum(), (W, vals, b_pre))
    ref = F.embedding_bag(idx, W, per_sample_weights=vals, mode="sum") + torch.cat(
        [b_pre[0].expand(R // 2, d), b_pre[1].expand(R - R // 2, d)])
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    for a, b in zip(grads, torch.autograd.grad((ref * G).sum(), (W, vals, b_pre))):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-4)
    threads(2)
    assert torch.equal(sp.sparse_decode(W, vals, idx, b_pre=b_pre, mod=mod), out)


def _decode_case(R=40, K=10, m=300, d=24, seed=0):
    g = torch.Generator().manual_seed(seed)
    W = torch.randn(m, d, generator=g)
    idx = torch.stack([torch.randperm(m, generator=g)[:K] for _ in range(R)])
    vals = torch.rand(R, K, generator=g)
    b_pre = torch.randn(2, d, generator=g)
    u = torch.randn(R, d, generator=g)
    return W, idx, vals, b_pre, u


@pytest.mark.parametrize("with_out_grad", [False, True])
def test_decode_with_errors_matches_decode_then_squared_errors(with_out_grad):
    """SparseDecodeErrors (kernels.decode_errors): the decode, the squared errors and every gradient (values, W,
    pre-bias, u) equal those of embedding_bag plus the pre-bias rows and ||u_hat - u||^2, also when the
    reconstruction itself receives a gradient."""
    W, idx, vals, b_pre, u = _decode_case()
    R = idx.shape[0]
    mod = [(slice(0, R // 2), 0), (slice(R // 2, R), 1)]
    w_out = torch.randn(R, W.shape[1], generator=torch.Generator().manual_seed(9))

    def run(fused):
        leaves = [t.clone().requires_grad_() for t in (vals, W, b_pre, u)]
        v, Wl, bl, ul = leaves
        if fused:
            u_hat, se = sp.SparseDecodeErrors.apply(v, idx, Wl, bl, mod, ul)
        else:
            u_hat = F.embedding_bag(idx, Wl, per_sample_weights=v, mode="sum") + torch.cat(
                [bl[0].expand(R // 2, -1), bl[1].expand(R - R // 2, -1)])
            se = (u_hat - ul).pow(2).sum(-1)
        loss = (se * torch.arange(1.0, R + 1)).sum() + ((u_hat * w_out).sum() if with_out_grad else 0)
        loss.backward()
        return [u_hat.detach(), se.detach()] + [t.grad for t in leaves]

    for a, b in zip(run(True), run(False)):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_prefix_decode_errors_match_the_cumulative_decodes():
    """PrefixDecodeErrors (kernels.prefix_errors, prefix_suffix_sums): each prefix's squared errors, the full
    reconstruction and every gradient equal the cumulative torch form, with a gradient on the full reconstruction
    too."""
    W, idx, vals, b_pre, u = _decode_case(R=30, K=12, m=64)
    R, K = idx.shape
    prefixes = [8, 16, 32, 64]
    rows = torch.arange(R).repeat_interleave(K)
    cols, _ = idx.sort(dim=1)
    cols = cols.reshape(-1)
    v = vals.reshape(-1)
    group = torch.bucketize(cols, torch.tensor(prefixes), right=True)
    mod = [(slice(0, R // 2), 0), (slice(R // 2, R), 1)]
    bias = torch.cat([torch.zeros(R // 2, dtype=torch.long), torch.ones(R - R // 2, dtype=torch.long)])
    w_last = torch.randn(R, W.shape[1], generator=torch.Generator().manual_seed(4))
    w_per = torch.rand(len(prefixes), R, generator=torch.Generator().manual_seed(5))

    def run(fused):
        leaves = [t.clone().requires_grad_() for t in (v, W, b_pre, u)]
        vl, Wl, bl, ul = leaves
        if fused:
            per, last = sp.prefix_decode_errors(Wl, vl, rows, cols, group, len(prefixes), ul, bl, mod)
        else:
            recs, acc = [], bl[bias]
            for gi in range(len(prefixes)):
                sel = group == gi
                part = torch.zeros(R, W.shape[1]).index_add(0, rows[sel], vl[sel, None] * Wl[cols[sel]])
                acc = acc + part
                recs.append(acc)
            per = torch.stack([(r - ul).pow(2).sum(-1) for r in recs])
            last = recs[-1]
        ((per * w_per).sum() + (last * w_last).sum()).backward()
        return [per.detach(), last.detach()] + [t.grad for t in leaves]

    for a, b in zip(run(True), run(False)):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
