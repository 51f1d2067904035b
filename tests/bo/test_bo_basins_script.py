"""docs/benchmarks/bo_basins.py labels points by the Hartmann6 basin a local descent from them ends in."""

from pathlib import Path

import pytest
from botorch.test_functions import Hartmann

from tests.conftest import load_script

SCRIPT = Path(__file__).resolve().parents[2] / "docs" / "benchmarks" / "bo_basins.py"
# Hartmann6's second-deepest minimum, -3.2032 (regret 0.12), where stuck runs end.
LOCAL_MIN = [0.4047, 0.8824, 0.8461, 0.5740, 0.1389, 0.0385]


@pytest.fixture(scope="module")
def bo_basins():
    import sys

    saved = list(sys.path)  # the script puts scripts/ on the path to import bench_bo
    try:
        module = load_script(SCRIPT)
    finally:
        sys.path[:] = saved
    return module


def test_basins_of_the_two_deepest_minima_and_their_slopes(bo_basins):
    f = Hartmann(dim=6)
    best = f.optimizers[0].tolist()
    assert bo_basins.basin(f, best) == "G"
    assert bo_basins.basin(f, LOCAL_MIN) == "L"
    # A step off each minimum still drains back to it.
    near_best = [min(v + 0.05, 1.0) for v in best]
    near_local = [max(v - 0.05, 0.0) for v in LOCAL_MIN]
    values = [bo_basins.evaluate(f, x) for x in (near_best, near_local)]
    assert bo_basins.labels(f, [near_best, near_local], values) == "GL"
    # Lower case marks points on the plateau (value above -0.5), whatever their basin.
    assert bo_basins.labels(f, [near_best], [0.0]) == "g"


def test_run_nasrun_reports_the_points_it_evaluated(bo_basins):
    # bench_bo's run_nasrun, as the script imports it: 6 Sobol points in batches of 4 and 2.
    f = Hartmann(dim=6)
    points: list[list[float]] = []
    values, _ = bo_basins.run_nasrun(f, 0, 6, 4, points)
    assert len(points) == len(values) == 6
    assert values == [bo_basins.evaluate(f, x) for x in points]
    assert len({tuple(x) for x in points}) == 6


def test_uniform_shares_count_points_off_the_plateau_by_basin(bo_basins):
    shares = bo_basins.uniform_shares(Hartmann(dim=6), 400)
    (below_1, global_1), (below_05, global_05) = shares[-1.0], shares[-0.5]
    # Values below -1 are a subset of those below -0.5; both are a small part of the cube.
    assert 0 < below_1 < below_05 < 0.5
    # Most of them drain to the global minimum, but not all (the local basin takes a third).
    assert 0.3 < global_1 < 1 and 0.3 < global_05 < 1


def test_the_script_runs_from_the_repository_root():
    import subprocess
    import sys

    root = SCRIPT.parents[2]
    proc = subprocess.run(
        [sys.executable, str(SCRIPT.relative_to(root)), "--help"], cwd=root, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr
    assert "--uniform" in proc.stdout
