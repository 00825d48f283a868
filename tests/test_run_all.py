"""run_all.sh: option checks, run isolation and locks, reproducible tables and figures.

The fast tests stop before any notebook runs; those that execute notebooks (``--only 01`` or
``01,02`` on tiny embedding files) are marked slow.
"""

import fcntl
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
RUN_ALL = ROOT / "run_all.sh"
# run_all.sh calls scripts/setup_env.sh, which uses MMSAE_PYTHON as is (no install).
ENV = dict(os.environ, MMSAE_PYTHON=sys.executable, OMP_NUM_THREADS="1", MPLBACKEND="Agg")


def _run_all(*args, cwd=None, env=None, timeout=600) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(RUN_ALL), "--no-readme", *map(str, args)], cwd=cwd or ROOT, env=env or ENV,
                          capture_output=True, text=True, timeout=timeout)


def _start(*args) -> subprocess.Popen:
    return subprocess.Popen(["bash", str(RUN_ALL), "--no-readme", *map(str, args)], cwd=ROOT, env=ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _pairs(path: Path, n: int, d: int = 16, seed: int = 0) -> Path:
    """Random L2-normalised pairs saved as .npy of shape (2, n, d)."""
    a = np.random.default_rng(seed).normal(size=(2, n, d)).astype(np.float32)
    np.save(path, a / np.linalg.norm(a, axis=-1, keepdims=True))
    return path


def _wait_for(path: Path, proc: subprocess.Popen, timeout: float = 120) -> None:
    t0 = time.monotonic()
    while not path.exists():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() - t0 < timeout, f"{path} never appeared"
        time.sleep(0.1)


# --------------------------------------------------------------------------- option checks (fast)
def test_unknown_param_is_an_error_naming_it(tmp_path):
    proc = _run_all("--param", "stepz=50", "--out", tmp_path / "o")
    assert proc.returncode == 2
    assert "stepz" in proc.stderr and "steps" in proc.stderr  # names the typo and lists the real names
    assert not (tmp_path / "o").exists()  # nothing is written for a refused run


@pytest.mark.parametrize("only", ["9"])  # the other bad selections: tests/test_runs.py
def test_only_that_selects_no_notebook_is_an_error(tmp_path, only):
    proc = _run_all("--only", only, "--out", tmp_path)
    assert proc.returncode == 2 and "--only" in proc.stderr, proc.stderr


@pytest.mark.parametrize("args", [["--data"], ["--data", "--only", "01"], ["--param"], ["--out"]])
def test_option_without_value_gives_a_clear_message(args):
    proc = _run_all(*args)
    assert proc.returncode == 2
    assert f"{args[0]} needs" in proc.stderr and "unbound variable" not in proc.stderr, proc.stderr


def test_missing_data_file_is_named(tmp_path):
    proc = _run_all("--data", "nope.npy", "--out", tmp_path, cwd=tmp_path)
    assert proc.returncode == 2 and str(tmp_path / "nope.npy") in proc.stderr, proc.stderr


def test_second_run_into_a_locked_run_folder_is_refused(tmp_path):
    data = _pairs(tmp_path / "pairs.npy", 60)
    run_dir = tmp_path / "out" / "runs" / "smoke-pairs"
    run_dir.mkdir(parents=True)
    with open(run_dir / "run.lock", "a") as fh:  # what a running run_all.sh holds (flock(2))
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        (run_dir / "run.lock.pid").write_text(f"{os.getpid()}\n")
        proc = _run_all("--only", "01", "--data", data, "--out", tmp_path / "out")
    assert proc.returncode == 3
    assert "is locked by another run_all.sh" in proc.stderr and str(os.getpid()) in proc.stderr
    assert not (run_dir / "notebooks").exists()


def test_mkdir_lock_of_a_live_process_is_refused(tmp_path):
    data = _pairs(tmp_path / "pairs.npy", 60)
    lock = tmp_path / "out" / "runs" / "smoke-pairs" / "run.lock.d"
    lock.mkdir(parents=True)
    (lock / "pid").write_text(f"{os.getpid()}\n")  # this test process: alive
    proc = _run_all("--only", "01", "--data", data, "--out", tmp_path / "out", env=dict(ENV, RUN_ALL_LOCK="mkdir"))
    assert proc.returncode == 3 and "is locked by another run_all.sh" in proc.stderr, proc.stderr
    assert (lock / "pid").read_text().strip() == str(os.getpid())  # not taken over


@pytest.mark.slow
def test_stale_mkdir_lock_of_a_dead_process_is_reported_and_taken(tmp_path):
    dead = subprocess.Popen(["true"])
    dead.wait()
    lock = tmp_path / "out" / "runs" / "smoke-synthetic" / "run.lock.d"
    lock.mkdir(parents=True)
    (lock / "pid").write_text(f"{dead.pid}\n")
    # notebook 02 without 01 fails fast; what matters is that the run got past the lock
    proc = _run_all("--only", "02", "--out", tmp_path / "out", env=dict(ENV, RUN_ALL_LOCK="mkdir"))
    assert f"taking over the stale lock {lock} of pid {dead.pid}" in proc.stderr, proc.stderr
    assert "FAILED: notebook 02_train_baseline" in proc.stderr
    assert not lock.exists()  # released on exit


# --------------------------------------------------------------------------- figures (fast)
def test_save_figure_twice_gives_identical_bytes(tmp_path):
    import matplotlib.pyplot as plt

    from mmsae.study import plots

    plots.set_style()
    digests = []
    for i in range(2):
        fig, ax = plt.subplots()
        ax.plot(np.arange(10) ** 2, label="curve")
        ax.legend()
        ax.set_title("reproducible")
        paths = plots.save_figure(fig, "fig", tmp_path / str(i))
        plt.close(fig)
        digests.append([hashlib.sha256(p.read_bytes()).hexdigest() for p in paths])
        if i == 0:
            time.sleep(1.1)  # a creation date in seconds would now differ
    assert digests[0] == digests[1]
    pdf = (tmp_path / "0" / "fig.pdf").read_bytes()
    assert b"/CreationDate" not in pdf and b"Matplotlib" not in pdf
    assert b"Software" not in (tmp_path / "0" / "fig.png").read_bytes()


# --------------------------------------------------------------------------- notebooks (slow)
@pytest.mark.slow
def test_concurrent_runs_stay_isolated_and_a_same_folder_run_is_refused(tmp_path):
    train = _pairs(tmp_path / "train.npy", 60, seed=0)
    val_a, val_b = _pairs(tmp_path / "val_a.npy", 60, seed=1), _pairs(tmp_path / "val_b.npy", 60, seed=2)
    out_a, out_b = tmp_path / "out_a", tmp_path / "out_b"
    a = _start("--only", "01", "--data", train, "--extract", f"val_source={val_a}", "--out", out_a)
    b = _start("--only", "01", "--data", train, "--extract", f"val_source={val_b}", "--out", out_b)
    run_a = out_a / "runs" / "smoke-train"
    _wait_for(run_a / "run.lock.pid", a)
    os.kill(a.pid, signal.SIGSTOP)  # run A holds its lock for as long as this third run needs
    try:
        c = _run_all("--only", "01", "--data", train, "--extract", f"val_source={val_b}", "--out", out_a)
    finally:
        os.kill(a.pid, signal.SIGCONT)
    assert c.returncode == 3 and "is locked by another run_all.sh" in c.stderr, c.stderr
    for proc in (a, b):
        stdout, stderr = proc.communicate(timeout=600)
        assert proc.returncode == 0, stdout[-2000:] + stderr[-2000:]
    for out, val in ((out_a, val_a), (out_b, val_b)):
        src = json.loads((out / "runs" / "smoke-train" / "embeddings" / "sources.json").read_text())
        assert src["val"] == str(val.resolve()) and src["train"] == str(train.resolve())
        work = out / "runs" / "smoke-train" / "notebooks"
        assert (work / "executed" / "01_extract.ipynb").exists() and (work / "logs" / "01_extract.log").exists()
        assert str(val) in (work / "01_extract.yaml").read_text()
        assert (out / "results" / "train" / "data_summary.json").exists()  # not in results/: not synthetic
        assert not (out / "results" / "data_summary.json").exists()


@pytest.mark.slow
def test_rerun_gives_byte_identical_tables_and_figures(tmp_path):
    data = _pairs(tmp_path / "tiny.npy", 200)
    args = ["--only", "1,2", "--data", data, "--param", "steps=20", "--param", "seeds=[1]",
            "--param", "m=32", "--param", "k=4"]
    outs = [tmp_path / "first", tmp_path / "second"]  # two folders: no absolute path may leak either
    for out in outs:
        proc = _run_all(*args, "--out", out)
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
        assert "01_extract: " in proc.stdout and "02_train_baseline: " in proc.stdout
    run = outs[0] / "runs" / "smoke-tiny"
    # "seeds=[1]" reached notebook 02 as a list: it trained seed 1 only (the profile default is [0])
    assert sorted(p.name for p in (run / "models" / "SAE").iterdir()) == ["seed1"]
    timing = json.loads((run / "run_all.json").read_text())  # wall times live in the untracked run folder
    assert set(timing["notebooks"]) == {"01_extract", "02_train_baseline"}
    assert json.loads((run / "embeddings" / "sources.json").read_text())["train"].startswith("runs/smoke-tiny/")

    def files(out):
        return sorted(p.relative_to(out) for d in ("results", "figures") for p in (out / d).rglob("*") if p.is_file())

    got = files(outs[0])
    assert {Path("results/tiny/data_summary.json"), Path("figures/tiny/data_overview.pdf"),
            Path("figures/tiny/training_SAE.png")} <= set(got)
    assert got == files(outs[1])
    for rel in got:
        assert (outs[0] / rel).read_bytes() == (outs[1] / rel).read_bytes(), f"{rel} differs between two runs"


@pytest.mark.slow
def test_notebook_04_alone_names_notebook_03(tmp_path):
    """One-way pipeline: 04 only loads. After 01 (the store exists) but without 02/03 it stops
    with exit code 1 and an error that says which notebooks train the models."""
    data = _pairs(tmp_path / "tiny.npy", 200)
    out = tmp_path / "out"
    first = _run_all("--only", "1", "--data", data, "--out", out)
    assert first.returncode == 0, first.stdout[-2000:] + first.stderr[-2000:]
    proc = _run_all("--only", "4", "--data", data, "--out", out)
    assert proc.returncode == 1, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "FAILED: notebook 04_analyze_split" in proc.stderr
    assert "03_train_group_sparse" in proc.stderr and "not trained in" in proc.stderr
    assert not (out / "runs" / "smoke-tiny" / "models" / "SAE").exists()  # 04 trained nothing
