"""Distillation fleets: the students split into groups, each group one batched
:func:`~modelserver.compact.distill.distill` (its shared trunk computed once per batch), the groups run as
Ray tasks on a cluster or one after another in process (the same function, so the same students).

The unlabeled pool (uint8) is put in the object store once for all groups; a group gets its rows
of the targets and returns its students' state_dict and report (tensors, arrays, plain data).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from modelserver.cluster.runtime import RayCluster, import_ray
from modelserver.compact.distill import DistillConfig, DistillReport, distill, predict_students
from modelserver.compact.distill_stack import StackedCompact
from modelserver.compact.model import CompactModel

__all__ = ["Fleet", "distill_fleet", "distill_group", "student_groups"]


def student_groups(n: int, group_size: int) -> list[np.ndarray]:
    """Neuron indices 0..n-1 in consecutive groups of at most ``group_size``."""
    if n < 1 or group_size < 1:
        raise ValueError(f"need n >= 1 and group_size >= 1, got {n}, {group_size}")
    return [np.arange(s, min(s + group_size, n)) for s in range(0, n, group_size)]


def distill_group(pool: np.ndarray, targets: np.ndarray, config: DistillConfig, device: str = "cpu",
                  threads: int | None = None) -> dict[str, Any]:
    """One group's students: ``{"state", "n", "filters", "shared", "report"}`` (CPU tensors, arrays)."""
    if threads:
        torch.set_num_threads(threads)
    model, rep = distill(pool, targets, config, device=device)
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    return {"state": state, "n": model.n, "filters": list(model.filters), "shared": model.shared,
            "report": dataclasses.asdict(rep)}


def _students(r: dict[str, Any]) -> StackedCompact:
    model = StackedCompact(int(r["n"]), tuple(r["filters"]), shared=int(r["shared"]))
    model.load_state_dict(r["state"])
    return model.eval()


@dataclass
class Fleet:
    """Groups of students: ``groups[g]`` holds the neuron indices of ``students[g]``."""

    groups: list[np.ndarray]
    students: list[StackedCompact]
    reports: list[DistillReport]

    @property
    def n(self) -> int:
        return sum(len(g) for g in self.groups)

    def val_r(self) -> np.ndarray:
        """(n,) validation r of every student, in neuron order."""
        out = np.zeros(self.n)
        for g, rep in zip(self.groups, self.reports, strict=True):
            out[g] = rep.val_r
        return out

    def predict(self, images: np.ndarray, device: str = "cpu") -> np.ndarray:
        """(neurons, K) students' responses to uint8 images, in neuron order."""
        out = np.zeros((self.n, len(images)))
        for g, model in zip(self.groups, self.students, strict=True):
            out[g] = predict_students(model.to(device), images, device)
        return out

    def export(self, neuron: int) -> CompactModel:
        for g, model in zip(self.groups, self.students, strict=True):
            hit = np.flatnonzero(g == neuron)
            if hit.size:
                return model.export(int(hit[0]))
        raise IndexError(f"no student for neuron {neuron}")


def distill_fleet(pool: np.ndarray, targets: np.ndarray, config: DistillConfig | None = None,
                  group_size: int = 32, cluster: RayCluster | None = None, device: str = "cpu") -> Fleet:
    """Students for every row of ``targets`` (neurons, K), ``group_size`` per batched group; group ``g``
    trains with seed ``config.seed + g``. On a ``cluster`` each group is a Ray task (a GPU share
    where there are GPUs), else the groups train here on ``device``."""
    c = config or DistillConfig()
    targets = np.asarray(targets, np.float64)
    groups = student_groups(targets.shape[0], group_size)
    cfgs = [dataclasses.replace(c, seed=c.seed + g) for g in range(len(groups))]
    if cluster is None:
        results = [distill_group(pool, targets[idx], cfg, device) for idx, cfg in zip(groups, cfgs, strict=True)]
    else:
        with cluster.tasks_running():
            results = _on_ray(cluster, pool, targets, groups, cfgs)
    return Fleet(groups, [_students(r) for r in results],
                 [DistillReport(**{**r["report"], "val_r": np.asarray(r["report"]["val_r"])}) for r in results])


def _on_ray(cluster: RayCluster, pool: np.ndarray, targets: np.ndarray, groups: Sequence[np.ndarray],
            cfgs: Sequence[DistillConfig]) -> list[dict[str, Any]]:
    ray = import_ray()
    task = ray.remote(distill_group).options(**cluster.task_options())
    pool_ref = ray.put(np.ascontiguousarray(pool))  # once, for every group
    threads = None if cluster.has_gpus else cluster.threads
    refs = [task.remote(pool_ref, targets[idx], cfg, cluster.device, threads)
            for idx, cfg in zip(groups, cfgs, strict=True)]
    try:
        out: list[dict[str, Any]] = ray.get(refs)
    finally:
        for ref in refs:
            ray.cancel(ref)
    return out
