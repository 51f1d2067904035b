"""Composing a config imports no torch: ``nasrun --help`` and ``--cfg job`` stay fast."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _modules_after(code: str) -> set[str]:
    out = subprocess.run(
        [sys.executable, "-c", code + "\nimport sys; print(' '.join(sys.modules))"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=True,
    )
    return set(out.stdout.split()[-1000000:])


def test_importing_the_cli_imports_no_torch() -> None:
    mods = _modules_after("import nasrun.cli")
    assert "nasrun.cli" in mods
    assert "torch" not in mods and "botorch" not in mods


def test_composing_a_config_imports_no_torch() -> None:
    code = (
        "import sys, contextlib, io\n"
        "sys.argv = ['nasrun', 'search=darts', '--cfg', 'job']\n"
        "from nasrun.cli import main\n"
        "with contextlib.redirect_stdout(io.StringIO()) as out:\n"
        "    try:\n        main()\n    except SystemExit:\n        pass\n"
        "assert 'search:' in out.getvalue(), out.getvalue()\n"
    )
    mods = _modules_after(code)
    assert "torch" not in mods
