#!/usr/bin/env bash
# Idempotent set-up for a fresh machine: Debian packages the tests and the demo need,
# a virtual environment in .venv/, torch 2.13.0 (the CPU wheel where the machine has it),
# and cortexloop itself in editable mode with every extra. Re-running is cheap: a stamp
# of pyproject.toml and this script skips the pip step when nothing changed.
set -euo pipefail
cd "$(dirname "$0")/.."

apt_pkgs=(xvfb xauth mosquitto libgl1-mesa-dri libglu1-mesa libglib2.0-0 libgtk-3-0 libasound2 libxxf86vm1 libsdl2-2.0-0 chromium chromium-driver)
missing=()
for p in "${apt_pkgs[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
if [ ${#missing[@]} -gt 0 ]; then
  if command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
    echo "bootstrap: installing Debian packages: ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    # the tests start their own broker; the packaged service must not hold port 1883
    (service mosquitto stop || true) >/dev/null 2>&1
  else
    echo "bootstrap: warning: missing Debian packages (${missing[*]}) and no root apt-get; tests that need them will skip" >&2
  fi
fi

PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null || PY=python3
[ -x .venv/bin/python ] || "$PY" -m venv .venv
stamp=$(cat pyproject.toml scripts/bootstrap.sh | sha256sum | cut -c1-16)
if [ "$(cat .venv/.bootstrap-stamp 2>/dev/null)" != "$stamp" ]; then
  echo "bootstrap: installing Python packages into .venv (first run takes a few minutes)"
  .venv/bin/python -m pip install -q --upgrade pip
  # torch first, pinned: on this lab's CPU machines pip finds the local 2.13.0 CPU wheel;
  # elsewhere the same pin pulls the build that fits the machine (CUDA on a GPU box).
  .venv/bin/python -m pip install -q "torch==${TORCH_VERSION:-2.13.0}"
  .venv/bin/python -m pip install -q -e ".[all,dev]"
  echo "$stamp" > .venv/.bootstrap-stamp
fi
