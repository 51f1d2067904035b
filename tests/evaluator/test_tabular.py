"""The tabular evaluator: the real NAS-Bench-201 table, and one clear line for every bad input."""

from __future__ import annotations

from pathlib import Path

import pytest

from nasrun import UserError
from nasrun.evaluator.tabular import TabularEvaluator
from nasrun.search.base import SearchContext
from nasrun.space.cifar_cell import CifarCellSpace
from nasrun.space.nb201 import NB201Space, from_string
from tests.conftest import NB201_TABLE

TABLE = NB201_TABLE
BEST = "|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+|skip_connect~0|nor_conv_1x1~1|nor_conv_3x3~2|"
ROW = "|none~0|+|none~0|none~1|+|none~0|none~1|none~2|"


def test_real_table_matches_its_published_facts(tmp_path: Path) -> None:
    ev = TabularEvaluator(str(TABLE))
    assert len(ev.table) == 5**6
    arch, row = ev.oracle()
    # data/README.md: best validation 84.892, whose test accuracy is 89.03.
    assert arch == BEST and row.val_acc == pytest.approx(84.892) and row.test_acc == pytest.approx(89.03)
    got = ev.evaluate(from_string(BEST), SearchContext(space=NB201Space(), run_dir=tmp_path))
    assert (got.val_acc, got.test_acc) == (row.val_acc, row.test_acc)


def _write(tmp_path: Path, text: str) -> str:
    p = tmp_path / "table.csv"
    p.write_text(text)
    return str(p)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (f"arch,val_acc\n{ROW},1\n", "missing column 'test_acc'"),
        (f"arch,val_acc,test_acc\n{ROW},1,2\n|none~0|+|bad|,1,2\n", r"line 3: expected 3 nodes"),
        (
            "arch,val_acc,test_acc\n|conv_9x9~0|+|none~0|none~1|+|none~0|none~1|none~2|,1,2\n",
            "line 2: unknown op 'conv_9x9'",
        ),
        (f"arch,val_acc,test_acc\n{ROW},high,2\n", "line 2: val_acc is not a number"),
        (f"arch,val_acc,test_acc\n{ROW},1,2\n{ROW},1,2\n", "line 3: duplicate architecture"),
        ("arch,val_acc,test_acc\n", "no rows"),
        ("", "empty file"),
    ],
)
def test_bad_tables_give_one_line_naming_file_and_row(tmp_path: Path, text: str, message: str) -> None:
    path = _write(tmp_path, text)
    with pytest.raises(UserError, match=message) as info:
        TabularEvaluator(path)
    assert "table.csv" in str(info.value) and "\n" not in str(info.value)


def test_missing_file_and_missing_architecture(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="file not found"):
        TabularEvaluator(str(tmp_path / "nope.csv"))
    ev = TabularEvaluator(_write(tmp_path, f"arch,val_acc,test_acc\n{ROW},10,11\n"))
    ctx = SearchContext(space=NB201Space(), run_dir=tmp_path)
    assert ev.evaluate(from_string(ROW), ctx).val_acc == 10
    with pytest.raises(UserError, match="no entry for architecture"):
        ev.evaluate(from_string(BEST), ctx)
    cifar = CifarCellSpace()
    with pytest.raises(UserError, match="space=nb201"):
        ev.evaluate(cifar.decode([0] * len(cifar.decisions())), SearchContext(space=cifar, run_dir=tmp_path))


def test_a_shipped_table_is_chosen_by_name() -> None:
    from nasrun.evaluator.tabular import TabularEvaluator, bundled_tables

    assert "nb201_cifar10_12ep" in bundled_tables()
    evaluator = TabularEvaluator("nb201_cifar10_12ep")
    assert evaluator.path == TABLE and len(evaluator.table) == 15_625
    with pytest.raises(UserError, match="shipped tables, by name: nb201_cifar10_12ep"):
        TabularEvaluator("nb201_nope")
