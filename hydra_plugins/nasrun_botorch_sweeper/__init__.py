"""Hydra sweeper plugin ``hydra/sweeper=botorch``: resumable Bayesian optimisation on BoTorch.

Hydra imports every public module of ``hydra_plugins`` at discovery; only ``config.py`` and the thin
``botorch_sweeper.py`` are public, and neither imports torch. The work happens in ``_core.py``.
"""
