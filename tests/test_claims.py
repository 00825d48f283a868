import numpy as np
import pandas as pd
import pytest

from mmsae.study import methods as M
from mmsae.study.claims import CLAIMS, Claim, claims_table, compare, zero_shot_column


def _runs(both_gsae, seeds=(0, 1, 2)):
    rows = []
    for s in seeds:
        for model, both, zs in ((M.SAE, 10 + s, 0.3), (M.CENTRED_SAE, 50, 0.4), (M.GSAE, both_gsae[s], 0.5 + s / 100),
                                (M.MGSAE, 80, 0.2)):
            rows.append({"model": model, "seed": s, "m": 100, "both_min1": both, "dead_min1": 10 - both / 10,
                         "zs_synthetic_classes_code": zs})
    return pd.DataFrame(rows)


def test_verdicts_follow_sign_and_spread():
    up = Claim("x", M.SAE, M.GSAE, "both_min1", "both", True)
    clear = compare(_runs([60, 61, 62]), up)
    assert clear["change"] == pytest.approx(0.50) and clear["verdict"] == "holds" and clear["seeds"] == 3
    noisy = compare(_runs([5, 30, 9]), up)  # changes -0.05, +0.19, -0.03: mean +0.037, spread larger
    assert noisy["verdict"] == "within noise"
    assert compare(_runs([0, 1, 2]), up)["verdict"] == "not reproduced"
    one = compare(_runs([60, 61, 62], seeds=(0,)), up)
    assert one["verdict"] == "holds (1 seed)" and np.isnan(one["spread"])


def test_lower_is_better_and_zero_shot_column():
    dead = Claim("x", M.SAE, M.GSAE, "dead_min1", "dead", True, lower_is_better=True)
    assert compare(_runs([60, 61, 62]), dead)["verdict"] == "holds"  # dead 9 -> 4
    ps = _runs([60, 61, 62])
    assert zero_shot_column(ps) == "zs_synthetic_classes_code"
    zs = Claim("x", M.GSAE, M.MGSAE, "zs_code", "zs")
    assert compare(ps, zs)["verdict"] == "not reproduced"
    assert compare(ps.drop(columns="zs_synthetic_classes_code"), zs) is None


def test_table_cells_and_words():
    t = claims_table({"real CLIP": _runs([60, 61, 62]), "synthetic": _runs([5, 30, 9]),
                      "paper scale": _runs([60, 61, 62], seeds=(0,))}, CLAIMS[:1])
    row = t.iloc[0]
    assert row["the paper"] == "0.56 → 0.71"
    assert row["real CLIP"] == "0.11 → 0.61 (+0.50 ± 0.00)"
    assert row["verdict"] == "holds on real CLIP, paper scale (1 seed); within noise on synthetic"
    assert claims_table({"a": _runs([60, 61, 62])}, CLAIMS[:1]).iloc[0]["verdict"] == "holds on a"


def test_part_carried_by_the_centring_rung():
    ps = _runs([60, 61, 62])  # SAE 10-12 -> CentredSAE 50 -> GSAE 60-62: centring carries 39-40 of 50
    r = compare(ps, CLAIMS[0])
    assert r["via_share"] == pytest.approx(((50 - 10) + (50 - 11) + (50 - 12)) / 3 / 50)
    t = claims_table({"a": ps, "b": ps[ps.model != M.CENTRED_SAE]}, CLAIMS[:2])
    assert t.iloc[0][f"part carried by {M.CENTRED_SAE}"] == "78% / –"
    assert t.iloc[1][f"part carried by {M.CENTRED_SAE}"] == ""  # GSAE -> MGSAE: no rung between
