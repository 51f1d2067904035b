"""Pruning and asynchronous workers of ``hydra/sweeper=botorch``, on the toy app ``tests/bo/app/curves_app.py``.

Its trials have known learning curves (the same shape for all, so every epoch ranks them alike)
and a planted bad learning-rate region (lr > 0.1). In-process sweeps use Hydra's
``hydra_sweep_runner``; crash and worker tests run the app as real processes.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from omegaconf import OmegaConf

from nasrun import UserError
from nasrun.bo import prepare_sweeper_args
from tests.conftest import enter_sweep, load_script

REPO = Path(__file__).resolve().parent.parent
APP = REPO / "tests" / "bo" / "app" / "curves_app.py"
curves_app = load_script(APP)
TASK = curves_app.task.__wrapped__  # the plain function under @hydra.main
EPOCHS = 12


def env() -> dict[str, str]:
    return {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
    }


def app(*args: str) -> list[str]:
    return [sys.executable, str(APP), "-m", *args]


def rows(sweep_dir: Path) -> list[dict[str, Any]]:
    """The trials of the sweep folder's store, read with plain sqlite3 (what a user could do)."""
    with sqlite3.connect(sweep_dir / "trials.sqlite") as db:
        db.row_factory = sqlite3.Row
        # Row ids count from 1, trial ids from 0.
        return [{**dict(r), "id": r["id"] - 1} for r in db.execute("SELECT * FROM trials ORDER BY id")]


def reports(sweep_dir: Path) -> dict[int, list[tuple[int, float]]]:
    with sqlite3.connect(sweep_dir / "trials.sqlite") as db:
        out: dict[int, list[tuple[int, float]]] = {}
        for trial, epoch, value in db.execute(
            "SELECT trial, epoch, value FROM reports ORDER BY trial, epoch"
        ):
            out.setdefault(trial - 1, []).append((epoch, value))
        return out


def calls(path: Path) -> list[tuple[int, int, float, float]]:
    """``(job, pid, lr, width)`` of every task call."""
    return [
        (int(j), int(p), float(a), float(b))
        for j, p, a, b in (ln.split() for ln in path.read_text().splitlines())
    ]


@pytest.fixture
def sweep(hydra_sweep_runner: Callable[..., Any], tmp_path: Path) -> Callable[..., Path]:
    """``sweep(*overrides, folder=...)``: an in-process sweep of the curves app; returns its folder."""

    def _sweep(*overrides: str, folder: str = "sweep") -> Path:
        sweep_dir = tmp_path / folder
        runner = hydra_sweep_runner(
            calling_file=str(APP),
            calling_module=None,
            task_function=TASK,
            config_path=".",
            config_name="curves",
            overrides=prepare_sweeper_args(list(overrides)),
            temp_dir=sweep_dir,
        )
        enter_sweep(runner)
        return sweep_dir

    return _sweep


@pytest.mark.parametrize(
    "pruner", [["pruner=median", "min_trials=3", "min_epochs=1"], ["pruner=asha", "reduction_factor=3"]]
)
def test_pruning_stops_the_planted_bad_trials_and_keeps_the_best(
    sweep: Callable[..., Path], pruner: list[str]
) -> None:
    full = sweep(folder="full")
    pruned = sweep(*(f"hydra.sweeper.{p}" for p in pruner), folder="pruned")
    before, after = rows(full), rows(pruned)
    # Sobol points only (n_initial = n_trials): both sweeps try the same points, in the same order.
    assert [r["params"] for r in before] == [r["params"] for r in after]
    best, best_pruned = (OmegaConf.load(d / "optimization_results.yaml") for d in (full, pruned))
    assert best_pruned.best_trial == best.best_trial and best_pruned.best_value == best.best_value
    assert after[best.best_trial]["state"] == "COMPLETED"

    bad = [r for r in after if json.loads(r["params"])["lr"] > curves_app.BAD_LR]
    assert len(bad) >= 3
    # median: three completed trials first, then every planted-bad trial is stopped; asha:
    # every bad one, since none is ever the best at a rung.
    startup = 3 if "pruner=median" in pruner else 0
    late_bad = [r for r in bad if sum(s["state"] == "COMPLETED" for s in after[: r["id"]]) >= startup]
    assert late_bad and all(r["state"] == "PRUNED" for r in late_bad)
    curves = reports(pruned)
    for r in after:
        p = json.loads(r["params"])
        if r["state"] == "PRUNED":  # its last value and epoch, as reported
            assert r["epoch"] < EPOCHS and curves[r["id"]][-1] == (r["epoch"], r["value"])
            assert r["value"] == pytest.approx(curves_app.curve(p["lr"], p["width"], r["epoch"]))
        else:
            assert r["state"] == "COMPLETED" and r["epoch"] == EPOCHS and len(curves[r["id"]]) == EPOCHS
    saved = sum(EPOCHS - r["epoch"] for r in after if r["state"] == "PRUNED")
    assert best_pruned.epochs_saved == saved > 0 and best_pruned.n_pruned == sum(
        r["state"] == "PRUNED" for r in after
    )
    assert best.n_pruned == 0 and best.epochs_saved == 0
    table = (pruned / "trials.txt").read_text(encoding="utf-8")
    assert sum("PRUNED" in line for line in table.splitlines()) == best_pruned.n_pruned
    assert any("epoch" in line for line in table.splitlines()[:4])  # the column header


def test_the_model_goes_on_after_pruned_trials(sweep: Callable[..., Path]) -> None:
    sweep_dir = sweep(
        "hydra.sweeper.n_trials=8",
        "hydra.sweeper.n_initial=5",
        "hydra.sweeper.pruner=median",
        "hydra.sweeper.min_trials=1",
    )
    states = [r["state"] for r in rows(sweep_dir)]
    assert len(states) == 8 and "PRUNED" in states and set(states) <= {"COMPLETED", "PRUNED"}


@pytest.mark.parametrize(
    ("override", "needle"),
    [
        ("hydra.sweeper.min_epochs=12", "hydra.sweeper.min_epochs=12 is invalid: a trial runs 12 epochs"),
        ("hydra.sweeper.storage=postgresql://nasrun@127.0.0.1:9/none", "hydra.sweeper.storage 'postgresql"),
        ("hydra.sweeper.reduction_factor=1", "hydra.sweeper.reduction_factor=1 is invalid"),
    ],
)
def test_bad_input_is_one_line_and_writes_no_store(
    sweep: Callable[..., Path], tmp_path: Path, override: str, needle: str
) -> None:
    with pytest.raises(UserError) as info:
        sweep("hydra.sweeper.pruner=asha", override)
    assert needle in str(info.value) and "\n" not in str(info.value)
    assert not (tmp_path / "sweep" / "trials.sqlite").exists()


def test_unknown_pruner_is_one_line_from_nasrun(tmp_path: Path) -> None:
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "nasrun",
            "-m",
            "hydra/sweeper=botorch",
            f"hydra.sweep.dir={tmp_path}",
            "hydra.sweeper.pruner=hyperband",
        ],
        cwd=tmp_path,
        env=env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    lines = out.stderr.strip().splitlines()
    assert out.returncode == 2 and len(lines) == 1, out.stderr
    assert "pruner" in lines[0] and "hyperband" in lines[0] and "median" in lines[0]
    assert not (tmp_path / "trials.sqlite").exists()


def test_resume_with_pruning_after_sigkill(tmp_path: Path) -> None:
    """SIGKILL the sweeper inside a trial, re-run the same command: the sweep completes."""
    sweep_dir, log = tmp_path / "sweep", tmp_path / "calls.txt"
    args = app(
        f"hydra.sweep.dir={sweep_dir}",
        f"calls_file={log}",
        "hydra.sweeper.n_trials=10",
        "hydra.sweeper.pruner=median",
        "hydra.sweeper.min_trials=2",
        "kill_at_job=8",  # the best trial: the pruner lets it run past epoch 5
        "kill_at_epoch=5",
    )
    first = subprocess.run(args, cwd=APP.parent, env=env(), capture_output=True, text=True, timeout=300)
    assert first.returncode == -signal.SIGKILL, first.stderr[-2000:]
    killed = rows(sweep_dir)
    assert killed[8]["state"] == "RUNNING" and killed[8]["epoch"] == 5
    assert any(r["state"] == "PRUNED" for r in killed[:8])

    second = subprocess.run(args, cwd=APP.parent, env=env(), capture_output=True, text=True, timeout=300)
    assert second.returncode == 0, second.stderr[-2000:]
    done = rows(sweep_dir)
    assert len(done) == 10 and all(r["state"] in ("COMPLETED", "PRUNED") for r in done)
    assert done[:8] == killed[:8]  # ended trials are kept as they were, pruned ones too
    jobs = [c[0] for c in calls(log)]
    assert jobs == list(range(11)) and done[8]["job"] == 9  # the killed trial ran again as job 9
    # Its curve restarted with the new job: one report per epoch, from epoch 1 to the last.
    assert done[8]["state"] == "COMPLETED"
    assert [e for e, _ in reports(sweep_dir)[8]] == list(range(1, EPOCHS + 1))


def test_two_workers_share_the_budget_and_one_killed_workers_trial_is_rerun(tmp_path: Path) -> None:
    sweep_dir, log = tmp_path / "sweep", tmp_path / "calls.txt"
    args = app(
        f"hydra.sweep.dir={sweep_dir}",
        f"calls_file={log}",
        "epoch_seconds=0.05",
        "hydra.sweeper.n_trials=8",
        "hydra.sweeper.n_initial=3",
        "hydra.sweeper.heartbeat_timeout=2",
        "kill_at_job=3",
        "kill_at_epoch=3",
    )
    workers = [
        subprocess.Popen(args, cwd=APP.parent, env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        for _ in range(2)
    ]
    codes = sorted(w.wait(timeout=300) for w in workers)
    assert codes == [-signal.SIGKILL, 0], [w.stderr.read() for w in workers if w.stderr]
    done = rows(sweep_dir)
    assert len(done) == 8 and all(r["state"] == "COMPLETED" and r["value"] is not None for r in done)
    made = calls(log)
    assert sorted(c[0] for c in made) == list(range(9))  # 8 trials + the killed one, each job once
    assert len({c[1] for c in made}) == 2  # both workers ran trials
    rerun = next(c for c in made if c[0] == 3)
    again = [c for c in made if c[2:] == rerun[2:]]
    assert len(again) == 2 and again[1][1] != rerun[1]  # the survivor ran it again
    assert {json.loads(r["params"])["lr"] for r in done} == {c[2] for c in made}


@pytest.mark.slow  # starts real sweeper processes: about 17 s
def test_workers_setting_starts_copies_of_the_command(tmp_path: Path) -> None:
    sweep_dir, log = tmp_path / "sweep", tmp_path / "calls.txt"
    args = app(
        f"hydra.sweep.dir={sweep_dir}",
        f"calls_file={log}",
        "epoch_seconds=0.1",
        "hydra.sweeper.n_trials=8",
        "hydra.sweeper.n_initial=4",
        "hydra.sweeper.workers=2",
    )
    out = subprocess.run(args, cwd=APP.parent, env=env(), capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    done = rows(sweep_dir)
    assert len(done) == 8 and all(r["state"] == "COMPLETED" for r in done)
    made = calls(log)
    assert sorted(c[0] for c in made) == list(range(8)) and len({c[1] for c in made}) == 2
    assert (sweep_dir / "worker1.log").exists()
    assert OmegaConf.load(sweep_dir / "optimization_results.yaml").n_completed == 8


@contextlib.contextmanager
def postgres_server() -> Iterator[str]:
    """A throw-away PostgreSQL server (the Debian package's binaries) on a free port; yields its URL."""
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
    if not found:
        pytest.skip("PostgreSQL binaries not found under /usr/lib/postgresql (apt-get install -y postgresql)")
    pytest.importorskip("psycopg")
    bin_dir = found[-1].parent
    root = Path(tempfile.mkdtemp(prefix="nasrun-pg-"))
    as_user: list[str] = []
    if os.geteuid() == 0:  # the server refuses to run as root
        if shutil.which("runuser") is None:
            pytest.skip("running as root without runuser: cannot start PostgreSQL as another user")
        as_user = ["runuser", "-u", "postgres", "--"]
        shutil.chown(root, "postgres")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    data = root / "data"
    run = lambda *cmd: subprocess.run([*as_user, *cmd], check=True, capture_output=True, timeout=120)  # noqa: E731
    try:
        run(str(bin_dir / "initdb"), "-D", str(data), "-U", "nasrun", "--auth=trust")
        run(
            str(bin_dir / "pg_ctl"),
            "-D",
            str(data),
            "-l",
            str(root / "log"),
            "-w",
            "-o",
            f"-p {port} -k {root} -c listen_addresses=127.0.0.1",
            "start",
        )
        run(str(bin_dir / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "nasrun", "sweeps")
        yield f"postgresql://nasrun@127.0.0.1:{port}/sweeps"
    finally:
        subprocess.run(
            [*as_user, str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"],
            capture_output=True,
            timeout=120,
        )
        shutil.rmtree(root, ignore_errors=True)


@pytest.mark.slow
def test_two_workers_on_postgresql(tmp_path: Path) -> None:
    with postgres_server() as url:
        log = tmp_path / "calls.txt"
        # Two folders, as two machines would have: the database is all they share.
        workers = [
            subprocess.Popen(
                app(
                    f"hydra.sweep.dir={tmp_path / f'machine{i}'}",
                    f"hydra.sweeper.storage={url}",
                    f"calls_file={log}",
                    "epoch_seconds=0.05",
                    "hydra.sweeper.n_trials=8",
                    "hydra.sweeper.n_initial=3",
                    "hydra.sweeper.pruner=median",
                    "hydra.sweeper.min_trials=2",
                ),
                cwd=APP.parent,
                env=env(),
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
            )
            for i in range(2)
        ]
        assert [w.wait(timeout=600) for w in workers] == [0, 0], [
            w.stderr.read() for w in workers if w.stderr
        ]
        from nasrun.bo import TrialStore

        trials = TrialStore(url).trials()
    assert len(trials) == 8 and all(t.state.value in ("COMPLETED", "PRUNED") for t in trials)
    made = calls(log)
    assert sorted(c[0] for c in made) == list(range(8)) and len({c[1] for c in made}) == 2
    assert sorted(t.job for t in trials if t.job is not None) == list(range(8))


@pytest.mark.slow  # three tiny retrainings of a DARTS cell on digits: a minute or two
def test_nasrun_runs_report_retraining_epochs_and_are_pruned(tmp_path: Path) -> None:
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "nasrun",
            "-m",
            "hydra/sweeper=botorch",
            "experiment=smoke",
            "task=retrain",
            "genotype=darts_v2",
            "trainer.epochs=3",
            f"hydra.sweep.dir={tmp_path}",
            "hydra.sweeper.params.trainer.lr=choice(0.1, 0.000001)",
            "hydra.sweeper.n_trials=3",
            "hydra.sweeper.n_initial=3",
            "hydra.sweeper.pruner=median",
            "hydra.sweeper.min_trials=1",
        ],
        cwd=tmp_path,
        env=env(),
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    done, curves = rows(tmp_path), reports(tmp_path)
    assert [r["state"] for r in done] == ["COMPLETED", "PRUNED", "PRUNED"]
    for r in done:
        history = [
            json.loads(line)
            for line in (tmp_path / str(r["job"]) / "retrain_history.jsonl").read_text().splitlines()
        ]
        # The store holds what the run's history holds: validation accuracy after each epoch.
        assert curves[r["id"]] == [(h["epoch"], h["val_acc"]) for h in history]
        assert len(history) == (3 if r["state"] == "COMPLETED" else r["epoch"])
