"""The shared black-box search loop (``BlackBoxStrategy.run``): what it prints where no progress bar shows."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from nasrun.evaluator.tabular import TabularEvaluator
from nasrun.search.base import SearchContext
from nasrun.search.blackbox.random_search import RandomSearch
from nasrun.space.nb201 import NB201Space
from tests.evaluator.nb201_tables import write_nb201_table


@pytest.fixture(scope="module")
def table(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A made-up table covering the whole NB-201 space (the real one may be absent)."""
    return write_nb201_table(tmp_path_factory.mktemp("table") / "nb201_made_up.csv")


def test_a_search_off_a_terminal_prints_a_line_every_budget_twentieth(
    table: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    space = NB201Space()
    ctx = SearchContext(space=space, run_dir=tmp_path, evaluator=TabularEvaluator(str(table)))
    result = RandomSearch(space=space, seed=0, budget=45).run(ctx)
    lines = [line for line in capsys.readouterr().out.splitlines() if re.match(r"search \d+/45 ", line)]
    # Every max(1, 45 // 20) = 2 evaluations, and at the last one.
    assert [int(line.split()[1].split("/")[0]) for line in lines] == [*range(2, 45, 2), 45]
    last = re.fullmatch(r"search 45/45 evaluations, best val_acc (\d+\.\d\d), (\d+\.\d)s", lines[-1])
    assert last is not None, lines[-1]
    assert float(last.group(1)) == pytest.approx(result.metrics["search_val_acc"], abs=0.005)
    # The best so far never falls.
    best = [float(re.search(r"best val_acc (\S+),", line).group(1)) for line in lines]  # type: ignore[union-attr]
    assert best == sorted(best)
