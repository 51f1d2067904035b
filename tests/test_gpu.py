"""The CUDA paths: device placement, bf16 autocast, channels_last and torch.compile.

Run with ``make test-gpu`` (``pytest -m gpu``) on a machine with a CUDA device; skipped elsewhere.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch

from nasrun.data.digits import digits
from nasrun.pipeline import named_genotype
from nasrun.search.oneshot.engine import OneShotSearch
from nasrun.space.cifar_cell import CifarCellSpace
from nasrun.train.trainer import Trainer

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]

OPS = ["none", "max_pool_3x3", "skip_connect", "sep_conv_3x3", "dil_conv_3x3"]


@pytest.fixture
def exact_fp32() -> Iterator[None]:
    """TF32 off for CPU-vs-GPU comparisons (it rounds matmul and conv inputs to 10 mantissa bits)."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def _stepper(device: str, order: int = 1, **trainer_kw: object):
    torch.manual_seed(0)
    space = CifarCellSpace(layers=3, channels=8, nodes=2, ops=OPS)
    search = OneShotSearch(space, seed=0, order=order, epochs=4, lr=0.05)
    return search.make_stepper(num_classes=10, in_channels=1, trainer=Trainer(device=device, **trainer_kw))


def _digit_batches(n: int, device: str) -> list[torch.Tensor]:
    data = digits(image_size=16)
    x, y = data.train.x[: 2 * n], data.train.y[: 2 * n]
    return [t.to(device) for t in (x[:n], y[:n], x[n:], y[n:])]


@pytest.mark.parametrize("order", [1, 2])
def test_darts_step_on_cuda_matches_the_cpu_step(order: int, exact_fp32: None) -> None:
    # Losses and network weights are compared; the alphas are not, since Adam's first steps move
    # each alpha by about lr * sign(gradient), which flips with rounding where a gradient is ~0.
    results = {}
    for device in ("cpu", "cuda"):
        stepper = _stepper(device, order=order)
        batches = _digit_batches(32, device)
        losses = [stepper.step(*batches)[0] for _ in range(3)]
        results[device] = (losses, [w.detach().cpu() for w in stepper.weights])
    (cpu_losses, cpu_weights), (gpu_losses, gpu_weights) = results["cpu"], results["cuda"]
    assert cpu_losses[-1] != cpu_losses[0]
    for a, b in zip(cpu_losses, gpu_losses, strict=True):
        assert abs(a - b) < 1e-3 * max(1.0, abs(a)), (cpu_losses, gpu_losses)
    for a, b in zip(cpu_weights, gpu_weights, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-4)


@pytest.mark.parametrize("order", [1, 2])
def test_darts_step_with_bf16_and_channels_last_learns(order: int) -> None:
    stepper = _stepper("cuda", order=order, amp="bf16", channels_last=True)
    batches = _digit_batches(64, "cuda")
    first, _ = stepper.step(*batches)
    for _ in range(15):
        loss, _ = stepper.step(*batches)
    assert all(torch.isfinite(a).all() for a in stepper.alphas)
    # The same two batches over and over: a working step must drive the training loss down.
    assert loss < 0.8 * first, (first, loss)


@pytest.mark.parametrize(
    "options",
    [
        {"amp": "bf16", "channels_last": True},
        {"amp": "bf16", "channels_last": True, "compile": True},
    ],
    ids=["bf16-channels_last", "bf16-channels_last-compile"],
)
def test_retraining_a_genotype_on_cuda_learns_digits(options: dict[str, object], tmp_path: Path) -> None:
    genotype = named_genotype("darts_v2")
    torch.manual_seed(0)
    net = CifarCellSpace(layers=5, channels=8).build_network(
        genotype, num_classes=10, in_channels=1, auxiliary=True
    )
    trainer = Trainer(device="cuda", epochs=4, batch_size=64, lr=0.05, **options)  # type: ignore[arg-type]
    metrics = trainer.fit(
        net, digits(image_size=16), run_dir=tmp_path, aux_weight=0.4, drop_path=0.1, quiet=True
    )
    assert metrics["val_acc"] > 80.0, metrics  # chance is 10 %
    assert (tmp_path / "checkpoints" / "retrain.pt").is_file()
    # Weights stay float32 under autocast, and the checkpoint holds the plain module's names.
    state = torch.load(tmp_path / "checkpoints" / "retrain.pt", weights_only=True)
    assert all(v.dtype in (torch.float32, torch.int64) for v in state["model"].values())
    assert not any(k.startswith("_orig_mod.") for k in state["model"])


def test_cli_smoke_run_on_cuda(cli: Callable[..., object], tmp_path: Path) -> None:
    proc = cli(
        "experiment=smoke",
        "trainer.device=cuda",
        "trainer.amp=bf16",
        "trainer.channels_last=true",
        f"hydra.run.dir={tmp_path / 'run'}",
    )
    assert proc.returncode == 0, proc.stderr[-2000:]  # type: ignore[attr-defined]
    result = json.loads((tmp_path / "run" / "result.json").read_text())
    last = json.loads((tmp_path / "run" / "retrain_history.jsonl").read_text().splitlines()[-1])
    assert result["test_acc"] == last["test_acc"]  # the last retraining epoch's, on the GPU
