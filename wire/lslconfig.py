"""liblsl's own configuration for every cortexloop process: quiet unless asked.

liblsl prints INFO lines (its version, "Loaded default config") on stderr the first time a process
uses it, which filled the console of every run with a line per child process. liblsl reads its settings
from the file named by ``LSLAPICFG``; :func:`configure` writes one with the log level set to errors
(warnings with ``verbose``) and points ``LSLAPICFG`` at it, before liblsl is first used. Child processes
inherit it. A lab's own ``LSLAPICFG`` (or ``lsl_api.cfg`` in the working folder) is never overridden.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

#: loguru verbosity of liblsl: 0 info, -1 warnings, -2 errors
QUIET, WARNINGS = -2, -1


def configure(verbose: bool = False) -> Path | None:
    """Point ``LSLAPICFG`` at a cortexloop config (quiet liblsl); None where the lab set its own."""
    if os.environ.get("LSLAPICFG") or Path("lsl_api.cfg").is_file():
        return None
    level = WARNINGS if verbose else QUIET
    text = f"; written by cortexloop (wire/lslconfig.py)\n[log]\nlevel = {level}\n"
    try:
        folder = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "cortexloop"
        folder.mkdir(parents=True, exist_ok=True)
    except OSError:  # no writable home: a private folder of this process tree
        folder = Path(tempfile.mkdtemp(prefix="cortexloop-lsl-"))
    path = folder / f"lsl_api{level}.cfg"
    if not path.is_file() or path.read_text() != text:
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(text)
        tmp.replace(path)  # atomic: processes starting together never read half a file
    os.environ["LSLAPICFG"] = str(path)
    return path
