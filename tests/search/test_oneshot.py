"""The one-shot engine: the supernet protocol, warm-up epochs, early stopping, resume."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

from nasrun import UserError
from nasrun.data.digits import digits
from nasrun.search.base import SearchContext
from nasrun.search.oneshot.early_stop import SkipConnects
from nasrun.search.oneshot.edges import PartialChannelEdge
from nasrun.search.oneshot.engine import OneShotSearch
from nasrun.space.cifar_cell import CifarCellSpace
from nasrun.space.genotype import Genotype
from nasrun.train.trainer import Trainer

OPS = ["none", "max_pool_3x3", "skip_connect", "sep_conv_3x3"]


def _space() -> CifarCellSpace:
    return CifarCellSpace(layers=3, channels=4, nodes=2, ops=OPS)


@pytest.mark.parametrize("edge_normalisation", [False, True])
def test_weights_and_architecture_parameters_are_disjoint_and_cover_everything(
    edge_normalisation: bool,
) -> None:
    search = OneShotSearch(_space(), edge_normalisation=edge_normalisation)
    stepper = search.make_stepper(num_classes=3, in_channels=1, trainer=Trainer(device="cpu"))
    net = stepper.module
    weights, arch = {id(p) for p in net.weight_parameters()}, {id(p) for p in net.arch_parameters()}
    assert not weights & arch and weights | arch == {id(p) for p in net.parameters()}
    assert len(arch) == (4 if edge_normalisation else 2)
    # A parameter a method adds to the architecture is never trained by the weights' optimiser.
    net.arch.extra = nn.Parameter(torch.zeros(3))
    stepper = type(stepper)(net, Trainer(device="cpu"), order=1, epochs=1, **search.opt_args)
    in_w_opt = {id(p) for g in stepper.w_opt.param_groups for p in g["params"]}
    in_a_opt = {id(p) for g in stepper.a_opt.param_groups for p in g["params"]}
    assert id(net.arch.extra) in in_a_opt and id(net.arch.extra) not in in_w_opt


def _ctx(tmp_path: Path, resume: bool = False) -> SearchContext:
    data = digits(image_size=8, val_portion=0.2, test_portion=0.2, split_seed=0)
    return SearchContext(
        space=_space(), run_dir=tmp_path, seed=1, resume=resume, data=data, trainer=Trainer(device="cpu")
    )


def _history(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "history.jsonl").read_text().splitlines()]


def test_warmup_epochs_train_only_the_weights(tmp_path: Path) -> None:
    search = OneShotSearch(_space(), seed=1, epochs=2, warmup_epochs=1, batch_size=256)
    search.run(_ctx(tmp_path))
    h = _history(tmp_path)
    assert [r["arch_steps"] for r in h] == [False, True]
    init = search.build_network(10, 1).op_weights()  # the same seed: the initial alphas
    for kind in ("normal", "reduce"):
        assert torch.allclose(torch.tensor(h[0]["alphas"][kind]), init[kind].detach(), atol=1e-7)
        assert not torch.allclose(torch.tensor(h[1]["alphas"][kind]), init[kind].detach(), atol=1e-5)


def test_early_stop_records_epoch_and_reason_and_survives_resume(tmp_path: Path) -> None:
    # With skip_connect the only real op, every derived edge is one: the rule fires after epoch 1.
    space = CifarCellSpace(layers=3, channels=4, nodes=2, ops=["none", "skip_connect"])

    def search() -> OneShotSearch:
        return OneShotSearch(space, seed=1, epochs=4, batch_size=256, early_stop=SkipConnects(max_skips=4))

    ctx = _ctx(tmp_path)
    ctx.space = space
    full = search().run(ctx)
    h = _history(tmp_path)
    assert len(h) == 1 and h[0]["stopped"] == "the normal cell has 4 skip-connects (criterion: >= 4)"
    assert full.metrics["search_stopped"] == {"epoch": 1, "reason": h[0]["stopped"]}
    assert full.metrics["search_epochs"] == 1
    # Resuming a stopped search runs no further epoch.
    ctx = _ctx(tmp_path, resume=True)
    ctx.space = space
    again = search().run(ctx)
    assert _history(tmp_path) == h and again.genotype == full.genotype


class _Flat:
    """A space known only by its categorical decisions: no supernet."""

    name = "flat"

    def decisions(self) -> list[int]:
        return [3, 3]


def test_bad_one_shot_settings_are_one_line() -> None:
    with pytest.raises(UserError, match="one-shot search needs a space with a supernet; space 'flat'"):
        OneShotSearch(_Flat())  # type: ignore[arg-type]
    with pytest.raises(UserError, match=r"search.warmup_epochs=5: must be in \[0, search.epochs=5\)"):
        OneShotSearch(_space(), epochs=5, warmup_epochs=5)
    with pytest.raises(UserError, match="search.edge.k=3: must divide"):
        OneShotSearch(_space(), edge=lambda C, s, ops: PartialChannelEdge(C, s, ops, k=3)).build_network(
            10, 1
        )


def test_stable_ranking_reads_the_engines_records(tmp_path: Path) -> None:
    from nasrun.search.oneshot.early_stop import StableRanking

    result = OneShotSearch(
        _space(), seed=1, epochs=2, batch_size=256, early_stop=StableRanking(patience=1)
    ).run(_ctx(tmp_path))
    h = _history(tmp_path)
    assert all(r["ops"] == OPS for r in h)
    # Two epochs, patience 1: it stops after the second exactly when the ranking did not change.
    rankings_equal = StableRanking(patience=1).check(h) is not None
    assert ("search_stopped" in result.metrics) == rankings_equal


def test_each_epochs_derived_cell_can_be_scored_for_the_record(tmp_path: Path) -> None:
    from nasrun.evaluator.base import Evaluation

    class Recorder:
        def __init__(self) -> None:
            self.seen: list[str] = []

        def evaluate(self, genotype, ctx) -> Evaluation:
            self.seen.append(ctx.space.describe(genotype))
            return Evaluation(val_acc=50.0 + len(self.seen), test_acc=40.0, cost_s=0.0)

    ctx = _ctx(tmp_path)
    ctx.evaluator = Recorder()  # type: ignore[assignment]
    plain = OneShotSearch(_space(), seed=1, epochs=2, batch_size=256).run(_ctx(tmp_path / "plain"))
    scored = OneShotSearch(_space(), seed=1, epochs=2, batch_size=256, evaluate_derived=True).run(ctx)
    h = _history(tmp_path)
    assert [r["derived_val_acc"] for r in h] == [51.0, 52.0] and h[0]["derived_test_acc"] == 40.0
    assert ctx.evaluator.seen == [_space().describe(Genotype.from_dict(r["genotype"])) for r in h]
    assert scored.genotype == plain.genotype  # the scores never steer the search
