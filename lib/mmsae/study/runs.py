"""Where a run keeps its files, how tables are written, and how ``run_all.sh`` prepares a run.

Layout under ``out_dir`` (the project root by default):

    runs/<profile>-<slug>/embeddings/   train/val pairs, ground truth, zero-shot sets, sources.json
    runs/<profile>-<slug>/models/       <model>/seed<k>/ (config.json + model.safetensors)
    runs/<profile>-<slug>/notebooks/    run_all.sh's working files: converted notebooks, their
                                        parameters (<name>.yaml), logs/, executed/
    runs/<profile>-<slug>/run_all.json  wall time of each notebook of the last run_all.sh run
    runs/<profile>-<slug>/run.lock      held while run_all.sh uses this folder
    results/                            tables of the synthetic default (smoke profile; stable names)
    results/<slug>/                     tables of any other data source
    results/<profile>-synthetic/        synthetic data at another profile (e.g. paper-synthetic)
    figures/, figures/<slug>/           PDF + PNG figures, split the same way

``<slug>`` is :func:`data_slug` of the data source. ``runs/`` holds everything that varies
between otherwise identical runs (timings, logs, absolute paths) and is not tracked by git;
``results/`` and ``figures/`` hold only what a rerun with the same numbers reproduces byte
for byte.

Every table goes through :func:`write_table`: a CSV and a LaTeX ``booktabs`` table
beside it, both written atomically.

``python -m mmsae.study.runs prepare ...`` is the part of ``run_all.sh`` that needs Python: it
selects notebooks, checks ``--param`` names against their ``parameters`` cells, parses the
values as YAML/JSON literals and writes one papermill parameter file per notebook
(:func:`prepare_runs`).
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd

from ..data.load import load_paired
from ..data.store import EmbeddingError, ZeroShotSet, atomic_write
from ..data.synthetic import load_truth

__all__ = ["RunPaths", "write_table", "write_json", "data_slug", "load_run_data", "DEFAULT_DATA", "REAL_CLIP_RUN",
           "RunSetupError", "parse_param", "notebook_parameters", "select_notebooks", "resolve_data",
           "prepare_runs"]

DEFAULT_DATA = "synthetic"
# Data names that are not files; an embeddings file with one of these stems gets an "emb-" prefix.
RESERVED_DATA = ("synthetic", "clip", "clap")
# The real-CLIP run of the default ./run_all.sh: the 500 COCO pairs shipped in data/, every
# notebook, no ablations (they are a synthetic-data study).
REAL_CLIP_RUN = {"data": "embeddings:data/clip_vitb16_coco500.npy", "params": {"run_ablations": False}}


def data_slug(data: str) -> str:
    """A stable, readable folder name for a data source.

    ``synthetic``, ``clip`` and ``clap`` are their own slug; ``embeddings:PATH`` (or a cache
    folder) becomes the file's stem, e.g. ``embeddings:/any/where/clip_vitb16_coco500.npy`` ->
    ``clip_vitb16_coco500`` wherever the file lies, prefixed with ``emb-`` when the stem would
    read as one of the reserved names.
    """
    if data.startswith("embeddings:"):
        stem = Path(data.split(":", 1)[1].rstrip("/")).stem
        slug = re.sub(r"[^A-Za-z0-9_.-]+", "-", stem).strip("-.")
        return slug if slug and slug not in RESERVED_DATA else f"emb-{slug or 'data'}"
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", data).strip("-.") or "data"


@dataclass
class RunPaths:
    out_dir: Path
    profile: str
    data: str

    def __post_init__(self) -> None:
        self.out_dir = Path(self.out_dir)

    @property
    def slug(self) -> str:
        return data_slug(self.data)

    @property
    def root(self) -> Path:
        return self.out_dir / "runs" / f"{self.profile}-{self.slug}"

    @property
    def embeddings(self) -> Path:
        return self.root / "embeddings"

    @property
    def train_pairs(self) -> Path:
        return self.embeddings / "train.safetensors"

    @property
    def val_pairs(self) -> Path:
        return self.embeddings / "val.safetensors"

    @property
    def truth(self) -> Path:
        return self.embeddings / "truth.npz"

    @property
    def report_name(self) -> str | None:
        """The sub-folder of ``results/`` and ``figures/``: none for the synthetic default of the
        smoke profile, ``<profile>-synthetic`` for synthetic data at another profile (the paper-scale
        run must not overwrite the default's tables), ``<slug>`` for any other data."""
        if self.data == DEFAULT_DATA:
            return None if self.profile == "smoke" else f"{self.profile}-{self.slug}"
        return self.slug

    @property
    def results(self) -> Path:
        """``results/`` for the synthetic default, ``results/<report_name>/`` otherwise."""
        base = self.out_dir / "results"
        return base if self.report_name is None else base / self.report_name

    @property
    def figures(self) -> Path:
        """``figures/`` for the synthetic default, ``figures/<report_name>/`` otherwise."""
        base = self.out_dir / "figures"
        return base if self.report_name is None else base / self.report_name

    @property
    def notebooks(self) -> Path:
        """run_all.sh's working files for this run (converted notebooks, parameters, logs, executed copies)."""
        return self.root / "notebooks"

    @property
    def run_log(self) -> Path:
        """``run_all.json``: wall time of each notebook of the last run_all.sh run (untracked)."""
        return self.root / "run_all.json"

    def model_dir(self, name: str, seed: int = 0) -> Path:
        return self.root / "models" / name / f"seed{seed}"

    @property
    def sources(self) -> Path:
        """``sources.json``: where notebook 01 put train/val pairs (files or cache folders)."""
        return self.embeddings / "sources.json"

    def zero_shot_files(self) -> list[Path]:
        return sorted(self.embeddings.rglob("zeroshot_*.safetensors"))

    def _portable(self, p: str | Path) -> str:
        """``p`` relative to ``out_dir`` when it lies below it (the run folder can move), else absolute."""
        if str(p) == "<memory>":
            raise ValueError("sources.json needs files: these embeddings were never saved (source '<memory>')")
        p = Path(p).resolve()
        try:
            return p.relative_to(self.out_dir.resolve()).as_posix()
        except ValueError:
            return str(p)

    def write_sources(self, train: str | Path, val: str | Path, **extra: Any) -> Path:
        """Record the train/val sources; paths are stored relative to ``out_dir`` where possible
        (``extra`` values that are :class:`~pathlib.Path` too) and resolved by :meth:`read_sources`."""
        rec = {"train": self._portable(train), "val": self._portable(val)}
        rec.update({k: self._portable(v) if isinstance(v, Path) else v for k, v in extra.items()})
        return write_json(rec, self.sources)

    def read_sources(self) -> dict[str, Any]:
        """``sources.json`` with ``train``, ``val`` (and ``truth``) as absolute :class:`~pathlib.Path`."""
        rec = json.loads(self.sources.read_text())
        for k in ("train", "val", "truth"):
            if isinstance(rec.get(k), str):
                rec[k] = self.out_dir / rec[k]  # an absolute path stays absolute
        return rec

    def ensure(self) -> "RunPaths":
        for p in (self.embeddings, self.results, self.figures, self.root / "models"):
            p.mkdir(parents=True, exist_ok=True)
        return self


def _fmt(v: Any, digits: int) -> str:
    if isinstance(v, (float, np.floating)):
        if np.isnan(v):
            return "--"
        return f"{v:.{digits}f}"
    return str(v)


def write_table(df: pd.DataFrame, name: str, results_dir: str | Path, caption: str = "", label: str | None = None,
                digits: int = 3, mean_std: bool = True, latex: bool = True) -> tuple[Path, Path | None]:
    """Write ``<name>.csv`` and a booktabs ``<name>.tex`` atomically; returns both paths.

    With ``mean_std=True``, a column ``c`` with a companion ``c_std`` is typeset as
    ``mean $\\pm$ std`` in LaTeX (the CSV keeps both columns). ``latex=False`` writes the
    CSV only (per-seed data dumps) and returns ``(csv, None)``.
    """
    results_dir = Path(results_dir)
    csv = atomic_write(results_dir / f"{name}.csv", lambda tmp: df.to_csv(tmp, index=False))
    if not latex:
        return csv, None
    tex_df = df.copy()
    if mean_std:
        for c in list(tex_df.columns):
            s = f"{c}_std"
            if s in tex_df.columns:
                tex_df[c] = [
                    _fmt(a, digits) if (isinstance(b, float) and np.isnan(b)) else f"{_fmt(a, digits)} $\\pm$ {_fmt(b, digits)}"
                    for a, b in zip(df[c], df[s])
                ]
                tex_df = tex_df.drop(columns=s)
    tex_df = tex_df.apply(lambda col: col.map(lambda v: _fmt(v, digits)))
    tex_df.columns = [str(c).replace("_", r"\_").replace("%", r"\%") for c in tex_df.columns]
    body = tex_df.to_latex(index=False, escape=False, column_format="l" + "r" * (len(tex_df.columns) - 1))
    body = body.replace("\\toprule", "\\toprule").rstrip()
    lab = label or f"tab:{name}"
    tex = ("% generated by mmsae; do not edit\n\\begin{table}[t]\n\\centering\n"
           f"\\caption{{{caption}}}\n\\label{{{lab}}}\n{body}\n\\end{{table}}\n")
    texp = atomic_write(results_dir / f"{name}.tex", lambda tmp: Path(tmp).write_text(tex))
    return csv, texp


def write_json(obj: Any, path: str | Path) -> Path:
    """Atomic JSON dump (NumPy scalars and arrays converted)."""
    def default(o: Any) -> Any:
        if isinstance(o, (np.integer,)):
            return int(o)
        if isinstance(o, (np.floating,)):
            return float(o)
        if isinstance(o, np.ndarray):
            return o.tolist()
        if isinstance(o, Path):
            return str(o)
        raise TypeError(f"not JSON-serialisable: {type(o)}")

    return atomic_write(path, lambda tmp: Path(tmp).write_text(json.dumps(obj, indent=2, default=default)))


def load_run_data(paths: RunPaths):
    """What notebook 01 wrote: ``(train, val, truth, zero_shot_sets)``.

    ``truth`` is the synthetic ground truth of the *validation* pairs (or ``None``);
    ``zero_shot_sets`` maps set names to :class:`~mmsae.data.ZeroShotSet`.
    Raises :class:`~mmsae.data.EmbeddingError` naming the missing file when notebook
    01 has not been run for this profile and data source.
    """
    if not paths.sources.exists():
        raise EmbeddingError(f"{paths.sources}: missing; run notebooks/01_extract first for profile "
                             f"{paths.profile!r} and data {paths.data!r}")
    src = paths.read_sources()
    train, val = load_paired(src["train"]), load_paired(src["val"])
    truth = None
    if paths.truth.exists():
        truth = load_truth(paths.truth)
    zs = {}
    for f in paths.zero_shot_files():
        s = ZeroShotSet.load(f)
        zs[s.name] = s
    return train, val, truth, zs


# --------------------------------------------------------------------------- run_all.sh preparation
class RunSetupError(ValueError):
    """A bad run_all.sh option; the message says which option and what is accepted."""


# Set by run_all.sh's own options, not by --param.
_OPTION_PARAMS = {"profile": "--profile", "data": "--data", "out_dir": "--out", "extract_options": "--extract"}


def parse_param(text: str, option: str = "--param") -> tuple[str, Any]:
    """``KEY=VALUE`` -> ``(KEY, value)``, the value read as a JSON or YAML literal.

    ``steps=500`` -> 500, ``seeds=[0,1]`` -> [0, 1], ``run_ablations=false`` -> False,
    ``mask_mode=batch`` -> "batch", ``alpha=null`` -> None, ``lr=1e-3`` -> 0.001.
    """
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key.isidentifier():
        raise RunSetupError(f"{option} {text!r}: expected KEY=VALUE with KEY a notebook parameter name")
    try:
        return key, json.loads(raw)
    except ValueError:
        pass
    import yaml

    try:
        return key, yaml.safe_load(raw)
    except yaml.YAMLError as e:
        raise RunSetupError(f"{option} {text!r}: the value is not a YAML/JSON literal ({e.__class__.__name__}); "
                            "quote it, e.g. " + f"{key}='\"...\"'") from None


def notebook_parameters(notebook) -> list[str]:
    """Names assigned in the cell tagged ``parameters`` of a notebook (a jupytext notebook
    object or a path to a ``.py``/``.ipynb`` notebook), in order."""
    import jupytext

    nb = jupytext.read(str(notebook)) if isinstance(notebook, (str, Path)) else notebook
    cells = [c for c in nb.cells if c.cell_type == "code" and "parameters" in c.metadata.get("tags", [])]
    if not cells:
        raise RunSetupError(f"{notebook}: no cell tagged 'parameters'")
    names: list[str] = []
    for cell in cells:
        for stmt in ast.parse(cell.source).body:
            targets = stmt.targets if isinstance(stmt, ast.Assign) else [stmt.target] if isinstance(stmt, ast.AnnAssign) else []
            names += [t.id for t in targets if isinstance(t, ast.Name) and t.id not in names]
    return names


def select_notebooks(notebook_dir: str | Path, only: str = "") -> list[Path]:
    """The ``NN_*.py`` notebooks of ``notebook_dir`` in order; ``only`` = ``"2,04"`` keeps 02 and 04.

    An item that is not a number, a number without a notebook, or an empty selection is an error.
    """
    all_nbs = sorted(Path(notebook_dir).glob("[0-9][0-9]_*.py"))
    by_num = {p.name[:2]: p for p in all_nbs}
    if only is None or not only.strip():
        return all_nbs
    want = []
    for item in (s.strip() for s in only.split(",")):
        if not item:
            continue
        if not item.isdigit():
            raise RunSetupError(f"--only {only!r}: {item!r} is not a notebook number (have {', '.join(by_num)})")
        num = f"{int(item):02d}"
        if num not in by_num:
            raise RunSetupError(f"--only {only!r}: there is no notebook {num} (have {', '.join(by_num)})")
        if by_num[num] not in want:
            want.append(by_num[num])
    if not want:
        raise RunSetupError(f"--only {only!r} selects no notebook (have {', '.join(by_num)})")
    return sorted(want)


def resolve_data(data: str, cwd: str | Path, root: str | Path) -> str:
    """The ``data`` parameter for a ``--data`` value given in ``cwd``.

    ``synthetic``/``clip``/``clap`` stay; a path (or ``embeddings:PATH``) must exist and becomes
    ``embeddings:<path relative to root>`` when it lies inside the project (the notebooks run
    there; tables then name no machine-specific folder), else ``embeddings:<absolute path>``.
    """
    if data in RESERVED_DATA:
        return data
    if not data:
        raise RunSetupError("--data needs a value: synthetic, clip, clap, embeddings:PATH or a path")
    raw = data.split(":", 1)[1] if data.startswith("embeddings:") else data
    p = Path(raw) if Path(raw).is_absolute() else Path(cwd) / raw
    if not p.exists():
        raise RunSetupError(f"--data {data}: no such file or folder {p} (expected synthetic, clip, clap, "
                            "embeddings:PATH or a path to .npy (2,N,d) / .safetensors / .npz / a cache folder)")
    p = p.resolve()
    try:
        return "embeddings:" + p.relative_to(Path(root).resolve()).as_posix()
    except ValueError:
        return f"embeddings:{p}"


def prepare_runs(*, root: str | Path, cwd: str | Path, out_dir: str | Path, profile: str, data: str, only: str,
                 params: Sequence[str], extract: Sequence[str], real: str, work: str | Path) -> list[dict[str, Any]]:
    """Check run_all.sh's options and write each notebook's papermill parameter file.

    Returns one entry per chain of notebooks to run (the requested data source, then the real-CLIP
    run when ``real`` is ``"on"``, or ``"auto"`` and the shipped file exists): ``data``, ``paths``
    (:class:`RunPaths`), ``work`` (a folder under ``work`` with ``<name>.ipynb`` and ``<name>.yaml``
    per notebook) and ``notebooks`` (names). Raises :class:`RunSetupError` before writing anything
    when an option is wrong: an unknown ``--param`` name (not in the ``parameters`` cell of any
    selected notebook), a value that is no YAML/JSON literal, an ``--only`` that selects nothing,
    ``--extract`` without notebook 01 or with synthetic data.
    """
    import jupytext
    import yaml

    root, out_dir = Path(root).resolve(), Path(out_dir).resolve()
    nbs = select_notebooks(root / "notebooks", only)
    loaded = {p.stem: jupytext.read(str(p)) for p in nbs}
    declared = {name: notebook_parameters(nb) for name, nb in loaded.items()}
    known = sorted(set().union(*declared.values()))

    user: dict[str, Any] = {}
    for kv in params:
        key, value = parse_param(kv)
        if key in _OPTION_PARAMS:
            raise RunSetupError(f"--param {key}: set it with run_all.sh's {_OPTION_PARAMS[key]} option")
        if key not in known:
            raise RunSetupError(f"--param {key}: no notebook run here ({', '.join(loaded)}) has a parameter {key!r}; "
                                f"parameters: {', '.join(k for k in known if k not in _OPTION_PARAMS)}")
        user[key] = value
    extract_options: dict[str, str] = {}
    for kv in extract:
        key, sep, raw = kv.partition("=")
        if not sep or not key.strip().isidentifier():
            raise RunSetupError(f"--extract {kv!r}: expected KEY=VALUE (see docs/real_data.md)")
        extract_options[key.strip()] = raw  # text; mmsae.embed.extract converts numbers and flags
    data = resolve_data(data, cwd, root)
    if extract_options:
        if not any(n.startswith("01_") for n in loaded):
            raise RunSetupError("--extract sets options of notebook 01_extract, which --only does not select")
        if data == DEFAULT_DATA:
            raise RunSetupError("--extract applies to --data clip, clap or embeddings:PATH, not to synthetic data")

    chains = [{"data": data, "defaults": {}, "extract": extract_options}]
    if real != "off":
        real_file = root / REAL_CLIP_RUN["data"].split(":", 1)[1]
        if real_file.exists():
            chains.append({"data": REAL_CLIP_RUN["data"], "defaults": dict(REAL_CLIP_RUN["params"]), "extract": {}})
        elif real == "on":
            raise RunSetupError(f"--real: {real_file} is missing (the shipped CLIP embeddings of 500 COCO pairs)")
        else:
            print(f"run_all.sh: no real-CLIP run: {real_file} is missing", file=sys.stderr)

    out = []
    for i, ch in enumerate(chains):
        paths = RunPaths(out_dir, profile, ch["data"])
        if any(paths.root == o["paths"].root for o in out):
            continue  # --data is the real-CLIP file itself
        wdir = Path(work) / str(i)
        wdir.mkdir(parents=True, exist_ok=True)
        for name, nb in loaded.items():
            mine = declared[name]
            values = {"profile": profile, "data": ch["data"], "out_dir": str(out_dir)}
            values.update({k: v for k, v in {**ch["defaults"], **user}.items() if k in mine})
            if ch["extract"] and "extract_options" in mine:
                values["extract_options"] = ch["extract"]
            values = {k: v for k, v in values.items() if k in mine}
            jupytext.write(nb, str(wdir / f"{name}.ipynb"))
            (wdir / f"{name}.yaml").write_text(yaml.safe_dump(values, sort_keys=False, allow_unicode=True))
        out.append({"data": ch["data"], "paths": paths, "work": wdir, "notebooks": list(loaded)})
    return out


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m mmsae.study.runs prepare ...``: run_all.sh's option checks; prints one tab-separated
    line per chain: work folder, run folder, data, results folder."""
    ap = argparse.ArgumentParser(prog="python -m mmsae.study.runs", description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("prepare", help="check run_all.sh's options and write the notebooks' parameter files")
    p.add_argument("--root", required=True)
    p.add_argument("--cwd", default=os.getcwd())
    p.add_argument("--out", required=True)
    p.add_argument("--profile", required=True)
    p.add_argument("--data", default=DEFAULT_DATA)
    p.add_argument("--only", default="")
    p.add_argument("--param", action="append", default=[])
    p.add_argument("--extract", action="append", default=[])
    p.add_argument("--real", choices=["on", "off", "auto"], default="off")
    p.add_argument("--work", required=True)
    a = ap.parse_args(argv)
    try:
        chains = prepare_runs(root=a.root, cwd=a.cwd, out_dir=a.out, profile=a.profile, data=a.data, only=a.only,
                              params=a.param, extract=a.extract, real=a.real, work=a.work)
    except RunSetupError as e:
        print(f"run_all.sh: {e}", file=sys.stderr)
        return 2
    for ch in chains:
        print("\t".join([str(ch["work"]), str(ch["paths"].root), ch["data"], str(ch["paths"].results)]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
