"""A Ray cluster the modelserver starts or joins requires Ray's token authentication: Ray's servers
listen on every interface whatever address they are given, so without a token anyone on the lab
network could submit work to it."""

from __future__ import annotations

import os
from typing import Any

import pytest

import modelserver.cluster.runtime as runtime


class FakeRay:
    def __init__(self) -> None:
        self.auth_mode_at_init: str | None = None

    def is_initialized(self) -> bool:
        return False

    def init(self, **kw: Any) -> None:
        self.auth_mode_at_init = os.environ.get("RAY_AUTH_MODE")

    def cluster_resources(self) -> dict[str, float]:
        return {"CPU": 2.0}


def test_a_cluster_started_here_uses_token_authentication(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = FakeRay()
    monkeypatch.delenv("RAY_AUTH_MODE", raising=False)
    monkeypatch.setattr(runtime, "import_ray", lambda: fake)
    monkeypatch.setattr(runtime, "_CONNECTED", {})
    runtime.RayCluster.connect("local")
    assert fake.auth_mode_at_init == "token"


def test_a_labs_own_ray_auth_setting_is_kept(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = FakeRay()
    monkeypatch.setenv("RAY_AUTH_MODE", "k8s")
    monkeypatch.setattr(runtime, "import_ray", lambda: fake)
    monkeypatch.setattr(runtime, "_CONNECTED", {})
    runtime.RayCluster.connect("local")
    assert fake.auth_mode_at_init == "k8s"
