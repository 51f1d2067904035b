from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

from nasrun.data.synthetic import synthetic
from nasrun.train.checkpoint import load_checkpoint
from nasrun.train.trainer import NonFiniteLossError, Trainer


class GoesNaN(nn.Module):
    """A linear classifier whose output turns NaN after ``healthy_calls`` training forwards."""

    def __init__(self, healthy_calls: int) -> None:
        super().__init__()
        self.fc = nn.Linear(3 * 8 * 8, 4)
        self.calls = 0
        self.healthy_calls = healthy_calls

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.fc(x.flatten(1))
        if self.training:
            self.calls += 1
            if self.calls > self.healthy_calls:
                out = out * float("nan")
        return out


def test_nan_loss_stops_with_a_clear_message_and_keeps_the_last_good_checkpoint(tmp_path: Path) -> None:
    data = synthetic(n_train=64, n_test=16, image_size=8, num_classes=4, val_portion=0.25)
    trainer = Trainer(device="cpu", epochs=3, batch_size=16)
    batches_per_epoch = 3  # 48 training images / 16
    model = GoesNaN(healthy_calls=batches_per_epoch)  # epoch 1 is fine, epoch 2 goes NaN
    with pytest.raises(
        NonFiniteLossError, match="loss became nan in epoch 2; the checkpoint of epoch 1 is intact"
    ):
        trainer.fit(model, data, run_dir=tmp_path, phase="retrain", quiet=True)
    state = load_checkpoint(tmp_path / "checkpoints" / "retrain.pt")
    assert state["epoch"] == 1
    assert all(torch.isfinite(v).all() for v in state["model"].values())
    assert len((tmp_path / "retrain_history.jsonl").read_text().splitlines()) == 1
    assert json.loads((tmp_path / "retrain_history.jsonl").read_text())["epoch"] == 1


def test_fit_learns_and_reports_final_epoch_metrics() -> None:
    torch.manual_seed(0)
    data = synthetic(n_train=64, n_test=16, image_size=8, num_classes=4, val_portion=0.25)
    trainer = Trainer(device="cpu", epochs=30, batch_size=16, lr=0.05, weight_decay=0.0)
    metrics = trainer.fit(nn.Sequential(nn.Flatten(), nn.Linear(192, 4)), data, quiet=True)
    # Random labels can only be memorised: the training accuracy must approach 100 %.
    assert metrics["train_acc"] > 90.0 and metrics["epochs"] == 30
    assert {"val_acc", "test_acc", "train_loss"} <= set(metrics)
