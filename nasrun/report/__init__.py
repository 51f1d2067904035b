"""Reporting: rich console output, result files, plots, cell diagrams and the ``nasrun-report`` command."""
