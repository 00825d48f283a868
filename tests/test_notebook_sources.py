"""The notebooks are kept as jupytext percent sources (notebooks/NN_*.py): no outputs, no
executed-notebook artefacts, and the notebook jupytext builds from each has no outputs."""

import shutil
import subprocess
from pathlib import Path

import jupytext
import nbformat
import pytest

from mmsae.study.notebooks import STABLE_KERNELSPEC

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


def test_there_are_notebook_sources_and_their_ipynb_twins_are_not_committed():
    """notebooks/NN_*.ipynb are the paired twins JupyterLab opens (python -m mmsae.study.notebooks pair,
    run by run_all.sh): git-ignored, so a user's outputs never reach the repository."""
    assert len(SOURCES) == 5, SOURCES
    if not (ROOT / ".git").exists() or shutil.which("git") is None:
        pytest.skip("not a git checkout")
    git = ["git", "-C", str(ROOT)]
    tracked = subprocess.run([*git, "ls-files", "notebooks/*.ipynb"], capture_output=True, text=True, check=True)
    assert [f for f in tracked.stdout.split() if "/executed/" not in f] == [], "a notebook twin .ipynb is committed"
    twins = [f"notebooks/{src.stem}.ipynb" for src in SOURCES]
    ignored = subprocess.run([*git, "check-ignore", *twins], capture_output=True, text=True)
    assert ignored.stdout.split() == twins, "notebooks/NN_*.ipynb must be git-ignored"


@pytest.mark.parametrize("src", SOURCES, ids=lambda p: p.stem)
def test_header_is_what_jupytext_writes_back(src):
    """Opening, running and saving in JupyterLab must not rewrite the source: the header pairs it with
    its .ipynb, declares the kernel JupyterLab saves (ipykernel's python3) and filters out the version
    numbers jupytext would add, so jupytext writes the file back byte for byte."""
    text = src.read_text()
    nb = jupytext.reads(text, fmt="py:percent")
    assert nb.metadata["jupytext"]["formats"] == "ipynb,py:percent"
    assert nb.metadata["kernelspec"] == STABLE_KERNELSPEC
    assert jupytext.writes(nb, fmt="py:percent") == text
    # what JupyterLab adds when it runs and saves the notebook does not reach the text
    nb.metadata["language_info"] = {"name": "python", "version": "3.99.0"}
    nb.metadata["widgets"] = {"application/vnd.jupyter.widget-state+json": {}}
    for cell in nb.cells:
        cell.metadata.update({"execution": {"iopub.status.busy": "2026-01-01"}, "scrolled": True, "trusted": True})
        if cell.cell_type == "code":
            cell.execution_count = 1
            cell.outputs = [nbformat.v4.new_output("stream", name="stdout", text="x\n")]
    assert jupytext.writes(nb, fmt="py:percent") == text


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
