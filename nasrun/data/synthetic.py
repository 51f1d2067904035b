"""Random images with random labels: for shapes and speed only, never for accuracy claims."""

from __future__ import annotations

import torch

from nasrun import UserError
from nasrun.data.base import DataModule, TensorSplit


def synthetic(
    n_train: int = 512,  # training images
    n_test: int = 128,  # test images
    image_size: int = 32,  # CIFAR-sized
    in_channels: int = 3,  # RGB
    num_classes: int = 10,  # CIFAR-10-like
    val_portion: float = 0.2,  # validation split of the training images
    seed: int = 0,  # seeds the images and labels
) -> DataModule:
    """Gaussian images ``[N, in_channels, image_size, image_size]`` with uniform labels."""
    if n_train < 2 or n_test < 1:
        raise UserError(f"data.n_train={n_train} / data.n_test={n_test}: need n_train >= 2 and n_test >= 1")
    g = torch.Generator().manual_seed(seed)

    def make(n: int) -> TensorSplit:
        x = torch.randn(n, in_channels, image_size, image_size, generator=g)
        return TensorSplit(x, torch.randint(0, num_classes, (n,), generator=g))

    return DataModule(
        "synthetic",
        make(n_train),
        make(n_test),
        num_classes=num_classes,
        val_portion=val_portion,
        split_seed=seed,
    )
