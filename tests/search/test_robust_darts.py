"""RobustDARTS: the dominant eigenvalue against exact ones, and DARTS-ES's stop and restore on records."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
import torch
from hydra.utils import instantiate

from nasrun import UserError
from nasrun.data.base import TensorSplit
from nasrun.pipeline import run
from nasrun.search.oneshot.edges import DenseEdge
from nasrun.search.oneshot.engine import OneShotSearch
from nasrun.search.oneshot.plugin import HESSIAN_STREAM, EpochData, EpochStart
from nasrun.search.oneshot.robust_darts import (
    KEY,
    HessianEigenvalue,
    ScheduledDropPath,
    dominant_eigenvalue,
    validation_hvp,
)
from nasrun.train.trainer import Trainer
from tests.search.sampling_helpers import tiny_space


def _symmetric(eigs: list[float], seed: int = 0) -> torch.Tensor:
    """A symmetric matrix with the eigenvalues ``eigs`` in a random orthonormal basis."""
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(len(eigs), len(eigs), generator=g, dtype=torch.float64))
    return q @ torch.diag(torch.tensor(eigs, dtype=torch.float64)) @ q.T


@pytest.mark.parametrize(
    ("eigs", "expected"),
    [
        ([4.0, 1.0, 0.5, -0.3, 0.0], 4.0),
        ([-6.0, 2.0, 1.0, 0.5], 2.0),  # largest magnitude is negative: the largest one is still 2
    ],
)
def test_power_iteration_finds_the_largest_eigenvalue_of_a_quadratic_loss(
    eigs: list[float], expected: float
) -> None:
    """Through the real products: the loss 0.5 a^T H a over two parameter tensors has Hessian H."""
    H = _symmetric(eigs)
    a = torch.nn.Parameter(torch.randn(3, dtype=torch.float64))
    b = torch.nn.Parameter(torch.randn(len(eigs) - 3, dtype=torch.float64))
    flat = torch.cat([a, b])
    loss = 0.5 * flat @ H @ flat
    hvp = validation_hvp(loss, [a, b])
    gen = torch.Generator().manual_seed(1)
    lam = dominant_eigenvalue(hvp, len(eigs), iters=500, tol=1e-10, generator=gen, dtype=torch.float64)
    assert lam == pytest.approx(expected, rel=1e-6)
    # The weight decay's (d/2)||a||^2 shifts every eigenvalue by d (the reference adds it to the gradient).
    shifted = dominant_eigenvalue(
        validation_hvp(loss, [a, b], weight_decay=0.25), len(eigs), iters=500, tol=1e-10, dtype=torch.float64
    )
    assert shifted == pytest.approx(expected + 0.25, rel=1e-6)


def test_the_plugins_eigenvalue_is_the_full_hessians_on_a_supernet() -> None:
    """The plug-in's eigenvalue on a tiny supernet equals the largest of the full Hessian (built as
    the reference builds it: a row per architecture parameter) on the same validation batch."""
    torch.manual_seed(0)
    search = OneShotSearch(tiny_space("cifar_cell"), seed=0, epochs=2, batch_size=16)
    trainer = Trainer(device="cpu")
    stepper = search.make_stepper(10, 1, trainer)
    g = torch.Generator().manual_seed(0)
    split = TensorSplit(torch.randn(48, 1, 8, 8, generator=g), torch.randint(10, (48,), generator=g))
    data = EpochData(split, 16, trainer, seed=0, epoch=3, augment=None, status=lambda _: None)
    plugin = HessianEigenvalue(iters=500, tol=1e-9)
    before = [b.clone() for b in stepper.module.buffers()]
    lam = plugin.eigenvalue(stepper, data)
    assert all(torch.equal(b, c) for b, c in zip(before, stepper.module.buffers()))  # BN statistics kept

    x, y = next(data.batches(HESSIAN_STREAM))
    alphas = stepper.alphas
    decay = stepper.a_opt.param_groups[0]["weight_decay"]
    stepper.model.train()
    loss = torch.nn.functional.cross_entropy(stepper.model(x), y)
    grads = torch.autograd.grad(loss, alphas, create_graph=True)
    flat = torch.cat([gr.reshape(-1) for gr in grads])
    rows = [
        torch.cat([h.reshape(-1) for h in torch.autograd.grad(flat[i], alphas, retain_graph=True)])
        for i in range(flat.numel())
    ]
    H = torch.stack(rows).double() + decay * torch.eye(flat.numel(), dtype=torch.float64)
    exact = float(torch.linalg.eigvalsh((H + H.T) / 2).max())
    assert lam == pytest.approx(exact, rel=1e-3)
    assert plugin.end_epoch(stepper, data, True) == {KEY: pytest.approx(lam)}  # same batch: same value


def _records(eigs: Sequence[float | None], warmup: int = 0) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = [{"epoch": e + 1, "arch_steps": False, KEY: 9.0} for e in range(warmup)]
    for e, v in enumerate(eigs, start=warmup + 1):
        out.append({"epoch": e, "arch_steps": True, **({KEY: v} if v is not None else {})})
    return out


def _first_stop(plugin: HessianEigenvalue, records: list[dict[str, Any]]) -> tuple[int, int | None] | None:
    for i in range(1, len(records) + 1):
        if plugin.stop(records[:i]) is not None:
            return records[i - 1]["epoch"], plugin.result_epoch(records[:i])
    return None


def test_darts_es_stops_when_the_local_average_grows_and_restores_k_epochs_back() -> None:
    # Flat at 1 for 10 epochs, then 3: the 5-epoch average at epoch 11 is 1.4, five epochs back 1.0,
    # 1.0 / 1.4 = 0.714 < 0.75: stop after epoch 11, the cell of epoch 6.
    eigs = [1.0] * 10 + [3.0] * 5
    plugin = HessianEigenvalue(window=5, ratio=0.75, first_result_epoch=1)
    assert _first_stop(plugin, _records(eigs)) == (11, 6)
    # A slower rise (1.2 from epoch 11: 1.0 / 1.04) never reaches the ratio.
    assert _first_stop(plugin, _records([1.0] * 10 + [1.2] * 5)) is None
    # Warm-up epochs carry no weight: the same history after 3 of them stops 3 epochs later.
    assert _first_stop(plugin, _records(eigs, warmup=3)) == (14, 9)
    # No restore before first_result_epoch: epoch 6 may not be restored; at epoch 12 the average
    # is 1.8 against 1.0 five epochs back, and epoch 7's cell is the result.
    late = HessianEigenvalue(window=5, ratio=0.75, first_result_epoch=7)
    assert _first_stop(late, _records(eigs)) == (12, 7)
    # Eigenvalues every second epoch: the window counts eigenvalues, so the restore goes 10 epochs back.
    sparse: list[float | None] = [v if i % 2 == 1 else None for i, v in enumerate([1.0] * 20 + [3.0] * 10)]
    assert _first_stop(plugin, _records(sparse)) == (22, 12)
    # Recording only: never stops, never restores.
    quiet = HessianEigenvalue(early_stop=False, first_result_epoch=1)
    assert _first_stop(quiet, _records(eigs)) is None
    assert quiet.result_epoch(_records(eigs)[:11]) is None


def test_the_stop_message_names_the_ratio_and_the_restored_epoch() -> None:
    plugin = HessianEigenvalue(first_result_epoch=1)
    reason = plugin.stop(_records([1.0] * 10 + [3.0]))
    assert reason is not None and "0.714 < 0.75" in reason and "epoch 6" in reason


def test_bad_settings_are_one_line() -> None:
    with pytest.raises(UserError, match="search.plugins.hessian.window=0"):
        HessianEigenvalue(window=0)
    with pytest.raises(UserError, match="search.plugins.hessian.ratio=0"):
        HessianEigenvalue(ratio=0)


def test_scheduled_drop_path_rises_linearly_on_every_edge() -> None:
    search = OneShotSearch(tiny_space("nb201"), seed=0, epochs=5, batch_size=16)
    stepper = search.make_stepper(10, 1, Trainer(device="cpu"))
    plugin = ScheduledDropPath(drop_prob=0.6)
    plugin.attach(stepper)
    edges = [m for m in stepper.module.modules() if isinstance(m, DenseEdge)]
    assert edges and all(e.drop_path == 0 for e in edges)
    rates = []
    for e in range(5):
        plugin.start_epoch(stepper, EpochStart(e, 5, 0, e, True))
        assert len({m.drop_path for m in edges}) == 1
        rates.append(edges[0].drop_path)
    assert rates == pytest.approx([0.0, 0.15, 0.3, 0.45, 0.6])  # reference: drop_prob * e / (E - 1)
    with pytest.raises(UserError, match="search.plugins.drop_path.drop_prob=1"):
        ScheduledDropPath(drop_prob=1.0)


@pytest.mark.parametrize("space", ["cifar_cell", "nb201"])
def test_a_forced_stop_restores_the_cell_of_k_epochs_back(compose_cfg, tmp_path: Path, space: str) -> None:
    """A smoke search records the eigenvalue every epoch; with a threshold that any history meets,
    it stops once 2k eigenvalues exist and its result is the cell that epoch k before recorded."""
    cfg = compose_cfg(
        "experiment=smoke",
        "data=digits",
        f"space={space}",
        "search=robust_darts",
        "search.epochs=6",
        "search.plugins.hessian.window=2",
        "search.plugins.hessian.ratio=1000",
        "search.plugins.hessian.first_result_epoch=1",
        "search.plugins.hessian.iters=10",
    )
    run(cfg, tmp_path)
    history = [json.loads(line) for line in (tmp_path / "history.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in history] == [1, 2, 3, 4]  # stopped after epoch 4 of 6
    assert all(isinstance(r[KEY], float) for r in history)
    assert "epoch 2" in history[-1]["stopped"]
    genotype = json.loads((tmp_path / "genotype.json").read_text())
    assert {k: genotype[k] for k in history[1]["genotype"]} == history[1]["genotype"]
    result = json.loads((tmp_path / "result.json").read_text())
    assert result["search_result_epoch"]["epoch"] == 2


def test_the_regularised_variants_compose_with_their_values(compose_cfg) -> None:
    es = compose_cfg("search=robust_darts").search
    assert es.order == 2 and es.plugins.hessian.early_stop and "drop_path" not in es.plugins
    l2 = compose_cfg("search=robust_darts_l2").search
    assert l2.weight_decay == pytest.approx(0.0243) and not l2.plugins.hessian.early_stop
    assert l2.order == 2 and "drop_path" not in l2.plugins
    dp = compose_cfg("search=robust_darts_dp").search
    assert dp.weight_decay == es.weight_decay and not dp.plugins.hessian.early_stop
    plugins = {k: instantiate(v) for k, v in dp.plugins.items()}
    assert isinstance(plugins["hessian"], HessianEigenvalue)
    assert isinstance(plugins["drop_path"], ScheduledDropPath) and plugins["drop_path"].drop_prob == 0.6
