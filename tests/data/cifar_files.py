"""Tiny CIFAR-10/100 folders in torchvision's on-disk pickle format, written by the tests."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
from torchvision.datasets import cifar as cifar_module


def write_cifar10(root: Path, per_batch: int = 6, seed: int = 0, learnable: bool = False) -> np.ndarray:
    """A ``cifar-10-batches-py`` folder (5 training batches + test); returns the first batch's rows.

    With ``learnable``, an image's colour planes carry its label (each class brightens its own
    mix of the three planes), so that training learns something and its settings matter.
    """
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    tint = rng.integers(0, 2, size=(10, 3)) * 96  # per class: which planes are brighter
    first = None
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        labels = [int(v) for v in rng.integers(0, 10, size=per_batch)]
        if learnable:
            noise = rng.integers(0, 160, size=(per_batch, 3, 1024))
            data = (noise + tint[labels][:, :, None]).reshape(per_batch, 3072).astype(np.uint8)
        else:
            data = rng.integers(0, 256, size=(per_batch, 3072), dtype=np.uint8)  # rows: R plane, G, B
        first = data if first is None else first
        with open(folder / name, "wb") as f:
            pickle.dump({"data": data, "labels": labels}, f)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"label_names": [f"class{i}" for i in range(10)]}, f)
    assert first is not None
    return first


def write_cifar100(root: Path, n_train: int = 30, n_test: int = 6, seed: int = 0) -> None:
    """A ``cifar-100-python`` folder (train, test, meta) with fine labels."""
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    for name, n in (("train", n_train), ("test", n_test)):
        data = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)
        labels = [int(v) for v in rng.integers(0, 100, size=n)]
        with open(folder / name, "wb") as f:
            pickle.dump({"data": data, "fine_labels": labels}, f)
    with open(folder / "meta", "wb") as f:
        pickle.dump({"fine_label_names": [f"class{i}" for i in range(100)]}, f)


def trust_local_files(monkeypatch: pytest.MonkeyPatch) -> None:
    """Our files cannot match the real archives' MD5 sums; everything else torchvision does is real."""
    monkeypatch.setattr(cifar_module, "check_integrity", lambda path, md5=None: Path(path).is_file())
