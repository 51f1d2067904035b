"""scripts/bench_bo.py's --set: typed BOSettings overrides for ablations, bad ones named in one line."""

from pathlib import Path

import pytest

from nasrun.bo import BOSettings
from nasrun.bo.settings import Acquisition
from tests.conftest import load_script

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "bench_bo.py"


@pytest.fixture(scope="module")
def bench_bo():
    return load_script(SCRIPT)


def test_overrides_are_typed_like_the_sweeper_config(bench_bo):
    got = bench_bo.parse_settings(["acquisition=ucb", "ucb_beta=4", "explore_fraction=0", "noisy=true"])
    assert got == {"acquisition": Acquisition.ucb, "ucb_beta": 4.0, "explore_fraction": 0.0, "noisy": True}
    assert isinstance(got["ucb_beta"], float)
    # The overrides build a valid BOSettings, as run_nasrun does.
    assert BOSettings(**got).acquisition is Acquisition.ucb


@pytest.mark.parametrize("item", ["acquisition=foo", "ucb_beta=x", "no_such_field=1", "explore_fraction"])
def test_bad_override_exits_with_one_line_naming_it(bench_bo, item):
    with pytest.raises(SystemExit) as e:
        bench_bo.parse_settings([item])
    message = str(e.value)
    assert item in message and "\n" not in message
