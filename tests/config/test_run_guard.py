"""The run-folder guard: what a resume may change, and that a refused folder is left untouched."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import time
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from nasrun import UserError
from nasrun.config.run_guard import check_run_folder, compare_configs
from tests.conftest import run_cli, start_cli

SMOKE = ["experiment=smoke", "retrain.enabled=false"]


def _plain(compose_cfg, *overrides: str) -> dict:
    data = OmegaConf.to_container(compose_cfg(*overrides), resolve=True)
    assert isinstance(data, dict)
    return data


def _snapshot(folder: Path) -> dict[str, tuple[str, int]]:
    """Every file under ``folder`` with its content hash and modification time."""
    return {
        str(p.relative_to(folder)): (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def test_changes_that_alter_results_are_refused_and_named(compose_cfg) -> None:
    saved = _plain(compose_cfg, *SMOKE)
    refused, extended = compare_configs(saved, _plain(compose_cfg, *SMOKE, "search.epochs=2", "seed=3"))
    assert refused == ["search.epochs: 1 -> 2", "seed: 0 -> 3"] and extended == []


def test_another_strategy_is_refused(compose_cfg) -> None:
    saved = _plain(compose_cfg, "experiment=smoke", "search=evolution")
    refused, _ = compare_configs(saved, _plain(compose_cfg, "experiment=smoke", "search=random_search"))
    assert any(r.startswith("search._target_:") for r in refused)
    assert any(r.startswith("search.population:") for r in refused)


def test_extensions_and_neutral_settings_are_allowed(compose_cfg) -> None:
    saved = _plain(compose_cfg, *SMOKE, "search=random_search")
    current = _plain(
        compose_cfg,
        "experiment=smoke",
        "search=random_search",
        "search.budget=9",  # larger budget: continues the search
        "trainer.eval_batch_size=7",  # evaluation only
        "resume=true",
    )
    refused, extended = compare_configs(saved, current)
    assert refused == []
    assert extended == ["retrain.enabled: False -> True", "search.budget: 3 -> 9"]
    # Another device computes in another order and draws other random numbers: not neutral.
    moved, _ = compare_configs(
        saved, _plain(compose_cfg, *SMOKE, "search=random_search", "trainer.device=cpu")
    )
    assert moved == ["trainer.device: auto -> cpu"]
    refused, _ = compare_configs(
        saved, _plain(compose_cfg, *SMOKE, "search=random_search", "search.budget=2")
    )
    assert refused == ["search.budget: 3 -> 2"]  # a smaller budget is not an extension


def test_nothing_to_resume(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="nothing to resume.*does not exist"):
        check_run_folder(tmp_path / "missing", resume=True, current={})
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="nothing to resume.*holds no checkpoints"):
        check_run_folder(tmp_path / "empty", resume=True, current={})
    assert list((tmp_path / "empty").iterdir()) == []


def test_unwritable_folder_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Permission bits do not stop root (CI runs as root), so the check's answer is simulated.
    monkeypatch.setattr(os, "access", lambda path, mode: False)
    with pytest.raises(UserError, match=r"hydra.run.dir=.*run: the run folder is not writable"):
        check_run_folder(tmp_path / "run", resume=False, current={})


def test_impossible_run_dir_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("not a folder")
    proc = run_cli(*SMOKE, f"hydra.run.dir={tmp_path / 'file' / 'run'}", cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.count("\n") == 1 and "hydra.run.dir=" in proc.stderr and "Traceback" not in proc.stderr


def test_refused_folders_are_left_untouched(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    first = run_cli(*SMOKE, f"hydra.run.dir={run_dir}", cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    before = _snapshot(run_dir)
    assert ".hydra/config.yaml" in before and "checkpoints/search.pt" in before
    cases = [
        # a fresh run into a folder with checkpoints
        ([*SMOKE, "seed=3"], "already holds checkpoints"),
        # a resume that would change results
        ([*SMOKE, "seed=3", "search.epochs=2", "resume=true"], "search.epochs: 1 -> 2; seed: 0 -> 3"),
        # another strategy
        (["experiment=smoke", "search=random_search", "resume=true"], "search._target_"),
    ]
    for args, message in cases:
        proc = run_cli(*args, f"hydra.run.dir={run_dir}", cwd=tmp_path)
        assert proc.returncode == 2, proc.stderr
        assert message in proc.stderr and proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr
        assert _snapshot(run_dir) == before, args
    # The same settings resume; turning retraining on extends the finished search, and says so.
    searched = json.loads((run_dir / "result.json").read_text())["wall_s"]["search_s"]
    proc = run_cli("experiment=smoke", f"hydra.run.dir={run_dir}", "resume=true", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "resume: retrain.enabled: False -> True (extends the run)" in proc.stdout
    assert (run_dir / "checkpoints" / "retrain.pt").is_file()
    # The result counts the search's time before the resume too, not only the resumed run's.
    wall = json.loads((run_dir / "result.json").read_text())["wall_s"]
    assert wall["search_s"] >= searched and wall["retrain_s"] > 0


def test_ctrl_c_says_how_to_resume_and_that_command_works(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    proc = start_cli(
        *SMOKE,
        "search.epochs=3",
        f"hydra.run.dir={run_dir}",
        cwd=tmp_path,
        # A child inherits an ignored SIGINT (as under a non-interactive shell): restore the default.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    history, checkpoint = run_dir / "history.jsonl", run_dir / "checkpoints" / "search.pt"
    deadline = time.monotonic() + 240
    while not checkpoint.is_file():  # the first epoch's checkpoint
        assert proc.poll() is None and time.monotonic() < deadline, "the run ended before Ctrl-C"
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=120) == 130
    stderr = proc.stderr.read() if proc.stderr else ""
    assert "Traceback" not in stderr and stderr.count("\n") == 1, stderr
    command = stderr.split("Resume with: ", 1)[1].split()
    assert command[0] == "nasrun" and command[-1] == "resume=true"
    resumed = run_cli(*command[1:], cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert history.read_text().count("\n") == 3
