"""P-DARTS: stage transitions, the skip-connect cap, schedule errors, and a SIGKILL across a stage change."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from nasrun import UserError
from nasrun.search.edges import DenseEdge
from nasrun.search.oneshot import OneShotSearch
from nasrun.space.cifar_cell import CifarCellSpace
from tests.conftest import run_cli

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
    kept = net.pruned_ops(2, drop_none=True)
    for e, row in enumerate(order):
        ranked = [OPS[k] for k in sorted(range(5), key=lambda k: -row[k]) if OPS[k] != "none"]
        assert sorted(kept["normal"][e]) == sorted(ranked[:2])
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
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "nasrun", *ARGS, f"hydra.run.dir={run_dir}"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
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
