"""trainer.threads: how many CPU threads each process of a run gets, and that they are applied."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig

from nasrun import UserError
from nasrun.config import config_dir
from nasrun.evaluator import train as train_evaluator
from nasrun.train import threads
from nasrun.train.threads import (
    apply_threads,
    env_threads,
    hydra_launcher,
    launcher_jobs,
    parse_threads,
    resolve_threads,
)
from nasrun.train.trainer import Trainer

JOBLIB = "hydra_plugins.hydra_joblib_launcher.joblib_launcher.JoblibLauncher"
BASIC = "hydra._internal.core_plugins.basic_launcher.BasicLauncher"


@pytest.mark.parametrize(
    "cores, jobs, workers, expected",
    [
        (8, 1, 1, 8),  # a single run: every core
        (8, 2, 1, 4),  # two parallel jobs: half each
        (8, 3, 1, 2),  # rounded down
        (2, 16, 1, 1),  # more jobs than cores: at least 1
        (8, 2, 2, 2),  # each of 2 evaluator workers gets half of the job's 4
        (8, 1, 3, 2),
        (1, 1, 4, 1),
    ],
)
def test_auto_divides_the_cores_among_jobs_and_workers(
    cores: int, jobs: int, workers: int, expected: int
) -> None:
    assert resolve_threads("auto", cores=cores, jobs=jobs, workers=workers, env={}) == expected


def test_an_explicit_value_wins_over_cores_jobs_and_environment() -> None:
    env = {"OMP_NUM_THREADS": "2"}
    assert resolve_threads(6, cores=2, jobs=4, env=env) == 6
    assert resolve_threads("6", cores=2, env=env) == 6
    assert resolve_threads(6, cores=2, workers=4, env=env) == 1  # the run's 6, split among 4 workers
    assert resolve_threads(6, cores=2, workers=3, env=env) == 2


@pytest.mark.parametrize(
    "env, expected",
    [
        ({"OMP_NUM_THREADS": "3"}, 3),  # the user's per-process choice: not divided by the jobs
        ({"MKL_NUM_THREADS": "5"}, 5),
        ({"OMP_NUM_THREADS": "3", "MKL_NUM_THREADS": "5"}, 3),  # torch's order
        ({"OMP_NUM_THREADS": "4,2"}, 4),  # OpenMP's nested list form
        ({"OMP_NUM_THREADS": "lots"}, 4),  # not a count: ignored
        ({"OMP_NUM_THREADS": "0"}, 4),
        ({}, 4),
    ],
)
def test_auto_respects_a_thread_count_set_in_the_environment(env: dict[str, str], expected: int) -> None:
    assert resolve_threads("auto", cores=8, jobs=2, env=env) == expected


@pytest.mark.parametrize("bad", ["fast", "", 0, -2, 1.5, True, [2]])
def test_a_bad_value_is_a_one_line_error_naming_the_key(bad: object) -> None:
    with pytest.raises(UserError, match=r"^trainer\.threads=.*auto or a positive integer") as info:
        resolve_threads(bad, cores=4)
    assert "\n" not in str(info.value)
    with pytest.raises(UserError, match=r"^trainer\.threads="):
        Trainer(device="cpu", threads=bad)  # type: ignore[arg-type]


def test_parse_threads() -> None:
    assert parse_threads("auto") is None and parse_threads("AUTO") is None
    assert parse_threads(3) == 3 and parse_threads("3") == 3
    assert Trainer(device="cpu", threads=2).threads == 2


@pytest.mark.parametrize(
    "launcher, cores, expected",
    [
        (None, 8, 1),  # a single run
        ({"_target_": BASIC}, 8, 1),  # one job after another
        ({"_target_": JOBLIB, "n_jobs": -1}, 8, 8),  # one job per core
        ({"_target_": JOBLIB, "n_jobs": None}, 8, 8),
        ({"_target_": JOBLIB, "n_jobs": -2}, 8, 7),  # all cores but one, as joblib counts
        ({"_target_": JOBLIB, "n_jobs": -20}, 8, 1),
        ({"_target_": JOBLIB, "n_jobs": 3}, 8, 3),
        ({"_target_": "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher"}, 8, 1),
        ({"_target_": "hydra_plugins.hydra_ray_launcher.ray_launcher.RayLauncher"}, 8, 1),
    ],
)
def test_launcher_jobs(launcher: dict[str, object] | None, cores: int, expected: int) -> None:
    assert launcher_jobs(launcher, cores) == expected


@pytest.mark.parametrize("n_jobs, expected", [(None, 2), (1, 1)])
def test_the_launcher_of_a_real_joblib_multirun(
    monkeypatch: pytest.MonkeyPatch, n_jobs: int | None, expected: int
) -> None:
    """The launcher config Hydra composes for ``-m hydra/launcher=joblib``, read as a job reads it."""
    overrides = ["hydra/launcher=joblib", "hydra.mode=MULTIRUN"]
    if n_jobs is not None:
        overrides.append(f"hydra.launcher.n_jobs={n_jobs}")
    with initialize_config_dir(version_base="1.3", config_dir=str(config_dir())):
        cfg = compose(config_name="config", overrides=overrides, return_hydra_config=True)
    hc = HydraConfig.instance()
    monkeypatch.setattr(hc, "cfg", None)  # restored after the test
    assert hydra_launcher() is None  # outside a Hydra job
    hc.set_config(cfg)
    launcher = hydra_launcher()
    assert launcher is not None and launcher["_target_"] == JOBLIB
    assert launcher_jobs(launcher, cores=2) == expected
    assert resolve_threads("auto", cores=2, jobs=launcher_jobs(launcher, cores=2), env={}) == 2 // expected


def test_the_default_trainer_config_is_auto(compose_cfg) -> None:
    cfg = compose_cfg()
    assert cfg.trainer.threads == "auto"
    assert compose_cfg("trainer.threads=3").trainer.threads == 3


@pytest.fixture
def restore_threads(monkeypatch: pytest.MonkeyPatch):
    """Undo ``apply_threads``: torch's intra-op threads (the suite runs on 1) and the environment."""
    before = torch.get_num_threads()
    for var in threads.ENV_VARS:
        monkeypatch.setenv(var, os.environ.get(var, "1"))  # restored after the test
    monkeypatch.setattr(threads, "_user_env", None)
    yield
    torch.set_num_threads(before)


def test_apply_threads_sets_torch_and_the_environment_of_child_processes(restore_threads) -> None:
    n = 3 if torch.get_num_threads() != 3 else 2
    user = env_threads()
    assert apply_threads(n) == n
    assert torch.get_num_threads() == n
    assert all(os.environ[var] == str(n) for var in threads.ENV_VARS)
    # `auto` in a later run of this process still sees the user's value, not nasrun's own.
    assert env_threads() == user
    apply_threads(1)
    assert torch.get_num_threads() == 1


def test_an_evaluator_worker_applies_its_share(restore_threads, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(train_evaluator, "_WORKER", {})
    n = 3 if torch.get_num_threads() != 3 else 2
    train_evaluator._init_worker(None, None, None, 1, {}, 0, n)  # type: ignore[arg-type]
    assert torch.get_num_threads() == n and os.environ["OMP_NUM_THREADS"] == str(n)


def test_a_run_reports_the_threads_it_uses(tmp_path: Path) -> None:
    """A real run: an explicit trainer.threads wins over OMP_NUM_THREADS in the environment."""
    env = {**os.environ, "OMP_NUM_THREADS": "2", "PYTHONUNBUFFERED": "1"}
    args = [
        "experiment=smoke",
        "retrain.enabled=false",
        "trainer.threads=1",
        f"hydra.run.dir={tmp_path / 'run'}",
    ]
    proc = subprocess.run(
        [sys.executable, "-m", "nasrun", *args],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    header = [line for line in proc.stdout.splitlines() if line.startswith("data ")]
    assert len(header) == 1 and header[0].rstrip().endswith("threads 1"), proc.stdout[:2000]
