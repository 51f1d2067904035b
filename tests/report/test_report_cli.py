"""``nasrun-report PATH`` on real folders: a one-shot run, a multirun over seeds, a BoTorch sweep.

Each folder is made once per module by the real ``nasrun`` command on tiny settings (seconds);
tests that change a folder work on a copy.
"""

from __future__ import annotations

import importlib
import json
import os
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

import pytest
import tomllib
from rich.table import Table

from nasrun.bo.store import TrialState, TrialStore
from nasrun.plots.cell_diagram import cell_dot
from nasrun.report.cli import main, runs_table, seed_table
from nasrun.report.folders import read_folder, read_folders
from nasrun.space.genotype import Genotype
from tests.conftest import REPO, run_cli
from tests.plots.test_cell_diagram import assert_png, parse_dot

TABULAR = ["space=nb201", "evaluator=tabular", "evaluator.table=nb201_cifar10_12ep"]


def _nasrun(cwd: Path, *args: str) -> None:
    proc = run_cli(*args, cwd=cwd)
    assert proc.returncode == 0, proc.stderr[-3000:]


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("report")


@pytest.fixture(scope="module")
def oneshot_run(base: Path) -> Path:
    """A DARTS search of two epochs on a few synthetic images, then a one-epoch retraining."""
    run = base / "oneshot"
    _nasrun(
        base,
        "experiment=smoke",
        "data=synthetic",
        "data.n_train=64",
        "data.n_test=16",
        "search.epochs=2",
        f"hydra.run.dir={run}",
    )
    return run


@pytest.fixture(scope="module")
def seeds_multirun(base: Path) -> Path:
    """Two black-box searches on the NAS-Bench-201 table, two seeds each: four jobs."""
    multi = base / "multi"
    _nasrun(
        base,
        "-m",
        *TABULAR,
        "search=random_search,evolution",
        "search.budget=8",
        "seed=0,1",
        f"hydra.sweep.dir={multi}",
    )
    return multi


@pytest.fixture(scope="module")
def bo_sweep(base: Path) -> Path:
    """A three-trial BoTorch sweep over the random search's budget on the table."""
    sweep = base / "sweep"
    _nasrun(
        base,
        "-m",
        "hydra/sweeper=botorch",
        *TABULAR,
        "search=random_search",
        "hydra.sweeper.params.search.budget=range(4, 20)",
        "hydra.sweeper.n_trials=3",
        "hydra.sweeper.n_initial=2",
        "hydra.sweeper.num_restarts=2",
        "hydra.sweeper.raw_samples=32",
        f"hydra.sweep.dir={sweep}",
    )
    return sweep


def columns(table: Table) -> dict[str, list[str]]:
    """A rich table's cells by column header."""
    return {str(c.header): [str(cell) for cell in c.cells] for c in table.columns}


def result(run: Path) -> dict:
    return json.loads((run / "result.json").read_text())


def job_seed(job: Path) -> str:
    from omegaconf import OmegaConf

    return next(
        o.split("=", 1)[1] for o in OmegaConf.load(job / ".hydra" / "overrides.yaml") if o.startswith("seed=")
    )


def test_a_run_folder(oneshot_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "figures"
    main([str(oneshot_run), "--out", str(out)])
    folder = read_folder(oneshot_run)
    assert folder.kind == "run" and len(folder.runs) == 1
    cells = columns(runs_table(folder))
    res = result(oneshot_run)
    assert cells["overrides"] == [
        "experiment=smoke data=synthetic data.n_train=64 data.n_test=16 search.epochs=2"
    ]
    assert cells["objective"] == [f"{res['val_acc']:.2f}"] and cells["val_acc"] == cells["objective"]
    assert cells["test_acc"] == [f"{res['test_acc']:.2f}"] and cells["params"] == [f"{res['params']:,}"]
    assert cells["status"] == ["done"] and cells["wall"][0].endswith(" s")
    assert seed_table(folder) is None
    # One heatmap of architecture weights per cell type, in --out and not in the run folder.
    assert sorted(p.name for p in out.iterdir()) == ["alphas_normal.png", "alphas_reduce.png"]
    for png in out.iterdir():
        assert_png(png)
    assert not list(oneshot_run.glob("alphas_*.png"))
    printed = capsys.readouterr().out
    assert "alphas_normal.png" in printed and "experiment=smoke" in printed


def test_the_run_leaves_its_cells_as_dot_text(oneshot_run: Path) -> None:
    genotype = Genotype.load(oneshot_run / "genotype.json")
    text = (oneshot_run / "cells.dot").read_text()
    for cell_type in ("normal", "reduce"):
        nodes, edges, concat = parse_dot(text, prefix=f"{cell_type}_")
        _, expected, expected_concat = parse_dot(cell_dot(genotype, cell_type))
        assert edges == expected and concat == expected_concat
        # The smoke space's cells: two nodes of two edges each, both concatenated.
        assert sum(edges.values()) == 4 and len(concat) == 2 and "c_{k-2}" in nodes.values()


def test_python_m_nasrun_report_writes_into_the_folder(oneshot_run: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    shutil.copytree(oneshot_run, run)
    proc = subprocess.run(
        [sys.executable, "-m", "nasrun.report", str(run)],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "COLUMNS": "200"},
    )
    assert proc.returncode == 0, proc.stderr
    assert "done" in proc.stdout and proc.stderr == ""
    for cell_type in ("normal", "reduce"):
        assert_png(run / f"alphas_{cell_type}.png")


def test_a_multirun_over_seeds(seeds_multirun: Path, tmp_path: Path) -> None:
    main([str(seeds_multirun), "--out", str(tmp_path)])
    folder = read_folder(seeds_multirun)
    assert folder.kind == "multirun" and [r.name for r in folder.runs] == ["0", "1", "2", "3"]
    cells = columns(runs_table(folder))
    # Only what differs between the jobs: the search and the seed, not the table's settings.
    assert list(cells)[:3] == ["run", "search", "seed"] and "space" not in cells
    assert cells["seed"] == [job_seed(seeds_multirun / str(j)) for j in range(4)]
    assert sorted(cells["seed"]) == ["0", "0", "1", "1"] and cells["status"] == ["done"] * 4
    assert cells["val_acc"] == [f"{result(seeds_multirun / str(j))['val_acc']:.2f}" for j in range(4)]

    table = seed_table(folder)
    assert table is not None
    groups = columns(table)
    assert sorted(groups["search"]) == ["evolution", "random_search"]
    assert groups["seeds"] == ["0, 1", "0, 1"] and groups["done"] == ["2/2", "2/2"]
    for row, search in enumerate(groups["search"]):
        jobs = [seeds_multirun / r.name for r in folder.runs if r.overrides["search"] == search]
        for key in ("val_acc", "test_acc"):
            values = [result(job)[key] for job in jobs]
            expected = f"{statistics.mean(values):.2f} ± {statistics.stdev(values):.2f}"
            assert groups[key][row] == expected
        assert groups["objective"][row] == groups["val_acc"][row]  # the objective is val_acc
    # A black-box search's convergence, per job.
    for j in range(4):
        assert_png(tmp_path / str(j) / "convergence.png")


def test_unfinished_runs_and_a_multirun_without_multirun_yaml(seeds_multirun: Path, tmp_path: Path) -> None:
    multi = tmp_path / "multi"
    shutil.copytree(seeds_multirun, multi)
    (multi / "multirun.yaml").unlink()  # numbered job folders are enough
    (multi / "1" / "result.json").unlink()  # still running, or stopped
    folder = read_folder(multi)
    assert folder.kind == "multirun"
    cells = columns(runs_table(folder))
    assert cells["status"][1] == "incomplete" and cells["objective"][1] == ""
    assert cells["status"].count("done") == 3
    table = seed_table(folder)
    assert table is not None
    group = columns(table)["done"][columns(table)["search"].index(folder.runs[1].overrides["search"])]
    assert group == "1/2"


def test_a_botorch_sweep(bo_sweep: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    main([str(bo_sweep), "--out", str(tmp_path)])
    folder = read_folder(bo_sweep)
    assert folder.kind == "sweep" and folder.direction == "maximize"
    assert [t.state for t in folder.trials] == [TrialState.COMPLETED] * 3
    cells = columns(runs_table(folder))
    assert cells["search.budget"] == [str(t.params["search.budget"]) for t in folder.trials]
    assert cells["objective"] == [f"{t.value:.2f}" for t in folder.trials]
    assert cells["status"] == ["done"] * 3
    assert_png(tmp_path / "convergence.png")  # the sweep's, over its trials
    assert all((tmp_path / str(j) / "convergence.png").is_file() for j in range(3))  # each job's search
    assert "3 completed" in capsys.readouterr().out


def test_sweep_statuses_come_from_the_trial_store(bo_sweep: Path, tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    shutil.copytree(bo_sweep, sweep)
    store = TrialStore(sweep / "trials.sqlite")
    try:
        failed, running = store.get(1), store.get(2)
        failed.state, failed.value, failed.error = TrialState.FAILED, None, "RuntimeError: diverged"
        running.state, running.value, running.finished = TrialState.RUNNING, None, None
        store.update(failed)
        store.update(running)
    finally:
        store.close()
    (sweep / "2" / "result.json").unlink()  # a running job has not written its result yet
    for name in ("optimization_results.yaml", "convergence.png"):
        (sweep / name).unlink()  # nor has the sweeper its summary
    folder = read_folder(sweep)
    assert folder.kind == "sweep"
    cells = columns(runs_table(folder))
    assert cells["status"] == ["done", "failed", "running"]
    assert cells["objective"][1:] == ["", ""]
    main([str(sweep), "--no-figures"])
    assert not (sweep / "convergence.png").exists()
    main([str(sweep)])
    assert_png(sweep / "convergence.png")  # failed and running trials marked on it


def test_several_folders_in_one_table(
    oneshot_run: Path,
    seeds_multirun: Path,
    bo_sweep: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    out = tmp_path / "figures"
    main([str(oneshot_run), str(seeds_multirun), str(bo_sweep), str(oneshot_run), "--out", str(out)])
    folder = read_folders([oneshot_run, seeds_multirun, bo_sweep])
    assert folder.kind == "runs" and folder.path == oneshot_run.parent
    # Named by their place below the folders' common folder; a run given twice counts once.
    names = [r.name for r in folder.runs]
    assert names == ["oneshot", "multi/0", "multi/1", "multi/2", "multi/3", "sweep/0", "sweep/1", "sweep/2"]
    cells = columns(runs_table(folder))
    assert cells["run"] == names and cells["status"] == ["done"] * 8
    assert "search" in cells and "seed" in cells and "hydra.sweeper.params.search.budget" not in cells
    trials = read_folder(bo_sweep).trials
    assert cells["objective"][-3:] == [f"{t.value:.2f}" for t in trials]  # a sweep's runs: their trials'
    assert cells["val_acc"][0] == f"{result(oneshot_run)['val_acc']:.2f}"
    printed = capsys.readouterr().out
    assert f"trials in the store of {bo_sweep}" in printed and "mean ± std over seeds" in printed
    # Each run's figures below --out where the run is below the common folder; the sweep's too.
    assert_png(out / "oneshot" / "alphas_normal.png")
    assert_png(out / "multi" / "3" / "convergence.png")
    assert_png(out / "sweep" / "convergence.png")


@pytest.fixture(scope="module")
def single_runs(base: Path) -> Path:
    """Two single runs in nasrun's default folders, outputs/runs/DATE/TIME, differing by seed."""
    cwd = base / "singles"
    cwd.mkdir()
    for seed in (0, 1):
        _nasrun(cwd, *TABULAR, "search=random_search", "search.budget=4", f"seed={seed}")
    return cwd / "outputs" / "runs"


def test_a_folder_of_single_runs(single_runs: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "nasrun.report", "outputs/runs"],
        cwd=single_runs.parent.parent,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "COLUMNS": "200"},
    )
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
    runs = sorted(single_runs.glob("*/*"))
    assert len(runs) == 2
    names = [str(r.relative_to(single_runs)) for r in runs]  # DATE/TIME
    assert all(name in proc.stdout for name in names) and "runs outputs/runs (2 runs)" in proc.stdout
    folder = read_folder(single_runs)
    assert folder.kind == "runs" and [r.name for r in folder.runs] == names
    cells = columns(runs_table(folder))
    assert cells["seed"] == ["0", "1"] and cells["status"] == ["done", "done"]
    seeds = seed_table(folder)
    assert seeds is not None and columns(seeds)["seeds"] == ["0, 1"]
    for run in runs:  # by default each run's figures go into its own folder
        assert_png(run / "convergence.png")


def test_not_a_result_folder_is_one_line_and_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # A folder without any run folder below it, however deep: .hydra/ alone does not make one.
    (tmp_path / "a" / "b" / ".hydra").mkdir(parents=True)
    for path in (tmp_path, tmp_path / "missing"):
        with pytest.raises(SystemExit) as info:
            main([str(path)])
        assert info.value.code == 2
        err = capsys.readouterr().err.splitlines()
        assert len(err) == 1 and err[0].startswith(f"nasrun-report: error: {path}: ")
    assert list(tmp_path.rglob("*.png")) == []


def test_the_console_script_is_declared() -> None:
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    module, _, function = scripts["nasrun-report"].partition(":")
    assert getattr(importlib.import_module(module), function) is main
