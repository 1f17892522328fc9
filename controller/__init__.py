"""The controller: protocol engine, session store, acquisition, binning, MQTT bus and the CLI."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("cortexloop")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0.0.0+src"
