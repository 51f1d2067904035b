"""scikit-learn's bundled 8x8 handwritten digits (1,797 images): real data that works offline."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from nasrun import UserError
from nasrun.data.base import DataModule, TensorSplit


def digits(
    image_size: int = 16,  # resized from 8x8 so that two stride-2 reductions leave a 4x4 map
    val_portion: float = 0.2,  # of the non-test images: the validation split (the sweep objective)
    test_portion: float = 0.2,  # of all images: the fixed test split
    split_seed: int = 0,  # fixes both splits independently of the run's seed
    crop_padding: int = 1,  # random crop after 1-pixel padding (CIFAR uses 4 at 32x32)
) -> DataModule:
    """The digits data set, resized to ``image_size`` and normalised, with fixed splits.

    Args:
        image_size: side length after bilinear resizing of the 8x8 originals.
        val_portion: fraction of the non-test images held out for validation.
        test_portion: fraction of all images held out as the test set (fixed by ``split_seed``).
        split_seed: seeds the test and validation splits (not the run's seed: splits stay fixed).
        crop_padding: random-crop padding for training batches, in resized pixels.
    """
    from sklearn.datasets import load_digits

    if image_size < 8:
        raise UserError(f"data.image_size={image_size}: must be >= 8 (the originals are 8x8)")
    if not 0.0 < test_portion < 1.0:
        raise UserError(f"data.test_portion={test_portion}: must be in (0, 1)")
    bunch = load_digits()
    x = torch.tensor(bunch.images, dtype=torch.float32)[:, None] / 16.0  # [1797, 1, 8, 8] in [0, 1]
    if image_size != 8:
        x = F.interpolate(x, size=(image_size, image_size), mode="bilinear", align_corners=False)
    y = torch.tensor(bunch.target, dtype=torch.int64)
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(split_seed + 1))
    n_test = int(round(len(y) * test_portion))
    test_idx, train_idx = perm[:n_test], perm[n_test:]
    mean, std = x[train_idx].mean(), x[train_idx].std()
    x = (x - mean) / std
    return DataModule(
        "digits",
        train=TensorSplit(x[train_idx], y[train_idx]),
        test=TensorSplit(x[test_idx], y[test_idx]),
        num_classes=10,
        val_portion=val_portion,
        split_seed=split_seed,
        crop_padding=crop_padding,
        flip=False,  # a mirrored digit is another glyph
    )
