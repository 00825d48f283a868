#!/usr/bin/env python
"""The paper-scale MGSAE step with deferred weight gradients on and off (``TrainConfig.defer_grads``), interleaved in
one process on one thread count, so the two are timed in the same minutes on the same data: the gain of
:mod:`mmsae.engine.deferred` for the paper's run. Prints one JSON line per thread count and writes
``docs/benchmarks/defer_ab.json``.

    .venv/bin/python scripts/defer_ab.py            # about two minutes on 2 cores; run it on a quiet machine
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "lib"))

from mmsae.models import build_model  # noqa: E402
from mmsae.models.registry import config_for  # noqa: E402
from mmsae.train import TrainConfig, train  # noqa: E402


def step_ms(model, data, defer: bool, steps: int, seed: int) -> float:
    cfg = TrainConfig(steps=steps, batch_size=128, progress=False, log_every=10 ** 9, warmup_steps=1, lr=4e-4,
                      defer_grads=defer)
    return 1e3 * train(model, data, cfg, seed=seed).wall_time_s / steps


def main(threads=(1, 2), rounds: int = 4, steps: int = 60) -> list[dict]:
    rng = np.random.default_rng(0)
    x = torch.from_numpy(rng.standard_normal((20_000, 512)).astype(np.float32))
    y = x + 0.5 * torch.from_numpy(rng.standard_normal((20_000, 512)).astype(np.float32))
    out = []
    for th in threads:
        torch.set_num_threads(th)
        load0 = os.getloadavg()[0]
        models = {d: build_model(config_for("MGSAE", 512, 8192, 32), seed=0) for d in (True, False)}
        for d, m in models.items():
            step_ms(m, (x, y), d, 10, seed=0)  # warm-up (compilation, allocations)
        times = {True: [], False: []}
        for r in range(rounds):  # interleaved: on, off, on, off ...
            for d in (True, False):
                times[d].append(step_ms(models[d], (x, y), d, steps, seed=r + 1))
        on, off = float(np.median(times[True])), float(np.median(times[False]))
        rec = {"threads": th, "mgsae_step_ms_deferred": round(on, 2), "mgsae_step_ms_dense_grads": round(off, 2),
               "speedup": round(off / on, 3), "rounds": rounds, "steps_per_round": steps,
               "load_before": round(load0, 2), "date": time.strftime("%Y-%m-%d %H:%M")}
        print(json.dumps(rec), flush=True)
        out.append(rec)
    (ROOT / "docs" / "benchmarks").mkdir(parents=True, exist_ok=True)
    (ROOT / "docs" / "benchmarks" / "defer_ab.json").write_text(json.dumps(out, indent=2) + "\n")
    return out


if __name__ == "__main__":
    main()
