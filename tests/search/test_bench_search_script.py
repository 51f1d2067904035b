"""``scripts/bench_search.py`` runs every one-shot method of ``conf/search/`` through its real config."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import load_script

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "bench_search.py"


@pytest.fixture(scope="module")
def bench() -> Any:
    """The script, loaded once: its list of one-shot methods composes every search config."""
    return load_script(SCRIPT)


def test_every_one_shot_method_is_offered_and_times_a_step(
    bench: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    methods = bench.one_shot_searches()
    assert {"darts", "darts_2nd", "pc_darts", "darts_plus", "p_darts"} <= set(methods)
    assert {"gdas", "snas", "rsps", "enas"} <= set(methods)
    assert "random_search" not in methods  # black-box strategies have no supernet step
    for method in methods:
        channels = "12" if method == "drnas_progressive" else "4"  # its K = 6 and 4 must divide them
        bench.main(
            ["--search", method, "--channels", channels, "--layers", "3", "--nodes", "2", "--batch-size", "4"]
            + ["--image-size", "8", "--steps", "1", "--warmup", "0"]
        )
        line = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
        assert line["search"] == method and line["sec_per_step"] > 0 and line["peak_memory_mb"] > 0
        assert line["order"] == (
            2 if method == "darts_2nd" or method.startswith("robust_darts") else 1
        )  # R-DARTS: unrolled
        assert (line["controller_sec_per_step"] is not None) == (method == "enas")


@pytest.mark.parametrize("method", ["darts", "gdas", "snas", "rsps", "enas"])
def test_the_sampling_methods_time_a_step_on_the_nb201_supernet(
    bench: Any, capsys: pytest.CaptureFixture[str], method: str
) -> None:
    bench.main(
        ["--search", method, "--space", "nb201", "--channels", "4", "--cells", "1", "--batch-size", "4"]
        + ["--image-size", "8", "--steps", "1", "--warmup", "0"]
    )
    line = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert line["space"] == "nb201" and line["cells_per_stage"] == 1 and line["sec_per_step"] > 0
