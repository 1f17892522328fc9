"""Bus fixtures: an embedded amqtt broker and a real mosquitto, both with the test users."""

from __future__ import annotations

import shutil
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from controller.bus import EmbeddedBroker, MosquittoBroker, mosquitto_binary, write_amqtt_password_file
from tests.bus.bus_scenario import USERS
from tests.conftest import require


@pytest.fixture(scope="session")
def amqtt_passwd(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The users' argon2 password file, hashed once per test session."""
    return write_amqtt_password_file(tmp_path_factory.mktemp("amqtt") / "passwd", USERS)


@pytest.fixture
async def amqtt_broker(amqtt_passwd: Path) -> AsyncIterator[EmbeddedBroker]:
    async with EmbeddedBroker(amqtt_passwd, {u.name: (u.role, u.rig) for u in USERS}) as broker:
        yield broker


@pytest.fixture
def mosquitto(tmp_path: Path) -> Iterator[MosquittoBroker]:
    if mosquitto_binary() is None or shutil.which("mosquitto_passwd") is None:
        require(False, "mosquitto / mosquitto_passwd not installed (apt-get install mosquitto)")
    with MosquittoBroker(tmp_path / "mosquitto", USERS) as broker:
        yield broker
