#!/bin/bash
# Prepared for a later device call (not run yet): does the `robust` recipe's augmentation keep up with the
# train step on a GPU? Target: EfficientNetB0 at 224 px trains at >= 0.9x the throughput without augmentation.
#  1. bench_pipeline.py (JAX, batch 32, 224 px): arms none, robust:inline (eager on the training thread),
#     robust:threaded (the default on JAX: compiled augmenter on the background thread), robust:inline+compiled;
#     40 steps per epoch, 5 rounds, arms interleaved; then the same for small_cnn at 128 px.
#  2. bench_augment.py --distribution on the GPU: eager vs compiled draws (KS tests).
# Before the call, here: echo "/.gpu/" >> .git/info/exclude; .gpu/whl = keras 3.15.1 + namex 0.1.0 + optree 0.20.0
# wheels (manylinux, cp312), as for benchmarks/device/augment_gpu.sh. Carry [".gpu"]. ~6 min of command.
# Usage (device tool): bash benchmarks/device/pipeline_gpu.sh      DRY=1 bash benchmarks/device/pipeline_gpu.sh (CPU)
if [ -z "$DRY" ]; then
  [ -d /tmp/site/keras ] || python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .gpu/whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site:$PWD/src; nvidia-smi -L
  PY=python3; SIZE=224; STEPS=40; ROUNDS=5; DRAWS=512
else
  PY=${PY:-.venv/bin/python}; SIZE=32; STEPS=2; ROUNDS=1; DRAWS=64
fi
export KERAS_BACKEND=jax PYTHONUNBUFFERED=1 TF_CPP_MIN_LOG_LEVEL=2
OUT=${OUT:-/tmp/out}; mkdir -p $OUT; START=$(date +%s); el() { echo $(( $(date +%s) - START )); }
ARMS="none robust:inline robust:threaded robust:inline+compiled"
echo "=== 1: training throughput, efficientnet_b0 $SIZE px"
timeout 300 $PY benchmarks/bench_pipeline.py --models efficientnet_b0 --size $SIZE --batch 32 --steps $STEPS \
  --repeats $ROUNDS --arms $ARMS --out $OUT/pipeline_jax_gpu_efficientnet_b0.json 2>&1 | grep "img/s\|Error"
echo "=== 1b: small_cnn 128 px ($(el) s)"
timeout 120 $PY benchmarks/bench_pipeline.py --models small_cnn --size $(( SIZE < 128 ? SIZE : 128 )) --batch 32 \
  --steps $STEPS --repeats $ROUNDS --arms $ARMS --out $OUT/pipeline_jax_gpu_small_cnn.json 2>&1 | grep "median\|Error"
echo "=== 2: eager vs compiled draws ($(el) s)"
timeout 120 $PY benchmarks/bench_augment.py --distribution --sizes $SIZE --draws $DRAWS \
  --out $OUT/augment_distribution_jax_gpu.json 2>&1 | grep "p=\|Error"
echo "total $(el) s"; ls -la $OUT
