"""Errors of the protocols package: a validation error that lists every problem it found."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from wire.errors import ProtocolError


@dataclass(frozen=True)
class Problem:
    """One problem in a protocol: where (key path, and line/column in a YAML file) and what.

    ``override`` is the command-line override (``KEY=VALUE`` of ``--set``) the problem comes
    from, if any; such a problem has no line and is shown as ``--set KEY=VALUE: path: message``.
    """

    path: str
    message: str
    line: int | None = None
    column: int | None = None
    source: str | None = None
    override: str | None = None

    def __str__(self) -> str:
        where = f"--set {self.override}" if self.override is not None else self.source or "<protocol>"
        if self.line is not None:
            where += f":{self.line}"
            if self.column is not None:
                where += f":{self.column}"
        field = f" {self.path}:" if self.path else ""
        return f"{where}:{field} {self.message}"


class ProtocolValidationError(ProtocolError):
    """A protocol (file, step list or plan) with one or more problems; ``problems`` lists all."""

    code = "protocol_invalid"

    def __init__(self, problems: Sequence[Problem], source: str | None = None) -> None:
        self.problems: list[Problem] = list(problems)
        self.source = source
        head = f"{len(self.problems)} problem(s) in {source or 'protocol'}"
        super().__init__("\n  ".join([head, *(str(p) for p in self.problems)]))
