"""The ``hydra/sweeper=botorch`` plugin end to end, on the tiny Branin app in ``tests/bo/app``.

In-process sweeps use Hydra's own ``hydra_sweep_runner`` fixture; crash and launcher tests run the
app as a real process (SIGKILL must hit a real sweeper).
"""

from __future__ import annotations

import json
import math
import os
import signal
import sqlite3
import statistics
import subprocess
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pytest
from gpytorch.kernels import MaternKernel, RBFKernel
from hydra.core.config_store import ConfigStore
from hydra.core.plugins import Plugins
from hydra.plugins.sweeper import Sweeper
from omegaconf import OmegaConf

from hydra_plugins.nasrun_botorch_sweeper.botorch_sweeper import BoTorchSweeper
from nasrun import UserError
from nasrun.bo import engine, prepare_sweeper_args
from nasrun.bo.engine import BayesOpt
from tests.conftest import enter_sweep, load_script

REPO = Path(__file__).resolve().parent.parent
APP = REPO / "tests" / "bo" / "app" / "branin_app.py"
branin_app = load_script(APP)
TASK = branin_app.task.__wrapped__  # the plain function under @hydra.main


def run_app(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """``python branin_app.py ARGS`` with this checkout importable, one thread."""
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
    }
    return subprocess.run(
        [sys.executable, *args], cwd=APP.parent, env=env, capture_output=True, text=True, timeout=timeout
    )


def run_nasrun_raw(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """``python ARGS`` with this checkout importable (its hydra_plugins too), one thread."""
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
    }
    return subprocess.run(
        [sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=900
    )


def stored(sweep_dir: Path) -> list[dict[str, Any]]:
    """Rows of the sweep folder's trial store, read with plain sqlite3 (what a user could do)."""
    return read_store(sweep_dir / "trials.sqlite")


def read_store(path: Path) -> list[dict[str, Any]]:
    """Rows of the trial store at ``path``."""
    with sqlite3.connect(path) as db:
        db.row_factory = sqlite3.Row
        return [dict(r) for r in db.execute("SELECT * FROM trials ORDER BY id")]


@pytest.fixture
def sweep(hydra_sweep_runner: Callable[..., Any], tmp_path: Path) -> Callable[..., Any]:
    """``sweep(*overrides, folder="sweep")``: runs a sweep in-process in ``tmp_path / folder``;
    returns (trials, sweep_dir, calls), ``calls`` holding the task calls of every sweep so far."""

    def _sweep(*overrides: str, folder: str = "sweep") -> tuple[Any, Path, list[str]]:
        calls = tmp_path / "calls.txt"
        sweep_dir = tmp_path / folder
        runner = hydra_sweep_runner(
            calling_file=str(APP),
            calling_module=None,
            task_function=TASK,
            config_path=".",
            config_name="branin",
            overrides=prepare_sweeper_args([f"calls_file={calls}", *overrides]),
            temp_dir=sweep_dir,
        )
        enter_sweep(runner)
        lines = calls.read_text().splitlines() if calls.exists() else []
        return runner.returns, sweep_dir, lines

    return _sweep


def test_plugin_is_discovered_and_registered() -> None:
    # Hydra's discovery imports the module itself, so compare names rather than class objects.
    names = [f"{c.__module__}.{c.__name__}" for c in Plugins.instance().discover(Sweeper)]
    assert f"{BoTorchSweeper.__module__}.BoTorchSweeper" in names
    assert ConfigStore.instance().load("hydra/sweeper/botorch.yaml").node._target_.endswith("BoTorchSweeper")


def test_help_does_not_import_botorch() -> None:
    out = run_app("-X", "importtime", str(APP), "--help")
    assert out.returncode == 0, out.stderr[-2000:]
    imported = {line.split("|")[-1].strip().split(".")[0] for line in out.stderr.splitlines() if "|" in line}
    assert "hydra_plugins" in imported  # plugin discovery did run
    assert "botorch" not in imported and "gpytorch" not in imported


def test_nasrun_help_does_not_import_botorch(tmp_path: Path) -> None:
    out = run_nasrun_raw("-X", "importtime", "-m", "nasrun", "--help", cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    imported = {line.split("|")[-1].strip().split(".")[0] for line in out.stderr.splitlines() if "|" in line}
    assert "botorch" not in imported and "gpytorch" not in imported


def test_a_small_sweep_writes_store_results_and_plot(sweep: Callable[..., Any]) -> None:
    trials, sweep_dir, calls = sweep("hydra.sweeper.n_trials=5")
    rows = stored(sweep_dir)
    assert [r["state"] for r in rows] == ["COMPLETED"] * 5 and [r["job"] for r in rows] == list(range(5))
    assert len(calls) == 5 and len({r["params"] for r in rows}) == 5
    results = OmegaConf.load(sweep_dir / "optimization_results.yaml")
    best = min(rows, key=lambda r: r["value"])
    assert results.best_value == pytest.approx(best["value"]) and results.direction == "minimize"
    assert OmegaConf.to_container(results.best_params) == json.loads(best["params"])
    assert results.best_value == pytest.approx(
        branin_app.branin(results.best_params.x, results.best_params.y)
    )
    assert (sweep_dir / "convergence.png").read_bytes()[:4] == b"\x89PNG"
    assert all((sweep_dir / str(j) / ".hydra" / "overrides.yaml").exists() for j in range(5))
    # The table of trials, as printed, in a text file: a row per trial, nothing cut short.
    table = (sweep_dir / "trials.txt").read_text(encoding="utf-8")
    assert "…" not in table and "COMPLETED" in table
    rows_shown = [line for line in table.splitlines() if "COMPLETED" in line]
    assert len(rows_shown) == 5
    assert all(f"{branin_app.branin(*json.loads(r['params']).values()):.6g}" in table for r in rows)


def test_dict_return_with_objective_key(sweep: Callable[..., Any]) -> None:
    _, sweep_dir, _ = sweep("hydra.sweeper.n_trials=3", "misbehave=dict", "hydra.sweeper.objective=branin")
    assert [r["state"] for r in stored(sweep_dir)] == ["COMPLETED"] * 3


@pytest.mark.parametrize("spelling", ["path", "url"])
def test_storage_keeps_the_store_where_asked_and_a_later_sweep_resumes_from_it(
    sweep: Callable[..., Any], tmp_path: Path, spelling: str
) -> None:
    db = tmp_path / "stores" / "branin.sqlite"  # its folder does not exist yet
    storage = f"hydra.sweeper.storage={db if spelling == 'path' else f'sqlite:///{db}'}"
    _, first_dir, calls = sweep("hydra.sweeper.n_trials=3", storage)
    first = read_store(db)
    assert [r["state"] for r in first] == ["COMPLETED"] * 3 and len(calls) == 3
    assert not (first_dir / "trials.sqlite").exists()
    # Another sweep folder, the same store and a larger budget: the three trials carry over and
    # only two more run, with job numbers that continue.
    _, second_dir, calls = sweep("hydra.sweeper.n_trials=5", storage, folder="second")
    rows = read_store(db)
    assert rows[:3] == first and [r["state"] for r in rows] == ["COMPLETED"] * 5
    assert [int(line.split()[0]) for line in calls] == [0, 1, 2, 3, 4]
    assert not (second_dir / "trials.sqlite").exists()
    assert OmegaConf.load(second_dir / "optimization_results.yaml").n_trials == 5


@pytest.mark.parametrize(("kernel", "expected"), [("matern52", "MaternKernel"), ("rbf", "RBFKernel")])
def test_kernel_setting_is_the_kernel_of_the_fitted_model(
    sweep: Callable[..., Any], monkeypatch: pytest.MonkeyPatch, kernel: str, expected: str
) -> None:
    kernels: list[str] = []
    fit = engine.fit_model

    def spy(*args: Any, **kwargs: Any) -> Any:
        model = fit(*args, **kwargs)
        kernels.extend(type(m).__name__ for m in model.modules() if isinstance(m, MaternKernel | RBFKernel))
        return model

    monkeypatch.setattr(engine, "fit_model", spy)
    sweep("hydra.sweeper.n_trials=4", f"hydra.sweeper.kernel={kernel}")  # one model after 3 Sobol trials
    assert kernels == [expected]


def test_xi_raises_the_acquisitions_improvement_threshold(
    sweep: Callable[..., Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    thresholds: list[float] = []
    build = engine.build_acquisition

    def spy(*args: Any, **kwargs: Any) -> Any:
        acqf = build(*args, **kwargs)
        thresholds.append(float(acqf.best_f))
        return acqf

    monkeypatch.setattr(engine, "build_acquisition", spy)
    _, sweep_dir, _ = sweep(
        "hydra.sweeper.n_trials=4",
        "hydra.sweeper.acquisition=logei",
        "hydra.sweeper.xi=0.5",
        "hydra.sweeper.explore_fraction=0",
    )
    values = [r["value"] for r in stored(sweep_dir)[:3]]
    # Minimisation: the model maximises minus the value; the bar is the best observation plus
    # xi standard deviations of the observations.
    assert thresholds == [pytest.approx(-min(values) + 0.5 * statistics.stdev(values))]


def test_failed_trials_are_recorded_and_the_sweep_goes_on(
    sweep: Callable[..., Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    # The engine's last resort, re-drawing a point that repeats an earlier trial, is off: a
    # failed point proposed again would show as a repeat.
    monkeypatch.setattr(BayesOpt, "_unique", lambda self, x, seen: x)
    # A third of the x range raises; the sweep must still reach its budget.
    _, sweep_dir, calls = sweep(
        "hydra.sweeper.n_trials=7", "hydra.sweeper.max_failure_rate=1.0", "misbehave=raise_if_x_gt_5"
    )
    rows = stored(sweep_dir)
    assert len(rows) == 7 and len(calls) == 7 and all(r["state"] in ("COMPLETED", "FAILED") for r in rows)
    failed = [r for r in rows if r["state"] == "FAILED"]
    assert failed and all(r["error"].startswith("RuntimeError: diverged at x=") for r in failed)
    assert all(r["value"] is None and json.loads(r["params"])["x"] > 5 for r in failed)
    # No trial lands on or next to a point that failed before it (0.05 of the encoded unit square).
    for r in rows:
        for f in failed:
            if f["id"] < r["id"]:
                assert math.dist(json.loads(r["x"]), json.loads(f["x"])) > 0.05, (r, f)


def test_nan_is_a_failure(sweep: Callable[..., Any]) -> None:
    _, sweep_dir, _ = sweep(
        "hydra.sweeper.n_trials=4",
        "hydra.sweeper.max_failure_rate=1.0",
        "misbehave=nan_if_x_gt_5",
        "hydra.sweeper.params.x=interval(6, 10)",
    )
    rows = stored(sweep_dir)
    assert [r["state"] for r in rows] == ["FAILED"] * 4 and rows[0]["error"] == "the objective is nan"


def test_too_many_failures_stop_the_sweep(sweep: Callable[..., Any]) -> None:
    with pytest.raises(
        UserError, match=r"3 of 8 trials failed, more than hydra.sweeper.max_failure_rate=0.25"
    ):
        sweep("hydra.sweeper.n_trials=8", "misbehave=always_raise")


def test_a_non_number_stops_with_one_line(sweep: Callable[..., Any]) -> None:
    with pytest.raises(UserError, match=r"returned 'not a number' \(str\); the task must return a number"):
        sweep("misbehave=string")


def test_a_dict_without_the_objective_key_stops_after_its_first_trial(
    sweep: Callable[..., Any], tmp_path: Path
) -> None:
    """The default key (val_acc) is not there: no other key is taken in its place."""
    with pytest.raises(UserError) as info:
        sweep("misbehave=dict", folder="dict")
    line = "hydra.sweeper.objective=val_acc: the result of trial 0 (job 0) has no 'val_acc'; it has: branin, other"
    assert str(info.value) == line
    assert [(r["state"], r["error"]) for r in stored(tmp_path / "dict")] == [("FAILED", line)]


@pytest.mark.parametrize(
    ("override", "needle"),
    [
        ("hydra.sweeper.params.z=interval(0, 1)", "unknown parameter path 'z'"),
        ("hydra.sweeper.params.x=interval(1, 0)", "parameter 'x': interval(1.0, 0.0) is empty"),
        (
            "hydra.sweeper.params.x=tag(log, interval(0, 1))",
            "parameter 'x': tag(log, ...) needs a positive range",
        ),
        ("hydra.sweeper.params.x=choice()", "parameter 'x': ValueError while evaluating 'choice()'"),
        ("hydra.sweeper.n_trials=0", "hydra.sweeper.n_trials=0 is invalid"),
        ("hydra.sweeper.explore_fraction=2.0", "hydra.sweeper.explore_fraction=2.0 is invalid"),
    ],
)
def test_bad_input_fails_before_any_trial(sweep: Callable[..., Any], override: str, needle: str) -> None:
    with pytest.raises(UserError) as info:
        sweep(override)
    assert needle in str(info.value) and "\n" not in str(info.value)


def test_misspelt_sweeper_key_fails_at_compose(tmp_path: Path) -> None:
    out = run_app(str(APP), "-m", f"hydra.sweep.dir={tmp_path}", "hydra.sweeper.n_trails=3")
    assert out.returncode != 0 and "n_trails" in out.stderr
    assert not (tmp_path / "trials.sqlite").exists()


def test_a_real_sweep_prints_no_import_warnings_and_leaves_its_trial_table(tmp_path: Path) -> None:
    out = run_app(
        str(APP), "-m", f"hydra.sweep.dir={tmp_path}", "hydra.sweeper.n_trials=3", "hydra.sweeper.n_initial=2"
    )
    assert out.returncode == 0, out.stderr[-2000:]
    # GPyTorch's import makes torch warn that torch.jit.script is deprecated; nasrun filters it.
    assert "jit.script" not in out.stderr and "FutureWarning" not in out.stderr, out.stderr
    table = (tmp_path / "trials.txt").read_text(encoding="utf-8")
    assert sum("COMPLETED" in line for line in table.splitlines()) == 3


def test_resume_after_sigkill(tmp_path: Path) -> None:
    """Kill the sweeper (SIGKILL, mid-batch), re-run the same command: the sweep completes."""
    calls = tmp_path / "calls.txt"
    sweep_dir = tmp_path / "sweep"
    args = [
        str(APP),
        "-m",
        f"hydra.sweep.dir={sweep_dir}",
        f"calls_file={calls}",
        "hydra.sweeper.n_trials=6",
        "hydra.sweeper.batch_size=2",
        "hydra.sweeper.n_initial=2",
    ]
    first = run_app(*args, "kill_at_job=3")
    assert first.returncode == -signal.SIGKILL, first.stderr[-2000:]
    before = stored(sweep_dir)
    # Batch 1 (jobs 0, 1) was told; in batch 2 job 2 returned and job 3 died with the sweeper.
    assert [r["state"] for r in before] == ["COMPLETED", "COMPLETED", "RUNNING", "RUNNING"]

    second = run_app(*args, "kill_at_job=3")  # same command; the kill happens only once
    assert second.returncode == 0, second.stderr[-2000:]
    rows = stored(sweep_dir)
    assert len(rows) == 6 and all(r["state"] == "COMPLETED" for r in rows)  # the budget holds
    jobs = [int(line.split()[0]) for line in calls.read_text().splitlines()]
    # 6 trials + the killed one again; job numbers continue after the crash, no folder is reused.
    assert jobs == [0, 1, 2, 3, 4, 5, 6]
    # Job 2 finished before the crash: its value was recovered, not re-run. Job 3 was re-run as job 4.
    assert rows[2]["job"] == 2 and rows[3]["job"] == 4
    points = [tuple(line.split()[1:]) for line in calls.read_text().splitlines()]
    assert points[3] == points[4] and len(set(points)) == 6
    assert OmegaConf.load(sweep_dir / "optimization_results.yaml").n_trials == 6


def test_joblib_launcher_runs_batches_in_parallel(tmp_path: Path) -> None:
    pytest.importorskip("hydra_plugins.hydra_joblib_launcher")
    out = run_app(
        str(APP),
        "-m",
        f"hydra.sweep.dir={tmp_path}",
        "hydra/launcher=joblib",
        "hydra.launcher.n_jobs=2",
        "hydra.sweeper.n_trials=6",
        "hydra.sweeper.batch_size=3",
        "hydra.sweeper.n_initial=3",
    )
    assert out.returncode == 0, out.stderr[-2000:]
    rows = stored(tmp_path)
    assert [r["state"] for r in rows] == ["COMPLETED"] * 6 and len({r["params"] for r in rows}) == 6


@pytest.mark.slow
def test_submitit_local_launcher(tmp_path: Path) -> None:
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    out = run_app(
        str(APP),
        "-m",
        f"hydra.sweep.dir={tmp_path}",
        "hydra/launcher=submitit_local",
        "hydra.sweeper.n_trials=4",
        "hydra.sweeper.batch_size=2",
        "hydra.sweeper.n_initial=2",
        timeout=600,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert [r["state"] for r in stored(tmp_path)] == ["COMPLETED"] * 4


def _sweep_group() -> str:
    """``sweep=`` if conf/config.yaml lists the group in its defaults, else ``+sweep=`` to add it."""
    defaults = OmegaConf.load(REPO / "conf" / "config.yaml").get("defaults", [])
    listed = any(isinstance(d, Mapping) and "sweep" in d for d in defaults)
    return "sweep" if listed else "+sweep"


def run_nasrun(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
    }
    return subprocess.run(
        [sys.executable, "-m", "nasrun", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=900
    )


@pytest.mark.slow  # about 30 s on a busy 2-core machine: six tiny retrainings of a fixed cell
def test_sweep_preset_on_the_real_nasrun_smoke_experiment(tmp_path: Path) -> None:
    out = run_nasrun(
        f"{_sweep_group()}=smoke_bo", "experiment=smoke", f"hydra.sweep.dir={tmp_path}", cwd=tmp_path
    )
    assert out.returncode == 0, out.stderr[-3000:]
    rows = stored(tmp_path)
    assert [r["state"] for r in rows] == ["COMPLETED"] * 6
    # Each stored value is a trial's validation accuracy, as the trial's own result.json has it.
    results = [json.loads(p.read_text()) for p in tmp_path.glob("*/result.json")]
    assert sorted(r["value"] for r in rows) == sorted(r["val_acc"] for r in results)
    assert {json.loads(r["params"])["trainer.batch_size"] for r in rows} <= {32, 64}
    assert OmegaConf.load(tmp_path / "optimization_results.yaml").direction == "maximize"
    assert "jit.script" not in out.stderr, out.stderr
    table = (tmp_path / "trials.txt").read_text(encoding="utf-8")
    assert "trainer.batch_size" in table and "…" not in table  # no column cut short
    assert "trainer.batch_size" in out.stdout and "…" not in out.stdout  # nor on a piped stdout


@pytest.mark.slow
def test_readme_command_line_on_the_real_nasrun(tmp_path: Path) -> None:
    """The README's spelling: the space as unquoted ``hydra.sweeper.params.*`` overrides (needs
    ``nasrun.cli.main`` to pass ``sys.argv`` through ``prepare_sweeper_args``)."""
    out = run_nasrun(
        "-m",
        "hydra/sweeper=botorch",
        "experiment=smoke",
        f"hydra.sweep.dir={tmp_path}",
        "hydra.sweeper.params.trainer.lr=tag(log, interval(1e-3, 0.3))",
        "hydra.sweeper.params.retrain.drop_path=interval(0.0, 0.4)",
        "hydra.sweeper.n_trials=2",
        "hydra.sweeper.n_initial=2",
        cwd=tmp_path,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert [r["state"] for r in stored(tmp_path)] == ["COMPLETED"] * 2


def test_slurm_launcher_preset_composes() -> None:
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    from hydra import compose, initialize_config_dir

    from nasrun.config import config_dir

    with initialize_config_dir(version_base="1.3", config_dir=str(config_dir())):
        cfg = compose(
            "config",
            overrides=["hydra/launcher=slurm_gpu", "hydra/sweeper=botorch"],
            return_hydra_config=True,
        )
    assert cfg.hydra.launcher._target_.endswith("SlurmLauncher")
    assert cfg.hydra.launcher.gpus_per_node == 1 and cfg.hydra.sweeper.n_trials == 20


@pytest.mark.slow  # two trials, each a submitit job of two processes: about a minute here
def test_a_sweep_whose_trials_are_data_parallel_jobs(tmp_path: Path) -> None:
    """Each trial runs as two submitit tasks (the SLURM preset's tasks_per_node, on this machine):
    the trial retrains data-parallel over both, its first task writes the folder and the sweeper
    stores that task's validation accuracy."""
    out = run_nasrun(
        f"{_sweep_group()}=smoke_bo",
        "experiment=smoke",
        "hydra/launcher=submitit_local",
        "hydra.launcher.tasks_per_node=2",
        "hydra.sweeper.n_trials=2",
        "hydra.sweeper.n_initial=2",
        "hydra.sweeper.batch_size=2",
        f"hydra.sweep.dir={tmp_path}",
        cwd=tmp_path,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    rows = stored(tmp_path)
    assert [r["state"] for r in rows] == ["COMPLETED"] * 2
    results = [json.loads(p.read_text()) for p in tmp_path.glob("*/result.json")]
    assert [r["processes"] for r in results] == [2, 2]
    assert sorted(r["value"] for r in rows) == sorted(r["val_acc"] for r in results)
