"""One-shot search on NAS-Bench-201: DARTS and its family on the benchmark's supernet, table look-ups per epoch."""

from __future__ import annotations

import functools
import json
from pathlib import Path

import pytest
import torch

from nasrun import UserError
from nasrun.evaluator.tabular import TabularEvaluator
from nasrun.pipeline import run
from nasrun.search.oneshot.edges import PartialChannelEdge
from nasrun.search.oneshot.engine import OneShotSearch
from nasrun.space.genotype import Genotype
from nasrun.space.nb201 import NB201Space, to_string
from tests.search.sampling_helpers import tiny_ctx

TABLE = "nb201_cifar10_12ep"


def _history(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "history.jsonl").read_text().splitlines()]


def test_darts_on_nb201_looks_each_epochs_cell_up_in_the_table_without_feedback(
    compose_cfg, tmp_path: Path
) -> None:
    base = ["experiment=smoke", "search=darts", "space=nb201", "search.epochs=2", "seed=2"]
    tabular = [*base, "evaluator=tabular", f"evaluator.table={TABLE}"]
    run(compose_cfg(*tabular), tmp_path / "table")  # digits trains the supernet; the table scores its cells
    run(compose_cfg(*tabular, "search.evaluate_derived=false"), tmp_path / "plain")
    table = TabularEvaluator(TABLE).table
    scored, plain = _history(tmp_path / "table"), _history(tmp_path / "plain")
    assert len(scored) == 2
    for record in scored:  # on by default with a table, and exactly the table's numbers
        arch = to_string(Genotype.from_dict(record["genotype"]))
        assert (record["derived_val_acc"], record["derived_test_acc"]) == (
            table[arch].val_acc,
            table[arch].test_acc,
        )
    assert all("derived_val_acc" not in r for r in plain)
    # The look-ups never feed back: the same architecture weights and cells, epoch by epoch.
    assert [r["alphas"] for r in scored] == [r["alphas"] for r in plain]
    assert [r["genotype"] for r in scored] == [r["genotype"] for r in plain]
    result = json.loads((tmp_path / "table" / "result.json").read_text())
    assert result["derived_test_acc"] == scored[-1]["derived_test_acc"]
    assert result["genotype"] == to_string(Genotype.from_dict(scored[-1]["genotype"]))


def test_pc_darts_runs_on_nb201(tmp_path: Path) -> None:
    space = NB201Space(channels=4, cells=1)
    search = OneShotSearch(
        space,
        seed=1,
        epochs=1,
        batch_size=256,
        edge=functools.partial(PartialChannelEdge, k=2),
        edge_normalisation=True,
    )
    initial = search.build_network(10, 1).genotype()
    result = search.run(tiny_ctx(tmp_path, space))
    last = _history(tmp_path)[-1]
    # The cell is the argmax of each edge's final weights (node 1 <- 0; 2 <- 0, 1; 3 <- 0, 1, 2),
    # and the architecture step moved it away from the initial cell.
    rows = torch.tensor(last["alphas"]["normal"])
    argmax = [last["ops"][k] for k in rows.argmax(dim=1).tolist()]
    assert result.genotype.normal == tuple(zip(argmax, (0, 0, 1, 0, 1, 2), strict=True))
    assert last["genotype"] == result.genotype.to_dict() and result.genotype != initial


def test_p_darts_on_nb201_is_refused_in_one_line(compose_cfg, tmp_path: Path) -> None:
    with pytest.raises(
        UserError,
        match=r"search.stages.layers=\[3, 3\] needs a space of variable depth .* space=nb201 has a fixed depth",
    ) as info:
        run(compose_cfg("experiment=smoke", "search=p_darts", "space=nb201"), tmp_path)
    assert "\n" not in str(info.value)
    # Without deeper stages, the skip-connect cap is what does not apply.
    stages = {"layers": [None, None], "epochs": [1, 1], "warmup_epochs": [0, 0], "ops_kept": [5, 3]}
    with pytest.raises(UserError, match=r"search.max_skips=2: space 'nb201' keeps every edge of its cell"):
        OneShotSearch(NB201Space(), epochs=2, stages={**stages, "skip_dropout": [0, 0]}, max_skips=2)
    # Pruning stages alone work: each edge keeps its strongest ops, `none` may stay until the last.
    OneShotSearch(NB201Space(), epochs=2, stages={**stages, "skip_dropout": [0.1, 0.4]})
