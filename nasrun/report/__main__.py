"""``python -m nasrun.report PATH``: see ``nasrun.report.cli``."""

from nasrun.report.cli import main

main()
