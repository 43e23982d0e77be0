#!/bin/bash
# Device run of a round of benchmarks/bench_recipe_cv.py (each round fixed and committed before it ran:
# candidates, folds and rule in the script's docstring and ROUNDS). One H100, JAX, bf16 (auto).
# One worker per (trained candidate, fold), all in parallel; then one --score-only pass scores every candidate of
# the round (evaluation-only ones such as aug-e24-tta reuse their source's fold models) and applies the rule. A
# worker cut by its timeout leaves its candidate unfinished: not eligible.
#   round capacity (first call): ROUND=capacity TRAIN="aug-e24-s192 aug-e24-wide aug-e24" (the default)
#   round architectures (second call): ROUND=architectures TRAIN="aug-e24-resnet18 aug-e24-effb0 aug-e24-tsmall aug-e24"
# Before the call, here: .gpu/whl = keras 3.15.1 + namex 0.1.0 + optree 0.20.0 wheels (manylinux, cp312);
# `python benchmarks/bench_recipe_cv.py --round $ROUND --export-data .gpu/cv` (non-test rows only; capacity: 31 MB).
# Carry [".gpu/whl", ".gpu/cv"]. 3 files come back.
# Usage (device tool): ROUND=.. TRAIN=.. bash benchmarks/device/recipe_cv.sh      DRY=1 ... (CPU, tiny steps)
if [ -z "$DRY" ]; then
  [ -d /tmp/site/keras ] || python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .gpu/whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site:$PWD/src; nvidia-smi -L
  PY=python3; X=""; LIMIT=${LIMIT:-400}
else
  PY=${PY:-.venv/bin/python}; X="--max-steps 1 --n-bootstrap 20"; LIMIT=${LIMIT:-900}
fi
export KERAS_BACKEND=jax PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_PREALLOCATE=false TF_CPP_MIN_LOG_LEVEL=2
ROUND=${ROUND:-capacity}; TRAIN=${TRAIN:-aug-e24-s192 aug-e24-wide aug-e24}
OUT=${OUT:-/tmp/out}; mkdir -p $OUT /tmp/cv; START=$(date +%s); el() { echo $(( $(date +%s) - START )); }
CV="$PY benchmarks/bench_recipe_cv.py --round $ROUND --data-dir .gpu/cv --runs-root /tmp/cv/runs $X"
for c in $TRAIN; do
  for k in 0 1 2 3; do
    timeout $LIMIT $CV --train-only --candidates $c --fold $k > /tmp/cv/log_${c}_k$k.txt 2>&1 &
  done
done
wait
echo "=== workers done at $(el) s"; grep -l "Traceback\|Error" /tmp/cv/log_*.txt
$CV --score-only --out $OUT/recipe_cv_$ROUND.json --markdown $OUT/recipe_cv_$ROUND.md > /tmp/cv/log_score.txt 2>&1
echo "score rc=$? at $(el) s"; grep -v "Suspicious\|^20" /tmp/cv/log_score.txt | tail -15
(cd /tmp/cv && tar czf $OUT/recipe_cv_${ROUND}_runs.tgz log_*.txt $(find runs -name run.json -o -name history.csv \
  -o -name config.yaml -o -name "predictions_val.csv" -o -name "metrics_val.json"))
echo "total $(el) s"; ls -la $OUT
