"""``scripts/bench_sweeper_async.py`` runs its configurations and prints the table it documents."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.slow  # two small sweeps of real processes: half a minute
def test_bench_prints_one_row_per_configuration(tmp_path: Path) -> None:
    pytest.importorskip("hydra_plugins.hydra_joblib_launcher")
    out = tmp_path / "bench.jsonl"
    proc = subprocess.run(
        [
            sys.executable,
            str(REPO / "scripts" / "bench_sweeper_async.py"),
            "--trials=6",
            "--slots=2",
            "--epoch-seconds=0",
            "--seeds=0",
            "--configs=batches,async+median",
            f"--out={out}",
        ],
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["config"] for r in rows] == ["batches", "async+median"]
    assert all(r["n_trials"] == 6 and r["epochs_total"] == 72 for r in rows)
    table = [line for line in proc.stdout.splitlines() if line.startswith("| ")]
    assert len(table) == 3 and table[1].startswith("| batches |") and table[2].startswith("| async+median |")
