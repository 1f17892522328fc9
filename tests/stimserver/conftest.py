"""Fixtures of the stimserver tests."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator

import pytest


@pytest.fixture
def ipc_dir() -> Iterator[str]:
    """A short private folder for ipc:// endpoints (socket paths must stay under ~100 chars)."""
    path = tempfile.mkdtemp(prefix="stim-", dir="/tmp")
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)
