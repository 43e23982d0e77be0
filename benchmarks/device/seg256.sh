#!/bin/bash
# Issue 4 on the device machine: infection U-Net, medseg, 5-fold grouped CV at 256 px / base 32 / lung-masked /
# BatchNorm recalibration, alone on the GPU (JAX). Carry: .gpu/whl (keras 3.15.1 + namex + optree wheels) and
# .gpu/medseg (a copy of ../shared/data/medseg-covid19-100). Resumable: if the call is cut by its time limit, run
# the same command again at once (the warm machine keeps /tmp/seg256 for ~30 s of idleness only).
# Usage (device tool): bash benchmarks/device/seg256.sh      DRY=1 bash benchmarks/device/seg256.sh (CPU check)
if [ -z "$DRY" ]; then
  [ -d /tmp/site/keras ] || python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .gpu/whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site:$PWD/src; nvidia-smi -L
  SET="--epochs 80 --folds 5 --size 256 --base-filters 32"; LIMIT=${LIMIT:-540}
else
  SET="--epochs 3 --folds 2 --size 64 --base-filters 4"; LIMIT=${LIMIT:-900}
fi
export KERAS_BACKEND=jax PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_PREALLOCATE=false TF_CPP_MIN_LOG_LEVEL=2
OUT=${OUT:-/tmp/out}; RUN=${RUN:-/tmp/seg256}; mkdir -p $OUT
timeout $LIMIT python3 benchmarks/bench_segmentation.py infection --model unet --batch-norm --bn-momentum 0.9 \
  --patience 15 --rotation 10 --lung-input masked --root .gpu/medseg --bn-recalibration 1024 $SET --batch-size 8 \
  --run-dir $RUN --out $OUT/seg_256_rc1024.json 2>&1 | grep -v "^WARNING\|^I0000\|^W0000\|epoch [0-9]*:" | tail -20
echo "exit ${PIPESTATUS[0]} (124: cut by the time limit; run again to resume)"
(cd $(dirname $RUN) && tar czf $OUT/seg256_run.tgz $(find $(basename $RUN) -name "run.json" -o -name "fit.json" -o -name "history.csv" \
  -o -name "metrics_*.json" -o -name "per_image*.csv" -o -name "*.md" -o -name "config.yaml" 2>/dev/null))
ls -la $OUT
