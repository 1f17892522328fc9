"""A rig file with CURVE keys runs a session end to end; clients without the right key get nothing.

1. Every part started by the assembly (stimserver, modelserver, virtual rig) with keys: the session
   presents, counts, ingests and retrains (the modelserver's RPC and its training events over CURVE;
   the rig's RPC and its subscription to the stimserver's trial events over CURVE). Meanwhile
   intruders (no key, an unknown key) ask every server and subscribe to every event stream: they
   time out and receive no event.
2. ``run_protocol`` reaching a running stimserver (started by its CLI with CURVE) with the server's
   public key from the folder, while an intruder listens to its trial events.
"""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path
from typing import Any

import pytest

from controller.assembly import assemble, run_protocol
from controller.config import load_config
from controller.store import SessionReader
from protocols.loader import load_protocol
from stimserver.process import StimServerProcess
from wire.documents import ResponseDoc, StepDoc, StopDoc, TrialDoc
from wire.errors import RequestTimeout
from wire.messages import Pong
from wire.model import TrainDone, TrainProgress
from wire.security import CurveClient, generate_keypair
from wire.stim import STIM_TRIAL_TOPIC, TrialEvent
from wire.transport import EventSubscriber, RpcClient

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "protocols" / "examples"
#: protocols/examples/script.yaml shrunk: 6 normal + 6 gaudy images once; the pause times out and resumes
SCRIPT_SHRINK = ["steps.0.repeats=1", "steps.0.images.0.n_images=6", "steps.0.images.1.n_images=6",
                 "steps.3.timeout_s=1", "steps.3.on_timeout=resume"]

#: a block, its counts, then ingest and a short retrain: the modelserver's RPC and events are used
TRAIN_SCRIPT = """\
protocol: script
title: curve session
steps:
  - kind: present_block
    block_id: b0
    repeats: 2
    on_frames: 3
    off_frames: 3
    images:
      - {source: normal, n_images: 12, condition: normal, seed: 5}
  - {kind: wait_for_counts, block_id: b0}
  - {kind: ingest, block_ids: [b0]}
  - {kind: retrain, scope: block, max_epochs: 2, timeout_s: 300}
"""

SERVERS = ("controller", "stimserver", "modelserver", "virtualrig")


def make_keys(tmp_path: Path) -> tuple[Path, Path]:
    """(the rig's key folder: controller + the three servers, an intruder's secret key file)."""
    folder = tmp_path / "keys"
    for name in SERVERS:
        generate_keypair(folder, name)
    _, mallory = generate_keypair(tmp_path / "elsewhere", "mallory")
    return folder, mallory


def intruders(folder: Path, mallory: Path, server: str) -> list[CurveClient | None]:
    """No key at all, a well-formed key the server does not admit, and another server's key from the rig's
    own keys folder (the rig's key used to open the modelserver: every *.key of the folder was admitted)."""
    other = "virtualrig" if server != "virtualrig" else "modelserver"
    return [None, CurveClient(secret_key_file=mallory, server_public_key_file=folder / f"{server}.key"),
            CurveClient(secret_key_file=folder / f"{other}.key_secret", server_public_key_file=folder / f"{server}.key")]


async def gets_nothing_by_rpc(endpoint: str, curve: CurveClient | None) -> None:
    async with RpcClient(endpoint, timeout=1.0, curve=curve) as client:
        with pytest.raises(RequestTimeout):
            await client.ping()


async def collect(sub: EventSubscriber, into: list[Any]) -> None:
    with contextlib.suppress(asyncio.CancelledError):
        async for ev in sub:
            into.append(ev)


async def test_a_rig_file_with_keys_runs_a_session_and_strangers_get_nothing(tmp_path: Path) -> None:
    folder, mallory = make_keys(tmp_path)
    rig = tmp_path / "rig.yaml"
    rig.write_text(f"""\
rig: curve-rig
session_id: curve
out_dir: {tmp_path / 'out'}
keys: {{folder: {folder}}}
acquisition: {{kind: virtual, virtual: {{n_units: 8, seed: 2}}}}
model: {{members: 2, block_epochs: 2, session_epochs: 2, max_epochs: 2, pool_crops: 100, device: cpu}}
images: {{synthetic: 80}}
bus: {{broker: none}}
""")
    cfg = load_config(rig)
    proto_path = tmp_path / "train.yaml"
    proto_path.write_text(TRAIN_SCRIPT)
    proto = load_protocol(proto_path)
    own = {name: CurveClient(secret_key_file=folder / "controller.key_secret",
                             server_public_key_file=folder / f"{name}.key") for name in SERVERS[1:]}

    async with assemble(cfg, proto) as s:
        assert set(s.children) == {"stimserver", "modelserver", "virtualrig"}
        assert all("--curve-secret" in c.argv for c in s.children.values()), "every child started with CURVE"
        stim, model = s.children["stimserver"].fields(), s.children["modelserver"].fields()
        rig_rpc = s.children["virtualrig"].fields()["rpc"]
        assert s.rig is not None
        # the session's own clients are admitted; strangers are not, on any server
        assert isinstance(await s.engine.stim.ping(timeout=5), Pong)  # type: ignore[attr-defined]
        for endpoint, server in ((stim["rpc"], "stimserver"), (model["rpc"], "modelserver"),
                                 (rig_rpc, "virtualrig")):
            for curve in intruders(folder, mallory, server):
                await gets_nothing_by_rpc(endpoint, curve)
            async with RpcClient(endpoint, timeout=10, curve=own[server]) as client:
                assert isinstance(await client.ping(), Pong)
        # listeners on both event streams during the session: the stranger's hear nothing
        heard: dict[str, list[Any]] = {}
        subs: list[EventSubscriber] = []
        tasks = []
        for label, endpoint, server, events in (
                ("stim", stim["events"], "stimserver", [TrialEvent]),
                ("model", model["events"], "modelserver", [TrainProgress, TrainDone])):
            for who, curve in (("own", own[server]), *(
                    (f"stranger{k}", c) for k, c in enumerate(intruders(folder, mallory, server)))):
                sub = EventSubscriber(endpoint, events, curve=curve,
                                      topics=[STIM_TRIAL_TOPIC] if label == "stim" else ("",))
                subs.append(sub)
                heard[f"{label}-{who}"] = []
                tasks.append(asyncio.create_task(collect(sub, heard[f"{label}-{who}"])))
        await asyncio.sleep(0.5)  # let the subscriptions (and the refused handshakes) settle
        try:
            stop = await s.run()
            status = await s.rig.status()
        finally:
            await asyncio.sleep(0.2)
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            for sub in subs:
                sub.close()
        path = s.path

    assert stop.exit_status == "success", stop.reason
    assert stop.n_trials == 24
    # the rig heard every trial over its CURVE subscription and knew every image (sent over CURVE RPC)
    assert status.trials_seen == 24 and status.trials_unknown_image == 0
    assert len(heard["stim-own"]) == 24, "an admitted listener hears the trials"
    assert any(isinstance(e, TrainDone) for e in heard["model-own"]), "and the training events"
    strangers = {k: v for k, v in heard.items() if "stranger" in k}
    assert len(strangers) == 6 and all(v == [] for v in strangers.values()), strangers
    with SessionReader(path) as r:
        docs = list(r.documents())
    assert isinstance(docs[-1], StopDoc)
    counted = [d for d in docs if isinstance(d, ResponseDoc)]
    assert len(counted) == 24 == len([d for d in docs if isinstance(d, TrialDoc)])
    steps = {d.step["kind"]: d.result for d in docs if isinstance(d, StepDoc)}
    assert steps["ingest"]["n_trials"] == 24
    assert steps["retrain"]["status"] == "done" and steps["retrain"]["model_version"] not in ("none", "pending")


async def test_run_protocol_reaches_a_running_curve_stimserver(tmp_path: Path) -> None:
    folder, mallory = make_keys(tmp_path)
    srv = StimServerProcess(["--presenter", "fake", "--rpc", "tcp://127.0.0.1:0", "--events", "tcp://127.0.0.1:0",
                             "--curve-secret", str(folder / "stimserver.key_secret"), "--curve-clients", str(folder)])
    try:
        rig = tmp_path / "rig.yaml"
        rig.write_text(f"""\
session_id: connected
out_dir: {tmp_path / 'out'}
keys: {{folder: {folder}, model: null}}
stim: {{rpc: "{srv.rpc}", events: "{srv.events}"}}
acquisition: {{kind: virtual, virtual: {{n_units: 6}}}}
model: {{kind: none}}
images: {{synthetic: 40}}
bus: {{broker: none}}
""")
        cfg = load_config(rig)
        proto = load_protocol(EXAMPLES / "script.yaml", overrides=SCRIPT_SHRINK)
        heard: dict[str, list[Any]] = {"none": [], "mallory": []}
        subs = [EventSubscriber(srv.events, [TrialEvent], topics=[STIM_TRIAL_TOPIC], curve=c)
                for c in intruders(folder, mallory, "stimserver")[:2]]  # started by hand: it admits the folder
        tasks = [asyncio.create_task(collect(sub, heard[k])) for sub, k in zip(subs, heard, strict=True)]
        try:
            stop, path = await run_protocol(proto, cfg)
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            for sub in subs:
                sub.close()
        for curve in intruders(folder, mallory, "stimserver")[:2]:
            await gets_nothing_by_rpc(srv.rpc, curve)
    finally:
        assert srv.stop() == 0
    assert stop.exit_status == "success", stop.reason
    assert stop.n_trials == 12
    assert heard == {"none": [], "mallory": []}
    with SessionReader(path) as r:
        counted = [d for d in r.documents() if isinstance(d, ResponseDoc)]
    assert len(counted) == 12 and sum(float(sum(d.counts)) for d in counted) > 0
