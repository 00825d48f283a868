"""mmsae models in SAELens's and sparsify's formats, and back (mmsae.models.interop); against the real SAELens when it
is installed (pip install -e ".[interop]")."""

import json

import numpy as np
import pytest
import torch

from mmsae.models import SAEConfig, build_model, gsae_config, mgsae_config
from mmsae.models.interop import (InteropError, export_saelens, export_sparsify, import_saelens, import_sparsify,
                                  main)


def _trained(cfg, seed=0):
    """A model with non-trivial weights (random, biases too), as training would leave it."""
    torch.manual_seed(seed)
    m = build_model(cfg).eval()
    with torch.no_grad():
        m.b_pre.normal_(0, 0.3)
        m.b_enc.normal_(0, 0.1)
    return m


def _inputs(d, n=64, seed=1):
    x = torch.randn(n, d, generator=torch.Generator().manual_seed(seed))
    return x / x.norm(dim=1, keepdim=True)


@pytest.mark.parametrize("fmt", ["saelens", "sparsify"])
def test_round_trip_of_the_pooled_sae(tmp_path, fmt):
    model = _trained(SAEConfig(arch="topk", d=16, m=48, k=4))
    export, imp = (export_saelens, import_saelens) if fmt == "saelens" else (export_sparsify, import_sparsify)
    (folder,) = export(model, tmp_path / "out")
    back = imp(folder, tmp_path / "mmsae")
    x = _inputs(16)
    with torch.no_grad():
        torch.testing.assert_close(back.encode(x, 0), model.encode(x, 0))
        torch.testing.assert_close(back.decode(model.encode(x, 0), 0), model.decode(model.encode(x, 0), 0))
    assert (tmp_path / "mmsae" / "config.json").exists()


def test_a_group_sparse_model_becomes_one_sae_per_modality(tmp_path):
    model = _trained(mgsae_config(16, 48, 4))
    folders = export_saelens(model, tmp_path / "mgsae")
    assert [f.name for f in folders] == ["image", "text"]
    x = _inputs(16)
    for i, f in enumerate(folders):
        back = import_saelens(f)
        with torch.no_grad():
            torch.testing.assert_close(back.encode(x, 0), model.encode(x, i))
    a, b = (json.loads((f / "cfg.json").read_text()) for f in folders)
    assert a["architecture"] == "topk" and a["k"] == 4 and a["mmsae"]["modality"] == 0 and b["mmsae"]["modality"] == 1


def test_what_cannot_be_written_or_read_is_refused_and_nothing_is_left(tmp_path):
    bt = build_model(SAEConfig(arch="batchtopk", d=8, m=16, k=2))
    with pytest.raises(InteropError, match="'batchtopk' model cannot be written"):
        export_saelens(bt, tmp_path / "bt")
    assert not (tmp_path / "bt").exists()
    src = tmp_path / "jumprelu"
    src.mkdir()
    (src / "cfg.json").write_text(json.dumps({"architecture": "jumprelu", "d_in": 8, "d_sae": 16}))
    with pytest.raises(InteropError, match=r"cfg.json: architecture 'jumprelu' is not supported"):
        import_saelens(src, tmp_path / "dest")
    assert not (tmp_path / "dest").exists()
    good = export_saelens(_trained(SAEConfig(arch="topk", d=8, m=16, k=2)), tmp_path / "good")[0]
    cfg = json.loads((good / "cfg.json").read_text())
    (good / "cfg.json").write_text(json.dumps({**cfg, "d_sae": 32}))  # the width the weights do not have
    with pytest.raises(InteropError, match=r"W_enc is \(8, 16\), expected \(d_in, d_sae\) = \(8, 32\)"):
        import_saelens(good)
    (good / "cfg.json").write_text(json.dumps({**cfg, "normalize_activations": "layer_norm"}))
    with pytest.raises(InteropError, match="normalize_activations"):
        import_saelens(good)
    with pytest.raises(SystemExit) as e:
        main(["import-saelens", str(src), str(tmp_path / "cli")])
    assert e.value.code == 2 and not (tmp_path / "cli").exists()


def test_saelens_reads_our_export_and_we_read_theirs(tmp_path):
    sae_lens = pytest.importorskip("sae_lens", reason="SAELens not installed (pip install -e '.[interop]')")
    from sae_lens import SAE
    from sae_lens.saes.topk_sae import TopKSAE, TopKSAEConfig

    model = _trained(gsae_config(16, 48, 4))
    x = _inputs(16)
    for i, folder in enumerate(export_saelens(model, tmp_path / "gsae")):
        theirs = SAE.load_from_disk(folder)  # SAELens's own loader
        assert isinstance(theirs, TopKSAE)
        with torch.no_grad():
            torch.testing.assert_close(theirs.encode(x), model.encode(x, i), rtol=1e-5, atol=1e-6)
            z = model.encode(x, i)
            torch.testing.assert_close(theirs.decode(z), model.decode(z, i), rtol=1e-5, atol=1e-6)
    # an SAE SAELens built and saved, read into mmsae: the same codes
    torch.manual_seed(3)
    sae = TopKSAE(TopKSAEConfig(d_in=16, d_sae=40, k=3, apply_b_dec_to_input=False))
    with torch.no_grad():
        sae.b_dec.normal_(0, 0.2)
        sae.b_enc.normal_(0, 0.1)
    sae.save_model(tmp_path / "theirs")
    ours = import_saelens(tmp_path / "theirs", tmp_path / "ours")
    with torch.no_grad():
        torch.testing.assert_close(ours.encode(x, 0), sae.encode(x), rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(ours.decode(sae.encode(x), 0), sae.decode(sae.encode(x)), rtol=1e-5, atol=1e-6)
    assert sae_lens is not None


def test_sparsify_reads_our_export_and_we_read_theirs(tmp_path, monkeypatch):
    pytest.importorskip("sparsify", reason="sparsify not installed (pip install -e '.[interop]')")
    import sparsify.sparse_coder
    from sparsify import SparseCoder, SparseCoderConfig
    from sparsify.utils import eager_decode

    if not torch.cuda.is_available():  # sparsify picks its triton decoder whenever triton imports, GPU or not
        monkeypatch.setattr(sparsify.sparse_coder, "decoder_impl", eager_decode)

    model = _trained(mgsae_config(16, 48, 4))
    x = _inputs(16)
    for i, folder in enumerate(export_sparsify(model, tmp_path / "mgsae")):
        theirs = SparseCoder.load_from_disk(folder)
        out = theirs.encode(x)
        dense = torch.zeros(len(x), 48).scatter_(1, out.top_indices, out.top_acts)
        with torch.no_grad():
            torch.testing.assert_close(dense, model.encode(x, i), rtol=1e-5, atol=1e-6)
            torch.testing.assert_close(theirs.decode(out.top_acts, out.top_indices),
                                       model.decode(model.encode(x, i), i), rtol=1e-5, atol=1e-6)
    torch.manual_seed(4)
    sc = SparseCoder(16, SparseCoderConfig(num_latents=40, k=3), device="cpu")
    with torch.no_grad():
        sc.b_dec.normal_(0, 0.2)
        sc.encoder.bias.normal_(0, 0.1)
    sc.save_to_disk(tmp_path / "theirs")
    ours = import_sparsify(tmp_path / "theirs")
    out = sc.encode(x)
    with torch.no_grad():
        torch.testing.assert_close(ours.encode(x, 0), torch.zeros(len(x), 40).scatter_(1, out.top_indices, out.top_acts),
                                   rtol=1e-5, atol=1e-6)
