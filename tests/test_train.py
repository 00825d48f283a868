import numpy as np
import pandas as pd
import pytest
import torch

from mmsae.models import SAEConfig, build_model, mgsae_config
from mmsae.synthetic import make_synthetic
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
    with pytest.raises(ValueError, match="batch_size"):
        train(build_model(SAEConfig(d=32, m=32, k=2)), pairs.subset(np.arange(10)), steps=1, batch_size=32,
              progress=False)
