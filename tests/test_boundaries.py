"""The layers' boundary: ``service/`` and ``migrations/`` import nothing from ``workers`` but
``workers.contract``, and the contract pulls in neither torch nor Ray (nor FastAPI / SQLAlchemy)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CONTRACT = "workers.contract"


def _imported_modules(path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text(), filename=str(path))
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module == "workers":  # "from workers import x" names submodules
                out += [(node.lineno, f"workers.{alias.name}") for alias in node.names]
            else:
                out.append((node.lineno, node.module))
    return out


def _outside_the_contract(module: str) -> bool:
    if module != "workers" and not module.startswith("workers."):
        return False
    return not (module == CONTRACT or module.startswith(CONTRACT + "."))


def test_service_and_migrations_import_only_the_contract_from_workers() -> None:
    leaks = []
    for folder in ("service", "migrations"):
        for path in sorted((REPO / folder).rglob("*.py")):
            for line, module in _imported_modules(path):
                if _outside_the_contract(module):
                    leaks.append(f"{path.relative_to(REPO)}:{line} imports {module}")
    assert not leaks, "\n".join(leaks)


def test_the_check_sees_a_leak(tmp_path) -> None:
    probe = tmp_path / "probe.py"
    probe.write_text("import workers.evaluation\nfrom workers import checkpoint\n"
                     "from workers.contract import spec\nfrom workers import contract\n")
    found = [m for _, m in _imported_modules(probe) if _outside_the_contract(m)]
    assert found == ["workers.evaluation", "workers.checkpoint"]


def test_the_contract_imports_no_heavy_framework() -> None:
    modules = sorted(p.stem for p in (REPO / "workers" / "contract").glob("*.py") if p.stem != "__init__")
    heavy = ("torch", "ray", "fastapi", "sqlalchemy", "torchvision")
    code = (f"import sys\nfor m in {modules!r}: __import__('workers.contract.' + m)\n"
            f"print(sorted(m for m in {heavy!r} if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr
