"""The import graph of the emo packages, read from the source (imports inside functions
included): no module imports from a module that imports it, directly or through others, and
the packages import downwards only (export -> train -> edge_runtime)."""
from __future__ import annotations

import ast
from pathlib import Path

from conftest import REPO

PACKAGES = {"edge_runtime": "emo.edge_runtime", "train": "emo.train", "export": "emo.export"}
ALLOWED = {"emo.edge_runtime": set(), "emo.train": {"emo.edge_runtime"}, "emo.export": {"emo.train", "emo.edge_runtime"}}


def module_files() -> dict[str, Path]:
    out = {}
    for folder, name in PACKAGES.items():
        for f in sorted((REPO / folder).glob("*.py")):
            out[name if f.stem == "__init__" else f"{name}.{f.stem}"] = f
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
