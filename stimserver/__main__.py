"""``python -m stimserver --help``."""

from stimserver.cli import main

main()
