"""What ``nasrun`` prints and leaves in its run folder, seen as a user sees it: a real process whose
stdout is a pipe (as in a log file or a batch job), not a terminal."""

from __future__ import annotations

import json
import os
import stat
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.conftest import run_cli


@pytest.fixture(scope="module")
def smoke(tmp_path_factory: pytest.TempPathFactory) -> tuple[subprocess.CompletedProcess[str], Path]:
    """One smoke run (search only), shared by the tests that only read its output and folder."""
    cwd = tmp_path_factory.mktemp("smoke")
    proc = run_cli("experiment=smoke", "retrain.enabled=false", "hydra.run.dir=run", cwd=cwd)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc, cwd / "run"


def _one_error_line(proc: subprocess.CompletedProcess[str]) -> str:
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr
    assert lines[0].startswith("nasrun: error: ") and "Traceback" not in proc.stderr
    return lines[0]


def test_the_run_folder_is_printed_at_the_start_and_at_the_end(smoke) -> None:
    proc, run = smoke
    lines = proc.stdout.splitlines()
    shown = [i for i, line in enumerate(lines) if line.startswith("run folder: ")]
    assert len(shown) == 2 and shown[0] == 0, proc.stdout
    assert all(Path(lines[i].removeprefix("run folder: ")).samefile(run) for i in shown)
    summary = next(i for i, line in enumerate(lines) if "nasrun result" in line)
    assert shown[1] > summary  # after the summary, where a user looks last


def test_the_summary_on_a_pipe_shows_the_whole_genotype(smoke) -> None:
    proc, run = smoke
    genotype = json.loads((run / "result.json").read_text())["genotype"]
    assert len(genotype) > 80  # longer than rich's default width off a terminal
    assert genotype in proc.stdout and "…" not in proc.stdout


def test_result_files_get_the_permissions_of_plain_files(smoke) -> None:
    _, run = smoke
    umask = os.umask(0)
    os.umask(umask)
    for name in ("cells.png", "result.json", "genotype.json", "history.jsonl"):
        assert stat.S_IMODE((run / name).stat().st_mode) == 0o666 & ~umask, name


def test_no_empty_log_file_in_the_run_folder(smoke) -> None:
    _, run = smoke
    logs = list(run.glob("*.log"))
    assert all(log.stat().st_size > 0 for log in logs), logs


@pytest.mark.parametrize("seed", ["18446744073709551616", "-1"])
def test_a_seed_out_of_range_is_one_line_naming_seed(cli, tmp_path: Path, seed: str) -> None:
    line = _one_error_line(cli("experiment=smoke", f"seed={seed}", "hydra.run.dir=run"))
    assert f"seed={seed}" in line and "4294967295" in line
    assert not (tmp_path / "run" / "checkpoints").exists()


def _nb201_genotype(tmp_path: Path) -> Path:
    """A genotype.json of space nb201, as an NB-201 search leaves it."""
    genotype = tmp_path / "genotype.json"
    edges = [["nor_conv_3x3", 0], ["nor_conv_3x3", 0], ["skip_connect", 1]]
    edges += [["skip_connect", 0], ["nor_conv_1x1", 1], ["nor_conv_3x3", 2]]
    genotype.write_text(json.dumps({"space": "nb201", "normal": edges, "normal_concat": [3]}))
    return genotype


def test_retrain_takes_the_space_from_the_genotype_file(cli, tmp_path: Path) -> None:
    genotype = _nb201_genotype(tmp_path)
    tiny = ["experiment=smoke", "data=synthetic", "data.n_train=64", "data.n_test=16"]
    proc = cli("task=retrain", f"genotype_path={genotype}", *tiny, "hydra.run.dir=run")
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.splitlines() == [f"nasrun: space=nb201, as recorded in {genotype}"]
    result = json.loads((tmp_path / "run" / "result.json").read_text())
    assert result["space"] == "nb201" and result["task"] == "retrain"
    # Recorded as if typed, so that a resume and nasrun-report see it.
    assert "space=nb201" in (tmp_path / "run" / ".hydra" / "overrides.yaml").read_text()
    # --cfg job shows it too, with the space's own retraining recipe (retrain: ${space}).
    shown = cli("task=retrain", f"genotype_path={genotype}", "--cfg", "job")
    assert shown.returncode == 0, shown.stderr
    job = yaml.safe_load(shown.stdout)
    assert job["space"]["_target_"].endswith("NB201Space") and "cells" in job["retrain"]["network"]


def test_a_space_that_contradicts_the_genotype_file_is_refused_in_one_line(cli, tmp_path: Path) -> None:
    genotype = _nb201_genotype(tmp_path)
    line = _one_error_line(
        cli("task=retrain", f"genotype_path={genotype}", "space=cifar_cell", "experiment=smoke")
    )
    assert "space=cifar_cell" in line and str(genotype) in line and "'nb201'" in line
    assert not (tmp_path / "outputs").exists()


def test_help_describes_nasrun_its_groups_and_where_results_go(cli) -> None:
    proc = cli("--help")
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert out.startswith("nasrun: ") and "powered by Hydra" not in out
    assert "_schema" not in out
    groups = {
        line.split(":")[0].strip(): line.split(":", 1)[1]
        for line in out.split("== Examples ==")[0].splitlines()
        if line.startswith("  ") and ":" in line
    }
    # Every group the user picks from, with the options its folder in conf/ holds.
    for group in (
        "search",
        "space",
        "data",
        "trainer",
        "retrain",
        "evaluator",
        "genotype",
        "experiment",
        "sweep",
    ):
        options = sorted(p.stem for p in (Path(__file__).parent.parent / "conf" / group).glob("*.yaml"))
        assert options and all(o in groups[group] for o in options), (group, groups.get(group))
    assert "darts (default)" in groups["search"]
    assert "nasrun experiment=smoke" in out and "sweep=smoke_bo" in out
    assert "outputs/runs/" in out and "hydra.run.dir" in out and "result.json" in out
