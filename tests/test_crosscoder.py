"""The sparse crosscoder: one code per pair, its decoder-norm penalty, and the metrics it cannot have."""

import numpy as np
import pandas as pd
import pytest
import torch

from mmsae.eval.analysis import PAIR_UNAVAILABLE, analyze
from mmsae.models import Crosscoder, build_model, load_model
from mmsae.models.crosscoder import PairOnlyError, decoder_norm_split
from mmsae.models.interop import InteropError, export_saelens
from mmsae.models.registry import config_for, encodes_pairs
from mmsae.study import experiments as ex
from mmsae.study import methods as M
from mmsae.study import findings, tables
from mmsae.study.profiles import get_profile


def _model(d=16, m=24, k=3, lam=0.05, auxk=0.0, seed=0):
    return build_model(config_for(M.CROSSCODER, d, m, k, group_lambda=lam).replace(auxk_coef=auxk), seed=seed)


def test_the_registry_record_and_its_config():
    cfg = config_for(M.CROSSCODER, 16, 24, 3)
    assert (cfg.arch, cfg.n_modalities, cfg.group_lambda) == ("crosscoder", 2, 0.05)
    assert encodes_pairs(M.CROSSCODER) and not encodes_pairs(M.USAE) and not encodes_pairs("my SAELens SAE")
    assert M.CROSSCODER in M.METHOD_ORDER


def test_a_lone_embedding_has_no_code():
    model = _model()
    with pytest.raises(PairOnlyError, match="encode_pair"):
        model.encode(torch.randn(4, 16), 0)
    with pytest.raises(PairOnlyError):
        model.encode_numpy(np.zeros((4, 16), np.float32), 1)


def test_one_code_reads_both_members():
    """The code of a pair depends on both members, and holds K active latents."""
    model = _model()
    x, y = torch.randn(8, 16), torch.randn(8, 16)
    z = model.encode_pair(x, y)
    assert z.shape == (8, 24) and ((z > 0).sum(1) <= 3).all() and ((z > 0).sum(1) > 0).all()
    assert not torch.equal(model.encode_pair(x, torch.randn(8, 16)), z)
    assert not torch.equal(model.encode_pair(torch.randn(8, 16), y), z)


def test_the_loss_is_both_reconstructions_plus_the_decoder_norm_penalty():
    """The objective written out densely: ||x - D_x z||^2 + ||y - D_y z||^2 + lambda sum_i z_i (|D_x,i| + |D_y,i|)."""
    torch.manual_seed(1)
    model = _model(lam=0.3)
    with torch.no_grad():  # decoder rows of different norms, so the penalty weighs latents differently
        model.W_dec.mul_(torch.rand(24, 1) * 2)
        model.W_dec_t.mul_(torch.rand(24, 1) * 2)
    x, y = torch.randn(10, 16), torch.randn(10, 16)
    z = model.encode_pair(x, y)
    Dx, Dy = model.W_dec.detach(), model.W_dec_t.detach()
    rec_x = ((x - (z @ Dx + model.b_pre[0])) ** 2).sum(1).mean()
    rec_y = ((y - (z @ Dy + model.b_pre[1])) ** 2).sum(1).mean()
    pen = (z * (Dx.norm(dim=1) + Dy.norm(dim=1))).sum(1).mean()
    out = model.training_loss(x, y)
    torch.testing.assert_close(out.loss, rec_x + rec_y + 0.3 * pen)
    torch.testing.assert_close(out.stats["decoder_norm_penalty"], pen)


def test_the_penalty_does_not_see_scale_moved_between_code_and_decoder():
    """Scaling a latent's encoder row by c and both its decoder rows by 1/c leaves codes x decoders and the penalty
    unchanged (why the decoder rows can be left free)."""
    torch.manual_seed(2)
    a, b = _model(lam=0.5), _model(lam=0.5)
    with torch.no_grad():
        c = torch.rand(24) * 3 + 0.2
        for p in ("W_enc", "W_enc_t"):
            getattr(b, p).mul_(c[:, None])
        b.b_enc.mul_(c)
        for p in ("W_dec", "W_dec_t"):
            getattr(b, p).div_(c[:, None])
    x, y = torch.randn(6, 16), torch.randn(6, 16)
    torch.testing.assert_close(a.training_loss(x, y).loss, b.training_loss(x, y).loss, rtol=1e-4, atol=1e-5)


def test_the_penalty_lets_a_one_sided_latent_drop_its_other_decoder_row():
    """Data whose second member carries nothing (y is its mean): with the penalty, training shrinks the text
    decoder rows toward zero and the decoder-norm split calls the latents image-only; without it they stay."""
    torch.manual_seed(0)
    x = torch.randn(512, 16)
    y = torch.zeros(512, 16)

    def fit(lam):
        model = _model(lam=lam)
        model.init_from_data(x, y)
        opt = torch.optim.Adam(model.parameters(), 5e-3)
        for step in range(300):
            out = model.training_loss(x, y, step)
            opt.zero_grad()
            out.loss.backward()
            opt.step()
        nx, ny = (t.detach().numpy() for t in model.decoder_norms())
        return nx, ny

    nx, ny = fit(0.3)
    split = decoder_norm_split(nx, ny)
    assert (ny < 0.1 * nx).mean() > 0.9 and (split == "image_only").mean() > 0.9
    nx0, ny0 = fit(0.0)
    assert np.median(ny0) > 5 * np.median(ny)


def test_decoder_norm_split():
    nx = np.array([1.0, 1.0, 0.05, 1.0, 0.0])
    ny = np.array([0.05, 1.0, 1.0, 0.13, 0.0])  # shares 0.048, 0.5, 0.95, 0.115
    assert list(decoder_norm_split(nx, ny)) == ["image_only", "both", "text_only", "both", "dead"]


def test_it_saves_loads_and_is_refused_by_the_topk_exports(tmp_path):
    model = _model(seed=3)
    load = load_model(model.save(tmp_path / "xc"))
    assert isinstance(load, Crosscoder)
    x, y = torch.randn(5, 16), torch.randn(5, 16)
    torch.testing.assert_close(load.encode_pair(x, y), model.encode_pair(x, y))
    with pytest.raises(InteropError, match="crosscoder"):
        export_saelens(model, tmp_path / "out")
    assert not (tmp_path / "out").exists()


@pytest.fixture(scope="module")
def small_run():
    P = get_profile("smoke", synthetic_d=32, n_shared=16, n_image_only=4, n_text_only=4, m=48, k=4, steps=60,
                    batch_size=32, dead_after=2000)
    tr, va, sv = ex.synthetic_split(P, 0.7, n_pairs=400)
    models = {n: ex.train_method(n, tr, P, seed=0, progress=False) for n in (M.GSAE, M.CROSSCODER)}
    return P, tr, va, sv, models


def test_the_analysis_marks_what_a_pair_code_cannot_have(small_run):
    P, tr, va, sv, models = small_run
    truth = ex._truth_dict(sv)
    row = ex.evaluate_model(models[M.CROSSCODER], va, truth=truth)
    for k in PAIR_UNAVAILABLE + ("mms_img_txt_mean_alive", "code_x2y_R@1", "recon_y2x_R@1", "gt_alignment_error"):
        assert np.isnan(row[k]), k
    assert row["both_rule"] == "needs one modality"
    # what it has: both reconstructions from the pair's code, dead and dense latents, L0, recovery by its decoders
    assert 0 < row["explained_variance_x"] < 1 and 0 < row["explained_variance_y"] < 1
    assert row["l0"] <= 4 and row["dead"] == row["dead_min1"] and 0 <= row["dense_latents"] <= 1
    assert 0 < row["gt_recovery_x_mean"] <= 1 and 0 < row["gt_recovery_y_mean"] <= 1
    assert row["decoder_image_only"] + row["decoder_text_only"] + row["decoder_both"] + row["dead"] == 48
    # the one-modality models are untouched
    gsae = ex.evaluate_model(models[M.GSAE], va, truth=truth)
    assert not any(np.isnan(gsae[k]) for k in ("both", "mms_img_txt_mean_alive", "code_x2y_R@1"))
    a = analyze(models[M.CROSSCODER], va)
    assert (a.codes_x != a.codes_y).nnz == 0 and len(a.categories) == 48


def test_the_tables_say_n_a(small_run):
    P, tr, va, sv, models = small_run
    rows = [{"model": n, "seed": 0, **ex.evaluate_model(m, va, truth=ex._truth_dict(sv))} for n, m in models.items()]
    per_seed = ex.add_derived(pd.DataFrame(rows))
    run = tables.RunInfo("smoke", "synthetic", len(va), per_seed["category_rule"].iloc[0], "truth", (0,))
    full, cmp, md = tables.comparison(per_seed, [], run)
    line = next(ln for ln in md.splitlines() if ln.startswith(f"| {M.CROSSCODER} "))
    assert "n/a" in line and "nan" not in md
    assert "encodes a pair" in cmp.caption and M.CROSSCODER in cmp.caption
    gsae_line = next(ln for ln in md.splitlines() if ln.startswith(f"| {M.GSAE} "))
    assert "n/a" not in gsae_line
    text = findings.analysis(per_seed, run)
    line = next(ln for ln in text.splitlines() if "crosscoder" in ln)
    shares = [float(v) for v in __import__("re").findall(r"(\d+)% into", line)]
    assert len(shares) == 3 and abs(sum(shares) - 100 * (1 - row_dead_share(per_seed))) <= 2
    assert f"{per_seed.set_index('model').loc[M.CROSSCODER, 'explained_variance_x']:.2f}" in line


def row_dead_share(per_seed):
    r = per_seed.set_index("model").loc[M.CROSSCODER]
    return r["dead"] / r["m"]
