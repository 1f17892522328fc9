#!/usr/bin/env bash
# The whole test suite, from a fresh clone: set-up, lint, types, then pytest under Xvfb.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
.venv/bin/ruff check .
.venv/bin/mypy wire controller stimserver modelserver protocols virtualrig
# tests start their own Xvfb when DISPLAY is unset (tests/conftest.py); -p no:cacheprovider keeps clones clean.
# Two pytest-xdist workers (one compute thread each, tests/conftest.py): many end-to-end tests wait on
# child processes and real-time blocks, so two share the two cores well; tests marked with one
# xdist_group (the Ray tests: one local cluster) stay on one worker. PYTEST_WORKERS=0 runs serially.
exec .venv/bin/python -m pytest -p no:cacheprovider -q -n "${PYTEST_WORKERS:-2}" --dist loadgroup "$@"
