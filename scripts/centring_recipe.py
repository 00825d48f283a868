"""Which part of "centring each modality" does the work: the centred SAE's recipe taken apart on real CLIP.

The ladder's second rung (``CentredSAE``: a TopK SAE with one pre-bias per modality, no penalty, no
mask) carries most of GSAE's gain over the pooled SAE on the shipped 500 real CLIP pairs. A second
implementation of the same idea (fixed per-modality means subtracted from the inputs, a decoder bias
learned from zero, ``nn.Linear``'s initialisation, AdamW with a cosine schedule) was measured with
a much higher zero-shot accuracy through the codes. This script changes one ingredient at a time,
starting from ``CentredSAE`` as shipped, on the real-CLIP run's own split and settings (400 pairs
to train, 100 held out, m = 256, K = 6, 1000 steps, seeds 0-2):

* ``shipped``: the pre-bias is a parameter, tied (subtracted before encoding and added after
  decoding), initialised at each modality's mean, trained with everything else;
* ``frozen``: the same pre-bias kept at the modality means (not trained);
* ``linear_init``: the encoder and its bias drawn like ``nn.Linear`` (uniform in +-1/sqrt(d)), not
  the decoder's transpose and zero; ``frozen_linear_init``: both changes; and which part of
  ``linear_init`` matters: ``untied_unit`` (an encoder drawn independently of the decoder, unit
  rows, zero bias), ``small_encoder`` (the decoder's transpose scaled to ``nn.Linear``'s row norm
  sqrt(1/3)), ``random_bias`` (only the encoder bias drawn like ``nn.Linear``'s);
* ``geometric_median``: the pre-bias initialised at each modality's geometric median, trained.

and writes ``results/clip_vitb16_coco500/centring_recipe.{csv,tex}`` (mean and std over seeds) and
its per-seed rows. ``--data synthetic`` does the same on the default run's synthetic pairs (smoke
profile: 9,600 to train, 2,400 held out, d = 128) into ``results/centring_recipe.{csv,tex}``. The pooled SAE is the reference row. Run: ``.venv/bin/python scripts/centring_recipe.py``
(about two minutes on 2 cores).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "lib"))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402
from tqdm.auto import tqdm  # noqa: E402

from mmsae.data import load_paired  # noqa: E402
from mmsae.data.caption_labels import caption_zero_shot_set  # noqa: E402
from mmsae.eval import metrics  # noqa: E402
from mmsae.models.base import build_model  # noqa: E402
from mmsae.study.experiments import method_config  # noqa: E402
from mmsae.study.methods import CENTRED_SAE, SAE  # noqa: E402
from mmsae.study.profiles import get_profile  # noqa: E402
from mmsae.study.runs import write_table  # noqa: E402
from mmsae.train.loop import TrainConfig, train  # noqa: E402

DATA = ROOT / "data" / "clip_vitb16_coco500.npy"
OUT = {"real": ROOT / "results" / "clip_vitb16_coco500", "synthetic": ROOT / "results"}

#: variant -> (method, SAEConfig overrides, what changes), in the order of the table
VARIANTS = {
    "pooled SAE": (SAE, {}, "one pooled pre-bias (the paper's baseline)"),
    "shipped": (CENTRED_SAE, {}, "pre-bias per modality: tied, initialised at the mean, trained"),
    "frozen": (CENTRED_SAE, {"prebias": "frozen"}, "pre-bias per modality kept at the mean"),
    "linear_init": (CENTRED_SAE, {"init": "linear"}, "encoder drawn like nn.Linear, not the decoder's transpose"),
    "frozen_linear_init": (CENTRED_SAE, {"prebias": "frozen", "init": "linear"}, "frozen and linear_init"),
    "untied_unit": (CENTRED_SAE, {"init": "untied_unit"}, "encoder independent of the decoder, unit rows"),
    "small_encoder": (CENTRED_SAE, {"init": "small"}, "encoder = decoder transpose x sqrt(1/3)"),
    "random_bias": (CENTRED_SAE, {"init": "random_bias"}, "encoder bias drawn like nn.Linear's"),
    "geometric_median": (CENTRED_SAE, {"prebias_init": "geometric_median"}, "pre-bias at the geometric median"),
}


def fit(method: str, change: dict, train_pairs, seed: int, P: dict):
    ov = {k: v for k, v in change.items() if k not in ("prebias", "init")}
    model = build_model(method_config(method, P, d=train_pairs.dim, **ov), seed=seed)
    bound = 1.0 / np.sqrt(train_pairs.dim)  # nn.Linear(d, m)'s draw: uniform in +-1/sqrt(d)
    with torch.no_grad():
        init = change.get("init")
        if init == "linear":
            model.W_enc.uniform_(-bound, bound)
            model.b_enc.uniform_(-bound, bound)
        elif init == "untied_unit":  # its own generator: the global one may be in the state the decoder was drawn from
            w = torch.randn(model.W_enc.shape, generator=torch.Generator().manual_seed(10_000 + seed))
            model.W_enc.copy_(w / w.norm(dim=1, keepdim=True))
        elif init == "small":
            model.W_enc.mul_(np.sqrt(1 / 3))
        elif init == "random_bias":
            model.b_enc.uniform_(-bound, bound)
    if change.get("prebias") == "frozen":  # the loop still sets it to the means (init_from_data), then keeps it
        model.b_pre.requires_grad_(False)
    tc = TrainConfig(steps=int(P["steps"]), batch_size=int(P["batch_size"]), lr=float(P["lr"]), seed=seed,
                     progress=False, device="cpu")
    train(model, train_pairs, tc)
    return model.eval()


def measure(model, val, zs) -> dict:
    x, y = np.asarray(val.x, np.float32), np.asarray(val.y, np.float32)
    zx, zy = model.encode_numpy(x, 0), model.encode_numpy(y, 1)
    cats = metrics.neuron_categories(zx, zy, min_count=1)
    emb, ce = np.asarray(zs.emb, np.float32), np.asarray(zs.class_emb, np.float32)
    ret = metrics.cross_modal_retrieval(zx, zy)
    b = model.b_pre.detach().numpy()
    mx, my = x.mean(0), y.mean(0)
    return {"both": cats["both"], "dead": cats["dead"], "R@1 image to text (codes)": ret["x2y_R@1"],
            "zero-shot (codes)": metrics.zero_shot_accuracy(model.encode_numpy(emb, 0), zs.labels,
                                                            model.encode_numpy(ce, 1)),
            "zero-shot (reconstructions)": metrics.zero_shot_accuracy(model.reconstruct_numpy(emb, 0), zs.labels,
                                                                      model.reconstruct_numpy(ce, 1)),
            "pre-bias distance from the held-out means": float(
                (np.linalg.norm(b[0] - mx) + np.linalg.norm(b[-1] - my)) / 2)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--data", choices=sorted(OUT), default="real")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    P = get_profile("smoke")
    seeds = [int(s) for s in args.seeds.split(",")]
    rows = []
    if args.data == "real":
        train_pairs, val = load_paired(DATA).split(P["val_fraction"], seed=0)  # the real-CLIP run's split (notebook 01)
        zs = caption_zero_shot_set(train_pairs, val, min_train=8)
        what = "real CLIP ViT-B/16, 500 COCO pairs: 400 train, 100 held out"
    else:
        from mmsae.study.experiments import synthetic_split

        train_pairs, val, truth = synthetic_split(P, P["alpha"], data_seed=0, n_pairs=P["n_pairs"])  # notebook 01's
        zs = truth.zero_shot_set()
        what = f"synthetic, smoke profile: {len(train_pairs)} train, {len(val)} held out, d = {train_pairs.dim}"
    for seed in seeds:
        for name, (method, change, what) in tqdm(VARIANTS.items(), desc=f"seed {seed}"):
            model = fit(method, change, train_pairs, seed, P)
            rows.append({"variant": name, "what changes": what, "seed": seed, **measure(model, val, zs)})
    per_seed = pd.DataFrame(rows)
    num = [c for c in per_seed.columns if c not in ("variant", "what changes", "seed")]
    g = per_seed.groupby(["variant", "what changes"], sort=False)
    table = g[num].mean().round(3).reset_index()
    for c in num:
        table[f"{c}_std"] = g[c].std(ddof=0).round(3).values
    out = OUT[args.data]
    per_seed.round(4).to_csv(out / "centring_recipe_per_seed.csv", index=False)
    write_table(table, "centring_recipe", out, caption=f"The centred SAE's recipe, one ingredient at a time ({what}; "
                                                       f"m = {P['m']}, K = {P['k']}, {P['steps']} steps; mean and std "
                                                       f"over seeds {seeds}; categories with the any-firing rule).")
    print(table.to_string(index=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
