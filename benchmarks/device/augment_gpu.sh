#!/bin/bash
# Prepared for a later device call (not run yet): is the eager training augmentation what holds the
# 224 px `robust` recipe at ~400 img/s on an H100 (BENCHMARKS.md, generalisation section)?
#  1. `bench_augment.py` on the GPU (JAX): BatchAugmenter eager vs compiled per batch of 32, 128 and 224 px.
#  2. The recipe itself, seed 0, 224 px, in the order eager, compiled, compiled, eager
#     (COVIDCT_COMPILE_AUGMENTATION=off/on; each run its own folder): epoch seconds from each history.csv.
# If compiled wins, make covidct.train.augment.compile_augmentation() return True for JAX on accelerators.
# Before the call, here: echo "/.gpu/" >> .git/info/exclude; .gpu/whl = keras 3.15.1 + namex 0.1.0 + optree 0.20.0
# wheels (manylinux, cp312); `python benchmarks/bench_generalization.py --export-data .gpu/bundle224 --arms robust
# --size 224` (41 MB). Carry [".gpu"]. ~7 min of command; 6 files come back ($OUT holds at most 8).
# Usage (device tool): bash benchmarks/device/augment_gpu.sh      DRY=1 bash benchmarks/device/augment_gpu.sh (CPU)
if [ -z "$DRY" ]; then
  [ -d /tmp/site/keras ] || python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .gpu/whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site:$PWD/src; nvidia-smi -L
  PY=python3; SIZES="128 224"; A="--epochs 20 --n-bootstrap 200"; LIMIT=${LIMIT:-130}
else
  PY=${PY:-.venv/bin/python}; SIZES="32"; A="--epochs 1 --max-steps 2 --n-bootstrap 20"; LIMIT=${LIMIT:-600}
fi
export KERAS_BACKEND=jax PYTHONUNBUFFERED=1 TF_CPP_MIN_LOG_LEVEL=2
OUT=${OUT:-/tmp/out}; mkdir -p $OUT /tmp/aug; START=$(date +%s); el() { echo $(( $(date +%s) - START )); }
echo "=== 1: augmentation per batch"
$PY benchmarks/bench_augment.py --sizes $SIZES --batch 32 --out $OUT/augment_jax_gpu.json 2>&1 | grep " px\|Error"
echo "=== 2: the 224 px robust recipe, eager vs compiled augmentation ($(el) s)"
for pair in "e1 off" "c1 on" "c2 on" "e2 off"; do
  set -- $pair
  COVIDCT_COMPILE_AUGMENTATION=$2 timeout $LIMIT $PY benchmarks/bench_generalization.py --data-dir .gpu/bundle224 \
    --size 224 --arms robust --seeds 0 $A --tag=-aug-$1 --runs-root /tmp/aug --out $OUT/robust224_aug_$1.json \
    >> $OUT/log_runs.txt 2>&1; echo "$1 ($2) rc=$? at $(el) s"
  $PY -c "import pandas as p,glob; h=p.read_csv(glob.glob('/tmp/aug/*aug-$1/history.csv')[0]); \
print('  epochs', len(h), 'first', h.seconds.iloc[0], 's, median after', h.seconds.iloc[1:].median(), 's')"
done
echo "total $(el) s"; ls -la $OUT
