"""The shape of the ``rampctl`` package: no import cycle among its modules (lazy imports inside
functions count: they are how a cycle hides), the environment read in one place
(``rampctl.settings``), and the job statuses taken from ``workers.contract.status``, not copied."""

from __future__ import annotations

import ast
from pathlib import Path

from workers.contract.status import JobStatus

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "rampctl"


def module_graph(package_dir: Path) -> dict[str, set[str]]:
    """``{module: modules of the same package it imports}``, from every import statement in the
    source (module level or not), keyed by module name without the package prefix."""
    package = package_dir.name
    modules = {p.stem for p in package_dir.glob("*.py")}
    graph: dict[str, set[str]] = {}
    for module in sorted(modules):
        tree = ast.parse((package_dir / f"{module}.py").read_text(), filename=f"{module}.py")
        targets: set[str] = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:  # relative: within this (flat) package
                    base = f"{package}.{node.module}" if node.module else package
                else:
                    base = node.module or ""
                # "from pkg import mod" names a module; "from pkg.mod import x" imports pkg.mod.
                names = [base] + [f"{base}.{a.name}" for a in node.names]
            else:
                continue
            for name in names:
                parts = name.split(".")
                if parts[0] == package and len(parts) > 1 and parts[1] in modules:
                    targets.add(parts[1])
        graph[module] = targets - {module}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a path ``[a, b, ..., a]``, or None."""
    done: set[str] = set()

    def visit(node: str, path: list[str]) -> list[str] | None:
        if node in path:
            return path[path.index(node):] + [node]
        if node in done:
            return None
        for nxt in sorted(graph.get(node, ())):
            if (cycle := visit(nxt, path + [node])) is not None:
                return cycle
        done.add(node)
        return None

    for start in sorted(graph):
        if (cycle := visit(start, [])) is not None:
            return cycle
    return None


def test_rampctl_modules_import_each_other_without_a_cycle() -> None:
    graph = module_graph(PACKAGE)
    assert {"client", "console", "settings", "service_cmds", "sweep_cmds", "science", "main"} <= set(graph)
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph) or [])
    assert "sweep_cmds" not in graph["service_cmds"] and "service_cmds" not in graph["sweep_cmds"]
    # The client and its settings are the bottom layer: they print nothing and know no command.
    assert graph["settings"] == set() and graph["client"] == {"settings"}


def test_the_cycle_check_sees_cycles_lazy_imports_included(tmp_path: Path) -> None:
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from pkg.b import thing\n")
    (pkg / "b.py").write_text("def f():\n    from pkg import c\n")
    (pkg / "c.py").write_text("from . import a\nimport json\n")
    (pkg / "d.py").write_text("import pkg.a\n")
    graph = module_graph(pkg)
    assert graph == {"__init__": set(), "a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert find_cycle(graph) == ["a", "b", "c", "a"]
    (pkg / "c.py").write_text("import json\n")
    assert find_cycle(module_graph(pkg)) is None


def _sources() -> dict[str, ast.Module]:
    return {p.name: ast.parse(p.read_text(), filename=p.name) for p in sorted(PACKAGE.glob("*.py"))}


def test_only_the_settings_module_reads_the_environment() -> None:
    readers = []
    for name, tree in _sources().items():
        for node in ast.walk(tree):
            os_attribute = (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
                            and node.value.id == "os" and node.attr in ("environ", "getenv"))
            from_os = (isinstance(node, ast.ImportFrom) and node.module == "os"
                       and any(a.name in ("environ", "getenv") for a in node.names))
            if os_attribute or from_os:
                readers.append(f"{name}:{node.lineno}")
    assert readers == [], f"read the environment through rampctl.settings.CliSettings: {readers}"


def test_no_module_keeps_its_own_list_of_job_statuses() -> None:
    statuses = {s.value for s in JobStatus}
    copies = []
    for name, tree in _sources().items():
        for node in ast.walk(tree):
            if isinstance(node, ast.Set | ast.Tuple | ast.List):
                literals = {e.value for e in node.elts if isinstance(e, ast.Constant)}
                if len(literals & statuses) >= 2:
                    copies.append(f"{name}:{node.lineno} {sorted(literals & statuses)}")
            elif isinstance(node, ast.Assign | ast.AnnAssign):
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                if any(isinstance(t, ast.Name) and t.id == "TERMINAL" for t in targets):
                    copies.append(f"{name}:{node.lineno} defines TERMINAL")
    assert copies == [], f"use workers.contract.status (TERMINAL, JobStatus): {copies}"
