#!/bin/bash
# Copy of the script run on the device machine (carried: this file as .gpu/run3.sh, .gpu/bundle2 from
# `bench_generalization.py --export-data .gpu/bundle2 --arms standardize histogram --size 128`, .gpu/whl = keras
# 3.15.1 + namex + optree wheels, .gpu/medseg = a copy of ../shared/data/medseg-covid19-100). Results: BENCHMARKS.md.
# Device run (JAX). In parallel: histogram vs standardize arms (3 seeds each) and the infection
# U-Net 5-fold at 256 px / base 32 and 128 px / base 16 (longer); then their aggregate; then, alone on the
# GPU, throughput of covidct's train(cfg) vs bare model.fit (EfficientNetB0, then ResNet50 if time is left).
# DRY=1: tiny settings to check the script on a CPU machine.
if [ -z "$DRY" ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .gpu/whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site:$PWD/src; nvidia-smi -L
fi
export KERAS_BACKEND=jax PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_PREALLOCATE=false TF_CPP_MIN_LOG_LEVEL=2
OUT=${OUT:-/tmp/out}; mkdir -p $OUT /tmp/dev
python3 -c "import keras, jax; print('keras', keras.__version__, 'jax', jax.__version__, jax.devices())" || exit 1
START=$(date +%s); el() { echo $(( $(date +%s) - START )); }
if [ -n "$DRY" ]; then N=64; SZ=64; EP=1; GE="--epochs 1 --max-steps 2"; SE="--epochs 1 --folds 2"; PT=600; BUDGET=1500
else N=3840; SZ=224; EP=3; GE="--epochs 16"; SE="--epochs 80"; PT=270; BUDGET=575; fi
echo "=== parallel at $(el) s"
G="python3 benchmarks/bench_generalization.py --data-dir .gpu/bundle2 --size 128 --n-bootstrap 200 --runs-root /tmp/dev/runs"
for a in standardize histogram; do for s in 0 1 2; do
  timeout $PT $G $GE --arms $a --seeds $s --out /tmp/dev/g_${a}_$s.json > /tmp/dev/log_g_${a}_$s.txt 2>&1 &
done; done
S="python3 benchmarks/bench_segmentation.py infection --model unet --batch-norm --bn-momentum 0.9 --patience 15 --rotation 10 --lung-input masked --root .gpu/medseg"
timeout $PT $S $SE --size 256 --base-filters 32 --batch-size 8 --run-dir /tmp/dev/seg256 --out $OUT/seg_256.json > /tmp/dev/log_seg256.txt 2>&1 &
timeout $PT $S $SE --size 128 --base-filters 16 --batch-size 4 --run-dir /tmp/dev/seg128 --out $OUT/seg_128.json > /tmp/dev/log_seg128.txt 2>&1 &
wait
echo "=== aggregate at $(el) s"
grep -h "bench_generalization .* seed\|Dice\|Error" /tmp/dev/log_*.txt | tail -20
[ $(ls /tmp/dev/g_*.json 2>/dev/null | wc -l) = 6 ] && timeout 80 $G $GE --arms standardize histogram --seeds 0 1 2 --out $OUT/gen.json --markdown $OUT/gen.md 2>&1 | grep -v "Suspicious\|^20" | tail -22
(cd /tmp/dev && tar czf $OUT/logs.tgz log_*.txt $(ls g_*.json 2>/dev/null) $(find runs seg256 seg128 -name "run.json" -o -name "history.csv" -o -name "metrics_*.json" 2>/dev/null))
for m in efficientnet_b0 resnet50; do
  left=$(( BUDGET - $(el) )); if [ $left -lt 100 ]; then echo "skip $m ($left s left)"; continue; fi
  echo "=== throughput $m at $(el) s"
  timeout $left python3 benchmarks/bench_train.py --synthetic $N --val-images 256 --model $m --size $SZ --batch 128 \
    --mixed-precision --epochs $EP --train-path --skip-pipeline --out $OUT/train_$m.json 2>&1 | grep -v "^WARNING\|^I0000" | tail -7
done
echo "total $(el) s"; ls -la $OUT
