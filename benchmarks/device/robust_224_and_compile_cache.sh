#!/bin/bash
# Device call (one H100/H200, JAX backend). Two measurements, fixed and committed before the call:
#  A ("the same at 224 px"): GPU training time of the `robust` recipe (configs/robust/robust.yaml: small_cnn,
#    stage lungs-robust, robust augmentation, AdamW + cosine, up to 20 epochs, early stopping on val AUC) at 224 px,
#    seed 0, on sars-cov-2-ct arrays exported here with
#    `python benchmarks/bench_generalization.py --export-data .gpu/bundle224 --arms robust --size 224`.
#    Its internal test and external (covid-ct-md) scores are reported whatever they are; nothing is chosen by them.
#  B (follow-up of the 256 px segmentation runs): the GPU effect of training.drop_last and of the persistent XLA
#    cache: one MedSeg fold of the 256 px / base-32 infection U-Net, 2 epochs, in a fresh process per arm
#    (off, drop_last, cold, warm), one repeat.
# Carry: .gpu (whl: keras 3.15.1 + namex + optree wheels; bundle224; medseg: copy of ../shared/data/medseg-covid19-100).
# Call 2 (fixed after call 1, before it; same warm H100): SEEDS="0 1 2" REPEATS=1 LIMIT_A=220 LIMIT_B=170 — seeds 1
# and 2 of A (seed 0 is kept; gives the 3-seed ensemble and three training times) and a second repeat of B.
# Usage (device tool): bash benchmarks/device/robust_224_and_compile_cache.sh
#   DRY=1 bash benchmarks/device/robust_224_and_compile_cache.sh (tiny CPU check)
if [ -z "$DRY" ]; then
  [ -d /tmp/site/keras ] || python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .gpu/whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site:$PWD/src; nvidia-smi -L
  PY=python3; A="--epochs 20 --n-bootstrap 1000"; B="--size 256 --base-filters 32 --epochs 2"
  LIMIT_A=${LIMIT_A:-330}; LIMIT_B=${LIMIT_B:-230}; MEDSEG=.gpu/medseg
else
  PY=${PY:-.venv/bin/python}; A="--epochs 1 --max-steps 2 --n-bootstrap 20"; B="--size 64 --base-filters 4 --epochs 1"
  LIMIT_A=${LIMIT_A:-600}; LIMIT_B=${LIMIT_B:-600}; MEDSEG=${MEDSEG:-../shared/data/medseg-covid19-100}
fi
export KERAS_BACKEND=jax PYTHONUNBUFFERED=1 TF_CPP_MIN_LOG_LEVEL=2
OUT=${OUT:-/tmp/out}; mkdir -p $OUT /tmp/gen; START=$(date +%s); el() { echo $(( $(date +%s) - START )); }
echo "=== A: robust recipe, 224 px"
timeout $LIMIT_A $PY benchmarks/bench_generalization.py --data-dir .gpu/bundle224 --size 224 --arms robust --seeds ${SEEDS:-0} \
  $A --runs-root /tmp/gen --out $OUT/generalization_robust_224.json --markdown $OUT/generalization_robust_224.md \
  > $OUT/log_a.txt 2>&1; echo "A rc=$? at $(el) s"
grep -v "^WARNING\|^I0000\|^W0000" $OUT/log_a.txt | tail -12
(cd /tmp/gen && tar czf $OUT/gen224_runs.tgz $(find . -name "*.json" -o -name "*.csv" -o -name "*.md" -o -name "*.yaml" \
  -o -name "*.log" 2>/dev/null | grep -v per_image))
echo "=== B: compile cache / drop_last, 256 px"
timeout $LIMIT_B $PY benchmarks/bench_compile_cache.py $B --repeats ${REPEATS:-1} --root $MEDSEG \
  --out $OUT/compile_cache_gpu.json > $OUT/log_b.txt 2>&1; echo "B rc=$? at $(el) s"
grep "repeat\|off\|warm\|cold\|drop\|Error" $OUT/log_b.txt | tail -12
echo "total $(el) s"; ls -la $OUT
