"""``python -m nasrun``."""

from nasrun.cli import main

main()
