"""An SAE trained and saved by another library, analysed by notebook 04: the recorded run of the interop path.

    .venv/bin/python scripts/interop_check.py      # about two minutes on 2 cores; needs pip install -e ".[interop]"

1. ``./run_all.sh --only 01`` into a scratch folder: the smoke profile's synthetic pairs (the committed results are
   not touched).
2. A SAELens TopK SAE (``sae_lens.saes.topk_sae.TopKSAE``, SAELens's own class and initialisation) trained on those
   pairs, images and captions pooled, with a plain Adam loop through SAELens's own ``encode`` and ``decode`` (SAELens's
   trainers read language-model activations; the module is the same), then saved by SAELens (``save_model``).
3. ``mmsae.models.interop.import_saelens`` reads the folder into the run's models as ``SAELensTopK``;
4. ``./run_all.sh --only 04 --param 'models=[SAELensTopK]'``: notebook 04 analyses it like any of ours.

Writes ``docs/interop.json``: the SAE's settings, the notebook's exit, and the neuron categories and zero-shot it
measured (from the scratch folder's ``results/neuron_categories.csv`` and ``zero_shot.csv``).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "lib"))

NAME = "SAELensTopK"


def main() -> int:
    import numpy as np
    import pandas as pd
    import torch

    try:
        from sae_lens.saes.topk_sae import TopKSAE, TopKSAEConfig
    except ImportError:
        raise SystemExit("interop_check: SAELens is not installed; pip install -e '.[interop]'") from None
    from mmsae.models.interop import import_saelens
    from mmsae.study.profiles import get_profile
    from mmsae.study.runs import RunPaths, load_run_data

    out = Path(tempfile.mkdtemp(prefix="mmsae-interop-"))
    t0 = time.time()
    try:
        run = [str(ROOT / "run_all.sh"), "--out", str(out), "--no-readme"]
        subprocess.run(run + ["--only", "01"], check=True, cwd=ROOT, capture_output=True)
        paths = RunPaths(out, "smoke", "synthetic")
        train = load_run_data(paths)[0]
        P = get_profile("smoke")
        u = torch.from_numpy(np.concatenate([np.asarray(train.x), np.asarray(train.y)])).float()
        torch.manual_seed(0)
        sae = TopKSAE(TopKSAEConfig(d_in=u.shape[1], d_sae=int(P["m"]), k=int(P["k"])))
        with torch.no_grad():
            sae.b_dec.copy_(u.mean(0))
        opt = torch.optim.Adam(sae.parameters(), lr=float(P["lr"]))
        g = torch.Generator().manual_seed(0)
        for _ in range(int(P["steps"])):
            batch = u[torch.randint(0, len(u), (2 * int(P["batch_size"]),), generator=g)]
            loss = ((sae.decode(sae.encode(batch)) - batch) ** 2).sum(1).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
        saved = out / "saelens_sae"
        sae.save_model(saved)
        import_saelens(saved, paths.model_dir(NAME, 0))
        nb = subprocess.run(run + ["--only", "04", "--param", f"models=[{NAME}]", "--param", "comparison_seeds=[0]",
                                   "--param", "run_ablations=false", "--param", "run_alpha_sweep=false"],
                            cwd=ROOT, capture_output=True, text=True)
        res = out / "results"
        rec = {"date": time.strftime("%Y-%m-%d %H:%M"), "saelens_class": "sae_lens.saes.topk_sae.TopKSAE",
               "d_in": int(u.shape[1]), "d_sae": int(P["m"]), "k": int(P["k"]), "steps": int(P["steps"]),
               "final_loss": round(float(loss.detach()), 4), "notebook_04_exit": nb.returncode,
               "command": "./run_all.sh --only 04 --param 'models=[SAELensTopK]' --param 'comparison_seeds=[0]'",
               "wall_s": round(time.time() - t0, 1)}
        if nb.returncode == 0:
            cats = pd.read_csv(res / "neuron_categories.csv").iloc[0]
            rec["categories"] = {c: int(cats[c]) for c in ("both", "image_only", "text_only", "dead", "both_min1",
                                                          "dead_min1")}
            zs = pd.read_csv(res / "zero_shot.csv").iloc[0]
            rec["zero_shot"] = {c: round(float(zs[c]), 3) for c in zs.index if c.startswith("zs_")
                                and not c.endswith("_std")}
        else:
            rec["notebook_04_error"] = nb.stderr[-1500:]
        (ROOT / "docs" / "interop.json").write_text(json.dumps(rec, indent=1) + "\n")
        print(json.dumps(rec, indent=1))
        return 0 if nb.returncode == 0 else 1
    finally:
        shutil.rmtree(out, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
