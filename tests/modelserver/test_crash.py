"""A model server killed with SIGKILL in the middle of training loses no ingested data."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path

import numpy as np

from modelserver.training.dataset import TrainingSet
from wire.base import image_id
from wire.model import Ingest, Ingested, JobStarted, Train, TrainProgress
from wire.transport import EventSubscriber, RpcClient

REPO = Path(__file__).resolve().parents[2]


async def test_sigkill_mid_training_loses_nothing(tmp_path: Path) -> None:
    rpc, events = f"ipc://{tmp_path}/rpc", f"ipc://{tmp_path}/ev"
    data_dir = tmp_path / "ms"
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "modelserver", "serve", "--data-dir", str(data_dir), "--endpoint", rpc,
        "--events", events, "--threads", "1", "--members", "2", "--max-epochs", "1000",
        cwd=REPO, stdout=asyncio.subprocess.PIPE, env={**os.environ, "PYTHONPATH": str(REPO)})
    try:
        assert proc.stdout is not None
        line = await asyncio.wait_for(proc.stdout.readline(), 60)
        assert b"ready" in line, line
        rng = np.random.default_rng(0)
        sent = []
        async with RpcClient(rpc, timeout=30) as client, EventSubscriber(events, [TrainProgress]) as sub:
            for _ in range(3):
                imgs = rng.integers(0, 256, (20, 32, 32, 3), dtype=np.uint8)
                ids = [image_id(im) for im in imgs] * 2  # two repeats
                counts = rng.poisson(2.0, (40, 5)).astype(np.float64)
                await client.request(Ingest(session="s", image_ids=ids, counts=counts, images=imgs), Ingested)
                sent.append((ids, counts))
            await client.request(Train(), JobStarted)
            ev = await sub.recv(timeout=120)  # training is under way
            assert isinstance(ev, TrainProgress)
            # one more ingest while training runs, acknowledged before the kill
            imgs = rng.integers(0, 256, (5, 32, 32, 3), dtype=np.uint8)
            ids = [image_id(im) for im in imgs]
            counts = rng.poisson(2.0, (5, 5)).astype(np.float64)
            await client.request(Ingest(session="s", image_ids=ids, counts=counts, images=imgs), Ingested)
            sent.append((ids, counts))
        proc.send_signal(signal.SIGKILL)
        await proc.wait()
        assert proc.returncode == -signal.SIGKILL
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    with TrainingSet(data_dir / "training_set.h5") as ts:
        info = ts.sessions()[0]
        assert info.trials == 3 * 40 + 5 and info.images == 65
        sd = ts.session("s")
        all_ids = [i for ids, _ in sent for i in ids]
        all_counts = np.concatenate([c for _, c in sent])
        for k, key in enumerate(sd.image_ids):
            rows = [t for t, i in enumerate(all_ids) if i == key]
            np.testing.assert_allclose(sd.mean[k], all_counts[rows].mean(0), rtol=1e-6)
