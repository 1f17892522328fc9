"""What the suite promises about itself: property tests reproduce, and the suite runs with an empty HOME."""

from __future__ import annotations

import os
from pathlib import Path

import hypothesis


def test_property_tests_draw_the_same_examples_every_run() -> None:
    if os.environ.get("HYPOTHESIS_PROFILE", "cortexloop") == "cortexloop":
        assert hypothesis.settings().derandomize


def test_the_test_command_runs_with_a_fresh_empty_home() -> None:
    """scripts/test.sh gives pytest a new HOME (first-run races of PsychoPy, matplotlib, Chromium show)."""
    home = Path.home()
    if os.environ.get("CI", "").lower() == "true":
        assert home.name.startswith("cortexloop-home."), home
