"""CIFAR loading through torchvision, on a tiny CIFAR-format folder the test writes itself."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from nasrun import UserError
from nasrun.data.base import Augment, augment_batch
from nasrun.data.cifar import cifar10
from tests.data.cifar_files import trust_local_files, write_cifar10


def test_cifar10_loads_through_torchvision(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    raw = write_cifar10(tmp_path)
    trust_local_files(monkeypatch)
    data = cifar10(root=str(tmp_path), download=False, val_portion=0.2)
    assert data.num_classes == 10 and data.in_channels == 3 and data.image_size == 32
    assert len(data.train) + len(data.val) == 30 and len(data.test) == 6
    # The first training image, un-normalised, is the first pickled row in CHW order.
    from nasrun.data.cifar import _STATS

    mean = torch.tensor(_STATS["cifar10"][0]).view(3, 1, 1)
    std = torch.tensor(_STATS["cifar10"][1]).view(3, 1, 1)
    full = cifar10(root=str(tmp_path), download=False)
    img = (full.train.x[0] * std + mean) * 255.0
    assert torch.allclose(img, torch.tensor(raw[0], dtype=torch.float32).view(3, 32, 32), atol=1e-3)


def test_missing_cifar_names_the_root_and_the_offline_alternative(tmp_path: Path) -> None:
    with pytest.raises(UserError, match=r"data.root=.*data=digits"):
        cifar10(root=str(tmp_path / "nowhere"), download=False)


def test_data_root_is_the_argument_else_nasrun_data_else_the_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from nasrun.data.cifar import data_root

    monkeypatch.setenv("NASRUN_DATA", str(tmp_path / "env"))
    assert data_root(str(tmp_path / "given")) == tmp_path / "given"
    assert data_root(None) == tmp_path / "env"
    monkeypatch.delenv("NASRUN_DATA")
    assert data_root(None) == Path("~/.cache/nasrun").expanduser()
    write_cifar10(tmp_path / "env")
    trust_local_files(monkeypatch)
    monkeypatch.setenv("NASRUN_DATA", str(tmp_path / "env"))
    assert len(cifar10(download=False).test) == 6  # found through the environment


def test_batch_augmentation_shapes_and_cutout() -> None:
    x = torch.ones(8, 3, 32, 32)
    out = augment_batch(x, Augment(crop_padding=4, flip=True, cutout=16), torch.Generator().manual_seed(0))
    assert out.shape == x.shape
    zeros = (out == 0).all(dim=1).flatten(1).sum(1)  # zeroed pixels per image (crop padding + cutout)
    assert (zeros > 0).all() and (zeros <= 16 * 16 + 2 * 4 * 32 + 2 * 4 * 32).all()
    cut = augment_batch(torch.ones(64, 1, 32, 32), Augment(cutout=16), torch.Generator().manual_seed(1))
    per_image = (cut == 0).flatten(1).sum(1)
    assert per_image.max() == 256  # a square fully inside the image
    assert per_image.min() < 256  # centres near the border are clipped
