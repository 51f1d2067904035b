"""Reporting: rich console output, result files and plots."""
