"""In-memory image datasets, their splits, and a batch iterator that augments on the device.

Every data set here fits in memory (CIFAR-10 as float32 is 600 MB), so batches are sliced from
tensors instead of going through a per-sample ``DataLoader``: on a GPU the whole set can live on
the device, and augmentation (random crop, flip, cutout) runs batched there too.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch
from rich.markup import escape

from nasrun import UserError
from nasrun.console import get_console


@dataclass
class TensorSplit:
    """Images ``x`` ``[N, C, H, W]`` (float32, normalised) and labels ``y`` ``[N]`` (int64)."""

    x: torch.Tensor
    y: torch.Tensor

    def __len__(self) -> int:
        return int(self.y.shape[0])

    def subset(self, idx: torch.Tensor) -> TensorSplit:
        return TensorSplit(self.x[idx], self.y[idx])


@dataclass
class Augment:
    """Batch augmentation. ``crop_padding``: random crop after zero padding (0 = off);
    ``flip``: random horizontal flip; ``cutout``: side of the zeroed square (0 = off)."""

    crop_padding: int = 0
    flip: bool = False
    cutout: int = 0

    @property
    def active(self) -> bool:
        return self.crop_padding > 0 or self.flip or self.cutout > 0


class DataModule:
    """A classification data set split into train / val / test.

    Args:
        name: data set name, for reports.
        train: the training images; ``val_portion`` of them are held out as ``val``.
        test: the test images (reported, never used to choose).
        num_classes: number of classes.
        val_portion: fraction of ``train`` held out for validation (0 = no validation split).
        split_seed: seeds the train/val split, so it is the same whatever the run's seed.
        crop_padding: padding of the random-crop augmentation for training batches.
        flip: random horizontal flips for training batches (off for digits: a flipped 2 is no 2).
    """

    def __init__(
        self,
        name: str,
        train: TensorSplit,
        test: TensorSplit,
        num_classes: int,
        val_portion: float = 0.0,
        split_seed: int = 0,
        crop_padding: int = 0,
        flip: bool = False,
    ):
        if not 0.0 <= val_portion < 1.0:
            raise UserError(f"data.val_portion={val_portion}: must be in [0, 1)")
        self.name = name
        self.num_classes = num_classes
        self.in_channels = int(train.x.shape[1])
        self.image_size = int(train.x.shape[-1])
        self.crop_padding = crop_padding
        self.flip = flip
        n_val = int(round(len(train) * val_portion))
        perm = torch.randperm(len(train), generator=torch.Generator().manual_seed(split_seed))
        self.val: TensorSplit | None = train.subset(perm[:n_val]) if n_val else None
        self.train = train.subset(perm[n_val:]) if n_val else train
        self.test = test

    def augment(self, cutout: int = 0) -> Augment:
        """The training augmentation of this data set, with ``cutout`` added."""
        return Augment(crop_padding=self.crop_padding, flip=self.flip, cutout=cutout)

    def describe(self) -> str:
        n_val = len(self.val) if self.val is not None else 0
        return (
            f"{self.name}: {len(self.train)} train / {n_val} val / {len(self.test)} test, "
            f"{self.in_channels}x{self.image_size}x{self.image_size}, {self.num_classes} classes"
        )


_warned: set[str] = set()


def clamp_batch_size(batch_size: int, n: int, key: str, what: str = "training images") -> int:
    """The batch size to train on ``n`` examples with: ``batch_size``, or ``n`` if that is smaller.

    ``batches`` would yield one batch of all ``n`` examples anyway; the point is to say so. An
    epoch is then a single step, so a short run learns next to nothing, which a tiny data set
    with a batch size meant for a large one does without any other sign. The warning is printed
    once per process for each key and sizes (evaluators train many children with one trainer).

    Args:
        batch_size: the configured batch size.
        n: the number of examples to draw batches from.
        key: the config key of ``batch_size``, named in the warning.
        what: what the ``n`` examples are, for the warning.
    """
    if batch_size <= n or n <= 0:
        return batch_size
    message = (
        f"{key}={batch_size} is larger than the {n} {what}: using batches of {n}, one step per epoch"
        f" (set a smaller {key})"
    )
    if message not in _warned:
        _warned.add(message)
        get_console().print(f"[yellow]warning:[/] {escape(message)}", soft_wrap=True, highlight=False)
    return n


def batches(
    split: TensorSplit,
    batch_size: int,
    *,
    device: torch.device,
    generator: torch.Generator | None = None,
    augment: Augment | None = None,
    drop_last: bool = False,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yield ``(x, y)`` batches on ``device``; shuffled and augmented when a generator is given.

    All randomness comes from ``generator`` (a CPU generator), so seeding it per epoch makes an
    epoch replay identically after a resume.
    """
    n = len(split)
    order = torch.randperm(n, generator=generator) if generator is not None else torch.arange(n)
    stop = n - n % batch_size if drop_last else n
    for start in range(0, stop, batch_size):
        idx = order[start : start + batch_size]
        x = split.x[idx].to(device, non_blocking=True)
        y = split.y[idx].to(device, non_blocking=True)
        if augment is not None and augment.active and generator is not None:
            x = augment_batch(x, augment, generator)
        yield x, y


def augment_batch(x: torch.Tensor, aug: Augment, generator: torch.Generator) -> torch.Tensor:
    """Random crop (zero padding), horizontal flip and cutout, batched.

    Args:
        x: ``[B, C, H, W]`` images.
        aug: which augmentations to apply.
        generator: CPU generator for the random draws.

    Returns:
        ``[B, C, H, W]`` augmented images.
    """
    B, C, H, W = x.shape
    dev = x.device
    if aug.crop_padding > 0:
        p = aug.crop_padding
        padded = torch.nn.functional.pad(x, (p, p, p, p))
        dy = torch.randint(0, 2 * p + 1, (B,), generator=generator).to(dev)
        dx = torch.randint(0, 2 * p + 1, (B,), generator=generator).to(dev)
        rows = (dy[:, None] + torch.arange(H, device=dev))[:, None, :, None]  # [B,1,H,1]
        cols = (dx[:, None] + torch.arange(W, device=dev))[:, None, None, :]  # [B,1,1,W]
        b = torch.arange(B, device=dev)[:, None, None, None]
        c = torch.arange(C, device=dev)[None, :, None, None]
        x = padded[b, c, rows, cols]
    if aug.flip:
        flip = (torch.rand(B, generator=generator) < 0.5).to(dev)[:, None, None, None]
        x = torch.where(flip, x.flip(3), x)
    if aug.cutout > 0:
        # DeVries & Taylor 2017: a square of side `cutout` centred anywhere, clipped at the border.
        cy = torch.randint(0, H, (B,), generator=generator).to(dev)[:, None, None]
        cx = torch.randint(0, W, (B,), generator=generator).to(dev)[:, None, None]
        lo_y, lo_x = cy - aug.cutout // 2, cx - aug.cutout // 2
        ys = torch.arange(H, device=dev)[None, :, None]
        xs = torch.arange(W, device=dev)[None, None, :]
        hole = (ys >= lo_y) & (ys < lo_y + aug.cutout) & (xs >= lo_x) & (xs < lo_x + aug.cutout)
        x = x * (~hole)[:, None].to(x.dtype)
    return x
