"""Pool scoring on a Ray actor pool: stateful scorers that hold a model's weights once.

A :class:`ShardScorer` keeps a few long-lived scorer actors (one per GPU share, else one per CPU
share). A model reaches them as a :class:`ModelSpec` (an ensemble's ``export_state``: tensors and
plain data) put in the object store once; each actor rebuilds it on first use and keeps it.
Shards of the pool (uint8 arrays) are sent as they are read, at most ``inflight`` at a time, so
the object store never holds the whole pool; outputs come back in shard order.

:class:`ClusterScored` wraps a generator's model: calling it runs here as before (synthesis and
adversarial steps need gradients in process), and its ``score_stream`` is what
:func:`modelserver.generate.pool.score_rows` uses for the pool.
"""

from __future__ import annotations

import collections
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from modelserver.cluster.runtime import RayCluster, import_ray

__all__ = ["ClusterScored", "ModelSpec", "Scorer", "ShardScorer", "build_model"]

Shard = tuple[int, np.ndarray]


@dataclass(frozen=True)
class ModelSpec:
    """How a scorer rebuilds a model: an ensemble state, the session, members or their mean."""

    state: dict[str, Any]
    session: str
    members: bool


def build_model(spec: ModelSpec, device: str) -> nn.Module:
    """The :class:`~modelserver.generate.context.EnsembleView` the spec describes, on ``device``."""
    from modelserver.generate.context import EnsembleView
    from modelserver.training.ensemble import DeepEnsemble

    ens = DeepEnsemble.from_state(spec.state, device)
    return EnsembleView(ens, spec.session, members=spec.members).eval()


class Scorer:
    """A scorer actor's body: models by key (the latest few), scoring uint8 shards with no grad."""

    def __init__(self, device: str = "cpu", threads: int | None = None, keep: int = 2) -> None:
        if threads:
            torch.set_num_threads(threads)
        self.device, self.keep = device, keep
        self.models: collections.OrderedDict[str, nn.Module] = collections.OrderedDict()

    def score(self, key: str, spec_ref: list[Any], images: np.ndarray, dtype: str = "float32") -> np.ndarray:
        """Model output for ``images`` (uint8 (n, S, S, 3)); ``spec_ref``: [ObjectRef of the ModelSpec],
        fetched only when this actor does not hold ``key`` yet."""
        from modelserver.compact.model import preprocess

        model = self.models.get(key)
        if model is None:
            ray = import_ray()
            model = build_model(ray.get(spec_ref[0]), self.device)
            self.models[key] = model
            while len(self.models) > self.keep:
                self.models.popitem(last=False)
        self.models.move_to_end(key)
        with torch.no_grad():
            out = model(preprocess(images, dtype=getattr(torch, dtype), device=self.device))
        return out.float().cpu().numpy()


class ShardScorer:
    """The driver's side: a pool of scorer actors, started at the first request and reused by the next
    ones; paused (stopped) while member or fleet tasks run (:meth:`RayCluster.tasks_running`)."""

    def __init__(self, cluster: RayCluster, inflight_per_actor: int = 2) -> None:
        self.cluster = cluster
        self.inflight = max(1, inflight_per_actor) * cluster.scorer_count()
        self.actors: list[Any] = []
        self._specs: dict[str, Any] = {}
        self._lock = threading.Lock()
        self._idle = threading.Condition()
        self._active = 0
        self._paused = 0

    def _start(self) -> list[Any] | None:
        """The actors (started at the first stream after a pause) with one stream counted in, or
        None while tasks hold the cluster (:meth:`pause`)."""
        with self._idle:
            if self._paused:
                return None
            if not self.actors:
                ray = import_ray()
                actor = ray.remote(Scorer).options(**self.cluster.task_options())
                threads = None if self.cluster.has_gpus else self.cluster.threads
                self.actors = [actor.remote(self.cluster.device, threads) for _ in range(self.cluster.scorer_count())]
            self._active += 1
            return list(self.actors)

    def _done(self) -> None:
        with self._idle:
            self._active -= 1
            self._idle.notify_all()

    def pause(self) -> None:
        """Stop the actors once no stream uses them (alive, they hold CPUs or GPU shares that member and
        fleet tasks need); until :meth:`resume`, streams score in process."""
        with self._idle:
            self._paused += 1
            self._idle.wait_for(lambda: self._active == 0)
            self._kill()

    def resume(self) -> None:
        with self._idle:
            self._paused -= 1

    def close(self) -> None:
        """Stop the actors once no stream uses them; the next stream starts new ones."""
        with self._idle:
            self._idle.wait_for(lambda: self._active == 0)
            self._kill()

    def _kill(self) -> None:
        if self.actors:
            ray = import_ray()
            for a in self.actors:
                ray.kill(a)
            self.actors = []

    def put(self, key: str, spec: Callable[[], ModelSpec]) -> Any:
        """The object-store copy of the model ``spec()``, put once per key (the latest few are remembered)."""
        with self._lock:
            if key in self._specs:
                return self._specs[key]
        ref = import_ray().put(spec())
        with self._lock:
            self._specs[key] = ref
            while len(self._specs) > 4:
                self._specs.pop(next(iter(self._specs)))
        return ref

    def stream(self, key: str, spec_ref: Any, shards: Iterable[Shard], dtype: torch.dtype = torch.float32,
               fallback: Callable[[Iterable[Shard]], Iterator[Shard]] | None = None) -> Iterator[Shard]:
        """(start, output) per shard of ``shards``, in order, at most ``inflight`` shards out at once;
        ``spec_ref``: what :meth:`put` returned for ``key``. While paused: ``fallback(shards)``."""
        from ray.util import ActorPool

        actors = self._start()
        if actors is None:
            if fallback is None:
                raise RuntimeError("the scorers are paused while tasks run")
            yield from fallback(shards)
            return
        ref = [spec_ref]
        name = str(dtype).removeprefix("torch.")
        pool = ActorPool(actors)
        starts: collections.deque[int] = collections.deque()
        it = iter(shards)

        def submit() -> bool:
            nxt = next(it, None)
            if nxt is None:
                return False
            starts.append(int(nxt[0]))
            pool.submit(lambda a, images: a.score.remote(key, ref, images, name), np.ascontiguousarray(nxt[1]))
            return True

        try:
            for _ in range(self.inflight):
                if not submit():
                    break
            while pool.has_next():
                out = pool.get_next()
                yield starts.popleft(), out
                submit()
        finally:
            self._done()


class ClusterScored(nn.Module):
    """A generator's model that scores pools on the cluster and runs everything else here."""

    def __init__(self, inner: nn.Module, scorer: ShardScorer, key: str, spec: Callable[[], ModelSpec]) -> None:
        super().__init__()
        self.inner = inner
        self.n_neurons: int = inner.n_neurons  # type: ignore[assignment]
        self.scorer = scorer
        self.key = key
        self.spec_ref = scorer.put(key, spec)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.inner(x)
        return out

    def score_stream(self, shards: Iterable[Shard], dtype: torch.dtype = torch.float32
                     ) -> Iterator[tuple[int, torch.Tensor]]:
        """(start, output) per shard, from the scorer actors (here while member or fleet tasks run)."""
        def here(rows: Iterable[Shard]) -> Iterator[Shard]:
            from modelserver.compact.model import preprocess

            with torch.no_grad():
                for start, batch in rows:
                    dev = next(iter(self.inner.parameters()), torch.empty(0)).device
                    yield start, self.inner(preprocess(batch, dtype=dtype, device=dev)).float().cpu().numpy()

        for start, out in self.scorer.stream(self.key, self.spec_ref, shards, dtype, here):
            yield start, torch.from_numpy(np.array(out))  # a writable copy of the small output
