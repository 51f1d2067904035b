"""Datasets and splits: CIFAR (torchvision), digits (scikit-learn, offline), synthetic."""

from __future__ import annotations

from nasrun.data.base import DataModule, TensorSplit

__all__ = ["DataModule", "TensorSplit"]
