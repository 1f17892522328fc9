"""Session-store benchmark: sustained append rate of trials with 100-neuron responses, each flushed.

Each trial is a TrialDoc and a ResponseDoc written together and flushed to the OS before the
call returns (what "acknowledged" means), as the controller writes them.

    .venv/bin/python bench/store_bench.py [--trials 5000] [--neurons 100]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from controller.store import SessionReader, SessionWriter
from wire.documents import ResponseDoc, StartDoc, TrialDoc


def main(n_trials: int, n_neurons: int) -> None:
    rng = np.random.default_rng(0)
    units = [f"u{j}" for j in range(n_neurons)]
    path = Path(tempfile.mkdtemp()) / "bench.h5"
    with SessionWriter.create(path) as w:
        w.write(StartDoc(session_id="bench", code_version="bench"))
        t0 = time.perf_counter()
        for i in range(n_trials):
            w.write_many([
                TrialDoc(trial_id=f"t{i}", block_id="b0", index=i, image_id=f"{i:032x}", onset=float(i),
                         offset=i + 0.1, on_frames=6, dropped_frames=0),
                ResponseDoc(trial_id=f"t{i}", units=units, counts=rng.poisson(3.0, n_neurons).astype(np.uint16),
                            window=(0.05, 0.15), onset_acq=float(i)),
            ])
        dt = time.perf_counter() - t0
    t1 = time.perf_counter()
    with SessionReader(path) as r:
        trials, _, counts = r.counts()
    dr = time.perf_counter() - t1
    assert len(trials) == n_trials and counts.shape == (n_trials, n_neurons)
    size = path.stat().st_size
    print(f"store append: {n_trials / dt:,.0f} trials/s ({n_neurons} neurons, flushed per trial); "
          f"{dt / n_trials * 1e6:.0f} us per trial")
    print(f"store read-back: {n_trials / dr:,.0f} trials/s; file {size / n_trials:.0f} bytes per trial")


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--trials", type=int, default=5000)
    p.add_argument("--neurons", type=int, default=100)
    a = p.parse_args()
    main(a.trials, a.neurons)
