"""A tabular benchmark as an evaluator: look an architecture's accuracy up instead of training it.

The table is a CSV with columns ``arch,val_acc,test_acc`` where ``arch`` is the NAS-Bench-201
string of the cell. A strategy sees ``val_acc`` only (it is the score); ``test_acc`` is carried along
so that the chosen architecture's test accuracy can be reported. Lookups are free, so a repeated
query costs nothing; the search loop still counts every query towards the budget, which is why
the strategies never propose an architecture twice.
"""

from __future__ import annotations

import csv
import math
import os
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from nasrun import UserError
from nasrun.evaluator.base import EvalContext, Evaluation
from nasrun.space.genotype import Genotype, GenotypeError
from nasrun.space.nb201 import from_string, to_string

REQUIRED_COLUMNS = ("arch", "val_acc", "test_acc")


@dataclass(frozen=True)
class TableRow:
    """One benchmark entry: accuracies in percent."""

    val_acc: float
    test_acc: float


def _number(value: str, where: str, key: str) -> float:
    try:
        x = float(value)
    except ValueError:
        raise UserError(f"{where}: {key} is not a number: {value!r}") from None
    if not math.isfinite(x):
        raise UserError(f"{where}: {key} is not finite: {value!r}")
    return x


@cache
def load_table(path: str) -> dict[str, TableRow]:
    """Read and check a benchmark table, keyed by the canonical NAS-Bench-201 string.

    Cached per path, so a benchmark script running many searches parses the file once.

    Raises:
        UserError: missing file or column, an empty file, a header without rows, an unparsable
            row (named by its line number) or a duplicate architecture.
    """
    p = Path(path)
    if not p.is_file():
        raise UserError(
            f"evaluator.table: file not found: {p} (shipped tables, by name: {', '.join(bundled_tables())})"
        )
    table: dict[str, TableRow] = {}
    with p.open(newline="") as f:
        reader = csv.DictReader(f)
        if reader.fieldnames is None:  # not even a header line
            raise UserError(f"{p}: empty file (need a header line {','.join(REQUIRED_COLUMNS)} and rows)")
        missing = [c for c in REQUIRED_COLUMNS if c not in reader.fieldnames]
        if missing:
            raise UserError(f"{p}: missing column {missing[0]!r} (need {', '.join(REQUIRED_COLUMNS)})")
        for row in reader:
            # Line numbers count the header as line 1, as an editor shows them.
            where = f"{p} line {reader.line_num}"
            try:
                key = to_string(from_string(row["arch"] or "", where))
            except GenotypeError as e:
                raise UserError(str(e)) from None
            if key in table:
                raise UserError(f"{where}: duplicate architecture {key}")
            table[key] = TableRow(
                _number(row["val_acc"], where, "val_acc"), _number(row["test_acc"], where, "test_acc")
            )
    if not table:
        raise UserError(f"{p}: no rows (only a header line; the table needs one row per architecture)")
    return table


class TabularEvaluator:
    """Score architectures by looking them up in a benchmark table.

    Args:
        table: the name of a table shipped with nasrun (``nb201_cifar10_12ep``), or the path of a
            CSV (relative paths are taken from the directory nasrun was started in, not Hydra's
            run folder).

    Attributes:
        free: a look-up costs nothing, so a one-shot search scores each epoch's derived cell with
            it by default (``search.evaluate_derived``), for the record.
    """

    free = True

    def __init__(self, table: str) -> None:
        self.path = _absolute(table)
        self.table = load_table(str(self.path))

    def evaluate(self, genotype: Genotype, ctx: EvalContext) -> Evaluation:
        """Look ``genotype`` up.

        Raises:
            UserError: the architecture is not in the table (e.g. the space is not nb201).
        """
        key = ctx.space.describe(genotype)
        row = self.table.get(key)
        if row is None:
            raise UserError(f"{self.path}: no entry for architecture {key} (the table covers space=nb201)")
        return Evaluation(val_acc=row.val_acc, test_acc=row.test_acc, cost_s=0.0)

    def oracle(self) -> tuple[str, TableRow]:
        """The best-validation architecture of the whole table (ties: first in file order)."""
        return max(self.table.items(), key=lambda kv: kv[1].val_acc)


#: Tables shipped with nasrun, chosen by name (``evaluator.table=nb201_cifar10_12ep``).
BUNDLED = Path(__file__).resolve().parent / "tables"


def bundled_tables() -> list[str]:
    """The names of the tables shipped with nasrun."""
    return sorted(p.stem for p in BUNDLED.glob("*.csv"))


def _absolute(path: str) -> Path:
    """A shipped table's file for a bare name, else the path from where nasrun was started."""
    if path in bundled_tables():
        return BUNDLED / f"{path}.csv"
    p = Path(os.path.expanduser(path))
    if p.is_absolute():
        return p
    try:  # Hydra changes the working directory for a run; resolve against where the user started.
        from hydra.utils import get_original_cwd

        return Path(get_original_cwd()) / p
    except (ImportError, ValueError):
        return Path.cwd() / p
