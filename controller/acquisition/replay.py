"""Replay of recorded counts: trials answered from stored responses instead of a live rig.

:class:`CountsReplay` is the interface (what the engine needs to run a session offline: a
closed-trial record for each trial event); :class:`InMemoryReplay` serves it from arrays
held in memory, ``responses[image_id]`` of shape (repeats, units) (NaN rows, as in unused
repeat slots of a raw-response file, are skipped). Each new trial of an image gets that
image's next recorded repeat, cycling when the repeats run out.
"""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator, Mapping, Sequence
from typing import Protocol, runtime_checkable

import numpy as np

from controller.acquisition.base import Unit
from controller.acquisition.binning import ClosedTrial
from wire.errors import InvalidRequest, NotFound
from wire.stim import TrialEvent

__all__ = ["CountsReplay", "InMemoryReplay"]


@runtime_checkable
class CountsReplay(Protocol):
    """A source of recorded counts, one closed trial per trial event."""

    @property
    def unit_ids(self) -> tuple[Unit, ...]: ...

    def close_trial(self, ev: TrialEvent) -> ClosedTrial: ...

    def trials(self, events: AsyncIterable[TrialEvent]) -> AsyncIterator[ClosedTrial]: ...


class InMemoryReplay:
    def __init__(self, responses: Mapping[str, np.ndarray], unit_ids: Sequence[Unit],
                 window: tuple[float, float] = (0.05, 0.15)) -> None:
        self._units = tuple(unit_ids)
        self._window = window
        self._data: dict[str, np.ndarray] = {}
        for image, arr in responses.items():
            a = np.asarray(arr, dtype=np.float64)
            if a.ndim == 1:
                a = a[None, :]
            if a.ndim != 2 or a.shape[1] != len(self._units):
                raise InvalidRequest(f"responses for {image} must be (repeats, {len(self._units)}), got {a.shape}")
            a = a[~np.isnan(a).any(axis=1)]
            if a.shape[0] == 0:
                raise InvalidRequest(f"responses for {image} hold no complete repeat")
            self._data[image] = a
        self._next: dict[str, int] = {}

    @property
    def unit_ids(self) -> tuple[Unit, ...]:
        return self._units

    def close_trial(self, ev: TrialEvent) -> ClosedTrial:
        reps = self._data.get(ev.image_id)
        if reps is None:
            raise NotFound(f"no recorded responses for image {ev.image_id}")
        k = self._next.get(ev.image_id, 0)
        self._next[ev.image_id] = k + 1
        row = reps[k % reps.shape[0]]
        return ClosedTrial(trial_id=ev.trial_id, unit_ids=self._units, counts=np.rint(row).astype(np.int32),
                           window=self._window, onset_acq=ev.onset, onset_stim=ev.onset, complete=True,
                           block_id=ev.block_id, image_id=ev.image_id, index=ev.index)

    async def trials(self, events: AsyncIterable[TrialEvent]) -> AsyncIterator[ClosedTrial]:
        async for ev in events:
            yield self.close_trial(ev)
