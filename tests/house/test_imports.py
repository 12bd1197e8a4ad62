"""The house stays as built: product imports run down the layers, never in a circle, and sit at module top.

Read with ``ast`` from the source (nothing is imported), so a cycle hidden inside a function body counts too.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("models", "jobs", "cluster")
LAYER = {"models": 0, "jobs": 1, "cluster": 2}  # an import may point to the same or a lower layer only
# Function-level imports kept on purpose, and why (none of them dodges a cycle):
LAZY_OK = {
    # the CLI imports a subcommand's module (torch, Ray, pyarrow) only when that subcommand runs: `genaug
    # --help` and `genaug datasets list` start in a fraction of the time
    "cluster/cli.py",
}


def _modules() -> dict[str, Path]:
    out = {}
    for pkg in PACKAGES:
        for path in sorted((ROOT / pkg).rglob("*.py")):
            rel = path.relative_to(ROOT).with_suffix("")
            parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
            out[".".join(parts)] = path
    return out


def _imports(path: Path, modules: dict[str, Path]) -> list[tuple[str, int, bool]]:
    """(imported project module, line, at module top) for every import in ``path``."""
    tree = ast.parse(path.read_text())
    top = {id(n) for n in tree.body}
    found = []
    for node in ast.walk(tree):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [f"{node.module}.{a.name}" for a in node.names] + [node.module]
        for name in names:
            while name and name not in modules:
                name = name.rpartition(".")[0]
            if name:
                found.append((name, node.lineno, id(node) in top))
    return found


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {
        m: {dep for dep, _, _ in _imports(p, modules) if dep != m and not m.startswith(dep + ".")}
        for m, p in modules.items()
    }


def test_no_import_cycle():
    graph = _graph()
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for dep in sorted(graph[m]):
            if state.get(dep) == 1:
                cycle = stack[stack.index(dep) :] + [dep]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if dep not in state:
                visit(dep)
        stack.pop()
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m)


def test_imports_point_down_the_layers():
    bad = [
        f"{m} imports {dep}"
        for m, deps in _graph().items()
        for dep in deps
        if LAYER[dep.split(".")[0]] > LAYER[m.split(".")[0]]
    ]
    assert not bad, bad


def test_project_imports_sit_at_module_top():
    modules = _modules()
    lazy = [
        f"{path.relative_to(ROOT)}:{line} imports {dep}"
        for name, path in modules.items()
        if str(path.relative_to(ROOT)) not in LAZY_OK
        for dep, line, at_top in _imports(path, modules)
        if not at_top and dep != name  # `python -m jobs.X` re-imports its own module under __main__
    ]
    assert not lazy, lazy


def test_the_checker_sees_a_cycle(tmp_path, monkeypatch):
    """The cycle test can fail: two modules that import each other inside functions are caught."""
    pkg = tmp_path / "jobs"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("def f():\n    from jobs import b\n")
    (pkg / "b.py").write_text("import jobs.a\n")
    for other in ("models", "cluster"):
        (tmp_path / other).mkdir()
    monkeypatch.setattr(__import__(__name__, fromlist=["ROOT"]), "ROOT", tmp_path)
    try:
        test_no_import_cycle()
    except AssertionError as e:
        assert "jobs.a -> jobs.b -> jobs.a" in str(e)
    else:
        raise AssertionError("the cycle jobs.a <-> jobs.b was not reported")
