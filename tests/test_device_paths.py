"""The device paths on the CPU: what CUDA runs and a CPU run normally does not, forced with the
engine's switch (``MMSAE_ENGINE=torch``, :func:`mmsae.engine.force_device_paths`) and checked
like the compiled paths.

Every test here runs with the switch on (torch forms instead of the numba kernels, the encoder
pass over the whole batch; float32 selection unless the test takes the ``bf16`` fixture, the
switch's default, bfloat16 selection with float32 re-scoring as the training loop selects on
CUDA), unless it turns it off itself to compare the two. Three groups:

* the equivalence tests of ``tests/test_fast_path.py``, ``tests/test_kernels.py`` and
  ``tests/test_optim.py`` that state the contract of both paths are imported below and so run
  again, here, with the switch on (every method's loss, statistics, gradients and buffer
  updates against the dense form at relative 1e-5, the AuxK weight by hand, the masked
  selection's fallback, the decode, ...). The ones left out check what only the compiled
  path does (lowest-index ties, the 4x rescan, bit-identical thread splits, block sizes);
* the device path against the compiled one and against torch, part by part (selection,
  masked selection, bfloat16 selection and its near-ties, whole-batch encoder pass, sparse
  backward and decode, l2,1, decoder hooks, RowAdam);
* training with the switch on and off, and that the switch switches: with every numba kernel
  replaced by one that raises, a forced training step of every method runs, an unforced one
  does not.
"""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
import torch

import mmsae.engine.device_paths as dp
import mmsae.engine.sparse as sp
import mmsae.models.losses as losses
import mmsae.models.topk as topk_model
from mmsae.engine import force_device_paths, set_device_paths, uses_device_paths
from mmsae.models import GroupSparseSAE, SAEConfig, build_model, gsae_config, mgsae_config
from mmsae.study.experiments import method_config
from mmsae.study.methods import (BATCHTOPK, GSAE, MATRYOSHKA, METHOD_ORDER, MGSAE, MODALITY_SPECIFIC, SAE, SHARED_SUPPORT,
                                 USAE, CROSSCODER)
from mmsae.study.profiles import get_profile
from mmsae.train import TrainConfig, train
from mmsae.train.optim import RowAdam

import test_fast_path as fp
import test_kernels as kt

# ----------------------------------------------------------------------- the equivalence tests, again
# Imported test functions are collected here too and run under this module's fixture (switch on).
from test_fast_path import (  # noqa: F401
    test_auxk_gao_weight_by_hand,
    test_auxk_of_both_forms_matches_direct_computation_on_a_batch,
    test_batch_methods_threshold_running_mean_matches_dense,
    test_batch_methods_with_a_pre_bias_per_modality_match_dense,
    test_batch_methods_with_zero_valued_kept_entries_match_dense,
    test_batch_topk_entries_are_the_flat_top_sorted_by_row,
    test_batchtopk_eval_mode_leaves_buffers_and_matches_dense,
    test_batchtopk_gradient_wrt_data_matches_dense,
    test_bf16_selection_keeps_float32_values,
    test_every_method_sparse_matches_dense,
    test_group_l21_matches_dense_value_and_gradient,
    test_gsae_sparse_matches_dense,
    test_mask_is_shared_across_pair_in_sparse_selection,
    test_mgsae_dense_mask_and_fallback_rows,
    test_mgsae_sparse_matches_dense_same_mask,
    test_same_metrics_after_short_training,
    test_topk_methods_with_empty_slots_match_dense,
    test_topk_rows_matches_torch_topk,
    test_topk_sparse_matches_dense,
    test_zero_valued_topk_slots_are_not_firings,
)
from test_kernels import (  # noqa: F401
    test_blocked_decode_matches_embedding_bag,
    test_dense_fallback_keeps_dropped_latents_at_zero,
    test_scan_adds_the_bias_and_handles_tails_and_infinities,
    test_sparse_decode_backward_matches_embedding_bag,
)
from test_optim import (  # noqa: F401
    test_row_adam_falls_back_to_torch_and_the_hooks,
    test_training_with_row_adam_matches_torch_adam,
)

# Not run again (they check the compiled path only, or compare it with the torch form, which
# the tests below do with the switch): test_topk_rows_ties_nan_and_threads (lowest-index ties),
# test_select_codes_blocks_match_one_block / _bias_in_scan_matches_addmm (CPU blocks, the bias
# in the scan), test_masked_scan_is_the_dense_masked_topk (lowest-index ties: the torch form is
# checked below), test_rows_the_mask_starves_are_scanned_again_with_more_candidates (the CPU
# rescan), test_sparse_encoder_values_backward_matches_torch_path, test_torch_fallbacks_match_the_kernels,
# test_decoder_hooks_match_torch_and_threads, test_compiled_group_l21_matches_the_torch_form,
# test_row_adam_fuses_the_decoder_hooks (kernel against torch: below, with the switch), the
# flat top-k bound and the thread and grouping tests.


# ----------------------------------------------------------------------- the switch
@pytest.fixture(autouse=True)
def _device_paths():
    """The switch on for every test of the module, with float32 selection (as
    ``MMSAE_ENGINE=torch-fp32``, and CUDA with ``bf16_select=False``), and one intra-op thread
    (tiny shapes); both restored afterwards. Float32 selection, because the dense forms the
    equivalence tests compare with select in float32: at a near-tie of the bfloat16
    pre-activations (random data has some; in the AuxK selection of m = 256, k_aux = 16 at
    once) bfloat16 selection may rightly choose another latent, and the loss then differs by
    about 1e-3, not 1e-5. The bfloat16 selection is tested by the tests that take ``bf16``."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    previous = set_device_paths(True, None)
    try:
        yield
    finally:
        set_device_paths(*previous)
        torch.set_num_threads(n)


@pytest.fixture
def bf16():
    """The switch as ``MMSAE_ENGINE=torch`` sets it: bfloat16 selection where the caller leaves
    the dtype unset (the training loop's default on CUDA), float32 re-scoring."""
    set_device_paths(True, torch.bfloat16)  # the autouse fixture restores the setting before it


def test_the_switch_and_its_predicate(monkeypatch, bf16):
    cpu, meta = torch.zeros(2), torch.zeros(2, device="meta")
    assert dp.device_paths_forced() and uses_device_paths(cpu) and dp.selection_dtype(None) == torch.bfloat16
    assert dp.selection_dtype(torch.float32) == torch.float32  # an explicit dtype is kept
    with force_device_paths(False):
        assert not uses_device_paths(cpu) and not uses_device_paths(torch.device("cpu"))
        assert uses_device_paths(meta) and uses_device_paths(cpu, torch.device("cuda"))  # off the CPU
        assert dp.selection_dtype(None) is None  # the caller's (the loop sets bf16 on CUDA itself)
        with force_device_paths(select_dtype=None):
            assert uses_device_paths(cpu) and dp.selection_dtype(None) is None
        assert not dp.device_paths_forced()
    assert dp.device_paths_forced() and dp.SELECT_DTYPE == torch.bfloat16  # restored
    for value, want in (("torch", (True, torch.bfloat16)), ("TORCH-fp32", (True, None)), ("", (False, None)),
                        ("compiled", (False, None))):
        monkeypatch.setenv(dp.ENV, value)
        assert dp._from_env() == want
    monkeypatch.setenv(dp.ENV, "cuda")
    with pytest.raises(ValueError, match="MMSAE_ENGINE"):
        dp._from_env()


def test_the_environment_variable_is_read_at_import():
    """A fresh process with ``MMSAE_ENGINE=torch`` starts with the switch on (the values it
    takes: ``_from_env`` above)."""
    code = ("import torch, mmsae.engine as e, mmsae.engine.device_paths as dp; "
            "print(e.device_paths_forced(), e.uses_device_paths(torch.zeros(1)), dp.selection_dtype(None))")
    out = subprocess.run([sys.executable, "-c", code], env={**os.environ, dp.ENV: "torch"}, capture_output=True,
                         text=True, check=True).stdout.split()
    assert out == ["True", "True", "torch.bfloat16"]


def test_models_consult_the_switch():
    """``models/losses.py`` and ``models/topk.py`` choose their compiled branch with
    :func:`mmsae.engine.uses_device_paths`, so ``MMSAE_ENGINE=torch`` reaches the l2,1 pass and
    the decoder hooks too."""
    i, w = torch.zeros(1, 1, dtype=torch.int64), torch.zeros(1, 1)
    with force_device_paths():
        assert not losses._compiled_match(i, i) and not topk_model._rows_kernel_ok(w)
    with force_device_paths(False):
        assert losses._compiled_match(i, i) and topk_model._rows_kernel_ok(w)


# ----------------------------------------------------------------------- selection
def _rows(R=64, m=512, seed=0):
    g = torch.Generator().manual_seed(seed)
    pre = torch.randn(R, m, generator=g)
    pre[3] = pre[3].sort().values
    pre[4] = pre[4].sort(descending=True).values
    pre[5] = 1.0  # a constant row: every entry ties
    pre[6] = torch.relu(pre[6] - 2.5)  # mostly zeros: ties at the k-th value
    return pre


def _has_ties(row: torch.Tensor, k: int) -> bool:
    v = row.topk(k + 1).values
    return bool(v[k - 1] == v[k])


def test_topk_rows_is_torch_topk_on_the_device_path():
    """``torch.topk``: the same values (ties included: any of the tied indices, no latent twice);
    on rows without a tie at the k-th value, the compiled scan's set; a row holding NaN as
    ``torch.topk`` (NaN ranks first); a bias added first."""
    k = 16
    pre = _rows()
    b = torch.randn(pre.shape[1], generator=torch.Generator().manual_seed(1))
    for bias in (None, b):
        full = pre if bias is None else pre + bias
        got = sp.topk_rows(pre, k, bias)
        fp._same_topk(full, k, got)
        with force_device_paths(False):
            compiled = sp.topk_rows(pre, k, bias)
        assert torch.equal(got[0].sort(1).values, compiled[0].sort(1).values)
        plain = [r for r in range(pre.shape[0]) if not _has_ties(full[r], k)]
        assert len(plain) >= pre.shape[0] - 2
        assert torch.equal(got[1][plain].sort(1).values, compiled[1][plain].sort(1).values)
    nan = pre.clone()
    nan[7, 100] = float("nan")
    v, i = sp.topk_rows(nan, k)
    assert 100 in i[7].tolist() and v[7].isnan().any()
    assert torch.equal(v[8:], sp.topk_rows(pre, k)[0][8:])


@pytest.mark.parametrize("per_pair,offset", [(True, 0), (True, 77), (False, 0)])
def test_masked_selection_is_the_dense_masked_topk(per_pair, offset):
    """The torch form of the masked top-K (the hash on the top candidates, the exact dense
    masked top-K for rows short of kept candidates): the dense masked top-K's values, every
    chosen latent kept; the compiled scan's sets on rows without ties."""
    g = torch.Generator().manual_seed(1)
    R, m, k = 300, 1024, 16
    pre = torch.randn(R, m, generator=g)
    pre[3] = pre[3].sort().values
    pre[4] = torch.relu(pre[4] - 2.0)  # ties at the k-th value
    pairs = torch.arange(R) % 120
    mask = sp.HashMask(98765, 0.3, per_pair, offset)
    v, i = sp._select(pre, k, mask, pairs)
    (rv, _), keep = kt._dense_masked_topk(pre, k, mask, pairs)
    assert torch.equal(v.sort(1).values, rv.sort(1).values)
    assert keep.gather(1, i).all() and torch.equal(pre.gather(1, i), v)
    assert all(len(set(r.tolist())) == k for r in i)
    with force_device_paths(False):
        vc, ic = sp._select(pre, k, mask, pairs)
    assert torch.equal(vc.sort(1).values, v.sort(1).values)
    rest = torch.arange(R) != 4
    assert torch.equal(ic[rest].sort(1).values, i[rest].sort(1).values)


def test_rows_the_mask_starves_take_the_dense_masked_topk():
    """A row whose largest entries the mask drops: off the CPU there is no rescan, the row goes
    to the exact dense masked top-K (the compiled path's rescan gives the same)."""
    g = torch.Generator().manual_seed(5)
    R, m, k = 64, 4096, 16
    pre = torch.randn(R, m, generator=g)
    pairs = torch.arange(R)
    mask = sp.HashMask(2024, 0.2, True)
    keep = mask.dense(R, m)
    pre[7, torch.arange(m)[~keep[7]][:200]] = 10.0 + torch.rand(200, generator=g)
    v, i = sp._select(pre, k, mask, pairs)
    rv = pre.masked_fill(~keep, float("-inf")).topk(k, dim=-1).values
    assert torch.equal(v.sort(1).values, rv.sort(1).values) and keep.gather(1, i).all()
    with force_device_paths(False):
        vc, ic = sp._select(pre, k, mask, pairs)
    assert torch.equal(vc.sort(1).values, v.sort(1).values) and torch.equal(ic.sort(1).values, i.sort(1).values)


def _selection_model(x, y, m=256, k=8, k_aux=12):
    model = fp._model(GroupSparseSAE, mgsae_config(d=x.shape[1], m=m, k=k, k_aux=k_aux), x, y)
    with torch.no_grad():
        model.b_enc.normal_(0.0, 0.1, generator=torch.Generator().manual_seed(3))
    u_c = torch.cat([x - model.b_pre[0], y - model.b_pre[1]]).detach()
    return model, u_c


def test_whole_batch_encoder_pass_matches_the_cpu_blocks(monkeypatch):
    """On the device paths the encoder pass is one block whatever ``CPU_BLOCK_BYTES`` says (with
    ``addmm`` and torch's top-k); float32 selection gives the compiled, blocked pass's latents
    (top-K and AuxK) and values to rounding."""
    x, y = fp._data(n=100, d=32)
    model, u_c = _selection_model(x, y)
    mask, pairs = sp.HashMask(5, 0.3), torch.arange(100).repeat(2)
    monkeypatch.setattr(sp, "CPU_BLOCK_BYTES", 16 * 256 * 4)  # 16-row blocks on the CPU path
    assert sp._block_rows(200, 256, torch.device("cpu")) == 200
    seen = []
    workspace = sp._workspace
    monkeypatch.setattr(sp, "_workspace", lambda mdl, rows, *a: seen.append(rows) or workspace(mdl, rows, *a))
    for mk, pr in ((None, None), (mask, pairs)):
        seen.clear()
        got = sp.select_codes(model, u_c, mk, pr, torch.float32)
        assert seen == [200]  # one block: the whole batch
        with force_device_paths(False):
            seen.clear()
            ref = sp.select_codes(model, u_c, mk, pr)
            assert len(seen) == 200 // 16 + 1
        assert got.aux is not None
        for a, b in ((got.raw, ref.raw), (got.aux_raw, ref.aux_raw)):
            torch.testing.assert_close(a.sort(1).values, b.sort(1).values, rtol=1e-5, atol=1e-6)
        for a, b in ((got.idx, ref.idx), (got.aux_idx, ref.aux_idx)):
            assert torch.equal(a.sort(1).values, b.sort(1).values)


def _bf16_error_bound(u_c, W, b):
    """A bound of ``|pre_bf16 - pre_fp32|`` per entry for the bf16 ``addmm`` of the selection:
    inputs rounded to bf16 (relative 2^-8 each), a float32 accumulation, the bias rounded and
    the output rounded to bf16 (2^-8 each, twice if the bias is added after a rounding):
    within ``2^-6 (sum_j |u_j W_ij| + |b_i|)``."""
    return 2.0 ** -6 * (u_c.abs() @ W.abs().t() + b.abs())


def _check_bf16_selection(sel, exact, bound, k):
    """The documented behaviour: every chosen latent's float32 value plus its bound reaches
    every unchosen one's minus its bound (so only latents within the bounds of the k-th value
    can be swapped); where the float32 top-k is apart from the rest by more than the bounds,
    it is chosen exactly; the values are the chosen entries' float32 values (re-scored).
    Returns the rows without near-ties."""
    R, m = exact.shape
    chosen = torch.zeros(R, m, dtype=torch.bool).scatter_(1, sel.idx, True)
    lo = (exact + bound).masked_fill(~chosen, float("inf")).amin(1)
    hi = (exact - bound).masked_fill(chosen, float("-inf")).amax(1)
    assert (lo >= hi - 1e-6).all()
    top = exact.topk(k, dim=1).indices
    ref = torch.zeros(R, m, dtype=torch.bool).scatter_(1, top, True)
    clear = (exact - bound).masked_fill(~ref, float("inf")).amin(1) > (exact + bound).masked_fill(
        ref, float("-inf")).amax(1)
    assert torch.equal(chosen[clear], ref[clear])
    torch.testing.assert_close(sel.raw, exact.gather(1, sel.idx), rtol=1e-5, atol=1e-6)
    assert sel.raw.dtype == torch.float32
    return clear


def test_bf16_selection_without_near_ties_is_the_float32_selection(bf16):
    """Rows whose top K are well apart from the rest (orthonormal encoder rows; each input K
    live atoms at weight 3 plus k_aux dead ones at 1.5 and a little noise): bfloat16 selection
    chooses exactly the float32 top-K and AuxK latents and returns their float32 values."""
    g = torch.Generator().manual_seed(11)
    d = m = 256
    k, k_aux, R = 8, 4, 96
    W = torch.linalg.qr(torch.randn(m, d, generator=g))[0]
    model = build_model(SAEConfig(d=d, m=m, k=k, k_aux=k_aux, auxk_coef=1 / 32), seed=0).train()
    with torch.no_grad():
        model.W_enc.copy_(W)
        model.b_enc.zero_()
        model.b_pre.zero_()
    model.since_fired[1::2] = 10 ** 9  # dead: the odd latents
    perm = torch.stack([torch.randperm(m // 2, generator=g) for _ in range(R)])
    atoms, dead_atoms = perm[:, :k] * 2, perm[:, k:k + k_aux] * 2 + 1  # even (alive) and odd (dead) latents
    u = 3.0 * W[atoms].sum(1) + 1.5 * W[dead_atoms].sum(1) + 0.01 * torch.randn(R, d, generator=g)
    exact = u @ W.t()
    sel = sp.select_codes(model, u, None, None)  # None: the switch's bfloat16
    assert torch.equal(sel.idx.sort(1).values, atoms.sort(1).values)
    clear = _check_bf16_selection(sel, exact, _bf16_error_bound(u, W, model.b_enc.detach()), k)
    assert clear.all()
    with force_device_paths(False):
        ref = sp.select_codes(model, u, None, None)
    assert torch.equal(sel.idx.sort(1).values, ref.idx.sort(1).values)
    torch.testing.assert_close(sel.raw.sort(1).values, ref.raw.sort(1).values, rtol=1e-5, atol=1e-6)
    assert torch.equal(sel.aux_idx.sort(1).values, dead_atoms.sort(1).values)
    assert torch.equal(ref.aux_idx.sort(1).values, dead_atoms.sort(1).values)
    torch.testing.assert_close(sel.aux_raw, exact.gather(1, sel.aux_idx), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("masked", [False, True])
def test_bf16_selection_with_near_ties(masked, bf16):
    """Random data, with near-ties in some rows: on every row the documented behaviour (the
    chosen latents differ from the float32 top-K only among entries within the bfloat16 error
    of the K-th value; float32 values); rows clear of near-ties by that (worst-case) bound are
    chosen exactly, and in fact most rows are (the real errors are far below the bound)."""
    x, y = fp._data(n=100, d=32)
    model, u_c = _selection_model(x, y)
    W, b = model.W_enc.detach(), model.b_enc.detach()
    exact, bound = torch.addmm(b, u_c, W.t()), _bf16_error_bound(u_c, W, b)
    mask, pairs = (sp.HashMask(5, 0.3), torch.arange(100).repeat(2)) if masked else (None, None)
    sel = sp.select_codes(model, u_c, mask, pairs)
    if masked:  # the masked top-K is the top-K of the kept latents: compare on those
        keep = mask.dense(100, 256)[pairs]
        assert keep.gather(1, sel.idx).all()
        exact, bound = exact.masked_fill(~keep, -1e4), bound.masked_fill(~keep, 0.0)
    clear = _check_bf16_selection(sel, exact, bound, 8)
    with force_device_paths(True, None):
        ref = sp.select_codes(model, u_c, mask, pairs)
    same = (sel.idx.sort(1).values == ref.idx.sort(1).values).all(1)
    assert clear.any() and same[clear].all()
    assert same.float().mean() > 0.9


def test_bf16_selection_of_a_tie_below_bfloat16_resolution(bf16):
    """Two latents whose float32 pre-activations differ below bfloat16's resolution (1.5 and
    1.5 (1 + 2^-12)) compete for the K-th slot of every row: either may be chosen (which one
    is torch.topk's choice among values equal in bfloat16), the chosen one's float32 value is
    returned, and the other K - 1 latents are the float32 top K - 1."""
    g = torch.Generator().manual_seed(12)
    d = m = 256
    k, R = 8, 64
    W = torch.linalg.qr(torch.randn(m, d, generator=g))[0]
    model = build_model(SAEConfig(d=d, m=m, k=k, auxk_coef=0.0), seed=0).train()
    with torch.no_grad():
        model.W_enc.copy_(W)
        model.b_enc.zero_()
    perm = torch.stack([torch.randperm(m, generator=g) for _ in range(R)])
    top, a, b = perm[:, :k - 1], perm[:, k - 1], perm[:, k]
    u = 3.0 * W[top].sum(1) + 1.5 * W[a] + 1.5 * (1 + 2.0 ** -12) * W[b]
    exact = u @ W.t()
    sel = sp.select_codes(model, u)
    chosen = torch.zeros(R, m, dtype=torch.bool).scatter_(1, sel.idx, True)
    assert chosen.gather(1, top).all()
    assert torch.equal(chosen.gather(1, a[:, None]) ^ chosen.gather(1, b[:, None]), torch.ones(R, 1, dtype=torch.bool))
    torch.testing.assert_close(sel.raw, exact.gather(1, sel.idx), rtol=1e-5, atol=1e-6)
    _check_bf16_selection(sel, exact, _bf16_error_bound(u, W, model.b_enc.detach()), k)
    with force_device_paths(True, None):  # float32 selection: the larger twin, b, every time
        assert sp.select_codes(model, u).idx.eq(b[:, None]).any(1).all()


def _separated_pairs(R=48, d=128, seed=13):
    """Pairs whose encoder pre-activations have no near-ties, for a model whose encoder rows are
    an orthonormal basis ``Q`` (zero biases, latents ``0, 3, 6, ...`` dead): each embedding is 12
    live atoms at weights 3.0, 3.5, ..., 8.5 and 4 dead ones at 1.0, 1.3, 1.6, 1.9 (the pair's
    two members the same atoms, weights moved by up to 0.05), plus noise of 0.01. The top-K
    (also after a mask drops some), the AuxK latents and the summed support are apart from the
    rest by far more than bfloat16's error."""
    g = torch.Generator().manual_seed(seed)
    Q = torch.linalg.qr(torch.randn(d, d, generator=g))[0]
    dead = torch.arange(0, d, 3)
    live = torch.tensor([j for j in range(d) if j % 3])
    w_live, w_dead = 3.0 + 0.5 * torch.arange(12.0), torch.tensor([1.0, 1.3, 1.6, 1.9])
    rows = []
    for _ in range(R):
        a = live[torch.randperm(len(live), generator=g)[:12]]
        b = dead[torch.randperm(len(dead), generator=g)[:4]]
        rows.append((w_live[:, None] * Q[a]).sum(0) + (w_dead[:, None] * Q[b]).sum(0))
    x = torch.stack(rows)
    y = x + 0.02 * torch.randn(R, d, generator=g) @ Q  # each weight moved by ~0.02
    x = x + 0.01 * torch.randn(R, d, generator=g)
    return Q, x, y


_BF16_CONFIGS = {
    SAE: SAEConfig(d=128, m=128, k=8, k_aux=4),
    GSAE: gsae_config(d=128, m=128, k=8, k_aux=4),
    MGSAE: mgsae_config(d=128, m=128, k=8, k_aux=4),
    MODALITY_SPECIFIC: SAEConfig(arch="modality_specific", d=128, m=256, k=8, k_aux=4, extra={"m_per_side": 128}),
    SHARED_SUPPORT: SAEConfig(arch="shared_support", d=128, m=128, k=8, k_aux=4, n_modalities=2),
}


@pytest.mark.parametrize("name", list(_BF16_CONFIGS))
def test_bf16_selection_objective_matches_dense_without_near_ties(name, bf16):
    """The methods that select with ``select_dtype``, with bfloat16 selection and float32
    re-scoring, on pairs without near-ties: loss, statistics, gradients and buffer updates
    equal the dense form's (float32 throughout) at relative 1e-5, as the compiled path's do."""
    Q, x, y = _separated_pairs()
    torch.manual_seed(1)
    model = build_model(_BF16_CONFIGS[name]).train()
    with torch.no_grad():
        for n, p in model.named_parameters():
            if n.endswith("W_enc"):
                p.copy_(Q)
            elif n.endswith("b_enc") or n.endswith("b_pre"):
                p.zero_()
    for n, buf in model.named_buffers():
        if n.endswith("since_fired"):
            buf[::3] = 10 ** 9
    assert dp.selection_dtype(getattr(model, "select_dtype", None)) == torch.bfloat16
    if name in (MODALITY_SPECIFIC, SHARED_SUPPORT):
        ref = fp._assert_matches_dense_form(model, x, y)
        assert float(ref.stats["aux"]) > 0
    else:
        fp._assert_same(model, x, y, **({"keep": sp.HashMask(77, 0.2)} if name == MGSAE else {}))


# ----------------------------------------------------------------------- sparse backward, decode, l2,1
def test_sparse_encoder_values_backward_torch_form():
    """The ``index_add`` backward (CUDA's) against the compiled latent-by-latent one and against
    autograd through the dense product, with two pre-bias rows and negative raw values."""
    gen = torch.Generator().manual_seed(3)
    R, K, m, d = 512, 16, 300, 24
    u_c = torch.randn(R, d, generator=gen)
    W = torch.randn(m, d, generator=gen)
    b_enc = torch.randn(m, generator=gen)
    b_pre = torch.randn(2, d, generator=gen)
    idx = torch.stack([torch.randperm(m, generator=gen)[:K] for _ in range(R)])
    raw = torch.randn(R, K, generator=gen)
    mod = [(slice(0, R // 2), 0), (slice(R // 2, R), 1)]
    fn = lambda W_, be, bp: sp.sparse_encoder_values(raw, u_c, idx, W_, be, bp, mod)

    def dense(W_, be, bp):
        """``relu(raw)`` with the gradient of ``(u - b_pre[mod]) . W_enc[idx] + b_enc[idx]`` (``u_c``
        the centred rows, so ``u = u_c + b_pre[mod]`` held fixed): autograd through the dense product."""
        rowpre = torch.cat([bp[0].expand(R // 2, d), bp[1].expand(R // 2, d)])
        z = ((u_c + rowpre.detach() - rowpre) @ W_.t() + be).gather(1, idx)
        return torch.relu(raw + z - z.detach())

    _, g_torch = kt._grads(fn, W, b_enc, b_pre)
    with force_device_paths(False):
        _, g_kernel = kt._grads(fn, W, b_enc, b_pre)
    _, g_dense = kt._grads(dense, W, b_enc, b_pre)
    for a, b, c in zip(g_torch, g_kernel, g_dense):
        # the pre-bias gradient sums R K / 2 = 4096 float32 terms per row, gathered (embedding_bag) where the dense
        # form multiplies: another order of the sum, about 3e-5 apart at values near 1
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(a, c, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("R,flat", [(64, False), (64, True), (1100, False)])
def test_decode_torch_form_matches_the_kernels(R, flat):
    """``embedding_bag`` and an added pre-bias (and its autograd backward) against the compiled
    decode (``decode_rows`` from 1024 rows on) and its latent-by-latent backward."""
    g = torch.Generator().manual_seed(6)
    m, K, d = 100, 8, 12
    W = torch.randn(m, d, generator=g, requires_grad=True)
    vals = torch.rand(R, K, generator=g, requires_grad=True)
    b_pre = torch.randn(2, d, generator=g, requires_grad=True)
    idx = torch.stack([torch.randperm(m, generator=g)[:K] for _ in range(R)])
    G = torch.randn(R, d, generator=g)
    if flat:
        rows = torch.arange(R).repeat_interleave(K)
        run = lambda: sp.decode_entries(W, vals.reshape(-1), rows, idx.reshape(-1), R, b_pre, 0)
    else:
        mod = [(slice(0, R // 2), 0), (slice(R // 2, R), 1)]
        run = lambda: sp.sparse_decode(W, vals, idx, b_pre=b_pre, mod=mod)
    out = run()
    grads = torch.autograd.grad((out * G).sum(), (W, vals, b_pre))
    with force_device_paths(False):
        out_k = run()
        assert out_k.grad_fn.name().startswith("SparseDecode")  # the compiled one, off the switch
        grads_k = torch.autograd.grad((out_k * G).sum(), (W, vals, b_pre))
    assert not out.grad_fn.name().startswith("SparseDecode")
    torch.testing.assert_close(out, out_k, rtol=1e-5, atol=1e-5)
    for a, b in zip(grads, grads_k):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("B", [64, 3000])
def test_group_l21_torch_form_matches_the_compiled_pass(B):
    """The sort-based matching (float32, as in training) against the compiled pass: shared
    latents, zero activations, different K for x and y."""
    g = torch.Generator().manual_seed(3)
    m, Kx, Ky = 500, 8, 6
    perm = torch.stack([torch.randperm(m, generator=g) for _ in range(B)])
    ix, iy = perm[:, :Kx], torch.cat([perm[:, 2:5], perm[:, Kx:Kx + Ky - 3]], dim=1)
    vx, vy = torch.rand(B, Kx, generator=g), torch.rand(B, Ky, generator=g)
    vx[0, 2], vy[0, 0], vx[1, 3], vy[2, 5] = 0.0, 0.0, 0.0, 0.0
    vx.requires_grad_()
    vy.requires_grad_()
    value = losses.group_l21(vx, ix, vy, iy)
    assert value.grad_fn.name() != "_GroupL21Backward"  # the torch form ran
    grads = torch.autograd.grad(2.5 * value, (vx, vy))
    with force_device_paths(False):
        ref = losses.group_l21(vx, ix, vy, iy)
        assert ref.grad_fn.name() == "_GroupL21Backward"
        ref_grads = torch.autograd.grad(2.5 * ref, (vx, vy))
    torch.testing.assert_close(value, ref, rtol=1e-6, atol=0)
    for a, b in zip(grads, ref_grads):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-9)


# ----------------------------------------------------------------------- decoder hooks, RowAdam
def test_decoder_hooks_torch_form_matches_the_kernels():
    model = build_model(SAEConfig(d=24, m=4096, k=4), seed=0)
    g = torch.Generator().manual_seed(4)
    grad = torch.randn(4096, 24, generator=g)
    grad[7] = 0.0
    W_next = model.W_dec.detach() * 3.0 + 0.1 * torch.randn(4096, 24, generator=g)
    out = {}
    for forced in (True, False):
        with force_device_paths(forced):
            model.W_dec.grad = grad.clone()
            model.before_optimizer_step()
            projected = model.W_dec.grad.clone()
            with torch.no_grad():
                saved = model.W_dec.detach().clone()
                model.W_dec.copy_(W_next)
            model.after_optimizer_step()
            out[forced] = (projected, model.W_dec.detach().clone())
            with torch.no_grad():
                model.W_dec.copy_(saved)
    for a, b in zip(out[True], out[False]):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    projected, renormed = out[True]
    assert (projected * model.W_dec.detach()).sum(1).abs().max() < 1e-5
    assert torch.equal(projected[7], torch.zeros(24))
    torch.testing.assert_close(renormed.norm(dim=1), torch.ones(4096))


@pytest.mark.parametrize("arch", ["topk", "modality_specific"])
def test_row_adam_on_the_device_paths_is_torch_adam_and_the_hooks(arch):
    """With the switch on, RowAdam takes no matrix (as the loop on CUDA, which uses torch's
    Adam): its steps are torch's fused Adam with the model's projection and renormalisation,
    bit for bit, and match the compiled pass (relative 1e-4 after four steps)."""
    cfg = SAEConfig(arch=arch, d=24, m=2048, k=4)
    steps = None
    out, models = {}, {}
    for name in ("forced", "torch", "compiled"):
        model = models[name] = build_model(cfg, seed=0)
        params = list(model.parameters())
        if steps is None:
            # (seeds other than build_model's 0: a gradient along its atom projects to rounding
            # noise, which Adam's first step scales up to +-lr, differently in every rounding)
            steps = [[torch.randn(p.shape, generator=torch.Generator().manual_seed(1000 + 10 * s + i))
                      for i, p in enumerate(params)] for s in range(4)]
        with force_device_paths(name != "compiled"):
            if name == "torch":
                opt = torch.optim.Adam(params, lr=1e-2, fused=True)
            else:
                opt = RowAdam(params, unit_rows=model.unit_norm_rows(), lr=1e-2, fused=True)
                assert opt.fused_unit_rows == (frozenset() if name == "forced" else
                                               frozenset(id(W) for W in model.unit_norm_rows()))
            skip = getattr(opt, "fused_unit_rows", frozenset())
            for gs in steps:
                for p, g in zip(params, gs):
                    p.grad = g.clone()
                model.before_optimizer_step(skip=skip)
                opt.step()
                model.after_optimizer_step(skip=skip)
        out[name] = [p.detach().clone() for p in params]
    assert all(torch.equal(a, b) for a, b in zip(out["forced"], out["torch"]))
    for a, b in zip(out["forced"], out["compiled"]):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
    for W in models["forced"].unit_norm_rows():
        torch.testing.assert_close(W.detach().norm(dim=1), torch.ones(W.shape[0]))


# ----------------------------------------------------------------------- training, and that the switch switches
def _method_config(name, m=128, k=8):
    prof = get_profile("smoke")
    return method_config(name, prof, d=32, m=m, k=k, dead_after=64 * 6)


def _train(name, select_dtype=None, forced=True, steps=25, **kw):
    x, y = fp._train_data(n=512)
    model = build_model(_method_config(name), seed=0)
    with force_device_paths(forced, select_dtype):
        res = train(model, (x, y), TrainConfig(steps=steps, batch_size=64, lr=2e-3, warmup_steps=5, log_every=1,
                                               progress=False, **kw))
    return np.array([h["loss"] for h in res.history]), model


@pytest.mark.parametrize("name", METHOD_ORDER)
def test_training_on_the_device_paths_matches_the_compiled_paths(name):
    """25 steps of every method with the switch on (float32 selection) and off: the same loss at
    every step and the same weights to float32 rounding (the paths sum in other orders: about
    1e-6 here). With bfloat16 selection (the switch's default, as on CUDA) the losses agree
    within 3% (1.4% at most here): at a near-tie of the bfloat16 pre-activations another latent
    of almost the same value may be chosen, and from then on the two runs are two runs of the
    same objective that drift apart, not one run in two roundings. BatchTopK and Matryoshka do
    not select with ``select_dtype``, nor does the crosscoder (its dense reference step): the same losses either
    way."""
    compiled, m_compiled = _train(name, forced=False)
    torch_fp32, m_fp32 = _train(name, select_dtype=None)
    torch_bf16, _ = _train(name, select_dtype=torch.bfloat16)
    assert compiled[-1] < 0.8 * compiled[0]  # it trains
    np.testing.assert_allclose(torch_fp32, compiled, rtol=2e-5)
    for (n, a), b in zip(m_fp32.state_dict().items(), m_compiled.state_dict().values()):
        if a.is_floating_point():
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5 * float(b.abs().max()), msg=n)
        else:
            assert torch.equal(a, b), n  # the same latents fired
    np.testing.assert_allclose(torch_bf16, compiled, rtol=0.03)
    if name in (BATCHTOPK, MATRYOSHKA, CROSSCODER):
        assert np.array_equal(torch_bf16, torch_fp32)
    else:  # the switch's dtype reached the loop's model: another selection somewhere
        assert not np.array_equal(torch_bf16, torch_fp32)


def _compiled_kernels_raise(monkeypatch):
    """Every numba kernel, and the functions that run them over threads, replaced by one that
    raises, wherever ``mmsae`` holds a reference to it."""
    from mmsae.engine import kernels, parallel

    targets = [getattr(kernels, n) for n in kernels.__all__] + [parallel.run_ranges, parallel.split_rows]

    def ran(*args, **kwargs):
        raise AssertionError("a compiled kernel ran")

    for mod_name, mod in list(sys.modules.items()):
        if mod is None or not (mod_name == "mmsae" or mod_name.startswith("mmsae.")):
            continue
        for attr, value in list(vars(mod).items()):
            if any(value is t for t in targets):
                monkeypatch.setattr(mod, attr, ran)


@pytest.mark.parametrize("name", METHOD_ORDER)
def test_the_switch_keeps_every_kernel_out(name, monkeypatch):
    """With every compiled kernel raising, training steps (encoder pass, loss, backward, Adam,
    decoder hooks) of each method run with the switch on, and fail with it off."""
    _compiled_kernels_raise(monkeypatch)
    losses_on, _ = _train(name, select_dtype=torch.bfloat16, steps=3)
    assert np.isfinite(losses_on).all()
    with pytest.raises(AssertionError, match="a compiled kernel ran"):
        _train(name, forced=False, steps=3)
