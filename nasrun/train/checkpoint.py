"""Checkpoints that survive a crash at any instant, and RNG state capture for exact resume."""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from nasrun import UserError


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Save ``state`` with ``torch.save`` through a temporary file and an atomic rename.

    A SIGKILL during the write leaves the previous checkpoint intact.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Load a checkpoint written by ``save_checkpoint`` (tensors and plain containers only).

    Raises:
        UserError: the file is unreadable or not a nasrun checkpoint; the message names it.
    """
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # torch raises several types for corrupt files
        # torch's own text for these errors advises weights_only=False, which would run
        # arbitrary code from the file: never pass that advice on.
        raise UserError(_damaged(path)) from None
    if not isinstance(state, dict):
        raise UserError(_damaged(path))
    return state


def _damaged(path: Path) -> str:
    """The one-line report of a checkpoint that cannot be used, and what to do about it."""
    return (
        f"checkpoint {path} is damaged or not a nasrun checkpoint: delete it to start that phase "
        "again, or choose another hydra.run.dir"
    )


def rng_state() -> dict[str, Any]:
    """The state of every random number generator a run touches."""
    np_state: Any = np.random.get_state()
    state: dict[str, Any] = {
        "python": _py_state_to_tensor(random.getstate()),
        "numpy": {"keys": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2])},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what ``rng_state`` captured."""
    random.setstate(_py_state_from_tensor(state["python"]))
    np.random.set_state(
        ("MT19937", state["numpy"]["keys"].numpy().astype(np.uint32), state["numpy"]["pos"], 0, 0.0)
    )
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _py_state_to_tensor(st: tuple[Any, ...]) -> dict[str, Any]:
    version, internal, gauss = st
    return {"version": version, "internal": torch.tensor(internal, dtype=torch.int64), "gauss": gauss}


def _py_state_from_tensor(d: dict[str, Any]) -> tuple[Any, ...]:
    return (d["version"], tuple(int(v) for v in d["internal"].tolist()), d["gauss"])


def python_rng_state(rng: random.Random) -> dict[str, Any]:
    """A ``random.Random``'s state in a form ``torch.load(weights_only=True)`` accepts."""
    return _py_state_to_tensor(rng.getstate())


def set_python_rng_state(rng: random.Random, state: dict[str, Any]) -> None:
    rng.setstate(_py_state_from_tensor(state))
