"""mmsae.study.notebooks: the scrubbed executed notebooks (byte-identical for the same numbers, no
timings, no absolute paths, no progress bars) and the paired .ipynb twins of the notebook sources."""

import copy
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import jupytext
import pytest

from mmsae.study.notebooks import (STABLE_KERNELSPEC, main, notebook_bytes, notebook_problems, pair_notebooks,
                                   reader_problems,
                                   publish_executed, scrub_notebook, write_scrubbed)

ROOT = Path(__file__).resolve().parents[1]
PROJECT = "/home/someone/work/mmsae"
PNG = "iVBORw0KGgo/home/someone/work/mmsae/AAAA"  # base64 that happens to contain the path: left alone


def executed(run: int = 0) -> dict:
    """An executed notebook as papermill writes it; ``run`` changes what differs between two runs of
    the same numbers: timestamps, durations, cell ids, widget ids, progress rates, how streams were cut."""
    t = f"2026-12-0{run + 1}T08:1{run}:37.5{run}Z"
    pm_cell = {"papermill": {"duration": 0.01 + run, "end_time": t, "exception": False, "start_time": t,
                             "status": "completed"},
               "execution": {"iopub.execute_input": t, "iopub.status.busy": t, "shell.execute_reply": t}}
    stdout_cuts = (["400 training pairs\n", "m = 256\n"] if run == 0 else ["400 training ", "pairs\nm = 256\n"])
    rate = 85.39 + 10 * run
    bar = {"output_type": "stream", "name": "stderr",
           "text": ["\r", f"SAE seed 0:  43%|####      | 430/1000 [00:0{run}<00:11, {rate}it/s, loss=0.2]"]}
    cells = [
        {"cell_type": "markdown", "id": f"md{run}", "metadata": dict(pm_cell, tags=[]), "source": ["# 02 · title"]},
        {"cell_type": "code", "id": f"p{run}", "execution_count": 1,
         "metadata": dict(pm_cell, tags=["parameters"]), "outputs": [], "source": ['out_dir = ".."']},
        {"cell_type": "code", "id": f"inj{run}", "execution_count": 2,
         "metadata": dict(pm_cell, tags=["injected-parameters"]), "outputs": [],
         "source": ["# Parameters\n", 'profile = "smoke"\n', f'out_dir = "{PROJECT}"\n']},
        {"cell_type": "code", "id": f"c{run}", "execution_count": 3, "metadata": dict(pm_cell, tags=[]),
         "source": ["train()"],
         "outputs": [{"output_type": "stream", "name": "stdout", "text": [stdout_cuts[0]]},
                     {"data": {"application/vnd.jupyter.widget-view+json": {"model_id": f"{run}abc", "version_major": 2,
                                                                             "version_minor": 0},
                               "text/plain": [f"x:   0%|          | 0/50 [00:00<?, ?it/s]"]},
                      "metadata": {}, "output_type": "display_data"},
                     bar, {"output_type": "stream", "name": "stdout", "text": [stdout_cuts[1]]},
                     {"output_type": "stream", "name": "stderr", "text": ["\n"]},
                     {"output_type": "stream", "name": "stderr", "text": [f"{PROJECT}/lib/x.py:3: UserWarning: careful\n"]},
                     {"data": {"image/png": PNG, "text/plain": ["<Figure size 640x480 with 1 Axes>"]},
                      "metadata": {"image/png": {"width": 640}}, "output_type": "display_data"},
                     {"data": {"text/plain": [f"[PosixPath('{PROJECT}/figures/training_SAE.pdf'),\n",
                                              f" PosixPath('{PROJECT}mly/other.pdf')]"]},
                      "execution_count": 3, "metadata": {}, "output_type": "execute_result"}]},
    ]
    return {"cells": cells, "nbformat": 4, "nbformat_minor": 5, "metadata": {
        "jupytext": {"formats": "ipynb,py:percent"},
        "kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
        "language_info": {"name": "python", "version": f"3.11.{7 + run}", "pygments_lexer": "ipython3"},
        "widgets": {"application/vnd.jupyter.widget-state+json": {"state": {f"{run}abc": {}}}},
        "papermill": {"duration": 40.2 + run, "start_time": t, "end_time": t, "exception": None,
                      "input_path": f"{PROJECT}/runs/smoke-synthetic/notebooks/02.ipynb",
                      "output_path": f"{PROJECT}/runs/smoke-synthetic/notebooks/executed/02.ipynb",
                      "environment_variables": {}, "version": "2.7.0",
                      "parameters": {"profile": "smoke", "out_dir": PROJECT}}}}


def test_scrub_is_deterministic_and_removes_timings_and_paths():
    a, b = notebook_bytes(scrub_notebook(executed(0), PROJECT)), notebook_bytes(scrub_notebook(executed(1), PROJECT))
    assert a == b  # two runs with the same numbers give the same bytes
    again = notebook_bytes(scrub_notebook(json.loads(a), PROJECT))
    assert again == a  # scrubbing a scrubbed notebook changes nothing
    text = a.decode()
    for gone in ("2026-12", "duration", "start_time", "iopub", '"execution"', "input_path", "widget", "it/s",
                 "3.11.", '"id": "c0"', "jupytext"):
        assert gone not in text, gone
    assert PROJECT + "/" not in text.replace(PNG, "")


def test_scrub_keeps_what_a_reader_needs():
    nb = scrub_notebook(executed(0), PROJECT)
    assert nb["metadata"]["kernelspec"] == STABLE_KERNELSPEC
    assert nb["metadata"]["papermill"] == {"parameters": {"profile": "smoke", "out_dir": "."}}
    assert nb["metadata"]["language_info"] == {"name": "python", "pygments_lexer": "ipython3"}
    assert [c["id"] for c in nb["cells"]] == ["cell-000", "cell-001", "cell-002", "cell-003"]
    assert "".join(nb["cells"][2]["source"]) == '# Parameters\nprofile = "smoke"\nout_dir = "."\n'
    assert nb["cells"][1]["source"] == ['out_dir = ".."']  # only the injected cell is rewritten
    assert nb["cells"][1]["metadata"] == {"tags": ["parameters"]} and nb["cells"][0]["metadata"] == {}
    outs = nb["cells"][3]["outputs"]
    assert [(o["output_type"], o.get("name")) for o in outs] == [
        ("stream", "stdout"), ("stream", "stderr"), ("display_data", None), ("execute_result", None)]
    assert outs[0]["text"] == ["400 training pairs\n", "m = 256\n"]  # one output however it was flushed
    assert outs[1]["text"] == ["lib/x.py:3: UserWarning: careful\n"]  # a real warning stays, the bar goes
    assert outs[2]["data"]["image/png"] == PNG and outs[2]["metadata"] == {"image/png": {"width": 640}}
    assert outs[3]["data"]["text/plain"] == ["[PosixPath('figures/training_SAE.pdf'),\n",
                                             f" PosixPath('{PROJECT}mly/other.pdf')]"]  # another folder stays
    assert outs[3]["execution_count"] == 3
    assert executed(0)["metadata"]["papermill"]["duration"] == 40.2  # the input is not modified


def test_scrub_handles_a_symlinked_project_path(tmp_path):
    real = tmp_path / "real"
    real.mkdir()
    (tmp_path / "link").symlink_to(real)
    nb = {"cells": [{"cell_type": "code", "metadata": {}, "source": "x", "execution_count": 1, "outputs": [
        {"output_type": "stream", "name": "stdout", "text": f"{real}/a.csv {tmp_path}/link/b.csv {real}\n"}]}],
          "metadata": {}, "nbformat": 4, "nbformat_minor": 4}
    out = scrub_notebook(nb, tmp_path / "link")
    assert out["cells"][0]["outputs"][0]["text"] == ["a.csv b.csv .\n"]
    assert "id" not in out["cells"][0]  # nbformat 4.4 has no cell ids: none is added


def test_write_and_publish_are_atomic_and_stable(tmp_path):
    run = tmp_path / "executed"
    run.mkdir()
    for name in ("01_extract", "02_train_baseline"):
        (run / f"{name}.ipynb").write_text(json.dumps(executed(0)))
    dest = tmp_path / "repo" / "notebooks" / "executed" / "synthetic"
    dest.mkdir(parents=True)
    (dest / "09_gone.ipynb").write_text("{}")
    (dest / "README.md").write_text("kept")
    written = publish_executed(run, dest, PROJECT)
    assert [p.name for p in written] == ["01_extract.ipynb", "02_train_baseline.ipynb"]
    assert sorted(p.name for p in dest.iterdir()) == ["01_extract.ipynb", "02_train_baseline.ipynb", "README.md"]
    first = (dest / "01_extract.ipynb").read_bytes()
    assert first.endswith(b"}\n") and json.loads(first)["nbformat"] == 4
    before = (dest / "01_extract.ipynb").stat().st_mtime_ns
    time.sleep(0.01)
    (run / "01_extract.ipynb").write_text(json.dumps(executed(1)))  # a rerun: other timings, same numbers
    write_scrubbed(run / "01_extract.ipynb", dest / "01_extract.ipynb", PROJECT)
    assert (dest / "01_extract.ipynb").read_bytes() == first
    assert (dest / "01_extract.ipynb").stat().st_mtime_ns == before  # not rewritten
    assert not list(dest.glob(".*.tmp"))
    with pytest.raises(FileNotFoundError, match="no executed notebooks"):
        publish_executed(tmp_path / "empty", dest, PROJECT)
    assert main(["publish", "--executed", str(run), "--dest", str(tmp_path / "cli"), "--root", PROJECT]) == 0
    assert (tmp_path / "cli" / "01_extract.ipynb").read_bytes() == first


def test_problems_name_errors_and_stderr():
    nb = scrub_notebook(executed(0), PROJECT)
    problems = notebook_problems(nb)
    assert problems[0] == "cell 3: stderr: lib/x.py:3: UserWarning: careful"
    # the list of figure paths a cell returned is code talking, not a result: named as such
    assert "cell 3: a path repr: [PosixPath('figures/training_SAE.pdf')," in problems
    assert all(p.startswith("cell 3: ") for p in problems)
    nb["cells"][1]["outputs"] = [{"output_type": "error", "ename": "KeyError", "evalue": "'x'", "traceback": []}]
    assert notebook_problems(nb)[0] == "cell 1: error KeyError: 'x'"


PUBLISHED = sorted((ROOT / "notebooks" / "executed").glob("*/[0-9][0-9]_*.ipynb"))


@pytest.mark.skipif(not PUBLISHED, reason="no executed notebooks in notebooks/executed/ (a default ./run_all.sh writes them)")
@pytest.mark.parametrize("path", PUBLISHED, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_committed_executed_notebooks_are_clean(path):
    """What the repository page shows: scrubbed (scrubbing again changes nothing), no error and no
    warning on stderr, no absolute path of the machine that ran it, and the figures."""
    data = path.read_bytes()
    nb = json.loads(data)
    assert notebook_bytes(scrub_notebook(nb)) == data, "not scrubbed: run ./run_all.sh (default run)"
    assert notebook_problems(nb) == []
    text = data.decode()
    for machine in (str(ROOT), "/home/", "/tmp/", "/Users/"):
        assert machine not in text, machine
    assert len(nb["cells"]) > 3 and any("image/png" in o.get("data", {}) for c in nb["cells"] for o in c.get("outputs", []))


def test_pair_writes_the_ipynb_twins_once(tmp_path):
    for src in sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.py")):
        shutil.copy2(src, tmp_path / src.name)
    written = pair_notebooks(tmp_path)
    assert [p.name for p in written] == [p.with_suffix(".ipynb").name for p in sorted(tmp_path.glob("*.py"))]
    for ipynb in written:
        src = ipynb.with_suffix(".py")
        assert ipynb.stat().st_mtime_ns == src.stat().st_mtime_ns  # jupytext sees the pair in step
        nb, text_nb = jupytext.read(ipynb), jupytext.read(src)
        assert [(c.cell_type, c.source) for c in nb.cells] == [(c.cell_type, c.source) for c in text_nb.cells]
        assert not any(c.get("outputs") for c in nb.cells if c.cell_type == "code")
        assert nb.metadata["jupytext"]["formats"] == "ipynb,py:percent"
        assert nb.metadata["kernelspec"] == STABLE_KERNELSPEC
    # an existing twin (with the user's outputs) is left alone; --force rewrites it
    ipynb = written[0]
    ipynb.write_text(ipynb.read_text() + " ")
    mine = ipynb.read_bytes()
    assert pair_notebooks(tmp_path) == [] and ipynb.read_bytes() == mine
    assert main(["pair", str(tmp_path), "--force"]) == 0 and ipynb.read_bytes() != mine


def test_pair_refuses_a_source_without_the_pairing(tmp_path):
    (tmp_path / "01_x.py").write_text("# ---\n# jupyter:\n#   jupytext:\n#     formats: py:percent\n# ---\n\n# %%\nx = 1\n")
    with pytest.raises(ValueError, match="ipynb,py:percent"):
        pair_notebooks(tmp_path)
    assert not (tmp_path / "01_x.ipynb").exists()


NOTEBOOK = '''# ---
# jupyter:
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% tags=["parameters"]
out_dir = "."

# %%
from pathlib import Path
import matplotlib.pyplot as plt
from tqdm.auto import tqdm
for _ in tqdm(range(200), desc="steps"):
    pass
print("wrote", Path(out_dir).resolve() / "figures" / "x.png")
plt.plot([0, 1], [1, 0])
plt.show()
Path(out_dir).resolve() / "results"
'''


@pytest.mark.slow
def test_two_papermill_runs_scrub_to_the_same_bytes(tmp_path):
    """Real papermill output (progress bars, prints, a figure, the out_dir parameter): two runs, same bytes."""
    pytest.importorskip("papermill")
    nb = tmp_path / "nb.ipynb"
    jupytext.write(jupytext.reads(NOTEBOOK, fmt="py:percent"), nb)
    outs = []
    for i in range(2):
        out = tmp_path / f"run{i}.ipynb"
        proc = subprocess.run([sys.executable, "-m", "papermill", "--kernel", "python3", "--no-progress-bar",
                               "--cwd", str(tmp_path), str(nb), str(out), "-p", "out_dir", str(tmp_path)],
                              env=dict(os.environ, MPLBACKEND="module://matplotlib_inline.backend_inline"),
                              capture_output=True, text=True, timeout=180)
        assert proc.returncode == 0, proc.stderr[-2000:]
        outs.append(notebook_bytes(scrub_notebook(json.loads(out.read_text()), tmp_path)))
    assert outs[0] == outs[1]
    text = outs[0].decode()
    assert str(tmp_path) not in text and "Warning" not in text and "it/s" not in text
    assert '"image/png"' in text and "wrote figures/x.png" in text and "PosixPath('results')" in text
    assert 'out_dir = \\".\\"' in text


@pytest.mark.parametrize("text, why", [
    ("21 models (7 methods x seeds [0, 1, 2]) in 10 s\n", "a timing"),
    ("{'comparison': 10.152365913996618}", "a raw dict or dataclass repr"),
    ("SyntheticConfig(n_pairs=200, d=128)", "a raw dict or dataclass repr"),
    ("run folder: /home/me/mmsae/runs/smoke-synthetic\n", "an absolute path"),
    ("   98.000000   8.544004\n", "an unrounded number"),
    ("[7 rows x 32 columns]".replace("x", "\u00d7"), "a truncated frame"),
])
def test_reader_problems_catch_what_is_not_a_result(text, why):
    assert why in reader_problems(text)


def test_reader_problems_leave_results_alone():
    for text in ("train: 9600 pairs, val: 2400 pairs, d = 128\n", "concept: 0 | source: synthetic truth\n",
                 "both 0.412 ± 0.021, 12 seeds\n", "steps x 128 pairs, seeds [0, 1, 2]\n"):
        assert reader_problems(text) == [], text
