import pytest
import numpy as np
import torch

from mmsae.eval.concepts import decompose_probe, name_latents
from mmsae.models import SAEConfig, build_model
from mmsae.eval.steering import concept_target, latent_std, pick_latent_by_codes, pick_latent_by_direction, steering_curve


def _identity_sae(d=4):
    torch.manual_seed(0)
    m = build_model(SAEConfig(d=d, m=d, k=d, auxk_coef=0.0))
    with torch.no_grad():
        m.W_enc.copy_(torch.eye(d))
        m.W_dec.copy_(torch.eye(d))
        m.b_pre.zero_()
    return m.eval()


def test_steering_moves_toward_the_concept_by_hand():
    m = _identity_sae()
    u = np.array([[1.0, 0, 0, 0], [0, 1.0, 0, 0]])
    target = np.array([0, 0, 1.0, 0])
    rows = steering_curve(m, u, 0, latent=2, strengths=[0.0, 1.0], sigma=1.0, target=target)
    assert rows[0]["toward"] == 0.0 and rows[0]["kept"] == 1.0
    # u + e_2, normalised: cosine to target = 1/sqrt(2), kept = 1/sqrt(2)
    assert abs(rows[1]["toward"] - 1 / np.sqrt(2)) < 1e-6
    assert abs(rows[1]["kept"] - 1 / np.sqrt(2)) < 1e-6


def test_latent_choice_helpers():
    z = np.zeros((6, 3))
    z[:3, 1] = [1, 2, 3]
    z[3:, 2] = 1
    c = np.array([1, 2, 3, 0, 0, 0.0])
    assert pick_latent_by_codes(z[:3], z[3:], c[:3], c[3:]) == 1
    assert pick_latent_by_direction(np.eye(3), np.array([0, 0.1, 1.0])) == 2
    assert latent_std(z, 0) == 1.0  # constant latent: std falls back to 1
    np.testing.assert_allclose(concept_target(np.eye(3), np.array([1, 1, 0]), center=False), [2 ** -0.5, 2 ** -0.5, 0])
    # centred (default): carriers' mean (1/2, 1/2, 0) minus the mean of all (1/3, 1/3, 1/3) = (1, 1, -2) / 6
    np.testing.assert_allclose(concept_target(np.eye(3), np.array([1, 1, 0])), np.array([1, 1, -2]) / 6 ** 0.5,
                               rtol=1e-6)
    # a shared offset (a modality mean) does not move the centred direction
    np.testing.assert_allclose(concept_target(np.eye(3) + 5.0, np.array([1, 1, 0])),
                               concept_target(np.eye(3), np.array([1, 1, 0])), rtol=1e-6)


def test_naming_and_probe_decomposition():
    atoms = np.eye(3)
    names, cos = name_latents(atoms, np.array([[0, 1.0, 0], [1.0, 0.1, 0], [0, 0, 1.0]]), ["dog", "cat", "car"])
    assert names == ["cat", "dog", "car"] and cos[1] == 1.0
    top = decompose_probe(np.array([2.0, 0.0, 1.0]), atoms, top=2, names=["a", "b", "c"])
    assert [t["name"] for t in top] == ["a", "c"]
    assert abs(top[0]["nnls_weight"] - 2.0) < 1e-9 and abs(top[1]["nnls_weight"] - 1.0) < 1e-9


# --- label-free steering concepts (data without labels or a zero-shot set) -------------------
def _clustered_pairs(n=120, d=16, k=4, seed=0):
    import numpy as np

    from mmsae.data import l2_normalize

    rng = np.random.default_rng(seed)
    centers = l2_normalize(rng.standard_normal((k, d)))
    lab = rng.integers(0, k, n)
    y = l2_normalize(centers[lab] + 0.1 * rng.standard_normal((n, d)))
    x = l2_normalize(centers[lab] + 0.3 * rng.standard_normal((n, d)))
    return x.astype("float32"), y.astype("float32"), lab


def test_text_clusters_recover_planted_groups():
    import numpy as np

    from mmsae.eval.steering import text_clusters

    x, y, lab = _clustered_pairs()
    got = text_clusters(y, n_clusters=4, seed=0)
    # each found cluster is one planted group (purity 1 on well-separated data)
    for c in np.unique(got):
        assert len(np.unique(lab[got == c])) == 1


def test_choose_concept_without_labels_uses_a_caption_cluster():
    import numpy as np

    from mmsae.eval.steering import choose_concept, steering_samples

    x, y, lab = _clustered_pairs()
    c = choose_concept(x, y, truth=None, zero_shot={}, concept=1, n_clusters=4)
    assert c.source == "text_cluster"
    carries = c.carries
    assert 0 < carries.sum() < len(y)
    assert len(np.unique(lab[carries])) == 1  # the cluster is one planted group
    # its caption target points at that group's captions more than at the others
    assert (y[carries] @ c.caption_target).mean() > (y[~carries] @ c.caption_target).mean() + 0.3
    idx = steering_samples(~carries, 10, seed=0)
    assert len(idx) == 10 and not carries[idx].any()
    with pytest.raises(ValueError, match="nothing to steer"):
        steering_samples(np.zeros(5, bool), 3)


def test_choose_concept_prefers_truth_then_zero_shot():
    import numpy as np

    from mmsae.data import ZeroShotSet
    from mmsae.eval.steering import choose_concept

    x, y, lab = _clustered_pairs()
    truth = {"codes_x": np.eye(4)[lab].astype("float32"), "codes_y": np.eye(4)[lab].astype("float32")}
    assert choose_concept(x, y, truth=truth, concept=2).source == "ground_truth"
    zs = ZeroShotSet("toy", x, lab, y[:4], ["a", "b", "c", "d"], {})
    c = choose_concept(x, y, truth=None, zero_shot={"toy": zs}, concept=0)
    assert c.source == "zero_shot" and c.c_x is None and c.pick_direction is not None


# --- concept naming and probe decomposition scored against a known truth ---------------------
def test_naming_accuracy_by_hand():
    from mmsae.eval.concepts import naming_accuracy

    vocab = np.eye(3, 5)  # word j -> direction e_j, stands for concept 10 + j
    vocab_concept = np.array([10, 11, 12])
    atoms = np.array([[1, 0, 0, 0, 0], [0, 0.9, 0.1, 0, 0], [0, 0, 1, 0, 0], [0, 0, 0, 1, 0]], float)
    latent_concept = np.array([10, 12, 12, 13])  # latent 1 is named 11 but encodes 12; latent 3's concept has no word
    r = naming_accuracy(atoms, vocab, vocab_concept, latent_concept, alive=np.array([1, 1, 1, 1], bool))
    assert r["n_named"] == 3 and r["named_correctly"] == 2
    assert r["naming_accuracy"] == pytest.approx(2 / 3)
    r = naming_accuracy(atoms, vocab, vocab_concept, latent_concept, alive=np.array([1, 0, 1, 1], bool))
    assert r["naming_accuracy"] == 1.0


def test_probe_exposes_a_correlated_concept():
    from mmsae.eval.concepts import fit_probe, probe_report
    from mmsae.data import l2_normalize

    rng = np.random.default_rng(0)
    d, n = 12, 2000
    A = np.linalg.qr(rng.standard_normal((d, d)))[0][:4]  # 4 orthonormal concept directions
    cls = rng.random(n) < 0.5  # the class ("blond hair", direction 0)
    corr = np.where(cls, rng.random(n) < 0.9, rng.random(n) < 0.1)  # "woman" (direction 1) rides along
    other = rng.random((n, 2)) < 0.5
    x = l2_normalize(cls[:, None] * A[0] + corr[:, None] * A[1] + other @ A[2:] + 0.05 * rng.standard_normal((n, d)))
    # the probe only sees the class label, yet the correlated concept is linearly entangled with it
    w = fit_probe(x, cls)
    names = ["blond", "woman", "hat", "car"]
    r = probe_report(w, A, names, watch="woman", top=2)
    assert r["top_names"][0] == "blond"
    assert r["watch_in_top"] and r["watch_rank"] == 2
    r_none = probe_report(w, A[[0, 2, 3]], ["blond", "hat", "car"], watch="woman", top=2)
    assert not r_none["watch_in_top"] and r_none["watch_rank"] == 0


def test_vocabulary_file_errors(tmp_path):
    from mmsae.eval.concepts import load_vocabulary
    from mmsae.data import EmbeddingError

    with pytest.raises(EmbeddingError, match="not found"):
        load_vocabulary(tmp_path / "nope.txt")
    f = tmp_path / "v.txt"
    f.write_text("# comment\n\n")
    with pytest.raises(EmbeddingError, match="no words"):
        load_vocabulary(f)
    f.write_text("dog\n# x\ncat\n")
    assert load_vocabulary(f) == ["dog", "cat"]


def test_vocabulary_naming_with_a_random_weight_clip(tmp_path, tmp_path_factory):
    """Real-data naming path: words -> CLIP text embeddings -> the closest atom's word."""
    from clip_helpers import register_tiny_clip

    from mmsae.eval.concepts import encode_vocabulary, load_vocabulary, name_latents
    from mmsae.embed.encoders import ClipEncoder

    enc = ClipEncoder(register_tiny_clip(tmp_path_factory), pretrained="random", device="cpu")
    f = tmp_path / "vocab.txt"
    f.write_text("dog\ncat\nviolin\n")
    words = load_vocabulary(f)
    emb = encode_vocabulary(words, enc)
    assert emb.shape == (3, enc.dim)
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, rtol=1e-5)
    # atoms placed on the word embeddings are named by those words
    names, cos = name_latents(emb[[2, 0]], emb, words)
    assert names == ["violin", "dog"]
    np.testing.assert_allclose(cos, 1.0, rtol=1e-5)
