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
# A fresh, empty HOME for every run, as on a new machine: first-run work (PsychoPy's ~/.psychopy3,
# matplotlib's cache, Ray's and Chromium's profiles) happens in the suite, so its races show here too.
test_home=$(mktemp -d -t cortexloop-home.XXXXXX)
trap 'rm -rf "$test_home"' EXIT
HOME="$test_home" .venv/bin/python -m pytest -p no:cacheprovider -q -n "${PYTEST_WORKERS:-2}" --dist loadgroup "$@"
