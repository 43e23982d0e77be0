"""Ablation: which parts of the ``robust`` recipe make scores survive a change of hospital.

Protocol (fixed before any external number was seen):

* Train **only** on ``sars-cov-2-ct`` (grouped split, group proxy = file-number blocks merged with
  near-duplicate clusters); the validation split selects the checkpoint (``val_auc``); the recipe is
  chosen by validation AUC and its consistency across seeds.
* Report the internal **test** split and, as an external check never used for choices,
  ``covid-ct-md`` (the 6-patient sample): COVID-19 vs CAP + Normal, at slice level on lung-containing
  slices (lung mask area >= ``MIN_LUNG_FRACTION`` of the full slice, computed by
  ``covidct.preprocess.lungs.lung_mask`` without labels) and at patient level (mean of the slice
  probabilities), plus whether both COVID patients rank above all four others.
* Arms are cumulative (``configs/robust/<arm>.yaml``): ``plain`` (whole slice) → ``lungs`` (lung crop)
  → ``standardize`` (``lungs-robust`` stage) → ``appearance`` (``training.augmentation: robust``) →
  ``robust`` (+ AdamW, dropout, cosine: the recipe), and the leave-one-out ``no-standardize``. Every arm
  is trained with several seeds; ``ensemble`` rows average the seeds' probabilities.
* 95% CIs: bootstrap over patients/groups (``covidct.evaluate``); across seeds: mean ± SD.

The protocol lives in the package (``covidct.experiments.ablation``, its data in
``covidct.experiments.external``); this script is its command line. Everything goes through
``covidct.train.train`` and ``covidct.evaluate.evaluate_run``; it imports no TensorFlow itself, so it runs
under ``KERAS_BACKEND=jax`` (GPU) as well::

    python benchmarks/bench_generalization.py --size 128 --epochs 20 --seeds 0 1 2 --out results.json
    KERAS_BACKEND=jax python benchmarks/bench_generalization.py --size 224 --seeds 0 1 2 3 4 --out gpu.json
    python benchmarks/bench_generalization.py --smoke --out /tmp/smoke.json   # phantoms, < 1 min
    # a machine without the raw data: export the preprocessed arrays here, run there
    python benchmarks/bench_generalization.py --export-data bundle --arms lungs robust
    KERAS_BACKEND=jax python benchmarks/bench_generalization.py --data-dir bundle --arms lungs robust --out r.json
    # back here, from the run folders it trained (their files, without weights): seeds and the seed ensemble
    python benchmarks/bench_generalization.py --arms robust --from-runs runs/gen-robust-s224-seed0 runs/gen-robust-s224-seed1

Finished runs are reused (the script is resumable); ``--overwrite`` retrains.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from covidct.evaluate.generalization import (
    generalization_markdown,
    plot_generalization,
    summarise_generalization,
)
from covidct.experiments.ablation import (  # noqa: F401  (the protocol's functions, under their old names)
    ARMS,
    arm_config,
    ensemble_scores,
    evaluate_arm,
    run_ablation,
    scores_from_files,
    summarise_runs,
    train_arm,
    write_json,
)
from covidct.experiments.ensembles import (  # noqa: F401
    ensemble,
    external_summary,
    internal_scores,
    patient_table,
)
from covidct.experiments.external import (  # noqa: F401
    CONFIG_DIR,
    EXTERNAL,
    EXTERNAL_LABEL_MAP,
    MIN_LUNG_FRACTION,
    bundle_data,
    export_bundle,
    external_data,
    lung_fractions,
    smoke_external_data,
)

# The results are read, tabulated and plotted by the package (notebook 11 and `make figures` use the same code).
summarise = summarise_generalization
markdown_table = generalization_markdown
plot_results = plot_generalization


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=int, default=128, help="model input side in pixels (default 128)")
    parser.add_argument("--epochs", type=int, default=20, help="maximum epochs per run (default 20)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="training seeds (default 0 1 2)")
    parser.add_argument("--arms", nargs="+", default=list(ARMS), choices=ARMS, help="arms to run (default all)")
    parser.add_argument("--batch-size", type=int, default=None, help="override training.batch_size")
    parser.add_argument("--set", nargs="+", default=[], metavar="KEY=VALUE",
                        help="config overrides applied to every arm, e.g. training.monitor=last training.schedule=cosine")
    parser.add_argument("--tag", default="", help="suffix of the run names (runs with other --set values must differ)")
    parser.add_argument("--max-steps", type=int, default=None, help="cap on batches per epoch (quick runs)")
    parser.add_argument("--n-bootstrap", type=int, default=1000, help="bootstrap replicates for CIs")
    parser.add_argument("--runs-root", default="runs/bench_generalization", help="parent folder of the run folders")
    parser.add_argument("--cache-root", default=".cache/covidct", help="preprocessing cache folder")
    parser.add_argument("--out", default=None, help="write the results JSON here")
    parser.add_argument("--markdown", default=None, help="also write the markdown table here")
    parser.add_argument("--overwrite", action="store_true", help="retrain finished runs")
    parser.add_argument("--data-dir", default=None, help="read preprocessed arrays exported by --export-data "
                        "(machines without the raw data)")
    parser.add_argument("--export-data", default=None, help="export the arms' preprocessed data to this folder and exit")
    parser.add_argument("--smoke", action="store_true", help="phantom data, tiny runs (tests the pipeline in < 1 min)")
    parser.add_argument("--from-runs", nargs="+", default=None, metavar="RUN_DIR",
                        help="summarise finished, evaluated run folders of one arm (e.g. copied back from a GPU machine "
                        "without their weights) instead of training: seeds and the seed ensemble from their files")
    args = parser.parse_args(argv)
    if args.from_runs and len(args.arms) != 1:
        parser.error("--from-runs summarises one arm: name it with --arms")
    if args.smoke:
        args.size, args.epochs, args.n_bootstrap = min(args.size, 32), min(args.epochs, 2), min(args.n_bootstrap, 50)
    return args


def main(argv=None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    args = parse_args(argv)
    if args.export_data:
        from covidct.config import load_config

        stages = sorted({load_config(CONFIG_DIR / f"{arm}.yaml").data.stage for arm in args.arms})
        for path in export_bundle(args.export_data, stages, args.size, args.cache_root):
            sys.stdout.write(f"wrote {path}\n")
        return 0
    if args.from_runs:
        results = summarise_runs([Path(d) for d in args.from_runs], args.arms[0], args)
        if args.out:
            write_json(results, args.out)
    else:
        results = run_ablation(args)
    table = markdown_table(results)
    if args.markdown:
        Path(args.markdown).write_text(table + "\n")
    sys.stdout.write(table + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
