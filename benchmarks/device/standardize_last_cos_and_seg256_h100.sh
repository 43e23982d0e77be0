#!/bin/bash
# Device run (JAX), carried: .gpu/whl (keras 3.15.1 + namex + optree wheels), .gpu/bundle2 (from
# `bench_generalization.py --export-data .gpu/bundle2 --arms standardize histogram --size 128`), .gpu/medseg (a copy of
# ../shared/data/medseg-covid19-100). In parallel:
#   segmentation: infection U-Net, 5-fold grouped CV, 256 px, base 32, lung-masked, BatchNorm recalibration
#       (default 1024), up to 80 epochs, patience 15 (the earlier run was cut inside fold 0: op-by-op JAX; now XLA);
#   classifier: `standardize` arm, 3 seeds, 16 epochs, fixed budget: monitor last + cosine schedule (rule fixed
#       a priori).
# DRY=1: tiny settings to check the script on a CPU machine.
if [ -z "$DRY" ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .gpu/whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site:$PWD/src; nvidia-smi -L
fi
export KERAS_BACKEND=jax PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_PREALLOCATE=false TF_CPP_MIN_LOG_LEVEL=2
OUT=${OUT:-/tmp/out}; mkdir -p $OUT /tmp/dev
python3 -c "import keras, jax; print('keras', keras.__version__, 'jax', jax.__version__, jax.devices())" || exit 1
START=$(date +%s); el() { echo $(( $(date +%s) - START )); }
if [ -n "$DRY" ]; then GE="--epochs 1 --max-steps 2"; SE="--epochs 1 --folds 2 --size 64 --base-filters 4"; PT=900
else GE="--epochs 16"; SE="--epochs 80 --folds 5 --size 256 --base-filters 32"; PT=${PT:-430}; fi
G="python3 benchmarks/bench_generalization.py --data-dir .gpu/bundle2 --size 128 --n-bootstrap 200 --runs-root /tmp/dev/runs --arms standardize --set training.monitor=last training.schedule=cosine --tag=-last-cos"
for s in 0 1 2; do timeout $PT $G $GE --seeds $s --out /tmp/dev/g_$s.json > /tmp/dev/log_g_$s.txt 2>&1 & done
S="python3 benchmarks/bench_segmentation.py infection --model unet --batch-norm --bn-momentum 0.9 --patience 15 --rotation 10 --lung-input masked --root .gpu/medseg --bn-recalibration 1024"
timeout $PT $S $SE --batch-size 8 --run-dir /tmp/dev/seg256 --out $OUT/seg_256_rc1024.json > /tmp/dev/log_seg256.txt 2>&1 &
wait
echo "=== aggregate at $(el) s"
grep -h "standardize seed\|Dice\|Error\|fold_\|Traceback" /tmp/dev/log_*.txt | tail -30
[ $(ls /tmp/dev/g_*.json 2>/dev/null | wc -l) = 3 ] && timeout 120 $G $GE --seeds 0 1 2 --out $OUT/gen_last_cos.json --markdown $OUT/gen_last_cos.md 2>&1 | grep -v "Suspicious\|^20" | tail -12
(cd /tmp/dev && tar czf $OUT/logs.tgz log_*.txt $(ls g_*.json 2>/dev/null) $(find runs seg256 -name "run.json" -o -name "history.csv" -o -name "metrics_*.json" -o -name "per_image*.csv" -o -name "predictions_*.csv" 2>/dev/null))
echo "total $(el) s"; ls -la $OUT
