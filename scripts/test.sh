#!/usr/bin/env bash
# The whole test suite, from a fresh clone: set-up, lint, types, then pytest under Xvfb.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
.venv/bin/ruff check .
.venv/bin/mypy wire controller stimserver modelserver protocols virtualrig
# tests start their own Xvfb when DISPLAY is unset (tests/conftest.py); -p no:cacheprovider keeps clones clean
exec .venv/bin/python -m pytest -p no:cacheprovider -q "$@"
