"""The import graph of the emo packages and their subpackages, read from the source (imports
inside functions included): no module imports from a module that imports it, directly or through
others; the packages import downwards only (export -> train -> edge_runtime); and inside
edge_runtime the flat core imports none of its named parts (serve/, sinks/, analyze/): only the
commands that wire them together do."""
from __future__ import annotations

import ast
from pathlib import Path

from conftest import REPO

PACKAGES = {"edge_runtime": "emo.edge_runtime", "train": "emo.train", "export": "emo.export"}
ALLOWED = {"emo.edge_runtime": set(), "emo.train": {"emo.edge_runtime"}, "emo.export": {"emo.train", "emo.edge_runtime"}}


def module_files() -> dict[str, Path]:
    """Every module of the packages, subpackages included (emo.edge_runtime.serve.http, say)."""
    out = {}
    for folder, name in PACKAGES.items():
        for f in sorted((REPO / folder).rglob("*.py")):
            parts = f.relative_to(REPO / folder).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join((name, *parts))] = f
    return out


def imported(module: str, path: Path, known: dict) -> set[str]:
    pkg = module if path.stem == "__init__" else module.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = pkg.rsplit(".", node.level - 1)[0] if node.level > 1 else pkg
            target = (f"{base}.{node.module}" if node.module else base) if node.level else (node.module or "")
            found |= {t for t in [target, *(f"{target}.{a.name}" for a in node.names)] if t in known}
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name in known}
    return found - {module}


def graph() -> dict[str, set[str]]:
    files = module_files()
    return {m: imported(m, f, files) for m, f in files.items()}


def test_no_import_cycles():
    g = graph()
    state: dict[str, int] = {}

    def visit(m: str, path: list[str]) -> None:
        state[m] = 1
        for d in sorted(g[m]):
            assert state.get(d) != 1, "import cycle: " + " -> ".join(path + [m, d])
            if d not in state:
                visit(d, path + [m])
        state[m] = 2

    for m in sorted(g):
        if m not in state:
            visit(m, [])


def test_packages_import_downwards_only():
    for m, deps in graph().items():
        pkg = ".".join(m.split(".")[:2])
        for d in deps:
            other = ".".join(d.split(".")[:2])
            assert other == pkg or other in ALLOWED[pkg], f"{m} imports {d}"


PARTS = ("emo.edge_runtime.serve", "emo.edge_runtime.sinks", "emo.edge_runtime.analyze")
# the modules that wire parts together: the CLI, the infer job (its sinks) and the benchmarks (a JSON sink)
WIRING = {"emo.edge_runtime.cli", "emo.edge_runtime.runner", "emo.edge_runtime.bench"}


def part_of(module: str) -> str:
    return next((p for p in PARTS if module == p or module.startswith(p + ".")), "core")


def test_subpackages_are_scanned():
    files = module_files()
    assert {"emo.edge_runtime.serve.http", "emo.edge_runtime.sinks.mqtt", "emo.edge_runtime.analyze.video"} <= set(files)


def test_the_core_imports_no_part_and_parts_not_each_other():
    for m, deps in graph().items():
        if not m.startswith("emo.edge_runtime") or m in WIRING:
            continue
        for d in deps:
            if part_of(d) != "core" and part_of(d) != part_of(m):
                assert False, f"{m} ({part_of(m)}) imports {d}: the loop and the core know no part by name"
