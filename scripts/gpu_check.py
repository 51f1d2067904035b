#!/usr/bin/env python
"""The GPU check: the CUDA tests, then search and retraining steps at the papers' sizes, one JSON summary.

Run first whenever a GPU is available (``scripts/gpu_check.sh``; under 8 minutes on one GPU):

1. ``make test-gpu`` (bf16, channels_last and ``torch.compile`` on CUDA);
2. ``scripts/bench_search.py`` at the DARTS search size (16 channels, 8 cells, batch 64, 32x32) and
   ``scripts/bench_train.py`` at the DARTS retraining size (36 channels, 20 cells, batch 96), each in
   fp32, bf16, bf16 + channels_last and bf16 + channels_last + compile;
3. PC-DARTS's search step at its batch of 256;
4. with two GPUs or more, data-parallel retraining on two of them against one
   (``scripts/bench_ddp.py``, DistributedDataParallel under torchrun, same global batch); with one
   GPU the summary says it was skipped.

The last line printed is the summary: the device's name, the tests' outcome and, per run, images
per second and peak memory (or the error). ``--smoke`` runs tiny sizes on any device and skips the
tests, to check the script itself. ``--dry-run`` runs nothing: it prints the commands and checks
that every script, Make target and flag they name exists (exit 1 naming what is missing).
"""

from __future__ import annotations

import argparse
import json
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable

#: (name, extra flags) of each precision / memory-format / compile variant.
VARIANTS = [
    ("fp32", ["--channels-last", "false"]),
    ("bf16", ["--amp", "bf16", "--channels-last", "false"]),
    ("bf16_channels_last", ["--amp", "bf16", "--channels-last", "true"]),
    ("bf16_channels_last_compile", ["--amp", "bf16", "--channels-last", "true", "--compile"]),
]


def _runs(device: str, smoke: bool) -> list[tuple[str, list[str]]]:
    """Every benchmark command of the check, named."""
    search = ["--channels", "16", "--layers", "8", "--batch-size", "64", "--steps", "10"]
    train = ["--channels", "36", "--layers", "20", "--batch-size", "96", "--steps", "20", "--repeats", "3"]
    pc = ["--search", "pc_darts", "--channels", "16", "--layers", "8", "--batch-size", "256", "--steps", "5"]
    if smoke:
        search = [
            "--channels",
            "4",
            "--layers",
            "3",
            "--batch-size",
            "4",
            "--image-size",
            "8",
            "--steps",
            "1",
        ]
        train = ["--channels", "4", "--layers", "3", "--batch-size", "4", "--image-size", "8", "--steps", "1"]
        train += ["--repeats", "1", "--warmup", "1"]
        pc = ["--search", "pc_darts", *search]
    common = ["--device", device]
    out = []
    for name, flags in VARIANTS:
        if smoke and name not in ("fp32", "bf16_channels_last"):
            continue  # two variants show the script works; compiling takes minutes on a CPU
        out.append((f"search_{name}", ["scripts/bench_search.py", *search, *common, *flags]))
        out.append((f"retrain_{name}", ["scripts/bench_train.py", *train, *common, *flags]))
    out.append(
        ("pc_darts_search_bf16_channels_last", ["scripts/bench_search.py", *pc, *common, *VARIANTS[2][1]])
    )
    if not smoke:  # needs two GPUs; main() skips it with a line on fewer
        ddp = ["--nproc", "2", "--device", "cuda", "--channels", "36", "--layers", "20", "--batch-size", "96"]
        out.append(("ddp_2gpu_retrain", ["scripts/bench_ddp.py", *ddp, "--steps", "10"]))
    return out


def _last_json(text: str) -> dict | None:
    for line in reversed(text.strip().splitlines()):
        try:
            value = json.loads(line)
        except ValueError:
            continue
        if isinstance(value, dict):
            return value
    return None


def _dry_run(runs: list[tuple[str, list[str]]]) -> int:
    """Print the check's commands; exit status 1 if a script, Make target or flag they name is missing."""
    missing = []
    makefile = (ROOT / "Makefile").read_text()
    print("make test-gpu")
    if not re.search(r"^test-gpu:", makefile, re.MULTILINE):
        missing.append("Makefile target test-gpu")
    helps: dict[str, str] = {}
    for name, cmd in runs:
        print(shlex.join(["python", *cmd]), f"  # {name}")
        script, args = cmd[0], cmd[1:]
        if not (ROOT / script).is_file():
            missing.append(script)
            continue
        if script not in helps:
            done = subprocess.run([PY, script, "--help"], cwd=ROOT, capture_output=True, text=True)
            helps[script] = done.stdout if done.returncode == 0 else ""
        options = set(re.findall(r"--[a-z][a-z0-9-]*", helps[script]))
        for i, arg in enumerate(args):
            if arg.startswith("--") and arg not in options:
                missing.append(f"{script} {arg}")
            # a value from a fixed set ({a,b,c} in the help) must be one of them
            choices = (
                re.search(re.escape(arg) + r" \[?\{([^}]*)\}", helps[script])
                if arg.startswith("--")
                else None
            )
            if choices and i + 1 < len(args) and args[i + 1] not in choices.group(1).split(","):
                missing.append(f"{script} {arg} {args[i + 1]}")
    for what in dict.fromkeys(missing):
        print(f"gpu_check: missing: {what}")
    return 1 if missing else 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda")
    p.add_argument("--smoke", action="store_true", help="tiny sizes, no tests: checks the script")
    p.add_argument("--timeout", type=float, default=150.0, help="seconds per benchmark run")
    p.add_argument("--dry-run", action="store_true", help="print the commands and check what they name")
    args = p.parse_args(argv)
    if args.dry_run:
        return _dry_run(_runs(args.device, args.smoke))
    summary: dict = {"device": args.device}
    gpus = 0
    try:
        import torch

        if args.device.startswith("cuda") and torch.cuda.is_available():
            summary["device_name"] = torch.cuda.get_device_name(0)
            summary["torch"] = torch.__version__
            gpus = torch.cuda.device_count()
    except ImportError:
        pass
    if not args.smoke:
        t0 = time.perf_counter()
        tests = subprocess.run(["make", "test-gpu"], cwd=ROOT, capture_output=True, text=True)
        tail = (tests.stdout + tests.stderr).strip().splitlines()[-1:] or [""]
        summary["tests"] = {
            "returncode": tests.returncode,
            "last_line": tail[0],
            "s": round(time.perf_counter() - t0),
        }
        print(f"make test-gpu: {tail[0]}", flush=True)
    results: dict = {}
    for name, cmd in _runs(args.device, args.smoke):
        if name.startswith("ddp_") and gpus < 2:
            results[name] = {"skipped": f"{gpus} GPU(s) here; the data-parallel step needs two"}
            print(f"{name}: skipped ({gpus} GPU(s) here; it needs two)", flush=True)
            continue
        try:
            done = subprocess.run([PY, *cmd], cwd=ROOT, capture_output=True, text=True, timeout=args.timeout)
        except subprocess.TimeoutExpired:
            results[name] = {"error": f"timed out after {args.timeout:.0f} s"}
            print(f"{name}: timed out", flush=True)
            continue
        row = _last_json(done.stdout) if done.returncode == 0 else None
        if row is None:
            err = (done.stderr.strip().splitlines() or ["no output"])[-1]
            results[name] = {"error": err}
            print(f"{name}: failed: {err}", flush=True)
            continue
        keep = (
            "images_per_sec",
            "sec_per_step",
            "peak_memory_mb",
            "peak_memory_kind",
            "channels_last",
            "amp",
            "one_sec_per_step",
            "many_sec_per_step",
            "many_images_per_sec",
            "speedup",
        )
        results[name] = {k: row[k] for k in keep if k in row}
        print(f"{name}: {results[name]}", flush=True)
    summary["runs"] = results
    print(json.dumps(summary))
    failed = [n for n, r in results.items() if "error" in r]
    return 1 if failed or summary.get("tests", {}).get("returncode", 0) else 0


if __name__ == "__main__":
    sys.exit(main())
