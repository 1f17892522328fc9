"""Experiment protocols as plain data and generators of typed steps (no I/O).

- :mod:`protocols.steps`: the steps a protocol yields and the results the engine sends back.
- :mod:`protocols.plan`: the driver loop (``drive``/``adrive``) and ``call`` for sub-plans.
- :mod:`protocols.library`: sysid, maximize, adversarial, smooth, dots, script.
- :mod:`protocols.loader`: YAML/TOML protocol files, validated with every problem located.
- :mod:`protocols.analysis`: %dr, permutation tests, tuning (numpy only).
- :mod:`protocols.simulate`: run any protocol without servers (``cortexloop simulate FILE``).
"""

from protocols.errors import Problem, ProtocolValidationError
from protocols.library import LIBRARY, AnyProtocol, ProtocolBase
from protocols.loader import load_protocol, parse_protocol
from protocols.plan import adrive, call, check_result, drive

__all__ = [
    "LIBRARY", "AnyProtocol", "Problem", "ProtocolBase", "ProtocolValidationError", "adrive", "call",
    "check_result", "drive", "load_protocol", "parse_protocol",
]
