"""Ensemble members one at a time: trained from (config, data arrays, seed), stacked into an ensemble.

:func:`train_member` trains a one-member :class:`~modelserver.training.ensemble.DeepEnsemble` and returns
its state (tensors and plain data); :func:`fit_members` runs it once per member seed, as Ray tasks
on a :class:`~modelserver.cluster.runtime.RayCluster` or one after another in process (the same
function either way, so the same seeds give the same members), and :func:`stack_members` joins the
members into one M-member ensemble (every core and readout parameter has a leading member axis).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch

from modelserver.cluster.runtime import RayCluster, import_ray
from modelserver.training.ensemble import DeepEnsemble, EnsembleConfig, FitReport

__all__ = ["fit_members", "member_seeds", "member_state", "stack_members", "train_member"]

Data = Mapping[str, tuple[np.ndarray, np.ndarray]]
MEMBER_AXIS = ("core.", "readouts.")  # state keys whose first axis is the member


def member_seeds(config: EnsembleConfig) -> list[int]:
    """One seed per member: ``config.seed + m``."""
    return [config.seed + m for m in range(config.members)]


def train_member(config: EnsembleConfig, data: Data, seed: int, device: str = "cpu",
                 init: Mapping[str, Any] | None = None, threads: int | None = None) -> dict[str, Any]:
    """Train one member (``config`` with members=1 and ``seed``) on ``{session: (images, responses)}``.

    ``init``: a one-member state to start from (a warm start). Returns ``{"state": export_state(),
    "report": FitReport fields}`` on the CPU: tensors and plain data only."""
    if threads:
        torch.set_num_threads(threads)
    cfg = dataclasses.replace(config, members=1, seed=seed)
    if init is not None:
        model = DeepEnsemble.from_state(init, device)
        model.config = cfg
        torch.manual_seed(seed)
    else:
        model = DeepEnsemble(cfg).to(device)
    report = model.fit(data)
    state = model.to("cpu").export_state()
    return {"state": state, "report": dataclasses.asdict(report)}


def member_state(blob: Mapping[str, Any], m: int) -> dict[str, Any]:
    """Member ``m`` of an ensemble state (:meth:`DeepEnsemble.export_state`) as a one-member state."""
    if blob["ridge"]:
        raise ValueError("ridge readouts are fitted on the whole ensemble; warm starts take factorized ones")
    cfg = dict(blob["config"], members=1)
    state = {k: (v[m:m + 1].clone() if k.startswith(MEMBER_AXIS) else v) for k, v in blob["state"].items()}
    return {**blob, "config": cfg, "state": state}


def stack_members(config: EnsembleConfig, results: Sequence[Mapping[str, Any]], seconds: float = 0.0
                  ) -> tuple[DeepEnsemble, FitReport]:
    """One ensemble of the members' states (in order) and a report over all of them."""
    if not results:
        raise ValueError("no members to stack")
    blobs = [r["state"] for r in results]
    first = blobs[0]
    state = {k: (torch.cat([b["state"][k] for b in blobs]) if k.startswith(MEMBER_AXIS) else v)
             for k, v in first["state"].items()}
    cfg = dataclasses.replace(config, members=len(blobs))
    blob = {**first, "config": cfg.to_dict(), "state": state}
    model = DeepEnsemble.from_state(blob)
    reports = [FitReport(**r["report"]) for r in results]
    stopped = sorted({r.stopped for r in reports})
    return model, FitReport(epochs=max(r.epochs for r in reports), seconds=seconds,
                            best_val_r=[v for r in reports for v in r.best_val_r],
                            history=[h for r in reports for h in r.history], stopped="+".join(stopped))


ProgressFn = Callable[[dict[str, float]], None]


def fit_members(config: EnsembleConfig, data: Data, cluster: RayCluster | None = None, *,
                device: str = "cpu", warm: DeepEnsemble | None = None, progress: ProgressFn | None = None,
                should_stop: Callable[[], bool] | None = None) -> tuple[DeepEnsemble, FitReport]:
    """Train ``config.members`` members (seeds :func:`member_seeds`) and stack them.

    With a ``cluster``, each member is a Ray task (a GPU share each where the cluster has GPUs);
    without, they train one after another here on ``device``. ``progress`` gets one call per
    finished member; ``should_stop`` is polled between them (Ray tasks are cancelled), and a
    cancelled fit returns the members finished so far with ``stopped = "cancelled"``."""
    seeds = member_seeds(config)
    inits: list[dict[str, Any] | None] = [None] * len(seeds)
    if warm is not None:
        blob = warm.export_state()
        inits = [member_state(blob, m) for m in range(len(seeds))]
    t0 = time.monotonic()
    results: list[dict[str, Any]] = []

    def done(r: dict[str, Any]) -> None:
        results.append(r)
        if progress is not None:
            rep = r["report"]
            last = rep["history"][-1] if rep["history"] else {}
            progress({"epoch": float(rep["epochs"]), "train_loss": float(last.get("train_loss", 0.0)),
                      "val_r": float(np.mean(rep["best_val_r"])), "members_done": float(len(results)),
                      "seconds": time.monotonic() - t0})

    if cluster is None:
        for seed, init in zip(seeds, inits, strict=True):
            if should_stop is not None and should_stop():
                break
            done(train_member(config, data, seed, device, init))
    else:
        with cluster.tasks_running():
            _fit_on_ray(cluster, config, data, seeds, inits, done, should_stop)
    cancelled = len(results) < len(seeds)
    if not results:
        return DeepEnsemble(config).to(device), FitReport(0, time.monotonic() - t0, [], stopped="cancelled")
    model, report = stack_members(config, results, time.monotonic() - t0)
    if cancelled:
        report.stopped = "cancelled"
    return model.to(device), report


def _fit_on_ray(cluster: RayCluster, config: EnsembleConfig, data: Data, seeds: list[int],
                inits: list[dict[str, Any] | None], done: Callable[[dict[str, Any]], None],
                should_stop: Callable[[], bool] | None) -> None:
    """Member tasks on the cluster; results handed to ``done`` in member order."""
    ray = import_ray()
    task = ray.remote(train_member).options(**cluster.task_options())
    data_ref = ray.put({k: (np.asarray(x), np.asarray(y)) for k, (x, y) in data.items()})  # once, for all
    threads = None if cluster.has_gpus else cluster.threads
    refs = [task.remote(config, data_ref, seed, cluster.device, init, threads)
            for seed, init in zip(seeds, inits, strict=True)]
    try:
        for ref in refs:  # in order, so the stacked ensemble does not depend on finishing times
            while True:
                ready, _ = ray.wait([ref], timeout=0.25)
                if ready:
                    done(ray.get(ref))
                    break
                if should_stop is not None and should_stop():
                    return
    finally:
        for ref in refs:
            ray.cancel(ref)
