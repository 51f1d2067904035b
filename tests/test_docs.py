"""The code examples of README.md and docs/sweeper.md run as written (Python) and compose (shell)."""

from __future__ import annotations

import itertools
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO, run_cli

SWEEPER_DOC = REPO / "docs" / "sweeper.md"
README = REPO / "README.md"
# The README is a user's guide: investigations and long tables belong in docs/benchmarks/.
README_MAX_LINES = 200
_FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.MULTILINE | re.DOTALL)


def code_blocks(path: Path, language: str) -> list[str]:
    """The fenced code blocks of a Markdown file written in ``language``."""
    return [body for lang, body in _FENCE.findall(path.read_text()) if lang == language]


def nasrun_commands(path: Path) -> list[list[str]]:
    """The arguments of every ``nasrun ...`` command in the file's bash blocks (comments dropped)."""
    commands = []
    for block in code_blocks(path, "bash"):
        for line in block.replace("\\\n", " ").splitlines():
            words = shlex.split(line, comments=True)
            if words and words[0] == "nasrun":
                commands.append(words[1:])
    return commands


def compose(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    """``nasrun ARGS --cfg job``: Hydra composes the config and prints it instead of running."""
    # Hydra refuses --cfg together with -m; hydra.mode=MULTIRUN is the same mode, as a key.
    args = ["hydra.mode=MULTIRUN" if a in ("-m", "--multirun") else a for a in args]
    return run_cli(*args, "--cfg", "job", cwd=cwd, timeout=120)


def multirun_jobs(args: list[str]) -> list[list[str]]:
    """The argument lists of a command's jobs: one per combination of its ``key=a,b`` sweeps.

    With ``hydra.mode=MULTIRUN`` as a key (not ``-m``), Hydra refuses sweep values outside
    ``hydra.*``, so each job is composed on its own. ``hydra.*`` values (the sweeper's search
    space) are left as written.
    """
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parser = OverridesParser.create()
    choices = []
    for arg in args:
        override = None if arg.startswith(("-", "hydra.")) else parser.parse_override(arg)
        if override is not None and override.is_sweep_override():
            key = override.get_key_element()
            choices.append([f"{key}={value}" for value in override.sweep_string_iterator()])
        else:
            choices.append([arg])
    return [list(job) for job in itertools.product(*choices)]


PYTHON_EXAMPLES = code_blocks(SWEEPER_DOC, "python")
README_COMMANDS = nasrun_commands(README)


def test_the_doc_has_examples_to_check() -> None:
    assert len(PYTHON_EXAMPLES) >= 1 and len(nasrun_commands(SWEEPER_DOC)) >= 3


@pytest.mark.parametrize("code", PYTHON_EXAMPLES, ids=[f"block{i}" for i in range(len(PYTHON_EXAMPLES))])
def test_python_examples_run_as_written(tmp_path: Path, code: str) -> None:
    proc = subprocess.run(
        [sys.executable, "-c", code],
        cwd=tmp_path,  # the examples may write files (trials.sqlite)
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip(), "the example printed nothing"


def test_shell_examples_compose(tmp_path: Path) -> None:
    """Each ``nasrun`` line with ``--cfg job`` appended: Hydra composes and prints the config."""
    for args in nasrun_commands(SWEEPER_DOC):
        proc = compose(args, tmp_path)
        assert proc.returncode == 0, (args, proc.stderr)
        assert "task: " in proc.stdout, (args, proc.stdout)


def test_the_readme_stays_a_guide() -> None:
    lines = README.read_text().splitlines()
    assert len(lines) <= README_MAX_LINES, f"README.md has {len(lines)} lines; move details to docs/"
    # Every kind of run has an example: search + retrain, retrain, table search, sweep, smoke, resume.
    joined = [" ".join(args) for args in README_COMMANDS]
    for needle in (
        "search=darts",
        "task=retrain",
        "evaluator=tabular",
        "hydra/sweeper=botorch",
        "experiment=smoke",
        "resume=true",
    ):
        assert any(needle in c for c in joined), needle


def test_readme_links_point_to_files() -> None:
    for target in re.findall(r"\]\(([^)#]+)\)", README.read_text()):
        if "://" not in target:
            assert (REPO / target).exists(), target


@pytest.mark.parametrize("args", README_COMMANDS, ids=[" ".join(a)[:60] for a in README_COMMANDS])
def test_readme_commands_compose(tmp_path: Path, args: list[str]) -> None:
    """Every ``nasrun`` line of the README's bash blocks composes as written (``--cfg job``)."""
    # Runnable values only: a placeholder would compose as a literal string, or not at all.
    assert not any(p in a for a in args for p in ("...", "<", ">", "DATE/TIME", "FILE.csv")), args
    for job in multirun_jobs(args):
        proc = compose(job, tmp_path)
        assert proc.returncode == 0, (job, proc.stderr)
        assert "task: " in proc.stdout, (job, proc.stdout)
