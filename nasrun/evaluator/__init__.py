"""Evaluators: give a genotype a score (real proxy training, or a tabular benchmark lookup)."""

from __future__ import annotations

from nasrun.evaluator.base import Evaluation, Evaluator

__all__ = ["Evaluation", "Evaluator"]
