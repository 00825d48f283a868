"""The notebooks as a reader and a JupyterLab user meet them.

Two jobs, both for ``run_all.sh`` (``python -m mmsae.study.notebooks ...``):

``pair``: the notebooks are kept as jupytext percent sources ``notebooks/NN_*.py`` (reviewable
text, no outputs). :func:`pair_notebooks` writes beside each one its paired ``NN_*.ipynb``
(git-ignored), which JupyterLab, Jupyter Notebook, VS Code, ... open as a notebook with a
double-click; with jupytext in the server's environment, saving writes both files
(``formats: ipynb,py:percent`` in the source's header) and the ``.py`` gets back the header it
had (the header pins what jupytext writes: no version numbers, a fixed kernelspec).

``publish``: the executed notebooks of a run (``runs/<profile>-<slug>/notebooks/executed/``)
are copied to ``notebooks/executed/<slug>/`` for the repository page, after
:func:`scrub_notebook` removed what changes between two runs with the same numbers: execution
timestamps and durations, papermill's paths and timings, widget state, progress bars, random
cell ids, the Python version, and the absolute project path (made relative to the project
root, where the notebooks run). The files are written atomically and byte for byte the same
for the same notebook content.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import re
import sys
from pathlib import Path
from typing import Any, Sequence

from ..data.store import atomic_write

__all__ = ["STABLE_KERNELSPEC", "scrub_notebook", "notebook_bytes", "write_scrubbed", "publish_executed",
           "notebook_problems", "pair_notebooks", "main"]

# What the notebook sources declare and what JupyterLab writes back for the ipykernel kernel.
STABLE_KERNELSPEC = {"display_name": "Python 3 (ipykernel)", "language": "python", "name": "python3"}
WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"
# notebook metadata an executed copy does not keep: widget state (random model ids), the pairing
# (an executed copy is no twin of a source) and front-end state
DROP_NOTEBOOK_METADATA = ("widgets", "jupytext", "toc", "varInspector", "execution")
# cell metadata written by the executing machinery
DROP_CELL_METADATA = ("execution", "papermill", "ExecuteTime", "collapsed", "scrolled", "jupyter", "trusted")
# a tqdm text bar's time bracket: "desc:  42%|####   | 420/1000 [00:03<00:04, 120.3it/s, loss=0.2]",
# "desc: 400row [00:01, 300.00row/s]", "[00:05<?, 2.50s/it]"
_PROGRESS = re.compile(r"\[(?:\d+:)?\d+:\d\d(?:<(?:(?:\d+:)?\d+:\d\d|\?))?,\s*[^\]]*?(?:/s\b|s/[^\],\s]+)")
_NOTEBOOK_SOURCE = "[0-9][0-9]_*.py"


def _text(value: Any) -> str:
    return "".join(value) if isinstance(value, list) else str(value)


def _like(value: Any, text: str) -> Any:
    """``text`` in the shape of ``value``: a list of lines (nbformat's on-disk form) or a string."""
    if isinstance(value, list):
        return text.splitlines(keepends=True)
    return text


def _path_replacer(root: str | os.PathLike | None):
    """A function that writes the absolute project path in a string relative to it: ``ROOT/x`` -> ``x``,
    ``ROOT`` -> ``.`` (the given and the resolved spelling, e.g. behind a symlink); ``ROOT2/x`` stays."""
    if root is None:
        return lambda s: s
    spellings = {str(Path(root)).rstrip("/"), str(Path(root).resolve()).rstrip("/")} - {""}
    if not spellings:
        return lambda s: s
    alternatives = "|".join(re.escape(x) for x in sorted(spellings, key=len, reverse=True))
    pattern = re.compile(f"(?:{alternatives})(/|(?![\\w.-]))")
    return lambda s: pattern.sub(lambda m: "" if m.group(1) else ".", s)


def _fix_strings(value: Any, fix, key: str = "") -> Any:
    """``fix`` applied to every string inside a JSON value (lists of lines keep their shape), except
    base64 images (``key``: the MIME type of an output's data entry)."""
    if key.startswith("image/") and not key.startswith("image/svg"):
        return value
    if isinstance(value, str):
        return fix(value)
    if isinstance(value, list):
        if value and all(isinstance(v, str) for v in value):
            return _like(value, fix("".join(value)))
        return [_fix_strings(v, fix) for v in value]
    if isinstance(value, dict):
        return {k: _fix_strings(v, fix, k) for k, v in value.items()}
    return value


def _strip_progress(text: str) -> str:
    """A stream as a terminal would leave it (a carriage return overwrites its line), without
    tqdm's progress lines; empty when nothing else is left."""
    kept = []
    for line in text.split("\n"):
        last = line.rsplit("\r", 1)[-1]  # what a carriage return leaves visible
        if _PROGRESS.search(last) or ("\r" in line and not last.strip()):
            continue
        kept.append(last)
    out = "\n".join(kept)
    return out if out.strip() else ""


def _scrub_outputs(outputs: list[dict], fix) -> list[dict]:
    """Outputs without widgets and progress bars; each run of stream outputs between two other outputs
    becomes one stdout output then one stderr output (the kernel flushes the two streams on its own
    clock, so how they are cut and interleaved differs between runs; a display flushes both first)."""
    out: list[dict] = []
    streams: dict[str, str] = {}

    def flush() -> None:
        for name in ("stdout", "stderr", *sorted(set(streams) - {"stdout", "stderr"})):
            text = streams.get(name, "")
            if name != "stdout" or "\r" in text:
                text = _strip_progress(text)
            if text:
                out.append({"name": name, "output_type": "stream", "text": _like([], fix(text))})
        streams.clear()

    for o in outputs:
        kind = o.get("output_type")
        if kind == "stream":
            name = o.get("name", "stdout")
            streams[name] = streams.get(name, "") + _text(o.get("text", ""))
            continue
        if kind in ("display_data", "execute_result") and WIDGET_VIEW in o.get("data", {}):
            continue  # a progress bar (or any widget): its state is not kept, so it would show as a stub
        flush()
        o = {k: v for k, v in o.items() if k != "transient"}
        out.append(_fix_strings(o, fix))
    flush()
    return out


def scrub_notebook(nb: dict, root: str | os.PathLike | None = None) -> dict:
    """A copy of an executed notebook (nbformat 4 JSON as a dict) without what differs between two
    runs with the same numbers.

    Removed: cell ``execution`` / ``papermill`` metadata (timestamps, durations, status), the
    notebook's ``metadata.papermill`` except its ``parameters``, widget state and widget outputs
    (progress bars), tqdm's text progress lines on stderr, ``language_info.version``, the jupytext
    pairing. Normalised: the kernelspec (:data:`STABLE_KERNELSPEC` for a Python kernel), cell ids
    (``cell-NNN``), each run of stream outputs as one stdout then one stderr output. ``root``: the
    absolute project path, written relative to it (``ROOT/figures/x.png`` -> ``figures/x.png``,
    ``ROOT`` -> ``.``) in outputs, in the cell papermill injected and in the parameters.
    """
    fix = _path_replacer(root)
    nb = copy.deepcopy(nb)
    meta = nb.setdefault("metadata", {})
    for key in DROP_NOTEBOOK_METADATA:
        meta.pop(key, None)
    pm = meta.pop("papermill", None)
    if isinstance(pm, dict) and pm.get("parameters"):
        meta["papermill"] = {"parameters": _fix_strings(pm["parameters"], fix)}
    ks = meta.get("kernelspec") or {}
    if ks.get("language", "python") == "python" and ks.get("name", "python3").startswith("python"):
        meta["kernelspec"] = dict(STABLE_KERNELSPEC)
    if isinstance(meta.get("language_info"), dict):
        meta["language_info"] = {k: v for k, v in meta["language_info"].items() if k != "version"}

    for i, cell in enumerate(nb.get("cells", [])):
        if "id" in cell or (nb.get("nbformat", 4), nb.get("nbformat_minor", 0)) >= (4, 5):
            cell["id"] = f"cell-{i:03d}"
        cm = cell.setdefault("metadata", {})
        for key in DROP_CELL_METADATA:
            cm.pop(key, None)
        if "tags" in cm and not cm["tags"]:
            del cm["tags"]
        if "injected-parameters" in cm.get("tags", []):
            cell["source"] = _fix_strings(cell.get("source", ""), fix)
        if cell.get("cell_type") == "code":
            cell["outputs"] = _scrub_outputs(cell.get("outputs", []), fix)
    return nb


def notebook_bytes(nb: dict) -> bytes:
    """The notebook as nbformat writes it (one-space indent, sorted keys, UTF-8), trailing newline."""
    return (json.dumps(nb, indent=1, sort_keys=True, ensure_ascii=False) + "\n").encode("utf-8")


def write_scrubbed(src: str | os.PathLike, dest: str | os.PathLike, root: str | os.PathLike | None = None) -> Path:
    """Read the executed notebook ``src``, scrub it (:func:`scrub_notebook`) and write it to ``dest``
    atomically; an unchanged file is not rewritten (its modification time stays)."""
    nb = json.loads(Path(src).read_text(encoding="utf-8"))
    data = notebook_bytes(scrub_notebook(nb, root))
    dest = Path(dest)
    if dest.is_file() and dest.read_bytes() == data:
        return dest
    return atomic_write(dest, lambda tmp: Path(tmp).write_bytes(data))


def publish_executed(executed_dir: str | os.PathLike, dest_dir: str | os.PathLike,
                     root: str | os.PathLike | None = None) -> list[Path]:
    """Scrub every ``NN_*.ipynb`` of ``executed_dir`` into ``dest_dir`` (same names); notebooks of
    ``dest_dir`` that this run did not execute are removed (a renamed or dropped notebook)."""
    src = sorted(Path(executed_dir).glob("[0-9][0-9]_*.ipynb"))
    if not src:
        raise FileNotFoundError(f"{executed_dir}: no executed notebooks (NN_*.ipynb) to publish")
    dest_dir = Path(dest_dir)
    written = [write_scrubbed(p, dest_dir / p.name, root) for p in src]
    names = {p.name for p in src}
    for old in dest_dir.glob("[0-9][0-9]_*.ipynb"):
        if old.name not in names:
            old.unlink()
    return written


#: What a reader should not see in an output (stdout or a text/plain result), with why: a timing (it changes from
#: machine to machine, so a rerun would change the notebook), a path or a raw Python repr (code talking, not a
#: result), or an unrounded number.
READER_PROBLEMS = [
    (re.compile(r"PosixPath\(|WindowsPath\("), "a path repr"),
    (re.compile(r"(?<![\w.])/(?:home|tmp|Users|work|root|private)/"), "an absolute path"),
    (re.compile(r"\b(?:wall[ _]?time|wall_s|elapsed|seconds?|took)\b|\bin \d+(?:\.\d+)? ?(?:s|ms|min)\b|"
                r"\d+(?:\.\d+)? ?(?:s|ms)/(?:step|it)\b", re.I), "a timing"),
    (re.compile(r"^\s*\{'|^\s*\[\{'|\w+Config\(\w+="), "a raw dict or dataclass repr"),
    (re.compile(r"\d\.\d{6,}"), "an unrounded number"),
    (re.compile(r"\d+ rows × \d+ columns"), "a truncated frame"),
]


def reader_problems(text: str) -> list[str]:
    """Why one output text would not read as a result (empty list: it does); :data:`READER_PROBLEMS`."""
    return [why for rx, why in READER_PROBLEMS if rx.search(text)]


def notebook_problems(nb: dict) -> list[str]:
    """What a reader should not find in an executed notebook: error outputs, anything on stderr (a warning the
    reader did not cause), and in what it prints or returns as text a timing, a path, a raw repr or an unrounded
    number (:func:`reader_problems`); one line each naming the cell. Rich outputs (HTML tables, images,
    Markdown) are what a result should be; their text/plain twin is not read."""
    out = []
    for i, cell in enumerate(nb.get("cells", [])):
        for o in cell.get("outputs", []):
            kind = o.get("output_type")
            if kind == "error":
                out.append(f"cell {i}: error {o.get('ename', '')}: {o.get('evalue', '')}")
            elif kind == "stream" and o.get("name") == "stderr":
                first = next((line for line in _text(o.get("text", "")).splitlines() if line.strip()), "")
                out.append(f"cell {i}: stderr: {first[:200]}")
            else:
                data = o.get("data", {})
                if kind == "stream":
                    text = _text(o.get("text", ""))
                elif set(data) <= {"text/plain"}:  # only a repr: what the reader sees
                    text = _text(data.get("text/plain", ""))
                else:
                    text = ""
                for why in reader_problems(text):
                    out.append(f"cell {i}: {why}: {text.strip().splitlines()[0][:120] if text.strip() else ''}")
    return out


def pair_notebooks(notebook_dir: str | os.PathLike, force: bool = False) -> list[Path]:
    """Write the paired ``NN_*.ipynb`` (no outputs) beside each jupytext source ``NN_*.py`` of
    ``notebook_dir`` where it is missing (``force``: rewrite it). Returns the notebooks written.

    The ``.ipynb`` gets the source's modification time, so jupytext sees the pair as in step (it
    refuses an ``.ipynb`` much newer than its text twin). An existing ``.ipynb`` is left as it is:
    it holds the user's outputs, and jupytext takes the cells from the ``.py`` when that is newer.
    """
    import jupytext

    written = []
    for src in sorted(Path(notebook_dir).glob(_NOTEBOOK_SOURCE)):
        dest = src.with_suffix(".ipynb")
        if dest.exists() and not force:
            continue
        nb = jupytext.read(str(src), fmt="py:percent")
        formats = nb.metadata.get("jupytext", {}).get("formats", "")
        if "ipynb" not in formats.split(","):
            raise ValueError(f"{src}: its header does not pair it with an .ipynb (jupytext formats: {formats!r}; "
                             "expected ipynb,py:percent)")
        text = jupytext.writes(nb, fmt="ipynb")
        atomic_write(dest, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))
        st = src.stat()
        os.utime(dest, ns=(st.st_atime_ns, st.st_mtime_ns))
        written.append(dest)
    return written


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m mmsae.study.notebooks", description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("pair", help="write the paired NN_*.ipynb beside each notebook source NN_*.py")
    p.add_argument("notebook_dir")
    p.add_argument("--force", action="store_true", help="rewrite existing .ipynb twins (their outputs are lost)")
    q = sub.add_parser("publish", help="scrub a run's executed notebooks into a folder of the repository")
    q.add_argument("--executed", required=True, help="runs/<profile>-<slug>/notebooks/executed")
    q.add_argument("--dest", required=True, help="e.g. notebooks/executed/<slug>")
    q.add_argument("--root", required=True, help="the project folder, written relative in the notebooks")
    a = ap.parse_args(argv)
    if a.cmd == "pair":
        for path in pair_notebooks(a.notebook_dir, force=a.force):
            print(f"paired {path}")
        return 0
    try:
        written = publish_executed(a.executed, a.dest, a.root)
    except FileNotFoundError as e:
        print(f"mmsae.study.notebooks: {e}", file=sys.stderr)
        return 1
    for path in written:
        for problem in notebook_problems(json.loads(path.read_text(encoding="utf-8"))):
            print(f"note: {path}: {problem}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
