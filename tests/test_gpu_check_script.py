"""``scripts/gpu_check.py`` (behind ``scripts/gpu_check.sh``) runs its benchmarks and prints one summary."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import load_script

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "gpu_check.py"


def test_the_check_covers_the_papers_sizes_and_every_variant() -> None:
    check = load_script(SCRIPT)
    runs = dict(check._runs("cuda", smoke=False))
    assert {f"{phase}_{v}" for phase in ("search", "retrain") for v, _ in check.VARIANTS} < set(runs)
    search = runs["search_bf16_channels_last_compile"]
    assert search[0] == "scripts/bench_search.py" and "--compile" in search and "bf16" in search
    assert search[search.index("--channels") + 1] == "16" and search[search.index("--layers") + 1] == "8"
    assert search[search.index("--batch-size") + 1] == "64"
    train = runs["retrain_fp32"]
    assert train[train.index("--channels") + 1] == "36" and train[train.index("--layers") + 1] == "20"
    assert train[train.index("--batch-size") + 1] == "96"
    pc = runs["pc_darts_search_bf16_channels_last"]
    assert pc[pc.index("--search") + 1] == "pc_darts" and pc[pc.index("--batch-size") + 1] == "256"
    ddp = runs["ddp_2gpu_retrain"]  # run only where two GPUs are; skipped with a line elsewhere
    assert ddp[0] == "scripts/bench_ddp.py" and ddp[ddp.index("--nproc") + 1] == "2"
    assert ddp[ddp.index("--channels") + 1] == "36" and ddp[ddp.index("--batch-size") + 1] == "96"


@pytest.mark.slow  # five benchmark processes: about 40 s
def test_a_smoke_run_on_the_cpu_ends_with_a_summary_of_every_run(capsys: pytest.CaptureFixture[str]) -> None:
    check = load_script(SCRIPT)
    assert check.main(["--smoke", "--device", "cpu"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["device"] == "cpu" and len(summary["runs"]) == 5
    for name, row in summary["runs"].items():
        assert "error" not in row, (name, row)
        assert row["images_per_sec"] > 0 and row["peak_memory_mb"] > 0
    assert summary["runs"]["search_bf16_channels_last"]["channels_last"] is True
    assert summary["runs"]["search_fp32"]["channels_last"] is False


def test_a_dry_run_prints_every_command_and_finds_what_each_names(capsys: pytest.CaptureFixture[str]) -> None:
    check = load_script(SCRIPT)
    assert check.main(["--dry-run"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "make test-gpu"
    assert len(out) == 1 + len(check._runs("cuda", smoke=False))
    assert not [line for line in out if "missing" in line]


def test_a_dry_run_names_a_missing_flag_script_or_choice(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    check = load_script(SCRIPT)
    runs = [
        ("a", ["scripts/bench_search.py", "--no-such-flag", "1"]),
        ("b", ["scripts/bench_search.py", "--amp", "fp8", "--channels-last", "sideways"]),
        ("c", ["scripts/no_such_script.py", "--x"]),
    ]
    monkeypatch.setattr(check, "_runs", lambda device, smoke: runs)
    assert check.main(["--dry-run"]) == 1
    out = capsys.readouterr().out
    assert "missing: scripts/bench_search.py --no-such-flag" in out
    assert "missing: scripts/bench_search.py --amp fp8" in out
    assert "missing: scripts/bench_search.py --channels-last sideways" in out
    assert "missing: scripts/no_such_script.py" in out
