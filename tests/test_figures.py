"""Every committed figure is fit for a slide or a paper column: PDF and PNG side by side, no wider than
3 : 1 (plots.MAX_ASPECT) nor taller than 1 : 2, large enough to read and not so large that it is a poster."""

from pathlib import Path

import pytest
from PIL import Image

from mmsae.study.plots import MAX_ASPECT

ROOT = Path(__file__).resolve().parents[1]
PNGS = sorted((ROOT / "figures").rglob("*.png"))


@pytest.mark.skipif(not PNGS, reason="no committed figures (./run_all.sh writes them)")
@pytest.mark.parametrize("png", PNGS, ids=lambda p: str(p.relative_to(ROOT / "figures")))
def test_committed_figure_shape(png):
    w, h = Image.open(png).size
    rel = png.relative_to(ROOT)
    assert w / h <= MAX_ASPECT + 0.05, f"{rel}: {w} x {h} px is {w / h:.2f} : 1, wider than {MAX_ASPECT:g} : 1"
    assert h / w <= 2.0, f"{rel}: {w} x {h} px is taller than 1 : 2"
    assert 500 <= w <= 4000 and 300 <= h <= 4000, f"{rel}: {w} x {h} px (dpi 200: 2.5-20 inches wide)"
    assert png.with_suffix(".pdf").is_file(), f"{rel}: no vector PDF beside it"


def test_grid_keeps_many_panels_within_the_aspect():
    from mmsae.study.plots import panel_grid

    for n in (1, 3, 7, 9, 12):
        fig, axes = panel_grid(n, 2.9, 2.5, max_cols=3, legend_w=1.4)
        w, h = fig.get_size_inches()
        assert len(axes) == n and w / h <= MAX_ASPECT, (n, w, h)
        assert sum(ax.get_visible() for ax in fig.axes) == n
