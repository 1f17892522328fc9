"""Model server over a real socket: ingest throughput, and predict latency while a training job runs.

    .venv/bin/python bench/modelserver_bench.py [--data DIR] [--session 190925] [--epochs 2]

Ingests one real V4 session (images + repeat-averaged counts as one trial per image) in blocks
of 100 trials, starts training, and measures ``predict`` round trips (100 images) and ``status``
while the job runs, then after it. Prints one line per figure.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from modelserver.serving.server import ModelServer, ModelServerConfig  # noqa: E402
from modelserver.training.data import load_session  # noqa: E402
from modelserver.training.ensemble import EnsembleConfig  # noqa: E402
from wire.base import image_id  # noqa: E402
from wire.errors import RequestTimeout  # noqa: E402
from wire.model import (  # noqa: E402
    Ingest,
    Ingested,
    JobStarted,
    Predict,
    Prediction,
    ServerStatus,
    Status,
    Train,
    TrainDone,
    TrainProgress,
)
from wire.transport import EventSubscriber, RpcClient  # noqa: E402


async def run(args: argparse.Namespace) -> None:
    images, resp = load_session(args.data, args.session)
    counts = np.round(resp.T)  # one trial per image (the averages, rounded to counts)
    with tempfile.TemporaryDirectory() as tmp:
        cfg = ModelServerConfig(data_dir=Path(tmp), endpoint="tcp://127.0.0.1:0", events_endpoint="tcp://127.0.0.1:0",
                                ensemble=EnsembleConfig(members=args.members, max_epochs=args.epochs))
        async with ModelServer(cfg) as server, RpcClient(server.endpoint, timeout=120) as client, \
                EventSubscriber(server.events_endpoint, [TrainProgress, TrainDone]) as sub:
            t0 = time.perf_counter()
            for i in range(0, len(images), 100):
                block = images[i:i + 100]
                ids = [image_id(im) for im in block]
                await client.request(Ingest(session=args.session, image_ids=ids, counts=counts[i:i + 100],
                                            images=block), Ingested)
            dt = time.perf_counter() - t0
            print(f"ingest: {len(images)} images + trials in {dt:.2f} s ({len(images) / dt:.0f} trials/s, "
                  f"flushed to HDF5 per block of 100)")
            await server.wait_for_subscribers(1)
            t0 = time.perf_counter()
            await client.request(Train(), JobStarted)
            ev = await sub.recv(timeout=600)  # first epoch done: a model version is being trained
            lat_status, lat_pred = [], []
            done = isinstance(ev, TrainDone)
            while not done:
                t1 = time.perf_counter()
                await client.request(Status(), ServerStatus)
                lat_status.append(time.perf_counter() - t1)
                try:
                    ev = await sub.recv(timeout=0.5)
                    done = isinstance(ev, TrainDone)
                except RequestTimeout:
                    continue  # no event yet: ask for the status again
            print(f"training: {time.perf_counter() - t0:.0f} s; status answered {len(lat_status)} times during "
                  f"training, median {1e3 * float(np.median(lat_status)) if lat_status else float('nan'):.1f} ms")
            for _ in range(5):
                t1 = time.perf_counter()
                await client.request(Predict(session=args.session, images=images[:100]), Prediction)
                lat_pred.append(time.perf_counter() - t1)
            print(f"predict 100 images: median {1e3 * float(np.median(lat_pred)):.0f} ms "
                  f"({torch.get_num_threads()} threads)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data" / "v4")
    ap.add_argument("--session", default="190925")
    ap.add_argument("--members", type=int, default=2)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    asyncio.run(run(args))


if __name__ == "__main__":
    main()
