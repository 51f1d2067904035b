from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

from nasrun.data.synthetic import synthetic
from nasrun.run_folder import load_checkpoint
from nasrun.train.runtime import NonFiniteLossError
from nasrun.train.trainer import Trainer


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


def test_nan_in_the_first_epoch_says_there_is_no_checkpoint_yet(tmp_path: Path) -> None:
    data = synthetic(n_train=64, n_test=16, image_size=8, num_classes=4, val_portion=0.25)
    trainer = Trainer(device="cpu", epochs=3, batch_size=16)
    with pytest.raises(NonFiniteLossError) as info:
        trainer.fit(GoesNaN(healthy_calls=0), data, run_dir=tmp_path, phase="retrain", quiet=True)
    message = str(info.value)
    assert "loss became nan in epoch 1" in message and "no checkpoint yet" in message
    assert "start the run again" in message and "trainer.lr" in message
    assert "is intact" not in message and "epoch 0" not in message
    assert not (tmp_path / "checkpoints" / "retrain.pt").exists()


def test_batch_size_larger_than_the_training_split_is_clamped_with_a_warning(capsys) -> None:
    data = synthetic(n_train=40, n_test=8, image_size=8, num_classes=4, val_portion=0.25)  # 30 train
    trainer = Trainer(device="cpu", epochs=2, batch_size=1000, lr=0.05)
    sizes: list[int] = []
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 4))
    model.register_forward_pre_hook(lambda m, args: sizes.append(args[0].shape[0]) if m.training else None)
    trainer.fit(model, data, quiet=True)
    assert sizes == [30, 30]  # one step of all 30 images per epoch
    out = capsys.readouterr().out
    assert "trainer.batch_size=1000 is larger than the 30 training images" in out
    assert "using batches of 30" in out
    trainer.fit(nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 4)), data, quiet=True)
    assert "trainer.batch_size" not in capsys.readouterr().out  # said once, not per fit


def test_tensorboard_scalars_mirror_the_history(tmp_path: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from nasrun.run_folder import read_history

    data = synthetic(n_train=32, n_test=8, image_size=8, num_classes=4, val_portion=0.25)
    trainer = Trainer(device="cpu", epochs=3, batch_size=8, tensorboard=True)
    trainer.fit(nn.Sequential(nn.Flatten(), nn.Linear(192, 4)), data, run_dir=tmp_path, quiet=True)
    history = read_history(tmp_path / "retrain_history.jsonl")
    events = EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    assert "retrain/val_acc" in events.Tags()["scalars"] and "retrain/epoch" not in events.Tags()["scalars"]
    loss = events.Scalars("retrain/train_loss")
    assert [e.step for e in loss] == [1, 2, 3]
    assert [e.value for e in loss] == pytest.approx([r["train_loss"] for r in history])


def test_tensorboard_without_the_package_is_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    from nasrun import UserError

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "tensorboard" else real(name, *a)
    )
    with pytest.raises(
        UserError, match=r"trainer.tensorboard=true needs the tensorboard package: pip install"
    ):
        Trainer(device="cpu", tensorboard=True)


def test_channels_last_auto_is_on_for_the_cpu_and_can_be_forced() -> None:
    from nasrun import UserError

    assert Trainer(device="cpu").channels_last is True  # the default, "auto"
    assert Trainer(device="cpu", channels_last=False).channels_last is False
    model = Trainer(device="cpu").prepare(nn.Conv2d(3, 4, 3))
    assert model.weight.is_contiguous(memory_format=torch.channels_last)  # type: ignore[union-attr]
    with pytest.raises(UserError, match="trainer.channels_last='yes': must be true, false or auto"):
        Trainer(device="cpu", channels_last="yes")
