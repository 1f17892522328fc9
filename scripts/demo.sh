#!/usr/bin/env bash
# The main job on embedded defaults: set-up, then the closed-loop demo.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
exec .venv/bin/cortexloop demo "$@"
