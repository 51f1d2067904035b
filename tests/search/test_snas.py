"""SNAS against its reference code (github SNAS-Series/SNAS-Series, directory SNAS/).

What is compared: the derivation (every edge's strongest op, ``none`` included) on the reference's
published cells, the retraining of cells whose nodes have 1, 3 or no inputs, the temperature
schedule, the resource penalty's costs and default weight, and single-level training on every
training image. Reference file and line are cited at each constant.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from omegaconf import DictConfig

from nasrun import UserError
from nasrun.search.oneshot.engine import OneShotSearch
from nasrun.search.oneshot.samplers import GumbelSoftmax, annealed
from nasrun.search.oneshot.snas import SingleLevel, op_resources
from nasrun.space.cifar_cell import CifarCellSpace
from nasrun.space.genotype import Genotype
from nasrun.space.ops import DARTS_OPS
from tests.search.sampling_helpers import batch, stepper_of, tiny_ctx, tiny_space

OPS = ["none", "max_pool_3x3", "skip_connect", "sep_conv_3x3", "sep_conv_5x5"]

# The reference's published cells as its genotype_edge_all writes them: every edge of every node
# (2, 3, 4, 5 per node), each with its strongest op, strongest edge first.
# SNAS-Series SNAS/genotypes.py:263-295 (SNAS_aggressive_edge_all).
AGGRESSIVE_NORMAL = [
    ("sep_conv_5x5", 0), ("skip_connect", 1),
    ("skip_connect", 0), ("skip_connect", 1), ("none", 2),
    ("dil_conv_5x5", 1), ("skip_connect", 0), ("none", 2), ("none", 3),
    ("skip_connect", 0), ("dil_conv_5x5", 1), ("none", 2), ("none", 3), ("none", 4),
]  # fmt: skip
AGGRESSIVE_REDUCE = [
    ("sep_conv_5x5", 0), ("none", 1),
    ("sep_conv_5x5", 0), ("none", 1), ("none", 2),
    ("none", 0), ("none", 1), ("none", 2), ("none", 3),
    ("none", 0), ("none", 1), ("none", 2), ("none", 3), ("none", 4),
]  # fmt: skip
# SNAS-Series SNAS/genotypes.py:151-183 (SNAS_mild_edge_all), the reduction cell.
MILD_REDUCE = [
    ("max_pool_3x3", 0), ("max_pool_3x3", 1),
    ("none", 0), ("max_pool_3x3", 1), ("skip_connect", 2),
    ("none", 0), ("max_pool_3x3", 1), ("skip_connect", 2), ("none", 3),
    ("max_pool_3x3", 0), ("dil_conv_5x5", 2), ("none", 1), ("none", 3), ("none", 4),
]  # fmt: skip


def _weights_for(edge_all: list[tuple[str, int]], ops: list[str]) -> torch.Tensor:
    """``[14, n_ops]`` softmaxed weights whose edge-by-edge argmax is ``edge_all``'s op, listed strength order.

    nasrun's edges are in input order within a node; the listed order sets decreasing strengths.
    """
    W = torch.full((14, len(ops)), 0.01)
    start, size = 0, 2
    k = 0
    while start < 14:
        for rank, (op, j) in enumerate(edge_all[k : k + size]):
            W[start + j, ops.index(op)] = 0.9 - 0.1 * rank
        k += size
        start, size = start + size, size + 1
    return W


def _kept(edge_all: list[tuple[str, int]]) -> tuple[tuple[tuple[str, int], ...], tuple[int, ...]]:
    """The reference's edge list without its ``none`` edges, and the kept count per node."""
    edges, counts, k = [], [], 0
    for size in (2, 3, 4, 5):
        node = [e for e in edge_all[k : k + size] if e[0] != "none"]
        edges += node
        counts.append(len(node))
        k += size
    return tuple(edges), tuple(counts)


def test_every_edge_derivation_gives_the_reference_published_cells() -> None:
    space = CifarCellSpace()
    ops = list(DARTS_OPS)
    weights = {"normal": _weights_for(AGGRESSIVE_NORMAL, ops), "reduce": _weights_for(AGGRESSIVE_REDUCE, ops)}
    g = space.derive(weights, rule="every_edge")
    assert (g.normal, g.normal_nodes) == _kept(AGGRESSIVE_NORMAL)
    assert (g.reduce, g.reduce_nodes) == _kept(AGGRESSIVE_REDUCE)
    assert g.reduce == (("sep_conv_5x5", 0),) * 2 and g.reduce_nodes == (1, 1, 0, 0)  # two empty nodes
    # DARTS's rule on the same weights keeps two non-none inputs per node, whatever `none` says.
    darts = space.derive(weights)
    assert darts.reduce_nodes == () and len(darts.reduce) == 8
    assert all(op != "none" for op, _ in darts.reduce)
    mild = space.derive(
        {"normal": weights["normal"], "reduce": _weights_for(MILD_REDUCE, ops)}, rule="every_edge"
    )
    assert (mild.reduce, mild.reduce_nodes) == _kept(MILD_REDUCE)


def test_every_edge_derivation_keeps_one_three_or_no_inputs_per_node() -> None:
    space = CifarCellSpace(nodes=3, ops=OPS)
    W = torch.zeros(9, len(OPS))  # edges: node 2 <- 0, 1; node 3 <- 0, 1, 2; node 4 <- 0, 1, 2, 3
    W[:, 0] = 0.5  # `none` strongest everywhere ...
    W[1, 3] = 0.9  # ... but: node 2 <- sep_conv_3x3 from 1
    W[2, 4], W[3, 2], W[4, 1] = 0.6, 0.8, 0.7  # node 3 <- all three inputs, strongest first
    g = space.derive({"normal": W, "reduce": W}, rule="every_edge")
    assert g.normal == (("sep_conv_3x3", 1), ("skip_connect", 1), ("max_pool_3x3", 2), ("sep_conv_5x5", 0))
    assert g.normal_nodes == (1, 3, 0)
    assert space.describe(g).startswith(
        "normal: sep_conv_3x3~1 | skip_connect~1 max_pool_3x3~2 sep_conv_5x5~0 | -"
    )


def test_genotypes_with_any_edges_per_node_round_trip_and_validate(tmp_path: Path) -> None:
    g = Genotype(
        normal=(("sep_conv_3x3", 1), ("skip_connect", 0), ("max_pool_3x3", 2), ("sep_conv_3x3", 1)),
        normal_concat=(2, 3, 4, 5),
        reduce=(("sep_conv_5x5", 0),),
        reduce_concat=(2, 3, 4, 5),
        normal_nodes=(1, 3, 0, 0),
        reduce_nodes=(1, 0, 0, 0),
    )
    g.save(tmp_path / "genotype.json")
    assert Genotype.load(tmp_path / "genotype.json") == g
    CifarCellSpace().validate(g)
    # A file of two edges per node has no node counts and loads as it always did.
    plain = CifarCellSpace().derive({t: torch.rand(14, 8) for t in ("normal", "reduce")})
    assert "normal_nodes" not in plain.to_dict() and Genotype.from_dict(plain.to_dict()) == plain
    with pytest.raises(
        UserError, match=r"genotype.normal_nodes: \[1, 2\] accounts for 3 edges, the cell lists 4"
    ):
        Genotype.from_dict({**g.to_dict(), "normal_nodes": [1, 2]})
    with pytest.raises(UserError, match=r"genotype.normal\[2\]: node 2 cannot take input 2"):
        CifarCellSpace().validate(Genotype.from_dict({**g.to_dict(), "normal_nodes": [3, 1, 0, 0]}))
    with pytest.raises(UserError, match="genotype.normal_nodes: 4 nodes, space.nodes=3"):
        CifarCellSpace(nodes=3).validate(g)


def test_a_cell_with_empty_nodes_retrains_and_its_empty_nodes_are_zero() -> None:
    edges, counts = _kept(AGGRESSIVE_REDUCE)
    g = Genotype(
        normal=(
            ("sep_conv_3x3", 0),
            ("skip_connect", 1),
            ("dil_conv_3x3", 0),
            ("sep_conv_3x3", 2),
            ("skip_connect", 3),
        ),
        normal_concat=(2, 3, 4, 5),
        reduce=edges,
        reduce_concat=(2, 3, 4, 5),
        normal_nodes=(1, 3, 1, 0),
        reduce_nodes=counts,
    )
    net = CifarCellSpace().build_network(
        g, num_classes=10, in_channels=3, channels=8, layers=5, auxiliary=True
    )
    net.train()
    logits, aux = net(torch.randn(2, 3, 32, 32))
    assert logits.shape == (2, 10) and aux.shape == (2, 10)
    reduction = net.cells[1]
    out = reduction(torch.randn(2, 24, 32, 32), torch.randn(2, 32, 32, 32), 0.0)
    assert out.shape == (2, 4 * 16, 16, 16)  # four nodes of 16 channels, the empty ones included
    assert bool((out[:, 32:] == 0).all()) and bool(out[:, :32].abs().sum() > 0)


def test_the_temperature_follows_the_reference_schedule() -> None:
    # SNAS-Series SNAS/utils.py:140-148: tau = (1 - e / 150) * (tau0 - tau_min) + tau_min, stepped
    # before each epoch (SNAS/train_search.py:314, 323-325) so epoch e (from 0) runs at e + 1;
    # tau0 = 1 and tau_min = 0.03 (SNAS/train_search.py:74-75, SNAS/README.md's search command).
    def reference(e: int) -> float:
        return (1 - (e + 1) / 150) * (1.0 - 0.03) + 0.03

    sampler = GumbelSoftmax()
    for e in (0, 1, 74, 75, 148, 149):
        sampler.set_epoch(e, 150)
        assert sampler.tau == pytest.approx(reference(e), abs=1e-12)
    sampler.set_epoch(74, 150)
    assert sampler.tau == pytest.approx(0.515, abs=1e-3)  # mid-search
    assert annealed(1.0, 0.03, 74, 150, "exponential") < 0.2  # the schedule it replaces


def test_search_snas_composes_the_reference_settings(compose_cfg: Callable[..., DictConfig]) -> None:
    cfg = compose_cfg("search=snas")
    assert cfg.search.epochs == 150  # SNAS-Series SNAS/train_search.py:31, SNAS/README.md (--epochs 150)
    assert cfg.search.derivation == "every_edge"
    assert (cfg.search.sampler.tau_start, cfg.search.sampler.tau_end) == (1.0, 0.03)
    assert cfg.search.sampler.schedule == "linear_stepped"
    assert (cfg.search["update"].cost, cfg.search["update"].cost_weight) == ("all", 1.5e-3)
    assert cfg.search.arch_grad_clip == 10.0  # SNAS-Series SNAS/train_search.py:505
    assert compose_cfg("search=darts").search.derivation == "darts"


def test_op_costs_are_the_reference_formulas() -> None:
    # SNAS-Series SNAS/operations.py:140-172 (SepConv), 108-137 (DilConv), 51-75 (MaxPool), 175-187
    # (Identity) for C = 16 on 32x32 inputs: size, flops = size * y^2, mac as written there.
    C, y = 16, 32
    size = 2 * C * 9 + 2 * C * C
    assert op_resources("sep_conv_3x3", C, 1, y, y) == (size, size * y * y, y * y * (7 * C + C) + size)
    h = y // 2
    assert op_resources("sep_conv_3x3", C, 2, y, y) == (size, size * h * h, h * h * (10 * C + C) + size)
    dil = C * 25 + C * C
    assert op_resources("dil_conv_5x5", C, 1, y, y) == (dil, dil * y * y, y * y * (3 * C + C) + dil)
    assert op_resources("max_pool_3x3", C, 1, y, y) == (0, 9 * y * y * C, 2 * y * y * C)
    assert op_resources("max_pool_3x3", C, 2, y, y) == (0, 9 * h * h * C, 5 * h * h * C)
    assert op_resources("skip_connect", C, 1, y, y) == (0, 0, 2 * C * y * y)
    assert op_resources("none", C, 1, y, y) == (0, 0, 0)


def test_the_resource_penalty_is_on_by_default_and_pulls_to_cheap_ops() -> None:
    # SNAS-Series SNAS/README.md search command: --resource_efficient --method reparametrization
    # --log_penalty --resource_lambda 1.5e-3 (all three resources: SNAS/train_search.py:97).
    default = SingleLevel()
    assert (default.cost, default.cost_weight) == ("all", 1.5e-3)
    (xt, yt) = batch(seed=0)
    nan = torch.full_like(xt, float("nan"))  # the validation batch: never read
    heavy = {}
    for lam in (0.0, 5.0):
        torch.manual_seed(0)
        stepper = stepper_of(_snas(lam))
        a0 = [a.detach().clone() for a in stepper.alphas]
        loss, _ = stepper.step(xt, yt, nan, yt)
        assert math.isfinite(loss) and all(bool(torch.isfinite(p).all()) for p in stepper.alphas)
        assert any(not torch.equal(a, b.detach()) for a, b in zip(a0, stepper.alphas, strict=True))
        heavy[lam] = float(
            sum(torch.softmax(a.detach(), -1)[:, 3:].sum() for a in stepper.alphas)
        )  # the two convs
        if lam:
            assert float(stepper.penalty().detach()) > 0
    assert heavy[5.0] < heavy[0.0]


def _snas(cost_weight: float, seed: int = 0) -> OneShotSearch:
    space = CifarCellSpace(layers=3, channels=4, nodes=2, ops=OPS)
    return OneShotSearch(
        space, seed=seed, sampler=GumbelSoftmax(), update=SingleLevel(cost_weight=cost_weight)
    )


def test_single_level_trains_on_every_training_image_and_draws_no_validation_batch(tmp_path: Path) -> None:
    ctx = tiny_ctx(tmp_path, tiny_space("cifar_cell"))
    assert ctx.data is not None and ctx.trainer is not None
    search = OneShotSearch(ctx.space, epochs=1, batch_size=64, sampler=GumbelSoftmax(), update=SingleLevel())  # type: ignore[arg-type]
    w, a = search.split(ctx.data.train)
    assert len(w) == len(ctx.data.train) and a is None
    drawn: list[int] = []
    real = ctx.trainer.batches

    def counted(split, *args, **kwargs):  # type: ignore[no-untyped-def]
        drawn.append(len(split))
        return real(split, *args, **kwargs)

    ctx.trainer.batches = counted  # type: ignore[method-assign]
    result = search.run(ctx)
    # One pass over all training images; the supernet then scored on the data's validation split.
    assert ctx.data.val is not None and drawn == [len(ctx.data.train), len(ctx.data.val)]
    assert result.metrics["search_val_acc"] is not None
    # DARTS's warm-up epochs draw no architecture batches either.
    drawn.clear()
    darts = OneShotSearch(ctx.space, epochs=2, warmup_epochs=1, batch_size=64)  # type: ignore[arg-type]
    darts.run(ctx)
    w, a = darts.split(ctx.data.train)
    # Epoch 1 (warm-up): weight batches, then the score on the architecture's half; epoch 2 draws both.
    assert a is not None and drawn == [len(w), len(a), len(w), len(a), len(a)]


def test_bad_snas_settings_are_one_line() -> None:
    with pytest.raises(
        UserError, match="search.update.cost='memory': must be one of all, params, flops, mac"
    ):
        SingleLevel(cost="memory")
    with pytest.raises(UserError, match="search.update.cost_weight=-1.0: must be >= 0"):
        SingleLevel(cost_weight=-1.0)
    with pytest.raises(UserError, match="search.order=2: search=snas takes single-level steps"):
        OneShotSearch(tiny_space("nb201"), order=2, sampler=GumbelSoftmax(), update=SingleLevel())
    with pytest.raises(UserError, match="search.max_skips=2: the skip-connect cap edits DARTS's derivation"):
        OneShotSearch(CifarCellSpace(), max_skips=2, derivation="every_edge")


def test_a_cell_with_empty_nodes_is_drawn_node_by_node() -> None:
    from nasrun.pipeline import named_genotype
    from nasrun.plots.cell_diagram import cell_graph

    named = named_genotype("snas_aggressive")  # conf/genotype: the published cell, none edges left out
    assert ((named.normal, named.normal_nodes), (named.reduce, named.reduce_nodes)) == (
        _kept(AGGRESSIVE_NORMAL),
        _kept(AGGRESSIVE_REDUCE),
    )
    graph = cell_graph(named, "reduce")
    assert graph.edges == ((0, 2, "sep_conv_5x5"), (0, 3, "sep_conv_5x5"))  # nodes 2 and 3 have no edge
    assert sorted(k for k in graph.labels if k >= 2) == [2, 3, 4, 5] and graph.concat == (2, 3, 4, 5)


def test_without_a_validation_split_the_supernet_is_scored_on_the_test_set(tmp_path: Path) -> None:
    from nasrun.data.digits import digits
    from nasrun.search.base import SearchContext
    from nasrun.train.trainer import Trainer

    data = digits(image_size=8, val_portion=0.0, test_portion=0.2, split_seed=0)
    space = tiny_space("cifar_cell")
    ctx = SearchContext(space=space, run_dir=tmp_path, seed=1, data=data, trainer=Trainer(device="cpu"))
    search = OneShotSearch(space, epochs=1, batch_size=128, sampler=GumbelSoftmax(), update=SingleLevel())  # type: ignore[arg-type]
    scores: list[tuple[object, float]] = []
    evaluate = ctx.trainer.evaluate

    def spy(model, split):  # type: ignore[no-untyped-def]
        loss, acc = evaluate(model, split)
        scores.append((split, acc))
        return loss, acc

    ctx.trainer.evaluate = spy  # type: ignore[method-assign]
    result = search.run(ctx)
    record = json.loads((tmp_path / "history.jsonl").read_text().splitlines()[-1])
    # The record's test accuracy is the one measured on the test split, not on another split.
    assert record["val_acc"] is None and record["test_acc"] in [a for s, a in scores if s is data.test]
    assert result.metrics["search_val_acc"] is None
