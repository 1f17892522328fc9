"""Counts: the acquisition stream turned into each trial's spike counts, and what reads them.

The acquisition pump feeds the binner; each trial it closes becomes a ``response`` document
(never a made-up zero: a trial without a complete window has no counts). ``wait_for_counts``
waits until a block's shown trials have counts, or fails the step with a clear error when the
source went silent; :meth:`CountsMixin.trial_data` gives the counts to analyses and the model.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

import numpy as np

from controller.acquisition.binning import ClosedTrial
from controller.engine.base import EngineBase, _natural_key
from controller.state import BlockState
from protocols.analysis import TrialData
from protocols.steps import CountsResult, WaitForCounts
from wire.documents import ResponseDoc
from wire.errors import AcquisitionError, ProtocolError

log = logging.getLogger(__name__)


class CountsMixin(EngineBase):
    """The acquisition pump, closed trials, ``wait_for_counts`` and :meth:`trial_data`."""

    async def _pump_acquisition(self) -> None:
        try:
            async for item in self.source:
                self._on_closed(self.binner.feed(item))
        except AcquisitionError as exc:
            self._acq_error = exc
            self._event("acquisition_failed", str(exc))
            self._counts_changed.set()

    def _on_closed(self, closed: list[ClosedTrial]) -> None:
        docs = []
        for c in closed:
            rec = self.trials.get(c.trial_id)
            if rec is None or rec.counts is not None:
                continue
            if not c.complete:
                log.warning("trial %s closed without a complete window; no counts recorded", c.trial_id)
                continue
            counts = np.asarray(c.counts)  # spike counts as int32; repeat-averaged (imported) ones stay float
            rec.counts = ResponseDoc(trial_id=c.trial_id, units=[str(u) for u in c.unit_ids],
                                     counts=counts if counts.dtype.kind == "f" else counts.astype(np.int32),
                                     window=c.window,
                                     onset_acq=c.onset_acq)
            docs.append(rec.counts)
        if docs:
            self.store.write_many(docs)
            self._counts_changed.set()

    async def _wait_for_counts(self, step: WaitForCounts) -> CountsResult:
        block = self.blocks.get(step.block_id)
        if block is None:
            raise ProtocolError(f"wait_for_counts: block {step.block_id!r} was not presented")
        shown = [r for r in block.trials if r.shown]
        deadline = time.monotonic() + step.timeout_s
        while True:
            self._check_abort()
            done = [r for r in shown if r.counts is not None]
            if len(done) == len(shown):
                break
            # a replay has closed every shown trial already: what has no counts was never counted
            if self._acq_error is not None or time.monotonic() >= deadline or self.recording is not None:
                why = f"acquisition failed: {self._acq_error}" if self._acq_error else \
                    "the recording has no counts for the rest" if self.recording is not None else \
                    f"no counts after {step.timeout_s:g} s"
                if len(done) < step.min_fraction * len(shown):
                    raise AcquisitionError(f"block {step.block_id}: {len(done)} of {len(shown)} trials have "
                                           f"counts ({why}); missing trials are not recorded")
                break
            self._counts_changed.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(min(0.5, max(0.0, deadline - time.monotonic()))):
                    await self._counts_changed.wait()
        if block.state.can(BlockState.DONE):
            block.state.to(BlockState.DONE)
        done = [r for r in shown if r.counts is not None]
        units = {u for r in done if r.counts for u in r.counts.units}
        total = sum(float(np.sum(r.counts.counts)) for r in done if r.counts)
        cells = sum(len(r.counts.units) for r in done if r.counts)
        return CountsResult(block_id=step.block_id, n_trials=len(done), n_neurons=len(units),
                            mean_count=total / cells if cells else 0.0)

    def trial_data(self, blocks: list[str] | None = None) -> tuple[TrialData, list[str]]:
        """Counts of every valid trial with counts (of ``blocks``): (TrialData, image id per trial). Trials
        the animal did not look at are never analysed."""
        recs = [r for r in self.trials.values()
                if r.counts is not None and r.valid and (blocks is None or r.block_id in blocks)]
        units = sorted({u for r in recs if r.counts for u in r.counts.units}, key=_natural_key)
        col = {u: j for j, u in enumerate(units)}
        counts = np.full((len(recs), len(units)), np.nan)
        for i, r in enumerate(recs):
            assert r.counts is not None
            counts[i, [col[u] for u in r.counts.units]] = r.counts.counts
        data = TrialData(counts=counts, conditions=[r.condition for r in recs], blocks=[r.block_id for r in recs])
        return data, [r.image_id for r in recs]
