"""Acquisition: sources of spikes and sync edges behind one interface, and spike-count binning.

Sources: :mod:`.lsl` (Lab Streaming Layer; the virtual rig speaks it too), :mod:`.openephys`
(Open Ephys Event Broadcaster), :mod:`.replay` (recorded counts). See ``docs/acquisition.md``.
"""

from controller.acquisition.base import (
    AcquisitionSource,
    Heartbeat,
    Item,
    SourceSilent,
    SpikeBatch,
    SpikeEvent,
    SyncEvent,
)
from controller.acquisition.binning import Binner, BinningConfig, BinningStats, ClosedTrial
from controller.acquisition.clock import ClockMap, ClockSync

__all__ = ["AcquisitionSource", "Binner", "BinningConfig", "BinningStats", "ClockMap", "ClockSync", "ClosedTrial",
           "Heartbeat", "Item", "SourceSilent", "SpikeBatch", "SpikeEvent", "SyncEvent"]
