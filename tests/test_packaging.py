"""The wheel carries every package and the whole conf/ tree, so an installed nasrun finds its configs."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import tomllib

REPO = Path(__file__).resolve().parent.parent


def test_package_list_matches_the_source_tree() -> None:
    listed = set(tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {
        ".".join(p.parent.relative_to(REPO).parts)
        for root in ("nasrun", "hydra_plugins")
        for p in (REPO / root).rglob("__init__.py")
    }
    assert found <= listed, f"add to [tool.setuptools] packages: {sorted(found - listed)}"


def test_wheel_contains_the_config_tree(tmp_path: Path) -> None:
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "-q",
            "--no-deps",
            "--no-build-isolation",
            "-w",
            str(tmp_path),
            str(REPO),
        ],
        check=True,
        capture_output=True,
    )
    (wheel,) = tmp_path.glob("nasrun-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for yaml in (REPO / "conf").rglob("*.yaml"):
        assert f"nasrun/conf/{yaml.relative_to(REPO / 'conf').as_posix()}" in names, yaml
    assert "nasrun/cli.py" in names
    assert "nasrun/evaluator/tables/nb201_cifar10_12ep.csv" in names  # evaluator.table=nb201_cifar10_12ep
    assert "nasrun/evaluator/tables/README.md" in names  # its source and licence
