"""The command line: one clear line for every kind of bad input, before any training."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hydra.errors import ConfigCompositionException
from omegaconf.errors import ValidationError

from nasrun import UserError
from nasrun.pipeline import run


@pytest.mark.parametrize(
    "override, message",
    [
        ("search.epochs=-1", "search.epochs=-1"),
        ("space.layers=2", "space.layers=2"),
        ("trainer.amp=fp8", "trainer.amp='fp8'"),
        ("search.order=3", "search.order=3"),
        ("data.val_portion=1.5", "data.val_portion=1.5"),
    ],
)
def test_invalid_values_stop_before_training(
    compose_cfg, tmp_path: Path, override: str, message: str
) -> None:
    cfg = compose_cfg("experiment=smoke", override)
    with pytest.raises(Exception) as info:
        run(cfg, tmp_path)
    err = info.value
    while not isinstance(err, UserError) and err.__cause__ is not None:
        err = err.__cause__
    assert isinstance(err, UserError) and message in str(err)
    assert not (tmp_path / "checkpoints").exists()  # nothing was trained


def test_unknown_key_and_wrong_type_fail_at_compose(compose_cfg) -> None:
    with pytest.raises(ConfigCompositionException, match="epochz"):
        compose_cfg("experiment=smoke", "search.epochz=3")
    with pytest.raises((ConfigCompositionException, ValidationError)):
        compose_cfg("experiment=smoke", "search.epochs=many")


TABULAR = ["space=nb201", "evaluator=tabular", "seed=3"]


@pytest.mark.parametrize(
    "args, needles",
    [
        (
            ["search=evolution", "evaluator.table=t.csv", "search.budget=abc"],
            ["search.budget=abc", "Integer"],
        ),
        (
            ["search=evolution", "evaluator.table=t.csv", "search.populaton=3"],
            ["search.populaton", "Evolution"],
        ),
        (["search=evolution"], ["Missing mandatory value: evaluator.table"]),
        (
            ["search=evolutoin", "evaluator.table=t.csv"],
            ["search=evolutoin: no such option; options: ", "evolution, gdas, p_darts"],
        ),
        (["search=evolution", "evaluator.table=t.csv", "data=digit"], ["data=digit: no such option"]),
    ],
)
def test_config_errors_print_one_line_and_exit_2(
    cli, tmp_path: Path, args: list[str], needles: list[str]
) -> None:
    proc = cli(*TABULAR, *args, "hydra.run.dir=run")
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr
    assert lines[0].startswith("nasrun: error: ") and all(n in lines[0] for n in needles), lines[0]
    # Only the options a user can choose: not the ConfigStore's schemas (bo_schema, cifar_schema...).
    assert "_schema" not in lines[0]
    assert not (tmp_path / "run").exists()  # refused before any work: no run folder either


def test_user_errors_print_one_line_without_traceback(cli, tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text(
        json.dumps(
            {
                "normal": [["conv_9x9", 0]] * 8,
                "normal_concat": [2, 3, 4, 5],
                "reduce": [],
                "reduce_concat": [],
            }
        )
    )
    proc = cli(
        "task=retrain", f"genotype_path={bad}", "experiment=smoke", "space.nodes=4", "hydra.run.dir=run1"
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert lines == [lines[0]] and "conv_9x9" in lines[0] and "valid operations" in lines[0], proc.stderr

    broken = tmp_path / "broken.json"
    broken.write_text("{")
    proc = cli("task=retrain", f"genotype_path={broken}", "experiment=smoke", "hydra.run.dir=run2")
    assert (
        proc.returncode == 2
        and "broken.json: not valid JSON" in proc.stderr
        and "Traceback" not in proc.stderr
    )


def test_retrain_task_with_named_genotype_writes_the_run_folder(cli, tmp_path: Path) -> None:
    proc = cli("task=retrain", "genotype=darts_v2", "experiment=smoke", "space.nodes=4", "hydra.run.dir=out")
    assert proc.returncode == 0, proc.stderr
    out = tmp_path / "out"
    result = json.loads((out / "result.json").read_text())
    # The result reports the last retraining epoch's test accuracy, as its history line has it.
    last = json.loads((out / "retrain_history.jsonl").read_text().splitlines()[-1])
    assert result["task"] == "retrain" and result["test_acc"] == last["test_acc"]
    assert result["epochs"] == last["epoch"]
    assert json.loads((out / "genotype.json").read_text())["normal"][0] == ["sep_conv_3x3", 0]
    for name in ("cells.png", "retrain_history.jsonl", "checkpoints/retrain.pt", ".hydra/config.yaml"):
        assert (out / name).exists(), name
    # Running again into the same folder without resume=true must not overwrite it.
    proc = cli("task=retrain", "genotype=darts_v2", "experiment=smoke", "space.nodes=4", "hydra.run.dir=out")
    assert proc.returncode == 2 and "resume=true" in proc.stderr


def test_p_darts_on_a_space_of_fixed_depth_says_what_the_user_chose(cli, tmp_path: Path) -> None:
    proc = cli("search=p_darts", "space=nb201", "experiment=smoke")
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2 and len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert lines[0].startswith("nasrun: error: search=p_darts needs a space of variable depth"), lines[0]
    assert "space=nb201 has a fixed depth" in lines[0]
    # Refused before any work: the run folder Hydra had made (outputs/runs/DATE/TIME) is gone.
    assert not (tmp_path / "outputs").exists()


def test_a_refused_run_leaves_a_folder_as_it_found_it(cli, tmp_path: Path) -> None:
    """An empty folder stays empty; a folder that held a run keeps it, byte for byte."""
    (tmp_path / "empty").mkdir()
    proc = cli("task=retrain", "experiment=smoke", "hydra.run.dir=empty")
    assert proc.returncode == 2 and "task=retrain needs genotype=NAME" in proc.stderr, proc.stderr
    assert list((tmp_path / "empty").iterdir()) == []

    tabular = [
        "space=nb201",
        "evaluator=tabular",
        "evaluator.table=nb201_cifar10_12ep",
        "search=random_search",
    ]
    run = tmp_path / "run"
    proc = cli(*tabular, "search.budget=2", f"hydra.run.dir={run}")
    assert proc.returncode == 0, proc.stderr
    before = {p: p.read_bytes() for p in sorted(run.rglob("*")) if p.is_file()}
    # A resume that the guard lets through (threads never change results) but the run refuses.
    proc = cli(*tabular, "search.budget=2", "trainer.threads=-3", f"hydra.run.dir={run}", "resume=true")
    assert proc.returncode == 2 and "trainer.threads" in proc.stderr, proc.stderr
    assert {p: p.read_bytes() for p in sorted(run.rglob("*")) if p.is_file()} == before
