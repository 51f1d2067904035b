"""CIFAR-10 and CIFAR-100 through torchvision, held in memory as normalised tensors."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from nasrun import UserError
from nasrun.data.base import DataModule, TensorSplit

# Per-channel statistics of the training sets, as used by the DARTS reference code.
_STATS = {
    "cifar10": ((0.49139968, 0.48215827, 0.44653124), (0.24703233, 0.24348505, 0.26158768)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
}


def data_root(root: str | None) -> Path:
    """Where the archives live: ``root``, else ``$NASRUN_DATA``, else ``~/.cache/nasrun``."""
    return Path(root or os.environ.get("NASRUN_DATA") or "~/.cache/nasrun").expanduser()


def _load(
    name: str, root: str | None, download: bool, limit: int | None = None
) -> tuple[TensorSplit, TensorSplit, int]:
    from torchvision import datasets

    cls = {"cifar10": datasets.CIFAR10, "cifar100": datasets.CIFAR100}[name]
    path = data_root(root)
    try:
        train = cls(str(path), train=True, download=download)
        test = cls(str(path), train=False, download=download)
    except (
        RuntimeError,
        OSError,
    ) as e:  # torchvision: "Dataset not found or corrupted"; URLError is an OSError
        reason = str(e).splitlines()[0] if str(e) else e.__class__.__name__
        raise UserError(
            f"{name} is not under data.root={path} and could not be downloaded ({reason}); "
            f"put the extracted archive there or run offline with data=digits"
        ) from None
    if limit is not None and limit <= 0:
        raise UserError(f"data.limit must be > 0 (or null for all images), got {limit}")
    mean = torch.tensor(_STATS[name][0]).view(1, 3, 1, 1)
    std = torch.tensor(_STATS[name][1]).view(1, 3, 1, 1)

    def split(ds) -> TensorSplit:  # type: ignore[no-untyped-def]
        images, labels = ds.data[:limit], ds.targets[:limit]  # [:None] keeps all
        x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float().div_(255.0)
        return TensorSplit((x - mean) / std, torch.tensor(labels, dtype=torch.int64))

    return split(train), split(test), len(train.classes)


def cifar10(
    root: str | None = None,  # None: $NASRUN_DATA, else ~/.cache/nasrun
    download: bool = True,  # try to download when absent
    val_portion: float = 0.0,  # DARTS retrains on all 50,000 images; e.g. 0.1 for a sweep's validation objective
    split_seed: int = 0,  # fixes the train/val split independently of the run's seed
    limit: int | None = None,  # keep the first N training and N test images (smoke runs); None: all
) -> DataModule:
    """CIFAR-10; ``val_portion`` of the 50,000 training images may be held out for validation.

    ``limit`` keeps only the first ``limit`` training and test images (smoke runs).
    """
    train, test, k = _load("cifar10", root, download, limit)
    return DataModule("cifar10", train, test, k, val_portion, split_seed, crop_padding=4, flip=True)


def cifar100(
    root: str | None = None,  # None: $NASRUN_DATA, else ~/.cache/nasrun
    download: bool = True,  # try to download when absent
    val_portion: float = 0.0,  # DARTS retrains on all 50,000 images; e.g. 0.1 for a sweep's validation objective
    split_seed: int = 0,  # fixes the train/val split independently of the run's seed
    limit: int | None = None,  # keep the first N training and N test images (smoke runs); None: all
) -> DataModule:
    """CIFAR-100, as ``cifar10``.

    ``limit`` keeps only the first ``limit`` training and test images (smoke runs).
    """
    train, test, k = _load("cifar100", root, download, limit)
    return DataModule("cifar100", train, test, k, val_portion, split_seed, crop_padding=4, flip=True)
