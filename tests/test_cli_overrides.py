"""Overrides through the real CLI: a multirun over strategies, keys added with ``+``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from nasrun import UserError
from nasrun.config.build import build
from tests.evaluator.nb201_tables import write_nb201_table


def _error_line(proc) -> str:
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr
    assert "Traceback" not in proc.stderr and lines[0].startswith("nasrun: error: "), proc.stderr
    return lines[0]


def test_multirun_over_strategies_applies_the_budget_to_every_job(cli, tmp_path: Path) -> None:
    """``search.budget`` composes although a multirun first composes the default search=darts."""
    table = write_nb201_table(tmp_path / "table.csv")
    strategies = ["random_search", "evolution", "bo"]
    proc = cli(
        "-m",
        f"search={','.join(strategies)}",
        "search.budget=5",
        "space=nb201",
        "evaluator=tabular",
        f"evaluator.table={table}",
        f"hydra.sweep.dir={tmp_path / 'sweep'}",
    )
    assert proc.returncode == 0, proc.stderr
    jobs = sorted((tmp_path / "sweep").glob("[0-9]*"), key=lambda p: int(p.name))
    assert len(jobs) == len(strategies)
    ran = []
    for job in jobs:
        ran.append(OmegaConf.load(job / ".hydra" / "hydra.yaml").hydra.runtime.choices.search)
        records = [json.loads(line) for line in (job / "history.jsonl").read_text().splitlines()]
        assert len(records) == 5, (job, len(records))  # the default budget is 100
        assert json.loads((job / "result.json").read_text())["n_evaluations"] == 5
    assert sorted(ran) == sorted(strategies)


def test_darts_refuses_a_budget_it_would_ignore(cli, tmp_path: Path) -> None:
    line = _error_line(cli("experiment=smoke", "search.budget=5", "hydra.run.dir=run"))
    assert "search.budget=5" in line and "search.epochs" in line, line
    assert not (tmp_path / "run" / "checkpoints").exists()


@pytest.mark.parametrize(
    "override, needles",
    [
        ("+search.epohcs=2", ["search.epohcs", "search=darts", "valid keys: ", "epochs"]),
        ("+space.chanels=4", ["space.chanels", "space=cifar_cell", "valid keys: ", "channels"]),
    ],
)
def test_key_added_with_plus_is_one_line_naming_it(
    cli, tmp_path: Path, override: str, needles: list[str]
) -> None:
    line = _error_line(cli("experiment=smoke", override, "hydra.run.dir=run"))
    assert all(n in line for n in needles), line
    assert not (tmp_path / "run" / "checkpoints").exists()


def _takes_a(a: int) -> dict[str, int]:
    return dict(a=a)


def _calls_badly(a: int) -> None:
    _takes_a(b=a)  # type: ignore[call-arg]  # a bug inside a constructor, not a config mistake


def test_build_names_config_keys_only(tmp_path: Path) -> None:
    target = f"{__name__}._takes_a"
    cfg = OmegaConf.create({"x": {"_target_": target, "a": 1}, "y": {"_target_": target, "a": 1, "b": 2}})
    assert build(cfg, "x") == {"a": 1}
    with pytest.raises(UserError, match=r"^y\.b: unknown key for y \(.*_takes_a\); valid keys: a$"):
        build(cfg, "y")
    bug = OmegaConf.create({"z": {"_target_": f"{__name__}._calls_badly", "a": 1}})
    with pytest.raises(Exception, match="unexpected keyword argument 'b'") as info:
        build(bug, "z")
    assert not isinstance(info.value, UserError)
