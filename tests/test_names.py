"""Latents named from captions (mmsae.eval.names)."""

import numpy as np
import pandas as pd

from mmsae.eval import names as N
from mmsae.study.zero_shot import binomial_se, zero_shot_table
from mmsae.data import ZeroShotSet


def _codes():
    """40 items: items 0-9 are about giraffes, 10-19 about pizza, the rest mixed. Latent 0
    fires on the giraffe images and captions, latent 1 on pizza images but on giraffe
    captions, latent 2 never."""
    w = ["zoo", "tree", "field", "fence", "sky", "rock", "lake", "hill", "barn", "road"]
    caps = ([[f"a giraffe by the {w[i]}", f"giraffe and {w[(i + 3) % 10]}"] for i in range(10)]
            + [[f"a pizza on a {w[i]}", f"pizza near the {w[(i + 5) % 10]}"] for i in range(10)]
            + [[f"a street with cars {i}", "people walking"] for i in range(20)])
    z_x = np.zeros((40, 3), np.float32)
    z_y = np.zeros((40, 3), np.float32)
    z_x[:10, 0] = np.arange(10) + 1.0
    z_y[:10, 0] = 1.0
    z_x[10:20, 1] = 2.0
    z_y[:10, 1] = 0.5
    return caps, z_x, z_y


def test_names_come_from_what_a_latent_fires_on():
    caps, z_x, z_y = _codes()
    dx, dy = N.caption_documents(caps)
    assert dx[0] == "a giraffe by the zoo giraffe and fence" and dy[0] == "a giraffe by the zoo"
    nm = N.name_latents(z_x, z_y, dx, dy, top=3)
    assert nm.words_x[0][0] == "giraffe" and nm.words_y[0][0] == "giraffe"
    assert "pizza" in nm.words_x[1] and "giraffe" in nm.words_y[1]
    assert nm.words_x[2] == [] and nm.words_y[2] == []
    assert nm.agreement[0] > 0 and nm.agreement[1] == 0 and np.isnan(nm.agreement[2])
    assert nm.name(0).startswith("giraffe")
    # z-scores are sorted, best first
    assert nm.z_x[0] == sorted(nm.z_x[0], reverse=True)


def test_agreement_summary_and_its_chance_level():
    caps, z_x, z_y = _codes()
    nm = N.name_latents(z_x, z_y, *N.caption_documents(caps), top=3)
    s = N.agreement_summary(nm, np.array(["both", "both", "dead"]))
    assert s["n_named_both"] == 2
    assert s["agreement_mean"] == np.mean([nm.agreement[0], nm.agreement[1]])
    assert s["agreement_any"] == 0.5
    # chance pairs latent 0's image words (giraffe) with latent 1's text words (giraffe): the shuffle is a derangement
    assert s["agreement_chance"] >= 0
    assert N.agreement_summary(nm, np.array(["dead"] * 3))["n_named_both"] == 0


def test_truth_documents_and_records():
    cx = np.array([[1.0, 0, 2], [0, 0, 0]])
    cy = np.array([[0, 3.0, 0], [1, 0, 0]])
    dx, dy = N.truth_documents(cx, cy)
    assert dx == ["concept_0 concept_2", ""] and dy == ["concept_1", "concept_0"]
    caps, z_x, z_y = _codes()
    nm = N.name_latents(z_x, z_y, *N.caption_documents(caps), top=3)
    recs = N.latent_records(np.array(["both", "image_only", "dead"]), np.array([0.5, 1.0, np.nan]), z_x, z_y, nm,
                            caps, [c[0] for c in caps], k=3)
    assert recs[0]["top_images"][0] == {"row": 9, "act": 10.0, "captions": caps[9]}
    assert [t["row"] for t in recs[0]["top_images"]] == [9, 8, 7]
    assert recs[2]["top_images"] == [] and recs[2]["modality_score"] is None
    assert recs[1]["fires_img"] == 10 and recs[1]["fires_txt"] == 10
    bare = N.latent_records(np.array(["both", "image_only", "dead"]), np.array([0.5, 1.0, np.nan]), z_x, z_y)
    assert set(bare[0]) == {"id", "category", "modality_score", "fires_img", "fires_txt"}


def test_zero_shot_table_has_binomial_errors_and_the_papers_numbers():
    per_seed = pd.DataFrame([{"model": m, "seed": s, "zs_c_dense": 0.9, "zs_c_code": v + 0.01 * s, "zs_c_recon": v}
                             for m, v in (("SAE", 0.2), ("MGSAE", 0.6)) for s in range(3)])
    zs = ZeroShotSet("c", np.zeros((50, 2), np.float32), np.zeros(50, np.int64), np.eye(2, dtype=np.float32), ["a", "b"])
    t = zero_shot_table(per_seed, {"c": zs}, ["SAE", "MGSAE"]).set_index("model")
    assert list(t.index) == ["dense", "SAE", "MGSAE"]
    assert abs(t.loc["MGSAE", "code"] - 0.61) < 1e-12 and t.loc["MGSAE", "code_std"] > 0
    assert t.loc["SAE", "code_binomial_se"] == binomial_se(0.21, 50) == np.sqrt(0.21 * 0.79 / 50)
    assert t.loc["MGSAE", "paper_cifar10"] == 0.842 and t.loc["dense", "paper_cifar10"] == 0.916
    assert t.loc["SAE", "chance"] == 0.5 and t.loc["SAE", "n_test"] == 50
