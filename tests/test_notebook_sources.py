"""The notebooks are kept as jupytext percent sources (notebooks/NN_*.py): no outputs, no
executed-notebook artefacts, and the notebook jupytext builds from each has no outputs."""

from pathlib import Path

import jupytext
import pytest

ROOT = Path(__file__).resolve().parents[1]
SOURCES = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.py"))
# what an executed or papermill-run notebook leaves behind when saved back to a source
ARTEFACTS = ("injected-parameters", "papermill", "execution_count", "\"outputs\"", "# Out[", "image/png",
             "application/vnd.jupyter")


def source_problems(text: str) -> list[str]:
    """Why a jupytext percent source is not clean (empty list: clean)."""
    problems = [f"contains {a!r}" for a in ARTEFACTS if a in text]
    nb = jupytext.reads(text, fmt="py:percent")
    for i, cell in enumerate(nb.cells):
        if cell.cell_type == "code" and (cell.get("outputs") or cell.get("execution_count") is not None):
            problems.append(f"cell {i} has outputs")
        if "papermill" in cell.get("metadata", {}) or "injected-parameters" in cell.get("metadata", {}).get("tags", []):
            problems.append(f"cell {i} carries papermill metadata")
    if "papermill" in nb.metadata:
        problems.append("notebook metadata from papermill")
    return problems


def test_there_are_notebook_sources_and_no_ipynb():
    assert len(SOURCES) == 5, SOURCES
    assert not sorted((ROOT / "notebooks").glob("*.ipynb")), "notebooks/ holds executed .ipynb files"


@pytest.mark.parametrize("src", SOURCES, ids=lambda p: p.stem)
def test_source_notebooks_stay_clean(src):
    text = src.read_text()
    assert source_problems(text) == [], src.name
    nb = jupytext.reads(text, fmt="py:percent")
    assert sum(c.cell_type == "code" for c in nb.cells) > 3
    assert not any(c.get("outputs") for c in nb.cells if c.cell_type == "code")
    assert any("parameters" in c.metadata.get("tags", []) for c in nb.cells), "no parameters cell for papermill"


def test_the_check_catches_an_executed_notebook_saved_as_source():
    clean = "# %%\nx = 1\n"
    assert source_problems(clean) == []
    dirty = ('# %% tags=["injected-parameters"]\nprofile = "smoke"\n\n# %%\nx = 1\n')
    assert source_problems(dirty)
    header = "# ---\n# jupyter:\n#   papermill:\n#     end_time: '2026-01-01'\n# ---\n\n# %%\nx = 1\n"
    assert "notebook metadata from papermill" in source_problems(header)
