#!/usr/bin/env bash
# Sets up the environment and runs the whole test suite (lint + pytest, slow tests included).
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/setup.sh

# PostgreSQL-backed tests run for real: start the local cluster if it is down.
if command -v pg_ctlcluster >/dev/null && ! pg_isready -q -h 127.0.0.1 -p 5432; then
    pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql)" main start
fi
# Real Fashion-MNIST for its loader test (Debian package; 30 MB).
if [ ! -d /usr/share/datasets/fashion-mnist ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    (apt-get install -y -qq dataset-fashion-mnist >/dev/null 2>&1 \
        || { apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist; }) >/dev/null
fi
# Debian's chromium (and its driver) for the web pages' browser tests (tests/ui/test_ui_browser.py;
# Playwright drives /usr/bin/chromium, it never downloads a browser of its own).
if { [ ! -x /usr/bin/chromium ] || [ ! -x /usr/bin/chromedriver ]; } && [ "$(id -u)" = 0 ] \
        && command -v apt-get >/dev/null; then
    (export DEBIAN_FRONTEND=noninteractive
     apt-get install -y -qq chromium chromium-driver >/dev/null 2>&1 \
        || { apt-get update -qq && apt-get install -y -qq chromium chromium-driver; }) >/dev/null
fi

.venv/bin/ruff check .
set +e
.venv/bin/python -m pytest --durations=40 "$@"
rc=$?
set -e
# pytest exits 5 when it collected no tests: that is a failure of the suite, not a pass.
if [ "$rc" -eq 5 ]; then echo "test: pytest collected no tests" >&2; exit 1; fi
exit "$rc"
