"""The layers' boundary: ``service/`` and ``migrations/`` import nothing from ``workers`` but
``workers.contract``, and the contract pulls in neither torch nor Ray (nor FastAPI / SQLAlchemy)."""

from __future__ import annotations

import ast
import json
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


def test_training_and_sweep_trials_do_not_import_torchvision() -> None:
    # torchvision pulls in torch._dynamo: ~1 s of start-up for the job driver and evaluation tasks
    # (a trainer imports dynamo anyway, with its first optimizer; torchvision adds ~0.15 s more).
    # Only the loaders and models that need it (cifar10, imagefolder, resnet18) import it, when used.
    code = ("import sys\n"
            "import workers.ray_entry.sweep, workers.ray_entry.train, workers.jobs.driver\n"
            "import workers.training.loop, workers.evaluation, workers.datasets, workers.models\n"
            "from workers.datasets import load_tensors\n"
            "load_tensors('mnist-5k', 'test', n=4)\n"
            "from workers.models import build_model\n"
            "build_model('small-cnn', num_classes=10, in_channels=1, input_size=28)\n"
            "print('torchvision' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO)
    assert out.stdout.strip() == "False", out.stdout + out.stderr
    code = ("import sys\nfrom workers.models import build_model\n"
            "build_model('resnet18', num_classes=10, in_channels=3, input_size=32)\n"
            "print('torchvision' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO)
    assert out.stdout.strip() == "True", "the check must see torchvision when it is imported"


def _heavy_after_import(module: str) -> list[str]:
    code = (f"import json, sys\nimport {module}\n"
            "print(json.dumps(sorted(m for m in ('torch', 'ray.train', 'numpy') if m in sys.modules)))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO)
    return json.loads(out.stdout.strip())


def test_the_run_channel_actor_module_imports_no_torch() -> None:
    # Ray imports an actor class's module in the actor's process: one such process per training job
    # or sweep; with torch it cost ~3 s of CPU and ~0.7 GB each (measured in the demo).
    from workers.ray_entry.channel import RunChannel
    from workers.ray_entry.train import open_channel  # noqa: F401 -- the actor class the driver starts

    assert RunChannel.__module__ == "workers.ray_entry.channel"
    assert _heavy_after_import("workers.ray_entry.channel") == []
    # The check sees torch where it is imported: the training runtime next to it.
    assert "torch" in _heavy_after_import("workers.ray_entry.runtime")


# The science: torch and numpy, never an orchestrator, a web framework, an HTTP client or a database.
SCIENCE = ("workers/attacks", "workers/methods", "workers/models", "workers/datasets", "workers/training",
           "workers/evaluation", "workers/checkpoint.py")
FORBIDDEN_IN_SCIENCE = ("ray", "fastapi", "starlette", "sqlalchemy", "httpx", "requests", "uvicorn",
                        "service", "workers.ray_entry", "workers.jobs")


def _forbidden(module: str, banned: tuple[str, ...] = FORBIDDEN_IN_SCIENCE) -> bool:
    return any(module == b or module.startswith(b + ".") for b in banned)


def _science_files() -> list[Path]:
    out = []
    for entry in SCIENCE:
        path = REPO / entry
        out += [path] if path.is_file() else sorted(path.rglob("*.py"))
    return out


def test_the_science_imports_no_ray_http_or_database() -> None:
    files = _science_files()
    assert len(files) > 40  # every science package was found (a moved folder must not empty the check)
    leaks = [f"{path.relative_to(REPO)}:{line} imports {module}"
             for path in files for line, module in _imported_modules(path) if _forbidden(module)]
    assert not leaks, "\n".join(leaks)


def test_the_science_check_sees_a_leak(tmp_path: Path) -> None:
    probe = tmp_path / "probe.py"
    probe.write_text("import ray.tune\nimport torch\nfrom sqlalchemy.orm import Session\nimport requests\n"
                     "from workers.jobs.reporter import Reporter\nimport httpx_sse\nimport rayon\n")
    found = [m for _, m in _imported_modules(probe) if _forbidden(m)]
    assert found == ["ray.tune", "sqlalchemy.orm", "requests", "workers.jobs.reporter"]
