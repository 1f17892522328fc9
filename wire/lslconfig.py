"""liblsl's own configuration for every cortexloop process: quiet unless asked, local where it can be.

liblsl prints INFO lines (its version, "Loaded default config") on stderr the first time a process
uses it, which filled the console of every run with a line per child process. liblsl reads its settings
from the file named by ``LSLAPICFG``; :func:`configure` writes one with the log level set to fatal errors only
(warnings with ``verbose``; fatal errors only otherwise) and points ``LSLAPICFG`` at it, before liblsl is first used. Child processes
inherit it. A lab's own ``LSLAPICFG`` (or ``lsl_api.cfg`` in the working folder) is never overridden.

``scope="machine"`` (the embedded virtual rig) also keeps discovery on this machine: liblsl answers
stream queries only on 127.0.0.1 and not over IPv6, so nobody on the lab network can find the streams,
while every process of the session still resolves them. What liblsl (1.16-1.18) cannot do is bind its
data ports to loopback: an outlet's TCP and UDP data ports still listen on every interface (see
docs/security.md).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Literal

#: loguru verbosity of liblsl: 0 info, -1 warnings, -2 errors, -3 fatal only (quiet: liblsl reports a
#: stream that ended, e.g. the rig at the end of a session, as an error; the session sees it itself)
QUIET, WARNINGS = -3, -1
Scope = Literal["site", "machine"]


def _folder() -> Path:
    try:
        folder = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "cortexloop"
        folder.mkdir(parents=True, exist_ok=True)
        return folder
    except OSError:  # no writable home: a private folder of this process tree
        return Path(tempfile.mkdtemp(prefix="cortexloop-lsl-"))


def _ours(path: str) -> bool:
    """Whether ``LSLAPICFG`` names a file cortexloop wrote (a parent's), not a lab's own."""
    return Path(path).name.startswith("cortexloop-lsl_api") and "cortexloop" in Path(path).parent.name


def configure(verbose: bool = False, scope: Scope = "site") -> Path | None:
    """Point ``LSLAPICFG`` at a cortexloop config; None where the lab set its own (kept as it is)."""
    inherited = os.environ.get("LSLAPICFG")
    if (inherited and not _ours(inherited)) or Path("lsl_api.cfg").is_file():
        return None
    level = WARNINGS if verbose else QUIET
    lines = ["; written by cortexloop (wire/lslconfig.py)", "[log]", f"level = {level}"]
    if scope == "machine":
        lines += ["[ports]", "IPv6 = disable", "[multicast]", "ResolveScope = machine", "ListenAddress = 127.0.0.1"]
    text = "\n".join(lines) + "\n"
    path = _folder() / f"cortexloop-lsl_api{level}-{scope}.cfg"
    if not path.is_file() or path.read_text() != text:
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(text)
        tmp.replace(path)  # atomic: processes starting together never read half a file
    os.environ["LSLAPICFG"] = str(path)
    return path
