"""P-DARTS against its reference search script (github chenxin061/pdarts, train_search.py): stage
transitions, the skip-connect dropout schedule, the skip-connect cap, the search settings, schedule
errors, and a SIGKILL across a stage change."""

from __future__ import annotations

import json
import math
import signal
import time
from pathlib import Path

import pytest
import torch

from nasrun import UserError
from nasrun.search.oneshot.edges import DenseEdge
from nasrun.search.oneshot.engine import OneShotSearch, Stage
from nasrun.space.cifar_cell import CifarCellSpace
from tests.conftest import run_cli, start_cli
from tests.search.sampling_helpers import batch, stepper_of, tiny_ctx, tiny_space

OPS = ["none", "max_pool_3x3", "skip_connect", "sep_conv_3x3", "dil_conv_3x3"]
STAGES = {
    "layers": [3, 4],
    "epochs": [2, 2],
    "warmup_epochs": [0, 1],
    "ops_kept": [5, 2],
    "skip_dropout": [0.1, 0.4],
}


def _search(**kwargs) -> OneShotSearch:
    space = CifarCellSpace(layers=3, channels=4, nodes=2, ops=OPS)
    return OneShotSearch(space, seed=0, epochs=4, stages=STAGES, **kwargs)


def test_next_stage_keeps_each_edges_strongest_ops_in_a_deeper_supernet() -> None:
    search = _search()
    net = search.build_network(10, 1, stage=0)
    assert len(net.skeleton.cells) == 3
    with torch.no_grad():
        for kind in ("normal", "reduce"):
            net.arch.alphas[kind].copy_(torch.arange(25.0).view(5, 5) % 7)  # a known order per edge
    order = (torch.arange(25.0).view(5, 5) % 7).tolist()
    kept = net.pruned_ops(2)
    for e, row in enumerate(order):
        ranked = [OPS[k] for k in sorted(range(5), key=lambda k: -row[k])]  # `none` competes too
        assert sorted(kept["normal"][e]) == sorted(ranked[:2])
    assert any("none" in ops for ops in kept["normal"])  # where it is among the strongest, it stays
    deeper = search.build_network(10, 1, stage=1, edge_ops=kept)
    assert len(deeper.skeleton.cells) == 4  # the second stage's depth
    assert deeper.arch.alphas["normal"].shape == (5, 2)
    edge = deeper.skeleton.cells[0].edges[0]
    assert isinstance(edge, DenseEdge) and len(edge.ops) == 2  # only the kept ops are built


def test_normal_cell_keeps_at_most_m_skip_connects_the_strongest() -> None:
    space = CifarCellSpace(layers=3, channels=4, nodes=2, ops=OPS)
    net = OneShotSearch(space, max_skips=2).build_network(10, 1)
    logits = torch.zeros(5, 5)
    logits[:, 2] = torch.tensor([3.0, 2.0, 2.5, 1.0, 1.5])  # skip_connect strongest on every edge
    logits[:, 3] = 0.5  # sep_conv second
    with torch.no_grad():
        net.arch.alphas["normal"].copy_(logits)
        net.arch.alphas["reduce"].copy_(logits)
    assert [op for op, _ in net.genotype().normal].count("skip_connect") == 4
    capped = net.genotype(max_skips=2)
    assert [op for op, _ in capped.normal].count("skip_connect") == 2
    # The two strongest skips (edges 0 and 2: node 2 from input 0, node 3 from input 0) stay.
    assert capped.normal[0] == ("skip_connect", 0) and ("skip_connect", 0) in capped.normal[2:]
    assert capped.reduce == net.genotype().reduce  # the cap is for the normal cell only


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (
            {"stages": {**STAGES, "layers": [3, 4, 5]}},
            "search.stages: the lists must have one entry per stage",
        ),
        ({"stages": {**STAGES, "epochs": [2, 3]}}, r"search.epochs=4: must equal the stages' epochs, 5"),
        ({"stages": {**STAGES, "ops_kept": [3, 5]}}, "search.stages.ops_kept: stage 2 keeps 5 ops"),
        ({"max_skips": 5}, r"search.max_skips=5: must be in \[0, 4\]"),
    ],
)
def test_bad_stage_schedules_are_one_line(kwargs: dict, message: str) -> None:
    args = {"stages": STAGES, **kwargs}
    with pytest.raises(UserError, match=message):
        OneShotSearch(CifarCellSpace(layers=3, channels=4, nodes=2, ops=OPS), epochs=4, **args)


ARGS = [
    "experiment=smoke",
    "search=p_darts",
    "search.epochs=4",
    "search.stages.epochs=[2,2]",
    "search.stages.warmup_epochs=[0,1]",
    "retrain.enabled=false",
    "seed=3",
]


@pytest.mark.slow  # about 45 s; kill-and-resume of the one-shot loop is also in tests/test_resume.py
def test_sigkill_across_a_stage_change_resumes_to_the_same_search(tmp_path: Path) -> None:
    whole = run_cli(*ARGS, f"hydra.run.dir={tmp_path / 'whole'}", cwd=tmp_path)
    assert whole.returncode == 0, whole.stderr
    run_dir = tmp_path / "killed"
    proc = start_cli(*ARGS, f"hydra.run.dir={run_dir}", cwd=tmp_path)
    ckpt, deadline = run_dir / "checkpoints" / "search.pt", time.monotonic() + 240
    # Killed once the first stage's last epoch is checkpointed: the next stage is built on resume.
    while not (ckpt.is_file() and (run_dir / "history.jsonl").read_text().count("\n") >= 2):
        assert proc.poll() is None and time.monotonic() < deadline, "the search ended before the kill"
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    resumed = run_cli(*ARGS, f"hydra.run.dir={run_dir}", "resume=true", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr

    def history(d: Path) -> list[dict]:
        rows = [json.loads(line) for line in (d / "history.jsonl").read_text().splitlines()]
        return [{k: v for k, v in r.items() if k != "wall_s"} for r in rows]

    got, want = history(run_dir), history(tmp_path / "whole")
    assert [r["stage"] for r in got] == [1, 1, 2, 2] and got == want
    assert json.loads((run_dir / "genotype.json").read_text()) == json.loads(
        (tmp_path / "whole" / "genotype.json").read_text()
    )


# The reference's skip-connect dropout of the last stage (rate 0.7, 25 epochs, 10 of warm-up), by
# its formula (train_search.py:152-158): p (25 - e - 1) / 25 in warm-up, then p exp(-0.2 (e - 10)).
REFERENCE_SKIP_DROPOUT = {0: 0.672, 9: 0.42, 10: 0.7, 11: 0.5731115271545872, 24: 0.042567043837652564}


def test_skip_dropout_follows_the_reference_schedule() -> None:
    stage = Stage(layers=17, epochs=25, warmup_epochs=10, ops_kept=3, skip_dropout=0.7)
    for epoch, rate in REFERENCE_SKIP_DROPOUT.items():
        assert math.isclose(stage.skip_dropout_at(epoch), rate, rel_tol=1e-12), epoch


def _reference_kept(probs: list[float], names: list[str], keep: int) -> list[str]:
    """P-DARTS between stages: the ``len - keep`` weakest ops of an edge by softmax weight go,
    `none` competing like any op, the first on ties (train_search.py:185, its get_min_k)."""
    weakest = sorted(range(len(names)), key=lambda k: (probs[k], k))[: len(names) - keep]
    return [n for k, n in enumerate(names) if k not in weakest]


def _reference_cell(probs: list[list[float]], names: list[list[str]], nodes: int) -> list[set]:
    """P-DARTS's final cell (train_search.py:211-245): `none`'s weight set to 0, each node keeps the
    two edges with the largest remaining weight, each edge its strongest other op."""
    out, start = [], 0
    for node in range(nodes):
        n_in = node + 2
        rows = range(start, start + n_in)
        best = {e: max((p, k) for k, p in enumerate(probs[e]) if names[e][k] != "none") for e in rows}
        top = sorted(rows, key=lambda e: best[e][0])[-2:]
        out.append({(names[e][best[e][1]], e - start) for e in top})
        start += n_in
    return out


def test_stages_prune_and_derive_as_the_reference(tmp_path: Path) -> None:
    """A three-stage search: each stage's ops are the reference's pruning of the stage before's
    final weights (`none` kept where strong), the dropout follows its schedule, the cell its rule."""
    space = tiny_space("cifar_cell")  # 4 ops, `none` among them
    stages = {
        "layers": [3, 3, 3],
        "epochs": [1, 1, 2],
        "warmup_epochs": [0, 0, 1],
        "ops_kept": [4, 3, 2],
        "skip_dropout": [0.1, 0.4, 0.7],
    }
    search = OneShotSearch(space, seed=0, epochs=4, batch_size=256, stages=stages)
    search.run(tiny_ctx(tmp_path, space))
    history = [json.loads(line) for line in (tmp_path / "history.jsonl").read_text().splitlines()]
    assert [r["stage"] for r in history] == [1, 2, 3, 3]
    for before, after in ((history[0], history[1]), (history[1], history[2])):
        for kind in ("normal", "reduce"):
            want = [
                _reference_kept(p, names, len(after["edge_ops"][kind][0]))
                for p, names in zip(before["alphas"][kind], before["edge_ops"][kind], strict=True)
            ]
            assert after["edge_ops"][kind] == want
    assert any("none" in ops for ops in history[-1]["edge_ops"]["normal"])  # what the last stage keeps
    # Stage 3: one warm-up epoch of two, then architecture steps (train_search.py:152-158).
    assert [r["skip_dropout"] for r in history] == [0.1, 0.4, 0.7 * (2 - 0 - 1) / 2, 0.7]
    last = history[-1]
    for kind in ("normal", "reduce"):
        cell = _reference_cell(last["alphas"][kind], last["edge_ops"][kind], nodes=2)
        derived = last["genotype"][kind]
        assert [{tuple(e) for e in derived[i : i + 2]} for i in (0, 2)] == cell


def _arch_grad_norms(arch_grad_clip: float) -> list[float]:
    """The architecture gradient's norm at each Adam step of three search steps."""
    stepper = stepper_of(OneShotSearch(tiny_space("cifar_cell"), arch_grad_clip=arch_grad_clip))
    norms: list[float] = []
    step = stepper.a_opt.step

    def recording_step(*args: object, **kwargs: object) -> object:
        norms.append(float(torch.cat([a.grad.flatten() for a in stepper.alphas]).norm()))
        return step(*args, **kwargs)

    stepper.a_opt.step = recording_step  # type: ignore[method-assign]
    for seed in range(3):
        stepper.step(*batch(seed=2 * seed), *batch(seed=2 * seed + 1))
    return norms


def test_the_architecture_gradient_is_clipped_when_asked() -> None:
    clip = 1e-4
    assert all(n > clip for n in _arch_grad_norms(0.0))  # unclipped, it exceeds the bound
    assert all(n <= clip * (1 + 1e-5) for n in _arch_grad_norms(clip))


def test_search_settings_are_the_reference_scripts(compose_cfg) -> None:
    """train_search.py's defaults and the README's command, where they differ from DARTS's."""
    cfg = compose_cfg("search=p_darts").search
    assert (cfg.batch_size, cfg.lr, cfg.lr_min) == (96, 0.025, 0.0)
    assert (cfg.arch_lr, cfg.arch_grad_clip) == (6e-4, 5.0)
    assert (cfg.weight_decay, cfg.arch_weight_decay, cfg.grad_clip, cfg.order) == (3e-4, 1e-3, 5.0, 1)
    assert list(cfg.stages.layers) == [5, 11, 17]  # --layers 5, --add_layers 6 and 12
    assert list(cfg.stages.skip_dropout) == [0.1, 0.4, 0.7]  # --dropout_rate
    assert list(cfg.stages.ops_kept) == [8, 5, 3] and list(cfg.stages.warmup_epochs) == [10, 10, 10]
