#!/bin/bash
# Infection segmentation on the device machine: infection U-Net on medseg, 5-fold grouped CV at 256 px / base 32,
# lung-masked input, BatchNorm momentum 0.9 + recalibration 1024, up to 80 epochs, patience 15, batch 8 (JAX).
# One process per fold, all on the one GPU (`bench_segmentation.py --fold k` on one --run-dir), then one finishing
# call per arm (same command without --fold: writes run.json, the CV metrics and the result JSON). In an earlier
# call the same run fitted its folds one after another at 100-190 s each (a GPU epoch took 0.12 s; the rest is per-epoch
# work outside the batches), too slow for one call. (Since then `--jobs 5` does the same in one command, and
# training.drop_last: auto leaves out the incomplete last batch on JAX: add --drop-last off to repeat these runs.)
# Two arms, fixed and committed with this script before the run:
#   crop  (primary, the infection-segmentation result): lung crops (--crop lungs, the CPU recipe) at 256 px
#   whole (secondary): whole slices, the earlier unfinished run
# Carry: .gpu/whl (keras 3.15.1 + namex + optree wheels) and .gpu/medseg (a copy of ../shared/data/medseg-covid19-100).
# Second call (fixed after the first call's results, before this one): ARMS=whole SEED=1, a confirmatory
# run of the whole-slice arm on another fold partition (seed 1: folds, validation groups, initial weights, draws).
# If the call is cut by its limit, run it again at once: the warm machine keeps /tmp/seg and the run folders resume.
# Usage (device tool): bash benchmarks/device/seg256.sh      DRY=1 bash benchmarks/device/seg256.sh (CPU check)
if [ -z "$DRY" ]; then
  [ -d /tmp/site/keras ] || python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .gpu/whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site:$PWD/src; nvidia-smi -L
  SET="--epochs 80 --folds 5 --size 256 --base-filters 32"; FOLDS=5; LIMIT=${LIMIT:-420}; FINISH=${FINISH:-120}
  PY=python3; ROOT=.gpu/medseg
else
  SET="--epochs 2 --folds 2 --size 64 --base-filters 4"; FOLDS=2; LIMIT=${LIMIT:-900}; FINISH=${FINISH:-600}
  PY=${PY:-.venv/bin/python}; ROOT=${ROOT:-../shared/data/medseg-covid19-100}
fi
export KERAS_BACKEND=jax PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_PREALLOCATE=false TF_CPP_MIN_LOG_LEVEL=2 OMP_NUM_THREADS=2
OUT=${OUT:-/tmp/out}; RUNS=${RUNS:-/tmp/seg}; mkdir -p $OUT $RUNS; ARMS=${ARMS:-crop whole}; SEED=${SEED:-0}
START=$(date +%s); el() { echo $(( $(date +%s) - START )); }
bench() {  # arm, extra arguments
  local arm=$1; shift
  $PY benchmarks/bench_segmentation.py infection --model unet --batch-norm --bn-momentum 0.9 --patience 15 \
    --rotation 10 --lung-input masked --bn-recalibration 1024 --batch-size 8 --root $ROOT $SET \
    --seed $SEED --run-dir $RUNS/$arm --out $OUT/seg256_${arm}_seed$SEED.json "$@"
}
export -f bench; export SET PY ROOT RUNS OUT SEED
declare -A EXTRA=([crop]="--crop lungs" [whole]="")
for arm in $ARMS; do
  if [ -f $RUNS/$arm/metrics_cv.json ]; then continue; fi
  timeout $LIMIT bash -c "bench $arm ${EXTRA[$arm]} --fold 0" \
    > $RUNS/log_${arm}_0.txt 2>&1 &
  for i in $(seq 60); do [ -f $RUNS/$arm/run.json ] && break; sleep 1; done  # fold 0 creates the run folder
  for k in $(seq 1 $((FOLDS - 1))); do
    timeout $LIMIT bash -c "bench $arm ${EXTRA[$arm]} --fold $k" \
      > $RUNS/log_${arm}_$k.txt 2>&1 &
  done
done
wait
echo "=== folds done at $(el) s"
grep -h "fitted in\|Error\|Traceback" $RUNS/log_*_[0-9].txt
for arm in $ARMS; do
  [ -f $RUNS/$arm/metrics_cv.json ] || timeout $FINISH bash -c "bench $arm ${EXTRA[$arm]}" > $RUNS/log_${arm}_finish.txt 2>&1 &
done
wait
echo "=== finished at $(el) s"
for arm in $ARMS; do echo "--- $arm"; grep -v "^WARNING\|^I0000\|^W0000\|epoch [0-9]*:\|^20[0-9][0-9]-" \
  $RUNS/log_${arm}_finish.txt 2>/dev/null | tail -6; done
(cd $RUNS && tar czf $OUT/seg256_runs.tgz log_*.txt $(find $ARMS -name "run.json" -o -name "fit.json" \
  -o -name "history.csv" -o -name "metrics_*.json" -o -name "per_image*.csv" -o -name "*.md" -o -name "config.yaml" \
  -o -name "split.csv" 2>/dev/null))
echo "total $(el) s"; ls -la $OUT
