"""The package layout: stage folders, an acyclic import graph, no private names across
modules, and library imports at the top of files (docs/architecture.md)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LIB = ROOT / "lib" / "mmsae"
STAGES = ("data", "embed", "engine", "models", "train", "eval", "study")


def module_name(path: Path, lib: Path = LIB) -> str:
    parts = ("mmsae",) + path.relative_to(lib).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _resolve(mod: str, is_pkg: bool, level: int, name: str | None) -> str:
    base = mod.split(".") if is_pkg else mod.split(".")[:-1]
    base = base[: len(base) - (level - 1)] if level > 1 else base
    return ".".join(base + ([name] if name else []))


def import_graph(lib: Path = LIB) -> dict[str, set[str]]:
    """Edges ``a -> b``: module ``a`` imports mmsae module ``b`` anywhere in its body
    (also inside functions: a lazy import closes a cycle as well as a top-level one)."""
    files = {module_name(p, lib): p for p in sorted(lib.rglob("*.py"))}
    graph: dict[str, set[str]] = {m: set() for m in files}
    for mod, path in files.items():
        is_pkg = path.name == "__init__.py"
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            targets = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = _resolve(mod, is_pkg, node.level, node.module) if node.level else (node.module or "")
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in files else base for a in node.names]
            for t in targets:
                while t and t not in files and "." in t:  # mmsae.x.y.attr -> the module mmsae.x.y
                    t = t.rsplit(".", 1)[0]
                if t in files and t != mod:
                    graph[mod].add(t)
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of ``graph`` as ``[a, b, ..., a]``, or ``None`` when it is acyclic."""
    state: dict[str, int] = {}  # 1: on the stack, 2: done
    stack: list[str] = []

    def visit(n: str) -> list[str] | None:
        state[n] = 1
        stack.append(n)
        for m in sorted(graph.get(n, ())):
            if state.get(m) == 1:
                return stack[stack.index(m):] + [m]
            if m not in state:
                found = visit(m)
                if found:
                    return found
        stack.pop()
        state[n] = 2
        return None

    for n in sorted(graph):
        if n not in state:
            found = visit(n)
            if found:
                return found
    return None


def test_cycle_finder_on_synthetic_graphs():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None
    assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None  # a diamond is no cycle
    cyc = find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}})
    assert cyc is not None and cyc[0] == cyc[-1] and set(cyc) == {"a", "b", "c"}
    assert find_cycle({"a": {"a"}}) == ["a", "a"]


def test_import_graph_sees_lazy_and_relative_imports(tmp_path):
    """The checker on a synthetic package: a cycle closed by a lazy relative import is found."""
    pkg = tmp_path / "mmsae"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "sub" / "a.py").write_text("from .b import f\n")
    (pkg / "sub" / "b.py").write_text("def f():\n    from ..c import g\n    return g\n")
    (pkg / "c.py").write_text("import mmsae.sub.a\n\ndef g():\n    return 1\n")
    g = import_graph(pkg)
    assert g["mmsae.sub.a"] == {"mmsae.sub.b"} and g["mmsae.sub.b"] == {"mmsae.c"} and g["mmsae.c"] == {"mmsae.sub.a"}
    assert set(find_cycle(g)) == {"mmsae.sub.a", "mmsae.sub.b", "mmsae.c"}
    (pkg / "c.py").write_text("def g():\n    return 1\n")
    assert find_cycle(import_graph(pkg)) is None


def test_mmsae_import_graph_is_acyclic():
    graph = import_graph()
    assert len(graph) > 30 and graph["mmsae.train.loop"] >= {"mmsae.train.distributed", "mmsae.data.store"}
    cyc = find_cycle(graph)
    assert cyc is None, "import cycle: " + " -> ".join(cyc)


def test_stages_only_import_earlier_stages():
    """extract (embed) -> store (data) -> engine -> models -> train -> eval -> study: a module
    imports its own stage and earlier ones, never a later one (embed is optional: only study's
    runs may reach it, and nothing in the default pipeline does)."""
    order = {name: i for i, name in enumerate(STAGES)}
    bad = []
    for mod, deps in import_graph().items():
        parts = mod.split(".")
        if len(parts) < 3:
            continue
        for d in deps:
            dp = d.split(".")
            if len(dp) >= 2 and dp[1] in order and order[dp[1]] > order[parts[1]]:
                bad.append(f"{mod} -> {d}")
    assert not bad, bad
    core = [m for m, deps in import_graph().items() if not m.startswith("mmsae.embed")
            for d in deps if d.startswith("mmsae.embed")]
    assert not core, f"the core imports the optional extraction stage: {core}"


def test_engine_imports_no_other_stage():
    """The engine (K-sparse helpers, compiled kernels, threads) knows no method and no data: its
    modules import torch, numpy and numba, and of mmsae only the engine itself; models use it."""
    graph = import_graph()
    engine = [m for m in graph if m.startswith("mmsae.engine.")]
    assert {"mmsae.engine.sparse", "mmsae.engine.kernels", "mmsae.engine.parallel"} <= set(engine)
    bad = [f"{m} -> {d}" for m in engine for d in graph[m] if not d.startswith("mmsae.engine")]
    assert not bad, bad
    assert "mmsae.engine.sparse" in graph["mmsae.models.topk"]  # the methods are evaluated with it
    left = [f for f in ("sparse.py", "kernels.py", "parallel.py") if (LIB / "models" / f).exists()]
    assert not left, f"the engine's modules live in engine/, not models/: {left}"


def test_tree_matches_the_stages_and_the_map():
    pkgs = sorted(p.name for p in LIB.iterdir() if p.is_dir() and (p / "__init__.py").exists())
    assert pkgs == sorted(STAGES)
    assert sorted(p.name for p in LIB.glob("*.py")) == ["__init__.py"], "modules belong in a stage folder"
    arch = (ROOT / "docs" / "architecture.md").read_text()
    missing = [str(p.relative_to(LIB)) for p in LIB.rglob("*.py")
               if p.name not in ("__init__.py", "__main__.py") and str(p.relative_to(LIB)) not in arch]
    assert not missing, f"docs/architecture.md does not place {missing}"


def test_no_private_names_across_modules():
    bad = []
    for p in LIB.rglob("*.py"):
        for node in ast.walk(ast.parse(p.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.level or (node.module or "").startswith("mmsae")):
                bad += [f"{module_name(p)}: {node.module}.{a.name}" for a in node.names
                        if a.name.startswith("_") and not a.name.startswith("__")]
    assert not bad, bad


def test_library_imports_are_at_the_top():
    """Imports of mmsae modules sit at module level; only optional third-party packages
    (encoders, sklearn, ...) may be imported lazily inside functions."""
    bad = []
    for p in LIB.rglob("*.py"):
        tree = ast.parse(p.read_text())
        top = set(map(id, tree.body))
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and id(node) not in top and (
                    node.level or (node.module or "").startswith("mmsae")):
                bad.append(f"{module_name(p)}:{node.lineno}")
            if isinstance(node, ast.Import) and id(node) not in top and any(a.name.startswith("mmsae") for a in node.names):
                bad.append(f"{module_name(p)}:{node.lineno}")
    assert not bad, bad


@pytest.mark.parametrize("name", ["load_paired", "PairedEmbeddings", "ZeroShotSet", "EmbeddingError", "SAEConfig",
                                  "build_model", "load_model", "TrainConfig", "train"])
def test_top_level_api(name):
    import mmsae

    assert callable(getattr(mmsae, name))
