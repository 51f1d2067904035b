#!/usr/bin/env bash
# DARTS search step: the reference implementation against nasrun's scripts/bench_search.py, same
# sizes and settings, alternated in one run on one machine, so the ratio holds even where absolute
# times drift. Run from the project root, with its .venv installed (make install).
#
#   scripts/darts_vs_reference.sh REF_GIT [ROUNDS] [extra bench_search.py flags...]
#
# REF_GIT: the git directory of a clone of github:quark0/darts (git clone --bare works); its
# CNN search files are extracted to a temporary folder for the run and deleted after it.
# Env: ORDER=1|2 (default 1), C=8 L=5 B=16 S=32 STEPS=4 (the sizes both sides run).
# Prints one line per round and the median speed-up (reference s/step / nasrun s/step) last.
set -euo pipefail
REF_GIT=${1:?usage: darts_vs_reference.sh REF_GIT [ROUNDS] [bench_search flags]}
ROUNDS=${2:-3}; shift $(( $# >= 2 ? 2 : 1 ))
ORDER=${ORDER:-1}; C=${C:-8}; L=${L:-5}; B=${B:-16}; S=${S:-32}; STEPS=${STEPS:-4}
HERE=$(cd "$(dirname "$0")" && pwd)
PY=${PY:-.venv/bin/python}
REF=$(mktemp -d)
trap 'rm -rf "$REF"' EXIT
for f in model_search operations genotypes architect utils; do
  git --git-dir="$REF_GIT" show "HEAD:cnn/$f.py" > "$REF/$f.py"
done
ratios=()
for i in $(seq "$ROUNDS"); do
  ref=$($PY "$HERE/ref_darts_step.py" "$REF" --batch "$B" --steps "$STEPS" --channels "$C" --layers "$L" \
        --image-size "$S" --order "$ORDER" 2>/dev/null | tail -1 | $PY -c "import json,sys; print(json.load(sys.stdin)['sec_per_step'])")
  ours=$($PY scripts/bench_search.py --search darts --order "$ORDER" --channels "$C" --layers "$L" \
        --batch-size "$B" --image-size "$S" --steps "$STEPS" "$@" 2>/dev/null | tail -1 \
        | $PY -c "import json,sys; print(json.load(sys.stdin)['sec_per_step'])")
  r=$($PY -c "print(round($ref / $ours, 3))")
  ratios+=("$r")
  echo "round $i: reference $ref s/step, nasrun $ours s/step, speed-up ${r}x"
done
$PY - "$ORDER" "$C" "$L" "$B" "$S" "${ratios[@]}" <<'PY'
import statistics, sys
order, c, l, b, s, *r = sys.argv[1:]
m = statistics.median(float(x) for x in r)
print(f"median speed-up over the reference: {m:.2f}x (order {order}, C={c} L={l} batch {b}, {s}x{s}, {len(r)} rounds)")
PY
