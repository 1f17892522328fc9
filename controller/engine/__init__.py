"""The engine: executes a protocol's steps against the servers and records every document.

:class:`Engine` (``core``) runs one session; its jobs are split by module: ``blocks`` presents
blocks (image sets, the stimserver, trial events, a lost stimserver), ``counts`` turns the
acquisition stream into spike counts, ``modelsteps`` runs the modelserver's steps through the
:class:`ModelLink` seam, and ``base`` holds the configuration, records and shared state. See
``controller.engine.core`` for how faults and resume are handled.
"""

from controller.engine.base import (
    BlockRecord,
    EngineConfig,
    Recording,
    TrialRecord,
    _natural_key,
    _stable_seed,
)
from controller.engine.core import Engine
from controller.engine.modelsteps import Generated, ModelLink, NoModelServer

__all__ = ["BlockRecord", "Engine", "EngineConfig", "Generated", "ModelLink", "NoModelServer", "Recording",
           "TrialRecord", "_natural_key", "_stable_seed"]
