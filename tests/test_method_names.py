"""Method names are typed once: in ``mmsae.models.registry``, whose records ``mmsae.study.methods.METHOD_ORDER``
lists in the order of every table.

Scans the library, the notebooks and the scripts for a literal list, tuple, set or dict
(keys) that holds three or more of the method names as strings; the one definition
(``models/registry.py``) is the only place allowed to. The paper's rows
(``study/paper.py``) name one method per row and so never match.
"""

from __future__ import annotations

import ast
from pathlib import Path

from mmsae.study import experiments, methods, plots, profiles

ROOT = Path(__file__).resolve().parents[1]
DEFINITION = ROOT / "lib" / "mmsae" / "models" / "registry.py"
NAMES = frozenset(methods.METHOD_ORDER)


def typed_method_lists(source: str, filename: str = "<src>", names=NAMES) -> list[tuple[int, list[str]]]:
    """``(line, names)`` of every literal collection in ``source`` with >= 3 method-name strings."""
    found = []
    tree = ast.parse(source, filename)
    exported = {id(n.value) for n in ast.walk(tree) if isinstance(n, ast.Assign)
                and any(isinstance(t, ast.Name) and t.id == "__all__" for t in n.targets)}  # names of constants
    for node in ast.walk(tree):
        if id(node) in exported:
            continue
        if isinstance(node, (ast.List, ast.Tuple, ast.Set)):
            elts = node.elts
        elif isinstance(node, ast.Dict):
            elts = [k for k in node.keys if k is not None]
        else:
            continue
        hits = [e.value for e in elts if isinstance(e, ast.Constant) and isinstance(e.value, str) and e.value in names]
        if len(hits) >= 3:
            found.append((node.lineno, hits))
    return found


def _files() -> list[Path]:
    files = sorted((ROOT / "lib").rglob("*.py")) + sorted((ROOT / "notebooks").glob("*.py")) \
        + sorted((ROOT / "scripts").glob("*.py"))
    return [f for f in files if f.resolve() != DEFINITION.resolve()]


def test_scanner_finds_typed_lists():
    src = ('a = ["SAE", "GSAE", "MGSAE"]\nb = ("SAE", "x", "BatchTopK", "Matryoshka")\n'
           'c = {"GSAE": 1, "MGSAE": 2, "SharedSupport": 3}\nd = ["SAE", "GSAE"]\ne = [("SAE", 1), ("GSAE", 2), ("MGSAE", 3)]\n')
    assert [line for line, _ in typed_method_lists(src)] == [1, 2, 3]


def test_method_names_are_typed_once():
    assert len(_files()) > 20  # the scan sees the library, notebooks and scripts
    offenders = [f"{f.relative_to(ROOT)}:{line}: {hits}" for f in _files()
                 for line, hits in typed_method_lists(f.read_text(), str(f))]
    assert not offenders, "method names typed as a list outside models/registry.py (use METHOD_ORDER):\n" + \
        "\n".join(offenders)
    assert typed_method_lists(DEFINITION.read_text())  # the one definition is where the scan looks for them


def test_everything_reads_the_one_list():
    assert experiments.METHOD_ORDER is methods.METHOD_ORDER
    assert list(experiments.METHODS) == methods.METHOD_ORDER
    for name in ("smoke", "paper"):
        P = profiles.get_profile(name)
        assert P["methods"] == methods.METHOD_ORDER and P["alpha_methods"] == methods.METHOD_ORDER
    assert set(methods.METHOD_ORDER) <= set(plots.MODEL_COLORS)
    assert set(methods.PAPER_METHODS) | set(methods.GROUP_SPARSE_METHODS) <= set(methods.METHOD_ORDER)
