"""Checkpoint files that cannot be used: one line naming the file and what to do, no unsafe advice."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from nasrun import UserError
from nasrun.train.checkpoint import load_checkpoint, save_checkpoint


def _truncated(path: Path) -> None:
    save_checkpoint(path, {"model": {"w": torch.randn(64, 64)}, "epoch": 3})
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _garbage(path: Path) -> None:
    path.write_bytes(b"this is not a checkpoint\x00\xff" * 10)


@pytest.mark.parametrize("damage", [_truncated, _garbage])
def test_damaged_checkpoint_names_the_file_and_the_way_out(tmp_path: Path, damage) -> None:
    path = tmp_path / "checkpoints" / "search.pt"
    path.parent.mkdir()
    damage(path)
    with pytest.raises(UserError) as info:
        load_checkpoint(path)
    message = str(info.value)
    assert str(path) in message and "damaged or not a nasrun checkpoint" in message
    assert "delete it" in message and "hydra.run.dir" in message
    # torch's own text suggests weights_only=False, which would run code from the file.
    assert "weights_only" not in message and "\n" not in message


def test_a_valid_file_that_is_not_a_dict_is_refused_the_same_way(tmp_path: Path) -> None:
    path = tmp_path / "retrain.pt"
    torch.save(torch.zeros(3), path)
    with pytest.raises(UserError, match="damaged or not a nasrun checkpoint"):
        load_checkpoint(path)


def test_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "ok.pt"
    save_checkpoint(path, {"epoch": 2, "w": torch.ones(2)})
    state = load_checkpoint(path)
    assert state["epoch"] == 2 and torch.equal(state["w"], torch.ones(2))
