"""Fixtures of the virtual-rig tests."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def v4_data(v4_dir: Path) -> Path:
    """The real V4 data folder: an alias of ``v4_dir`` (tests/conftest.py), which skips where the
    data are absent and fails under CI=true."""
    return v4_dir
