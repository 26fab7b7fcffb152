"""Properties of the source tree itself: no import cycle, modules of one concept's size, no
reference to a document that is not in the repository, and benchmarks that import what exists."""

from __future__ import annotations

import ast
import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "loradyn"
MAX_LINES = 420  # "about 400": a module past this probably holds two concepts
OUTPUTS = ("report.md",)  # files loradyn writes (named in the docs), not documents it cites


def _modules() -> dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def _imports(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """Every loradyn module ``name`` imports, at the top or inside functions."""
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([base] if base else []))
            for alias in node.names:
                full = f"{base}.{alias.name}"
                found.add(full if full in modules else base)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return {m for m in found if m in modules and m != name}


def test_no_import_cycle_even_through_imports_inside_functions():
    modules = _modules()
    graph = {name: _imports(name, path, modules) for name, path in modules.items()}
    state: dict[str, int] = {}  # 1 on the current path, 2 done

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for dep in sorted(graph[node]):
            if state.get(dep) == 1:
                cycle = path[path.index(dep):] + [dep]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if dep not in state:
                visit(dep, [*path, dep])
        state[node] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])


def _unguarded_imports(tree: ast.AST) -> list[ast.ImportFrom]:
    """``from loradyn... import ...`` outside ``try`` blocks (a ``try`` may import an older tree's names)."""
    found: list[ast.ImportFrom] = []

    def walk(node: ast.AST) -> None:
        if isinstance(node, ast.Try):
            return
        if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "loradyn":
            found.append(node)
        for child in ast.iter_child_nodes(node):
            walk(child)

    walk(tree)
    return found


def test_every_loradyn_name_a_benchmark_imports_exists():
    """Benchmarks run by hand, not by CI: their imports (also inside functions) are checked here."""
    import importlib

    missing = []
    for path in sorted((ROOT / "benchmarks").glob("*.py")):
        for node in _unguarded_imports(ast.parse(path.read_text())):
            try:
                module = importlib.import_module(node.module)
            except ImportError as err:
                missing.append(f"{path.name}:{node.lineno}: {node.module} ({err})")
                continue
            missing += [f"{path.name}:{node.lineno}: {node.module}.{a.name}" for a in node.names
                        if not hasattr(module, a.name) and not _is_submodule(node.module, a.name)]
    assert not missing, "benchmarks import names that do not exist: " + "; ".join(missing)


def _is_submodule(module: str, name: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(f"{module}.{name}") is not None


def test_no_module_is_much_over_400_lines():
    long = {str(p.relative_to(ROOT)): n for p in PACKAGE.rglob("*.py") if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert not long, f"split these modules by concept: {long}"


def test_no_file_cites_a_document_that_is_not_in_the_repository():
    tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True)
    if tracked.returncode != 0:
        pytest.skip("not a git checkout")
    files = [ROOT / f for f in tracked.stdout.splitlines() if f.endswith((".py", ".md", ".toml", ".yaml", ".txt"))]
    names = {Path(f).name for f in tracked.stdout.splitlines()} | set(OUTPUTS)
    cited = re.compile(r"\b([\w-]+\.md)\b")
    paths = re.compile(r"\b((?:docs|benchmarks)/[\w./-]+\.(?:md|py))")  # documents and scripts, not outputs
    missing = set()
    for path in files:
        if not path.is_file():
            continue
        text = path.read_text(errors="replace")
        missing.update(f"{path.relative_to(ROOT)} cites {doc}" for doc in cited.findall(text) if doc not in names)
        missing.update(f"{path.relative_to(ROOT)} cites {ref}" for ref in paths.findall(text)
                       if not (ROOT / ref).exists())
    assert not missing, sorted(missing)
    notes = re.compile("of the " + "notes" + r"\b")  # a section "of the" private notes: not shipped, so not citable
    assert not [str(p.relative_to(ROOT)) for p in files if p.is_file() and notes.search(p.read_text(errors="replace"))]
