"""The runtime options the benchmark scripts share (`bench_search.py`, `bench_train.py` beside it).

Kept in scripts/ (imported as `_bench_args`, the scripts' folder being first on `sys.path`): option
parsing is the scripts' business, not the library's.

Device, memory format, precision, compile, CPU threads and the depthwise backward: added to a
script's parser by ``add_runtime_args`` and turned into a ``Trainer`` by ``trainer_from_args``;
the depthwise backward is a setting of the model's modules, applied by ``apply_depthwise_arg``
to the model a script builds.
"""

from __future__ import annotations

import argparse

import torch
from torch import nn

from nasrun.space.depthwise import use_rewritten_backward
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
    """Set the threads as asked; the ``Trainer`` of the device, memory format, precision and compile."""
    if args.threads:
        torch.set_num_threads(args.threads)
    return Trainer(device=args.device, amp=args.amp, channels_last=args.channels_last, compile=args.compile)


def apply_depthwise_arg(args: argparse.Namespace, model: nn.Module) -> bool:
    """Give ``model``'s depthwise convolutions the backward ``--native-depthwise`` asks for.

    Returns whether the rewritten backward is on (what the scripts record).
    """
    rewritten = not args.native_depthwise
    use_rewritten_backward(model, rewritten)
    return rewritten
