"""The training evaluator: scores by validation accuracy, caches repeats, explains bad set-ups."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from nasrun import UserError
from nasrun.data.base import DataModule, TensorSplit
from nasrun.evaluator.train import TrainEvaluator
from nasrun.search.base import SearchContext
from nasrun.space.nb201 import NB201Space
from nasrun.train.trainer import Trainer


def _data(val_portion: float) -> DataModule:
    g = torch.Generator().manual_seed(0)

    def split(n: int) -> TensorSplit:
        return TensorSplit(torch.randn(n, 1, 8, 8, generator=g), torch.randint(0, 3, (n,), generator=g))

    return DataModule("toy", split(48), split(16), num_classes=3, val_portion=val_portion)


def _ctx(tmp_path: Path, val_portion: float = 0.25) -> SearchContext:
    space = NB201Space(channels=4, cells=1)
    return SearchContext(
        space=space,
        run_dir=tmp_path,
        data=_data(val_portion),
        trainer=Trainer(device="cpu", epochs=1, batch_size=16),
    )


def test_scores_are_percentages_deterministic_and_cached(tmp_path: Path) -> None:
    ctx = _ctx(tmp_path)
    g = ctx.space.decode([3, 1, 2, 4, 0, 3])
    ev = TrainEvaluator(epochs=1)
    first = ev.evaluate(g, ctx)
    assert ctx.data is not None and ctx.data.val is not None and ctx.data.test is not None
    assert first.test_acc is not None and first.extra["params"] > 0
    # Percentages of the splits: each times the split's size / 100 is a whole count of right answers.
    for acc, n in ((first.val_acc, len(ctx.data.val)), (first.test_acc, len(ctx.data.test))):
        assert acc * n / 100 == pytest.approx(round(acc * n / 100), abs=1e-6), (acc, n)
    assert ev.evaluate(g, ctx) is first  # a repeat is free
    again = TrainEvaluator(epochs=1).evaluate(g, ctx)  # a fresh evaluator retrains: same seed, same score
    assert again.val_acc == first.val_acc


def test_bad_setups_name_the_setting(tmp_path: Path) -> None:
    g = NB201Space().decode([3] * 6)
    with pytest.raises(UserError, match="data.val_portion"):
        TrainEvaluator(epochs=1).evaluate(g, _ctx(tmp_path, val_portion=0.0))
    with pytest.raises(UserError, match="evaluator.network"):
        TrainEvaluator(epochs=1, network={"layers": 3}).evaluate(g, _ctx(tmp_path))
    with pytest.raises(UserError, match="evaluator.epochs"):
        TrainEvaluator(epochs=0)


def test_workers_train_children_in_processes_with_the_same_scores(tmp_path: Path) -> None:
    ctx = _ctx(tmp_path)
    genotypes = [ctx.space.decode(c) for c in ([3, 1, 2, 4, 0, 3], [1, 1, 1, 1, 1, 1], [2, 3, 4, 1, 0, 2])]
    here = TrainEvaluator(epochs=1)
    pooled = TrainEvaluator(epochs=1, workers=2)
    try:
        # The first comes from the cache; the other two train in two worker processes.
        cached = pooled.evaluate(genotypes[0], ctx)
        evaluations = list(pooled.evaluate_many(genotypes, ctx))
    finally:
        pooled.close()
    assert evaluations[0] is cached
    for g, ev in zip(genotypes, evaluations, strict=True):
        ref = here.evaluate(g, ctx)
        assert (ev.val_acc, ev.test_acc, ev.extra) == (ref.val_acc, ref.test_acc, ref.extra)
    assert list(pooled.evaluate_many(genotypes, ctx)) == evaluations  # all cached now...
    assert pooled._pool is None  # ...so no worker was started


def test_a_workers_user_error_surfaces_unchanged(tmp_path: Path) -> None:
    ctx = _ctx(tmp_path)
    genotypes = [ctx.space.decode([c] * 6) for c in (1, 2)]
    evaluator = TrainEvaluator(epochs=1, network={"layers": 3}, workers=2)
    try:
        with pytest.raises(UserError, match=r"^evaluator\.network: .*layers"):
            list(evaluator.evaluate_many(genotypes, ctx))
    finally:
        evaluator.close()
    with pytest.raises(UserError, match="evaluator.workers"):
        TrainEvaluator(workers=0)
