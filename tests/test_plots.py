"""Tests for mmsae.study.plots: every function returns a figure; save_figure is atomic."""

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from mmsae.study import plots as P  # noqa: E402


@pytest.fixture(autouse=True)
def _close_figures():
    P.set_style()
    yield
    plt.close("all")


def test_set_style_and_colors():
    assert matplotlib.rcParams["pdf.fonttype"] == 42
    assert P.model_color("GSAE") == P.MODEL_COLORS["GSAE"]
    assert len({P.model_color(m) for m in P.MODEL_COLORS}) == len(P.MODEL_COLORS)
    c = P.model_color("SomeNewModel")
    assert c in P.PALETTE and c == P.model_color("SomeNewModel")


def test_save_figure(tmp_path):
    fig, ax = plt.subplots()
    ax.plot([0, 1], [0, 1], label="x")
    ax.set_title("title with text")
    out = tmp_path / "figs"
    paths = P.save_figure(fig, "my_fig-1", figures_dir=out)
    assert [p.name for p in paths] == ["my_fig-1.pdf", "my_fig-1.png"]
    for p in paths:
        assert p.exists() and p.stat().st_size > 0
    assert paths[0].read_bytes()[:4] == b"%PDF"
    assert paths[1].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert b"/FontFile2" in paths[0].read_bytes()  # TrueType embedded (fonttype 42)
    assert sorted(p.name for p in out.iterdir()) == ["my_fig-1.pdf", "my_fig-1.png"]
    # overwrite works and still leaves no temp files
    P.save_figure(fig, "my_fig-1", figures_dir=out)
    assert len(list(out.iterdir())) == 2


@pytest.mark.parametrize("bad", ["", "a b", "../x", "fig.pdf", "a/b", "é"])
def test_save_figure_rejects_bad_name(tmp_path, bad):
    fig, _ = plt.subplots()
    with pytest.raises(ValueError):
        P.save_figure(fig, bad, figures_dir=tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_plot_neuron_categories():
    df = pd.DataFrame({"model": ["SAE", "GSAE"], "image_only": [10, 5], "text_only": [8, 4],
                       "both": [30, 40], "dead": [2, 1], "both_std": [1.0, 2.0]})
    fig = P.plot_neuron_categories(df)
    assert isinstance(fig, Figure) and len(fig.axes) == 1
    paper = pd.DataFrame({"model": ["SAE", "GSAE", "MGSAE"], "image_only": [1817, 1025, 853],
                          "text_only": [1316, 1156, 973], "both": [4618, 5823, 6230],
                          "dead": [441, 188, 136]})
    fig2 = P.plot_neuron_categories(df, paper_df=paper)
    assert len(fig2.axes) == 2
    assert len(fig2.axes[1].patches) == 4 * 3


def test_plot_mms_curves():
    rng = np.random.default_rng(0)
    curves = {
        "SAE": {k: rng.random(50) for k in ("img_img", "txt_txt", "img_txt")},
        "GSAE": {k: [rng.random(50), rng.random(50), rng.random(48)]
                 for k in ("img_img", "txt_txt", "img_txt")},
    }
    fig = P.plot_mms_curves(curves)
    assert len(fig.axes) == 3
    line = fig.axes[0].get_lines()[0]
    y = line.get_ydata()
    assert np.all(np.diff(y) <= 0)  # sorted decreasing
    assert len(fig.axes[0].collections) >= 1  # band for the multi-seed model


def test_plot_modality_histogram():
    s = np.array([0.0, 0.1, 0.5, np.nan, 0.9, 1.0])
    fig = P.plot_modality_histogram({"SAE": s, "MGSAE": s[::-1]})
    assert isinstance(fig, Figure)
    assert len(fig.axes[0].patches) == 2


def test_plot_umap_and_grid():
    rng = np.random.default_rng(1)
    atoms = rng.normal(size=(40, 8))
    cats = np.array(["image_only", "text_only", "both", "dead"] * 10)
    fig = P.plot_umap(atoms, cats, "GSAE", seed=0)
    assert isinstance(fig, Figure)
    assert len(fig.axes[0].collections) == 4
    small = P.plot_umap(atoms[:5], cats[:5], "tiny", n_neighbors=15)  # n_neighbors clipped
    assert isinstance(small, Figure)
    grid = P.plot_umap_grid({"SAE": (atoms, cats), "GSAE": (atoms[:20], cats[:20])})
    assert len(grid.axes) == 2


def test_plot_steering():
    """Small multiples: one panel per model (image and text codes in the modality colours), and a last panel of
    what each model keeps of the original."""
    from mmsae.study.palette import MODALITY_COLORS

    rows = []
    for model in ("GSAE", "ModalitySpecific"):
        for mod in ("image", "text"):
            for a in (0.0, 1.0, 2.0):
                rows.append(dict(model=model, modality=mod, strength=a, toward=0.1 * a,
                                 kept=1 - 0.1 * a, toward_std=0.01, kept_std=0.02))
    fig = P.plot_steering(pd.DataFrame(rows), title="synthetic")
    visible = [ax for ax in fig.axes if ax.get_visible()]
    assert len(visible) == 3 and [ax.get_title() for ax in visible] == ["GSAE", "ModalitySpecific",
                                                                        "similarity kept to the original"]
    colours = {matplotlib.colors.to_hex(ln.get_color()) for ln in visible[0].get_lines() if ln.get_marker() == "o"}
    assert colours == {MODALITY_COLORS["image"].lower(), MODALITY_COLORS["text"].lower()}
    assert len(visible[2].get_lines()) == 4  # two models x two modalities (solid, dashed)
    w, h = fig.get_size_inches()
    assert w / h <= P.MAX_ASPECT


def test_plot_pareto():
    tab = pd.DataFrame({"model": ["SAE"] * 3 + ["PCA"] * 3, "k": [2, 4, 8] * 2, "l0": [2, 4, 8] * 2,
                        "ev": [0.3, 0.5, 0.7, 0.2, 0.3, 0.45], "ev_std": [0.01] * 3 + [np.nan] * 3})
    fig = P.plot_pareto(tab, "synthetic")
    ax = fig.axes[0]
    assert ax.get_xscale() == "log" and {t.get_text() for t in fig.legends[0].get_texts()} == {
        "SAE", "PCA (dense, L0 directions)"}


def test_plot_metric_vs_param(tmp_path):
    df = pd.DataFrame({"model": ["SAE"] * 3 + ["GSAE"] * 3, "k": [8, 16, 32] * 2,
                       "ev": [0.5, 0.6, 0.7, 0.55, 0.65, 0.75], "ev_std": [0.01] * 6})
    fig = P.plot_metric_vs_param(df, "k", "ev", yerr="ev_std", logx=True, ylabel="EV")
    ax = fig.axes[0]
    assert ax.get_xscale() == "log" and ax.get_ylabel() == "EV"
    assert len(ax.get_legend().get_texts()) == 2
    paths = P.save_figure(fig, "sweep", figures_dir=tmp_path)
    assert all(p.stat().st_size > 0 for p in paths)
