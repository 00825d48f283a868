import os
import shutil
import stat

import numpy as np
import pandas as pd
import pytest
import torch

from mmsae.models import SAEConfig, build_model, gsae_config, mgsae_config
from mmsae.models.base import CheckpointMismatchError
from mmsae.data.synthetic import make_synthetic
from mmsae.train import train


@pytest.fixture(scope="module")
def pairs():
    return make_synthetic(n_pairs=1500, d=32, n_shared=24, n_image_only=8, n_text_only=8, seed=0).pairs


def _run(pairs, cfg, **kw):
    torch.manual_seed(0)
    model = build_model(cfg)
    return train(model, pairs, steps=kw.pop("steps", 60), batch_size=32, lr=2e-3, progress=False, log_every=10,
                 warmup_steps=5, **kw)


def test_seeded_cpu_training_is_deterministic(pairs):
    cfg = mgsae_config(32, 64, 4, dead_after=500)
    a, b = _run(pairs, cfg, seed=1), _run(pairs, cfg, seed=1)
    for (n, p), (_, q) in zip(a.model.state_dict().items(), b.model.state_dict().items()):
        assert torch.equal(p, q), n
    c = _run(pairs, cfg, seed=2)
    assert not torch.equal(a.model.W_dec, c.model.W_dec)


def test_training_reduces_loss_and_logs(pairs):
    r = _run(pairs, SAEConfig(d=32, m=64, k=4), steps=150)
    h = pd.DataFrame(r.history)
    assert {"step", "loss", "ev_x", "ev_y", "dead", "pairs_per_s", "wall_s"} <= set(h.columns)
    assert h["loss"].iloc[-1] < h["loss"].iloc[0]
    assert h["ev_x"].iloc[-1] > 0.3 and h["ev_y"].iloc[-1] > 0.3
    assert r.pairs_per_s > 0 and r.steps_done == 150


def test_resume_continues_exactly(tmp_path, pairs):
    cfg = mgsae_config(32, 64, 4, dead_after=500)
    full = _run(pairs, cfg, steps=60, seed=3)
    ck = tmp_path / "ck"

    class Stop(Exception):
        pass

    def crash(step, rec):
        if step == 40:
            raise Stop

    with pytest.raises(Stop):
        _run(pairs, cfg, steps=60, seed=3, checkpoint_dir=str(ck), checkpoint_every=20, callback=crash)
    assert (ck / "last" / "trainer_state.pt").exists()
    resumed = _run(pairs, cfg, steps=60, seed=3, checkpoint_dir=str(ck), checkpoint_every=20)
    assert resumed.resumed_from == 20  # the crash at step 40 came before that step's checkpoint
    for (n, p), (_, q) in zip(full.model.state_dict().items(), resumed.model.state_dict().items()):
        torch.testing.assert_close(p, q, rtol=0, atol=0, msg=n)
    log = pd.read_csv(ck / "train_log.csv")
    assert log["step"].tolist() == list(range(10, 61, 10))
    assert not [p for p in ck.iterdir() if p.name.startswith(".")]  # no half-written checkpoints


def test_bad_inputs(pairs):
    with pytest.raises(ValueError, match="dimension"):
        _run(pairs, SAEConfig(d=16, m=32, k=2))
    with pytest.raises(ValueError, match="unpaired"):
        train(build_model(SAEConfig(d=32, m=32, k=2)), (np.zeros((10, 32)), np.zeros((9, 32))), steps=1,
              progress=False)
    with pytest.raises(ValueError, match="only 1 training pair"):
        train(build_model(SAEConfig(d=32, m=32, k=2)), pairs.subset(np.arange(1)), steps=1, batch_size=32,
              progress=False)


def test_batch_size_clamps_to_small_data(pairs, capsys):
    # 100 pairs, 80 for training, the profile's batch of 128: clamp with a note, not an error
    small = pairs.subset(np.arange(80))
    r = train(build_model(SAEConfig(d=32, m=32, k=2), seed=0), small, steps=5, batch_size=128, log_every=5,
              progress=False)
    assert "batch_size 128 exceeds the 80 training pairs; training with batch_size 80" in capsys.readouterr().out
    assert r.steps_done == 5 and np.isfinite(r.history[-1]["loss"])
    # at most the data: batch_size 80 is a full pass over the 80 pairs per step, same as the clamped run
    full = train(build_model(SAEConfig(d=32, m=32, k=2), seed=0), small, steps=5, batch_size=80, log_every=5,
                 progress=False)
    assert torch.equal(full.model.W_dec, r.model.W_dec)


def _finished_run(pairs, ck, cfg, **kw):
    return _run(pairs, cfg, steps=kw.pop("steps", 30), checkpoint_dir=str(ck), checkpoint_every=10, **kw)


def test_refuses_checkpoint_of_another_run(tmp_path, pairs):
    ck = tmp_path / "ck"
    first = _finished_run(pairs, ck, mgsae_config(32, 64, 4, dead_after=500), seed=0)
    # a GSAE, seed 1, another learning rate, pointed at the MGSAE's folder
    with pytest.raises(CheckpointMismatchError) as err:
        torch.manual_seed(0)
        train(build_model(gsae_config(32, 64, 4, dead_after=500)), pairs, steps=30, batch_size=32, lr=1e-3, seed=1,
              progress=False, checkpoint_dir=str(ck))
    msg = str(err.value)
    assert str(ck / "last") in msg
    assert "mask_rate: checkpoint 0.2, requested 0.0" in msg
    assert "seed: checkpoint 0, requested 1" in msg and "lr: checkpoint 0.002, requested 0.001" in msg
    # more steps on a finished run is another run too (the schedule differs)
    with pytest.raises(CheckpointMismatchError, match="steps: checkpoint 30, requested 60"):
        _finished_run(pairs, ck, mgsae_config(32, 64, 4, dead_after=500), seed=0, steps=60)
    # the same run resumes (nothing left to do) and gives the saved weights back
    again = _finished_run(pairs, ck, mgsae_config(32, 64, 4, dead_after=500), seed=0)
    assert again.resumed_from == 30 and torch.equal(again.model.W_dec, first.model.W_dec)
    # resume=False starts over
    fresh = _run(pairs, gsae_config(32, 64, 4, dead_after=500), steps=30, seed=1, checkpoint_dir=str(ck),
                 resume=False)
    assert fresh.resumed_from == 0


def test_resume_falls_back_to_newest_complete_checkpoint(tmp_path, pairs):
    cfg = mgsae_config(32, 64, 4, dead_after=500)
    full = _run(pairs, cfg, steps=60, seed=3)
    ck = tmp_path / "ck"

    class Stop(Exception):
        pass

    def crash_at(n):
        def cb(step, rec):
            if step == n:
                raise Stop
        return cb

    with pytest.raises(Stop):
        _run(pairs, cfg, steps=60, seed=3, checkpoint_dir=str(ck), checkpoint_every=20, callback=crash_at(30))
    older = tmp_path / "step20"
    shutil.copytree(ck / "last", older)
    with pytest.raises(Stop):
        _run(pairs, cfg, steps=60, seed=3, checkpoint_dir=str(ck), checkpoint_every=20, callback=crash_at(50))
    # a crash between the two renames of the swap: the old last/ moved aside, the new one
    # still under its temporary name, no last/; plus a half-written temporary folder
    shutil.move(str(older), ck / ".last.old")
    os.replace(ck / "last", ck / ".last.k2v9q1")
    half = ck / ".last.zz0000"
    shutil.copytree(ck / ".last.k2v9q1", half)
    (half / "trainer_state.pt").write_bytes((half / "trainer_state.pt").read_bytes()[:100])
    resumed = _run(pairs, cfg, steps=60, seed=3, checkpoint_dir=str(ck), checkpoint_every=20)
    assert resumed.resumed_from == 40
    for (n, p), (_, q) in zip(full.model.state_dict().items(), resumed.model.state_dict().items()):
        assert torch.equal(p, q), n
    assert (ck / "last").is_dir() and not [p for p in ck.iterdir() if p.name.startswith(".")]


def test_interrupted_swap_keeps_previous_checkpoint(tmp_path, pairs, monkeypatch):
    """An exception between the renames (the new folder is cleaned up): resume from the old one."""
    import importlib

    T = importlib.import_module("mmsae.train.loop")  # the module (the package attribute is the function)

    cfg = mgsae_config(32, 64, 4, dead_after=500)
    full = _run(pairs, cfg, steps=60, seed=3)
    ck = tmp_path / "ck"
    real = T.replace_dir
    calls = []

    def swap_then_die(src, dst):
        calls.append(dst)
        if len(calls) == 2:  # second checkpoint (step 40): first rename done, then killed
            os.replace(dst, dst.with_name(f".{dst.name}.old"))
            raise KeyboardInterrupt
        real(src, dst)

    monkeypatch.setattr(T, "replace_dir", swap_then_die)
    with pytest.raises(KeyboardInterrupt):
        _run(pairs, cfg, steps=60, seed=3, checkpoint_dir=str(ck), checkpoint_every=20)
    monkeypatch.setattr(T, "replace_dir", real)
    assert not (ck / "last").exists() and (ck / ".last.old").is_dir()
    resumed = _run(pairs, cfg, steps=60, seed=3, checkpoint_dir=str(ck), checkpoint_every=20)
    assert resumed.resumed_from == 20
    assert torch.equal(full.model.W_dec, resumed.model.W_dec) and torch.equal(full.model.W_enc, resumed.model.W_enc)


def test_checkpoint_and_model_folders_get_ordinary_modes(tmp_path, pairs):
    old = os.umask(0o027)
    try:
        _run(pairs, SAEConfig(d=32, m=32, k=2), steps=4, checkpoint_dir=str(tmp_path / "ck"))
        model_dir = build_model(SAEConfig(d=32, m=32, k=2), seed=0).save(tmp_path / "m")
    finally:
        os.umask(old)
    for d in (tmp_path / "ck" / "last", tmp_path / "ck" / "last" / "model", model_dir):
        assert stat.S_IMODE(d.stat().st_mode) == 0o750, d
    for f in (tmp_path / "ck" / "last" / "trainer_state.pt", tmp_path / "ck" / "train_log.csv",
              tmp_path / "ck" / "train_summary.json", model_dir / "config.json", model_dir / "model.safetensors",
              tmp_path / "ck" / "last" / "model" / "model.safetensors"):
        assert stat.S_IMODE(f.stat().st_mode) == 0o640, f
