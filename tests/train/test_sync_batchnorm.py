"""Synchronised BatchNorm on the CPU: two gloo processes (torchrun) normalise as one process does."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from nasrun.train import sync_batchnorm
from tests.conftest import TORCHRUN, run_command

SCRIPT = str(Path(__file__).resolve().parent / "sync_bn_steps.py")


def _passes(tmp_path: Path, name: str, *cmd: str) -> dict:
    """The script's results, every process's share of the batch joined in rank order."""
    out = tmp_path / name
    done = run_command([*cmd, SCRIPT, str(out), *name.split("-")[1:]], tmp_path)
    assert done.returncode == 0, done.stderr
    ranks = [json.loads(p.read_text()) for p in sorted(tmp_path.glob(f"{name}.rank*.json"))]
    joined = {k: torch.cat([torch.tensor(r[k]) for r in ranks]) for k in ("out", "x_grad")}
    return {**ranks[0], **joined, "ranks": ranks}


def _close(got: torch.Tensor, want: torch.Tensor) -> bool:
    """Within 2e-6 of ``want``'s largest magnitude: the float reordering of sums over the batch."""
    return bool((got.double() - want.double()).abs().max() <= 2e-6 * want.double().abs().max())


@pytest.mark.parametrize("layout", ["plain", "plain-channels_last"])
def test_two_processes_normalise_with_the_global_batchs_statistics(tmp_path: Path, layout: str) -> None:
    """Outputs, input and parameter gradients and running statistics (momentum and cumulative) of
    two processes with shares of 6 and 5 images match one process's on all 11, up to float
    reordering (measured: within 4e-7 of each quantity's largest magnitude; asserted: 2e-6)."""
    alone = _passes(tmp_path, f"one-{layout}", sys.executable)
    pair = _passes(tmp_path, f"two-{layout}", *TORCHRUN)
    assert (alone["world"], pair["world"], pair["converted"]) == (1, 2, 2)
    for key in ("out", "x_grad"):
        assert _close(pair[key], alone[key]), key
    for r in pair["ranks"]:
        assert _close(torch.tensor(r["param_grads"]), torch.tensor(alone["param_grads"]))
        for name, value in alone["buffers"].items():
            assert _close(torch.tensor(r["buffers"][name]), torch.tensor(value)), name


def test_each_processs_own_statistics_differ_without_it(tmp_path: Path) -> None:
    """``trainer.sync_batchnorm=false`` (plain BatchNorm) normalises each share by itself: the outputs differ."""
    alone = _passes(tmp_path, "one-plain", sys.executable)
    local = _passes(tmp_path, "two-local", *TORCHRUN)
    assert local["converted"] == 0
    assert not torch.allclose(local["out"], alone["out"], atol=1e-3)


def test_conversion_keeps_the_tensors_and_alone_is_plain_batchnorm() -> None:
    net = nn.Sequential(nn.Conv2d(2, 3, 1), nn.BatchNorm2d(3), nn.Sequential(nn.BatchNorm2d(3, affine=False)))
    before = [id(t) for t in [*net.parameters(), *net.buffers()]]
    net.eval()
    sync_batchnorm.convert(net, torch.device("cpu"))
    assert isinstance(net[1], sync_batchnorm.CPUSyncBatchNorm2d)
    assert isinstance(net[2][0], sync_batchnorm.CPUSyncBatchNorm2d)
    gpu = nn.Sequential(nn.BatchNorm2d(3))
    sync_batchnorm.convert(gpu, torch.device("cuda"))  # PyTorch's own converter
    assert isinstance(gpu[0], nn.SyncBatchNorm)
    assert [id(t) for t in [*net.parameters(), *net.buffers()]] == before
    assert not net[1].training  # the mode carries over
    x = torch.randn(4, 2, 3, 3)
    plain = nn.Sequential(nn.Conv2d(2, 3, 1), nn.BatchNorm2d(3), nn.BatchNorm2d(3, affine=False))
    plain.load_state_dict({k.replace("2.0.", "2."): v for k, v in net.state_dict().items()})
    net.train(), plain.train()
    assert torch.allclose(net(x), plain(x))  # one process, no process group: BatchNorm as it is
