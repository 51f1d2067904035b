"""RSPS: uniform cells, weight steps that run only the sampled cell, derivation by sampling and scoring."""

from __future__ import annotations

import itertools
from collections import Counter
from pathlib import Path

import pytest
import torch
from scipy.stats import chisquare

from nasrun import UserError
from nasrun.search.oneshot.engine import OneShotSearch
from nasrun.search.oneshot.plugin import EpochData
from nasrun.search.oneshot.rsps import UniformSampling, UniformStepper, uniform_choices
from nasrun.search.oneshot.sampled_edges import SampledEdge
from nasrun.train.trainer import Trainer
from tests.search.sampling_helpers import batch, count_op_calls, stepper_of, tiny_ctx, tiny_space


@pytest.mark.parametrize("space_name", ["nb201", "cifar_cell"])
def test_the_sampler_is_uniform(space_name: str) -> None:
    sizes = tiny_space(space_name).decisions()
    gen = torch.Generator().manual_seed(0)
    draws = [uniform_choices(sizes, gen) for _ in range(6000)]
    # Each decision, and the pair of the first two decisions, is uniform (chi-square, seeded).
    for i, n in enumerate(sizes):
        counts = Counter(d[i] for d in draws)
        assert set(counts) == set(range(n))
        assert chisquare([counts[k] for k in range(n)]).pvalue > 1e-3, (i, counts)
    pairs = Counter((d[0], d[1]) for d in draws)
    cells = list(itertools.product(range(sizes[0]), range(sizes[1])))
    assert chisquare([pairs[c] for c in cells]).pvalue > 1e-3
    # A biased sampler fails the same test: the test can fail.
    biased = [min(d[0], d[1]) for d in draws]
    assert chisquare([biased.count(k) for k in range(min(sizes[0], sizes[1]))]).pvalue < 1e-6


def _rsps(space_name: str, **kwargs) -> OneShotSearch:
    return OneShotSearch(tiny_space(space_name), edge=SampledEdge, update=UniformSampling(**kwargs))


@pytest.mark.parametrize("space_name", ["nb201", "cifar_cell"])
def test_an_rsps_step_runs_exactly_the_sampled_cells_ops(space_name: str) -> None:
    stepper = stepper_of(_rsps(space_name))
    net = stepper.module
    with count_op_calls(net) as (edge_calls, op_calls, names):
        stepper.step(*batch(seed=0), *batch(seed=1))
    assert net.fixed is not None
    # The cell the step ran, edge by edge (every cell of a type shares its weights).
    per_cell = []
    for kind in net.topology.cell_types:
        for e, row in enumerate(net.fixed[kind]):
            per_cell.append(
                sorted(
                    net.edge_ops[kind][e][k]
                    for k in torch.nonzero(row).flatten().tolist()
                    if net.edge_ops[kind][e][k] != "none"
                )
            )
    ran = [sorted(names[e]) for e in range(len(names))]
    if space_name == "nb201":  # 3 cells (one per stage), each ran the sampled cell's ops
        assert ran == per_cell * 3
    assert sum(op_calls.values()) == sum(len(r) for r in ran) <= sum(edge_calls.values())
    assert not any(a.grad is not None and a.grad.abs().sum() > 0 for a in stepper.alphas)  # no arch update


def test_derivation_keeps_the_best_scored_candidate_and_scoring_leaves_the_statistics(tmp_path: Path) -> None:
    stepper = stepper_of(_rsps("nb201", candidates=20, score_batches=2))
    ctx = tiny_ctx(tmp_path, tiny_space("nb201"))
    assert ctx.data is not None
    data = EpochData(
        ctx.data.train, 16, Trainer(device="cpu"), seed=0, epoch=0, augment=None, status=lambda _: None
    )
    buffers = {n: b.clone() for n, b in stepper.module.named_buffers()}
    choices, batches = stepper.propose(torch.Generator().manual_seed(0)), list(data.batches(3))
    real = stepper.accuracy(choices, batches)
    assert all(torch.equal(b, buffers[n]) for n, b in stepper.module.named_buffers())
    # The same cell on the same batches, counted here: BatchNorm on its running statistics (eval).
    stepper.use(choices)
    stepper.module.eval()
    with torch.no_grad():
        right = sum(int((stepper.model(x).argmax(1) == y).sum()) for x, y in batches)
    assert real == right / sum(len(y) for _, y in batches)
    scored: list[tuple[int, ...]] = []

    def score(choices: tuple[int, ...], batches: list, bn: str | None = None) -> float:
        assert len(batches) == 2
        scored.append(choices)
        return float(choices.count(3))  # a toy score: how many edges take nor_conv_3x3

    stepper.accuracy = score  # type: ignore[method-assign]
    genotype = stepper.derive(data)
    assert len(scored) == 20
    best = max(scored, key=lambda c: c.count(3))
    assert stepper.space.encode(genotype) == list(best)
    assert torch.equal(stepper.module.fixed["normal"], stepper.space.genotype_weights(genotype)["normal"])


def _data(tmp_path: Path, last: bool = False) -> EpochData:
    ctx = tiny_ctx(tmp_path, tiny_space("nb201"))
    assert ctx.data is not None
    return EpochData(
        ctx.data.train,
        16,
        Trainer(device="cpu"),
        seed=0,
        epoch=0,
        augment=None,
        status=lambda _: None,
        last=last,
    )


@pytest.mark.parametrize("bn", ["eval", "train"])
def test_each_candidate_is_scored_on_a_fresh_batch_in_the_chosen_bn_mode(tmp_path: Path, bn: str) -> None:
    """The references' random-NAS: network.eval(), then each candidate on the loader's next batch
    (AutoDL RANDOM-NAS.py:107-127; randomNAS_release darts_wrapper_discrete.py:190-203)."""
    stepper = stepper_of(_rsps("nb201", candidates=6, score_batches=1, score_bn=bn))
    norm = next(m for m in stepper.module.modules() if isinstance(m, torch.nn.BatchNorm2d))
    seen: list[tuple[bool, float]] = []
    hook = norm.register_forward_pre_hook(lambda m, args: seen.append((m.training, float(args[0].sum()))))
    buffers = {n: b.clone() for n, b in stepper.module.named_buffers()}
    stepper.module.train()
    stepper.derive(_data(tmp_path))
    hook.remove()
    # 6 candidate passes, then the chosen cell is set (no pass); every one in the mode asked for.
    assert len(seen) == 6 and {t for t, _ in seen} == {bn == "train"}
    assert len({round(x, 3) for _, x in seen}) == 6  # six different batches
    assert stepper.module.training  # the mode is put back
    assert all(torch.equal(b, buffers[n]) for n, b in stepper.module.named_buffers())


def test_the_last_epoch_scores_the_final_candidates_and_rescores_the_best(tmp_path: Path) -> None:
    """randomNAS_release random_weight_share.py:90-112: many cells on a few batches, the best 10 on the
    whole validation split, the best of those wins."""
    stepper = stepper_of(_rsps("nb201", candidates=2, final_candidates=12, rescore_top=3))
    data = _data(tmp_path, last=True)
    quick: dict[tuple[int, ...], float] = {}
    full: dict[tuple[int, ...], float] = {}

    def score(choices: tuple[int, ...], batches, bn=None) -> float:
        n = sum(int(y.numel()) for _, y in batches)
        if n == len(data.split):  # the second round: one pass over the split
            full[choices] = float(choices[1])  # a toy score that disagrees with the first round's
            return full[choices]
        quick[choices] = float(choices.count(3))
        return quick[choices]

    stepper.accuracy = score  # type: ignore[method-assign]
    genotype = stepper.derive(data)
    assert len(quick) == 12 and len(full) == 3
    top3 = sorted(quick, key=lambda c: -quick[c])[:3]
    assert set(full) == set(top3)
    assert stepper.space.encode(genotype) == list(max(top3, key=lambda c: full[c]))
    data.last = False
    quick.clear()
    stepper.derive(data)
    assert len(quick) == 2  # other epochs: search.update.candidates


def test_an_rsps_search_derives_from_samples_on_both_spaces(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After the last epoch the best 2 of 3 candidates are scored again; the better of them is the cell."""
    scored: list[tuple[tuple[int, ...], float]] = []
    accuracy = UniformStepper.accuracy

    def spy(self, choices, batches, bn=None):  # type: ignore[no-untyped-def]
        scored.append((choices, accuracy(self, choices, batches, bn)))
        return scored[-1][1]

    monkeypatch.setattr(UniformStepper, "accuracy", spy)
    for space_name in ("nb201", "cifar_cell"):
        scored.clear()
        space = tiny_space(space_name)
        search = OneShotSearch(
            space,
            seed=1,
            epochs=1,
            batch_size=256,
            edge=SampledEdge,
            update=UniformSampling(3, final_candidates=3, score_batches=1, rescore_top=2),
        )
        result = search.run(tiny_ctx(tmp_path / space_name, space))
        rescored = scored[-2:]  # the last epoch: 3 candidates, then the best 2 once more
        assert {c for c, _ in rescored} <= {c for c, _ in scored[-5:-2]}
        best = max(rescored, key=lambda s: s[1])[0]  # max keeps the first of equals, as derive does
        assert space.encode(result.genotype) == list(best), rescored


def test_an_epoch_passes_over_the_whole_weights_share(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The references train the shared weights on their whole training split each epoch (AutoDL
    RANDOM-NAS.py:34-36, ENAS.py:49; enas data_utils.py:51-56 gives it 45,000 of 50,000 images):
    with an uneven split, no step is cut to the other share's length, and no validation batch is drawn."""
    sizes: list[tuple[int, bool]] = []
    step = UniformStepper.step

    def counted(self, xt, yt, xv, yv, arch_step=True):  # noqa: ANN001, ANN202
        sizes.append((int(yt.numel()), xv is None))
        return step(self, xt, yt, xv, yv, arch_step)

    monkeypatch.setattr(UniformStepper, "step", counted)
    space = tiny_space("nb201")
    update = UniformSampling(2, final_candidates=2, score_batches=1, rescore_top=0)
    search = OneShotSearch(
        space, seed=1, epochs=1, batch_size=64, train_portion=0.8, edge=SampledEdge, update=update
    )
    ctx = tiny_ctx(tmp_path, space)
    assert ctx.data is not None
    search.run(ctx)
    w_share, a_share = search.split(ctx.data.train)
    assert sum(n for n, _ in sizes) == len(w_share) > 3 * len(a_share)
    assert all(same for _, same in sizes)


def test_bad_rsps_settings_are_one_line() -> None:
    with pytest.raises(UserError, match=r"search.update.candidates=0: must be >= 1"):
        UniformSampling(candidates=0)
    with pytest.raises(UserError, match=r"search.update.score_batches=0: must be >= 1"):
        UniformSampling(score_batches=0)
    with pytest.raises(UserError, match=r"search.update.score_bn='none': must be eval or train"):
        UniformSampling(score_bn="none")
    with pytest.raises(UserError, match=r"search.order=2: search=rsps takes no unrolled"):
        OneShotSearch(tiny_space("nb201"), order=2, update=UniformSampling())
