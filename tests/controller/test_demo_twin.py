"""The demo's random-pick twin runs beside the day: its own folder and names, and one failure stops both."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from controller.demo import DemoSettings, _side_by_side, demo_config, twin_config
from wire.errors import StoreError


def test_the_twin_shares_no_file_or_name_with_the_day(tmp_path: Path) -> None:
    cfg = demo_config(tmp_path, DemoSettings(), None)
    twin = twin_config(cfg, tmp_path)
    assert twin.out_dir == tmp_path / "random" and twin.out_dir.is_dir()  # session files, state, bus credentials
    assert twin.model.data_dir == tmp_path / "random" / "modelserver" != cfg.model.data_dir
    assert twin.rig != cfg.rig  # the stimserver's LSL markers and the MQTT topics are named after the rig
    assert twin.model.threads == 1 and cfg.model.threads == 0
    assert twin.images == cfg.images and twin.acquisition == cfg.acquisition  # the same library and ground truth


async def test_side_by_side_returns_both_results() -> None:
    async def after(delay: float, value: str) -> str:
        await asyncio.sleep(delay)
        return value

    assert await _side_by_side(after(0.02, "day"), after(0.0, "twin")) == ("day", "twin")


async def test_side_by_side_raises_the_first_error_and_cancels_the_other() -> None:
    cancelled = asyncio.Event()

    async def long_day() -> None:
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    async def failing_twin() -> None:
        await asyncio.sleep(0.01)
        raise StoreError("the twin's disk is full")

    with pytest.raises(StoreError, match="disk is full"):
        await asyncio.wait_for(_side_by_side(long_day(), failing_twin()), timeout=5)
    assert cancelled.is_set()
