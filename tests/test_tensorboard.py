"""TensorBoard logging of the training loop (``TrainConfig.log_dir``, ``--log-dir``, the notebooks'
``tensorboard`` parameter): the event files hold every history record at its step, once."""

import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from mmsae.data.synthetic import make_synthetic
from mmsae.models import SAEConfig, build_model, mgsae_config
from mmsae.train import train
from mmsae.train.tb import tensorboard_missing

needs_tensorboard = pytest.mark.skipif(
    tensorboard_missing() is not None,
    reason='the optional tensorboard package is not installed (pip install -e ".[tensorboard]")')


@pytest.fixture(scope="module")
def pairs():
    return make_synthetic(n_pairs=600, d=32, n_shared=24, n_image_only=8, n_text_only=8, seed=0).pairs


def _run(pairs, cfg, **kw):
    torch.manual_seed(0)
    return train(build_model(cfg), pairs, steps=kw.pop("steps", 60), batch_size=32, lr=2e-3, progress=False,
                 log_every=10, warmup_steps=5, **kw)


def _events(log_dir):
    """``{tag: [(step, value), ...]}`` of the scalars in ``log_dir``, as TensorBoard reads them."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(log_dir), size_guidance={"scalars": 0})
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def _assert_matches_history(events, history):
    """One scalar per key of each record, tagged ``train/<key>``, at the record's step, each step once,
    with the record's value (stored as float32)."""
    keys = [k for k in history[0] if k != "step"]
    assert set(events) == {f"train/{k}" for k in keys}
    steps = [int(r["step"]) for r in history]
    for k in keys:
        got = events[f"train/{k}"]
        assert [s for s, _ in got] == steps, k
        assert [v for _, v in got] == [float(np.float32(r[k])) for r in history], k


@needs_tensorboard
def test_log_dir_writes_every_history_key(tmp_path, pairs):
    log_dir = tmp_path / "tb" / "MGSAE" / "seed0"
    r = _run(pairs, mgsae_config(32, 64, 4, dead_after=500), log_dir=log_dir)  # a Path is accepted
    assert [h["step"] for h in r.history] == list(range(10, 61, 10))
    events = _events(log_dir)
    _assert_matches_history(events, r.history)
    # the statistics the issue asks for: loss, EV per modality, dead latents, the l2,1 term, lr, throughput
    assert {"train/loss", "train/ev_x", "train/ev_y", "train/dead", "train/group", "train/lr",
            "train/pairs_per_s"} <= set(events)
    lr = [v for _, v in events["train/lr"]]
    assert lr[0] == pytest.approx(2e-3) and lr[-1] < lr[0]  # constant after warm-up, then the linear decay
    assert [p.parent for p in log_dir.rglob("events.out.tfevents.*")] == [log_dir]  # one run, one folder
    # a run started over in the same folder replaces the earlier one's curves
    again = _run(pairs, mgsae_config(32, 64, 4, dead_after=500), seed=1, log_dir=log_dir)
    _assert_matches_history(_events(log_dir), again.history)


@needs_tensorboard
def test_resumed_run_logs_each_step_once(tmp_path, pairs):
    cfg = mgsae_config(32, 64, 4, dead_after=500)
    ck, log_dir = tmp_path / "ck", tmp_path / "tb"

    class Stop(Exception):
        pass

    def crash(step, rec):
        if step == 40:
            raise Stop

    with pytest.raises(Stop):  # logged up to step 40, checkpointed at step 20
        _run(pairs, cfg, seed=3, checkpoint_dir=str(ck), checkpoint_every=20, callback=crash, log_dir=str(log_dir))
    first = _events(log_dir)
    assert [s for s, _ in first["train/loss"]] == [10, 20, 30, 40]  # closed (flushed) despite the exception
    resumed = _run(pairs, cfg, seed=3, checkpoint_dir=str(ck), checkpoint_every=20, log_dir=str(log_dir))
    assert resumed.resumed_from == 20
    assert len(list(log_dir.glob("events.out.tfevents.*"))) == 2
    # steps 30 and 40 of the crashed run are dropped: every step once, the resumed run's values (its wall
    # clock differs from the crashed run's, so wall_s tells the two apart)
    _assert_matches_history(_events(log_dir), resumed.history)


@needs_tensorboard
def test_cli_log_dir_flag(tmp_path, pairs):
    from mmsae.train.cli import main

    data = tmp_path / "pairs.npy"
    np.save(data, np.stack([pairs.x, pairs.y]).astype(np.float32))
    log_dir = tmp_path / "tb"
    assert main(["--data", str(data), "--preset", "gsae", "--m", "64", "--k", "4", "--steps", "20",
                 "--batch-size", "32", "--log-dir", str(log_dir)]) == 0
    events = _events(log_dir)
    assert {"train/loss", "train/group", "train/ev_x", "train/ev_y", "train/lr"} <= set(events)
    assert [s for s, _ in events["train/loss"]] == [20]  # log_every 50: the record at the last step


@pytest.mark.slow  # a fresh Python process (imports torch)
def test_no_log_dir_writes_and_imports_nothing(tmp_path):
    # a fresh process: no event files (SummaryWriter's default folder would be ./runs) and tensorboard
    # is never imported, so the loop costs nothing extra without a log_dir
    code = textwrap.dedent("""
        import sys
        import numpy as np
        from mmsae.models import SAEConfig, build_model
        from mmsae.train import train
        rng = np.random.default_rng(0)
        pairs = (rng.standard_normal((200, 16), np.float32), rng.standard_normal((200, 16), np.float32))
        r = train(build_model(SAEConfig(d=16, m=32, k=2), seed=0), pairs, steps=10, batch_size=16, log_every=5,
                  progress=False)
        assert len(r.history) == 2
        print(sorted(m for m in sys.modules if "tensorboard" in m))
    """)
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == "[]"
    assert list(tmp_path.iterdir()) == []


def test_missing_tensorboard_is_a_clear_import_error(tmp_path, pairs, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # as if tensorboard were not installed
    with pytest.raises(ImportError, match=r'log_dir=.* needs the tensorboard package: pip install -e "\.\[tensorboard\]"'):
        _run(pairs, SAEConfig(d=32, m=64, k=4), steps=10, log_dir=str(tmp_path / "tb"))
    assert not (tmp_path / "tb").exists()


@needs_tensorboard
def test_study_logs_one_run_per_method_and_seed(tmp_path, pairs, capsys, monkeypatch):
    from mmsae.study import experiments as ex
    from mmsae.study.profiles import get_profile

    P = get_profile("smoke", m=48, k=4, steps=20, batch_size=32, dead_after=2000)
    assert get_profile("smoke")["tensorboard"] is False and get_profile("paper")["tensorboard"] is True
    assert get_profile("paper", tensorboard=False)["tensorboard"] is False

    assert ex.tensorboard_dir(tmp_path, False) is None and capsys.readouterr().out == ""
    tb = ex.tensorboard_dir(tmp_path, True)
    assert tb == tmp_path / "tensorboard" and f"tensorboard --logdir {tb}" in capsys.readouterr().out

    rows = ex.train_methods(["SAE", "GSAE"], [0, 1], pairs, P, tmp_path / "models", n_jobs=1, progress=False,
                            tensorboard_dir=tb)
    assert len(rows) == 4
    for name in ("SAE", "GSAE"):
        for s in (0, 1):
            events = _events(tb / name / f"seed{s}")
            assert [st for st, _ in events["train/loss"]] == [20], (name, s)
            assert ("train/group" in events) == (name == "GSAE")  # the l2,1 term where the method has one
    m = ex.train_method("MGSAE", pairs, P, seed=0, out_dir=tmp_path / "models", tensorboard_dir=tb, progress=False)
    assert m.train_info["train_config"]["log_dir"] == str(tb / "MGSAE" / "seed0")
    assert "train/group" in _events(tb / "MGSAE" / "seed0")

    # switched on but not installed: one line saying so, and the run goes on without logging
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    assert ex.tensorboard_dir(tmp_path, True) is None
    out = capsys.readouterr().out
    assert out.count("\n") == 1 and "TensorBoard logging skipped" in out and ".[tensorboard]" in out
