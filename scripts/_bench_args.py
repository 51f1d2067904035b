"""The runtime options the benchmark scripts share (`bench_search.py`, `bench_train.py` beside it).

Kept in scripts/ (imported as `_bench_args`, the scripts' folder being first on `sys.path`): option
parsing is the scripts' business, not the library's.

Device, memory format, precision, compile, CPU threads and the depthwise backward: added to a
script's parser by ``add_runtime_args`` and turned into a ``Trainer`` by ``trainer_from_args``.
"""

from __future__ import annotations

import argparse

import torch

from nasrun.space import depthwise
from nasrun.train.trainer import Trainer


def _channels_last(value: str) -> bool | str:
    if value not in ("auto", "true", "false"):
        raise argparse.ArgumentTypeError(f"invalid choice: {value!r} (choose from auto, true, false)")
    return {"true": True, "false": False}.get(value, "auto")


def add_runtime_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="auto")
    p.add_argument(
        "--channels-last",
        nargs="?",
        const=True,
        default="auto",
        type=_channels_last,
        metavar="{auto,true,false}",
        help="NHWC memory format (bare flag: true; default: the trainer's auto)",
    )
    p.add_argument("--amp", choices=["none", "bf16"], default="none")
    p.add_argument("--compile", action="store_true")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    p.add_argument(
        "--native-depthwise",
        action="store_true",
        help="PyTorch's own backward for dilated depthwise convolutions (for comparison)",
    )


def trainer_from_args(args: argparse.Namespace) -> Trainer:
    """Set the threads and the depthwise backward as asked; the ``Trainer`` of the other options."""
    if args.threads:
        torch.set_num_threads(args.threads)
    depthwise.REWRITTEN_BACKWARD = not args.native_depthwise
    return Trainer(device=args.device, amp=args.amp, channels_last=args.channels_last, compile=args.compile)
