#!/usr/bin/env bash
# The GPU check (see scripts/gpu_check.py): CUDA tests, then search and retraining steps at the
# papers' sizes in fp32 / bf16 / channels_last / compile; the last line is a JSON summary.
# Run from the project root after `make install`:  scripts/gpu_check.sh [--device cuda:0]
# `--dry-run` prints the commands and checks that every script and flag they name exists.
set -euo pipefail
cd "$(dirname "$0")/.."
exec "${PY:-.venv/bin/python}" scripts/gpu_check.py "$@"
