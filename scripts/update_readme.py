"""Refresh the measured numbers in README.md from results/ (never typed by hand).

Fills the sections between ``<!-- results:NAME:begin -->`` and ``<!-- results:NAME:end -->``
markers, and the benchmark section (rendered by scripts/benchmark.py --from-csv).
Run by ./run_all.sh after the default run; safe to run by hand.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "lib"))

from mmsae import paper  # noqa: E402
from mmsae.data import atomic_write  # noqa: E402

RES = ROOT / "results"


def _fmt(v, digits=3):
    if isinstance(v, float):
        if v != v:
            return "–"
        return f"{v:.{digits}f}"
    return str(v)


def _pm(df: pd.DataFrame, col: str, digits: int = 3) -> list[str]:
    std = df.get(f"{col}_std")
    out = []
    for i, v in enumerate(df[col]):
        s = std.iloc[i] if std is not None else float("nan")
        out.append(_fmt(float(v), digits) + ("" if s != s else f" ± {_fmt(float(s), digits)}"))
    return out


def _md(df: pd.DataFrame) -> str:
    cols = list(df.columns)
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    for _, r in df.iterrows():
        lines.append("| " + " | ".join(str(r[c]) for c in cols) + " |")
    return "\n".join(lines)


def categories_section() -> str:
    ours = pd.read_csv(RES / "neuron_categories.csv")
    run = json.loads((RES / "headline.json").read_text())
    m = int(round(sum(ours.loc[0, c] for c in ("image_only", "text_only", "both", "dead"))))
    pp = paper.neuron_categories()
    rows = []
    for _, r in ours.iterrows():
        name = r["model"]
        p = pp[pp.model == name]
        row = {"model": name}
        for c in ("image_only", "text_only", "both", "dead"):
            mine = f"{r[c] / m:.2f}"
            row[f"{c} (paper)"] = f"{p[c].iloc[0] / 8192:.2f}" if len(p) else "–"
            row[f"{c} (ours)"] = mine
        rows.append(row)
    seeds = run.get("seeds")
    return (f"Fractions of the dictionary. Paper: CLIP ViT-B/16 on CC3M validation, 8192 latents. Ours: "
            f"`{run['profile']}` profile on `{run['data']}` data, {m} latents, held-out pairs, seeds {seeds} "
            "(from `results/neuron_categories.csv`).\n\n" + _md(pd.DataFrame(rows)))


def headline_section() -> str:
    h = json.loads((RES / "headline.json").read_text())
    models = h["models"]
    zs = [k for k in next(iter(models.values())) if k.startswith("zs_") and k.endswith("_code")]
    rows = []
    for name, v in models.items():
        row = {"model": name, "both": _fmt(v["both"], 0), "dead": _fmt(v["dead"], 0),
               "MMS img–txt": _fmt(v["mms_img_txt_mean"]),
               "EV image": _fmt(v["explained_variance_x"]), "EV text": _fmt(v["explained_variance_y"]),
               "R@1 img→txt (codes)": _fmt(v["code_x2y_R@1"]), "R@1 txt→img (codes)": _fmt(v["code_y2x_R@1"])}
        for k in zs:
            row[f"zero-shot {k[3:-5]} (codes)"] = _fmt(v[k])
        rows.append(row)
    dense = {k: v for k, v in next(iter(models.values())).items() if k.endswith("_dense")}
    tail = ""
    if dense:
        tail = "\n\nDense (no SAE) zero-shot: " + ", ".join(f"{k[3:-6]} {_fmt(v)}" for k, v in dense.items()) + "."
    summ = json.loads((RES / "data_summary.json").read_text()) if (RES / "data_summary.json").exists() else {}
    if summ:
        tail += (f" Dense retrieval R@1 img→txt {_fmt(summ['dense_x2y_R@1'])} on {summ['retrieval_pool']} pairs; "
                 f"modality gap {_fmt(summ['modality_gap'])}; matched-pair cosine {_fmt(summ['pair_cosine'])}.")
    return (f"`{h['profile']}` profile, `{h['data']}` data, MMS reference: {h['mms_reference']} "
            "(from `results/headline.json`).\n\n" + _md(pd.DataFrame(rows)) + tail)


def comparison_section() -> str:
    f = RES / "comparison_full.csv"
    if not f.exists():
        return "_Not generated yet: run `./run_all.sh`._"
    df = pd.read_csv(f)
    want = [("both", 0), ("dead", 0), ("mms_img_txt_mean", 3), ("explained_variance_x", 3),
            ("explained_variance_y", 3), ("code_x2y_R@1", 3), ("code_x2y_R@10", 3), ("code_x2y_MRR", 3),
            ("code_y2x_R@1", 3), ("code_y2x_MRR", 3)]
    want += [(c, 3) for c in df.columns if c.startswith("zs_") and c.endswith("_code")]
    want += [(c, 3) for c in ("gt_recovery_mean", "gt_collapse_rate", "gt_shared_concept_corr") if c in df]
    out = pd.DataFrame({"model": df["model"]})
    for c, dg in want:
        if c in df:
            out[c] = _pm(df, c, dg)
    n = json.loads((RES / "comparison_meta.json").read_text()) if (RES / "comparison_meta.json").exists() else {}
    head = ("Mean ± std over seeds (from `results/comparison_full.csv`; retrieval and zero-shot from SAE codes; "
            "gt_*: against the synthetic ground truth)")
    if n:
        head += f"; {', '.join(f'{k}: {v}' for k, v in n.items())}"
    return head + ".\n\n" + _md(out)


def steering_section() -> str:
    st = json.loads((RES / "steering_summary.json").read_text())
    rows = []
    for name, lat in st["latents"].items():
        gain = st["toward_at_max_alpha"].get(name, {})
        rows.append({"model": name, "latent": lat["latent"], "fires on images": lat["fires_on_images"],
                     "fires on texts": lat["fires_on_texts"],
                     **{f"gain toward concept ({k})": _fmt(v) for k, v in gain.items()},
                     "moves both": "yes" if st["moves_both"].get(name) else "no"})
    return (f"Concept: {st['concept']}; steering strength alpha = {st['alpha']} activation stds; gain = "
            "cosine increase toward the concept in the steered modality (from `results/steering_summary.json`)."
            "\n\n" + _md(pd.DataFrame(rows)))


def runtime_section() -> str:
    f = RES / "run_all.json"
    if not f.exists():
        return "_Not measured yet._"
    r = json.loads(f.read_text())
    return (f"Last `./run_all.sh` ({r['profile']} profile, {r['data']} data): **{r['wall_time_s'] / 60:.1f} min** "
            "for all notebooks on this project's 2-core reference machine (from `results/run_all.json`).")


SECTIONS = {"categories": categories_section, "headline": headline_section, "comparison": comparison_section,
            "steering": steering_section, "runtime": runtime_section}


def main() -> None:
    readme = ROOT / "README.md"
    text = readme.read_text()
    for name, fn in SECTIONS.items():
        pat = re.compile(rf"(<!-- results:{name}:begin -->\n).*?(\n<!-- results:{name}:end -->)", re.S)
        if not pat.search(text):
            continue
        try:
            body = fn()
        except FileNotFoundError as e:
            body = f"_Not generated yet ({Path(e.filename).name} missing): run `./run_all.sh`._"
        text = pat.sub(lambda mt: mt.group(1) + body + mt.group(2), text)
    atomic_write(readme, lambda tmp: Path(tmp).write_text(text))
    bench = RES / "benchmarks.csv"
    if bench.exists():
        subprocess.run([sys.executable, str(ROOT / "scripts" / "benchmark.py"), "--from-csv", str(bench),
                        "--markdown", str(readme)], check=True, cwd=ROOT)
    print(f"updated {readme}")


if __name__ == "__main__":
    main()
