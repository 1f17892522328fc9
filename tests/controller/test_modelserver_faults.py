"""The modelserver killed mid-session (a real process, SIGKILL) and restarted: the session goes on.

Model-made image sets fall back, ingest is deferred and re-sent once the server answers again, a
retrain that cannot run is skipped with an event, the operator on the bus is told, and the
session ends ``success`` with every count recorded and the faults on record.
"""

from __future__ import annotations

import asyncio
import json
import socket
from pathlib import Path
from typing import Any

import pytest

from controller.assembly import assemble
from controller.bus.mqtt import MqttOperator
from controller.children import Child
from controller.config import (
    AcquisitionConfig,
    BusConfig,
    ImagesConfig,
    ModelConfig,
    RunConfig,
    VirtualRigConfig,
)
from controller.store import SessionReader
from protocols.library.sysid import SysidProtocol
from wire.documents import BlockDoc, EventDoc, ModelVersionDoc, ResponseDoc, StepDoc, StopDoc
from wire.topics import SessionEvent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def _modelserver(data: Path, rpc: str, events: str) -> Child:
    return await Child.start("modelserver", [
        "-m", "modelserver", "serve", "--data-dir", str(data), "--endpoint", rpc, "--events", events,
        "--device", "cpu", "--members", "2", "--max-epochs", "3", "--threads", "1"], ready="modelserver ready")


@pytest.mark.slow
async def test_sysid_goes_on_while_the_modelserver_is_killed_and_restarted(tmp_path: Path) -> None:
    rpc, events = f"tcp://127.0.0.1:{_free_port()}", f"tcp://127.0.0.1:{_free_port()}"
    data = tmp_path / "modelserver"
    server = await _modelserver(data, rpc, events)
    cfg = RunConfig(out_dir=tmp_path, session_id="faulty", rig="rigf",
                    model=ModelConfig(kind="connect", rpc=rpc, events=events, block_epochs=2, session_epochs=3,
                                      pool_crops=300, timeout=30),
                    acquisition=AcquisitionConfig(kind="virtual", virtual=VirtualRigConfig(n_units=8, seed=2)),
                    images=ImagesConfig(synthetic=400), bus=BusConfig(broker="embedded"))
    proto = SysidProtocol.model_validate({
        "protocol": "sysid", "seed": 5, "n_blocks": 3, "normal": 20, "gaudy": 5, "retrain": "both",
        "timing": {"on_frames": 3, "off_frames": 3}, "prefetch": False,
        "active": {"n_images": 6, "start_block": 1, "timeout_s": 60},
        "heldout": {"block_id": "heldout", "n_images": 10, "repeats": 2}})
    state: dict[str, Any] = {"killed": False, "restart": None}

    def on_status(topic: str, payload: dict[str, Any]) -> None:
        # kill it as soon as the first model version exists; restart once a retrain was skipped
        if topic == "model" and payload.get("model_version") and not state["killed"]:
            state["killed"] = True
            server.proc.kill()
        if topic == "event" and payload["what"] == "retrain_skipped" and state["restart"] is None:
            state["restart"] = asyncio.ensure_future(_modelserver(data, rpc, events))

    warnings: list[SessionEvent] = []
    try:
        async with assemble(cfg, proto, on_status=on_status) as session:
            cred = json.loads((tmp_path / "bus-operator.json").read_text())
            host, port = cred["broker"].split(":")
            async with MqttOperator("rigf", host, int(port), username=cred["username"],
                                    password=cred["password"]) as op:

                async def listen() -> None:
                    async for msg in op.statuses():
                        if isinstance(msg, SessionEvent) and msg.level == "warning":
                            warnings.append(msg)

                listener = asyncio.create_task(listen())
                stop = await session.run()
                await asyncio.sleep(0.5)  # the bridge flushes its queue on exit; let the last events in
                listener.cancel()
    finally:
        server.stop()
        if state["restart"] is not None:
            (await state["restart"]).stop()

    assert state["killed"] and state["restart"] is not None
    assert stop.exit_status == "success", stop.reason
    with SessionReader(tmp_path / "faulty.h5") as r:
        docs = list(r.documents())
    assert isinstance(docs[-1], StopDoc)
    what = [d.what for d in docs if isinstance(d, EventDoc)]
    assert "ingest_deferred" in what and "retrain_skipped" in what and "ingest_resent" in what, what
    assert "ingest_unsent" not in what, "the deferred counts reached the restarted server"
    blocks = {d.block_id: d for d in docs if isinstance(d, BlockDoc)}
    assert blocks["sysid-1"].fallback, "the active picks fell back while the server was down"
    # nothing recorded is lost: every shown trial has its counts, and the restarted server trained on
    # every trial of every non-held-out block
    responses = [d for d in docs if isinstance(d, ResponseDoc)]
    assert len(responses) == sum(b.n_trials for b in blocks.values())
    ingests = [d.result for d in docs if isinstance(d, StepDoc) and d.step["kind"] == "ingest"
               and not d.step.get("heldout")]
    trained = sum(b.n_trials for k, b in blocks.items() if k != "heldout")
    assert ingests[-1]["n_trials"] == trained, ingests
    versions = [d for d in docs if isinstance(d, ModelVersionDoc)]
    assert len(versions) >= 2, "retrained before the kill and after the restart"
    told = {w.event for w in warnings}
    assert {"ingest_deferred", "retrain_skipped"} <= told, told
