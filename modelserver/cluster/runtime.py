"""The connection to a Ray cluster and how much of it one task or scorer asks for."""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from wire.errors import ModelError

if TYPE_CHECKING:
    from modelserver.cluster.scoring import ShardScorer

log = logging.getLogger(__name__)

__all__ = ["RayCluster", "import_ray"]

_CONNECTED: dict[tuple[str, float, float, int], RayCluster] = {}
_CONNECTED_LOCK = threading.Lock()


def import_ray() -> Any:
    """The ``ray`` module, or a :class:`ModelError` saying how to install it."""
    try:
        import ray
    except ImportError as exc:
        raise ModelError("Ray is not installed: pip install 'cortexloop[cluster]' (or run without --ray)") from exc
    return ray


@dataclass
class RayCluster:
    """A connected Ray cluster. ``gpus``: GPUs per member task or scorer where the cluster has GPUs
    (a fraction shares one GPU); ``cpus``: CPUs per task or scorer otherwise."""

    address: str
    gpus: float = 1.0
    cpus: float = 1.0
    scorers: int = 0  # scorer actors (0: one per GPU share, else one per CPU share)
    _scorer: ShardScorer | None = field(default=None, init=False, repr=False, compare=False)
    _resources: dict[str, float] | None = field(default=None, init=False, repr=False, compare=False)
    _lock: threading.RLock = field(default_factory=threading.RLock, init=False, repr=False, compare=False)

    @classmethod
    def connect(cls, address: str, *, gpus: float = 1.0, cpus: float = 1.0, scorers: int = 0) -> RayCluster:
        """Join the cluster at ``address`` (``auto``: the one ``ray start`` runs on this machine;
        ``local``: start a private one). A process already connected (``ray.init`` done) stays so."""
        ray = import_ray()
        if not 0 < gpus <= 8 or not 0 < cpus <= 256:
            raise ModelError(f"ray: gpus must be in (0, 8] and cpus in (0, 256], got {gpus}, {cpus}")
        if not ray.is_initialized():
            # Ray's servers listen on every interface whatever address they are given (checked with Ray
            # 2.60): a cluster started or joined here requires Ray's token authentication, so nobody on
            # the lab network can submit work to it (docs/security.md). A lab's own setting is kept.
            os.environ.setdefault("RAY_AUTH_MODE", "token")
            try:
                ray.init(address=None if address == "local" else address, include_dashboard=False,
                         log_to_driver=False)
            except (ConnectionError, RuntimeError, ValueError) as exc:
                raise ModelError(f"cannot join the Ray cluster at {address!r}: {exc}") from exc
        key = (address, gpus, cpus, scorers)
        with _CONNECTED_LOCK:  # one per process and settings: its scorer actors are shared
            if key not in _CONNECTED:
                _CONNECTED[key] = cls(address, gpus, cpus, scorers)
                log.info("Ray cluster %s: %s", address, _CONNECTED[key].resources())
            return _CONNECTED[key]

    def close(self) -> None:
        """Stop this process's scorer actors (after the streams using them); they start again on use."""
        with self._lock:
            scorer = self._scorer
        if scorer is not None:
            scorer.close()

    def scorer(self) -> ShardScorer:
        """The cluster's pool of scorer actors (one for all requests)."""
        from modelserver.cluster.scoring import ShardScorer

        with self._lock:
            if self._scorer is None:
                self._scorer = ShardScorer(self)
            return self._scorer

    @contextlib.contextmanager
    def tasks_running(self) -> Iterator[None]:
        """Around member or fleet tasks: the scorer actors stop (they hold the CPUs or GPU shares the
        tasks need) and pool scoring runs in process until the tasks are done."""
        scorer = self.scorer()
        scorer.pause()
        try:
            yield
        finally:
            scorer.resume()

    def resources(self) -> dict[str, float]:
        """The cluster's CPUs and GPUs (read once: workers joining later count after a reconnect)."""
        with self._lock:
            if self._resources is None:
                ray = import_ray()
                self._resources = {k: float(v) for k, v in ray.cluster_resources().items() if k in ("CPU", "GPU")}
            return dict(self._resources)

    @property
    def has_gpus(self) -> bool:
        return self.resources().get("GPU", 0.0) > 0

    def task_options(self) -> dict[str, Any]:
        """``.options(...)`` for one member task, fleet group or scorer: a GPU share, else CPUs."""
        if self.has_gpus:
            return {"num_gpus": self.gpus, "num_cpus": 1}
        return {"num_cpus": self.cpus}

    @property
    def device(self) -> str:
        """The torch device inside a task started with :meth:`task_options`."""
        return "cuda" if self.has_gpus else "cpu"

    @property
    def threads(self) -> int:
        """torch threads inside a CPU task (its CPU share, at least one)."""
        return max(1, int(self.cpus))

    def scorer_count(self) -> int:
        if self.scorers:
            return self.scorers
        res = self.resources()
        if res.get("GPU", 0.0) > 0:
            return max(1, int(res["GPU"] / self.gpus))
        return max(1, int(res.get("CPU", 1.0) / self.cpus))

