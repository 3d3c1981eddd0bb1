#!/usr/bin/env bash
# Creates .venv (Python 3.11) and installs the project with its dev extras. Idempotent and quick
# when nothing changed: a stamp keyed on pyproject.toml skips the reinstall.
set -euo pipefail
cd "$(dirname "$0")/.."

PY="${PYTHON:-python3.11}"
command -v "$PY" >/dev/null || { echo "setup: $PY not found (Python 3.11 is required)" >&2; exit 1; }
[ -x .venv/bin/python ] || "$PY" -m venv .venv

stamp=".venv/.ramp-installed-$(sha256sum pyproject.toml | cut -c1-16)"
if [ ! -f "$stamp" ]; then
    echo "setup: installing into .venv (first run takes a few minutes)" >&2
    # The machine's local wheels; pinned so pip never reaches for a multi-GB CUDA build elsewhere.
    .venv/bin/pip install -q --disable-pip-version-check torch==2.14.1 torchvision==0.29.1
    .venv/bin/pip install -q --disable-pip-version-check -e '.[dev]'
    rm -f .venv/.ramp-installed-*
    touch "$stamp"
fi
