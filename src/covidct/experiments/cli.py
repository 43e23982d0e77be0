"""``covidct cv``: choose a recipe by grouped cross-validation over the non-test rows (``covidct.experiments.cv``).

The command's options are the protocol's settings; ``parse_args`` and ``main`` also serve
``benchmarks/bench_recipe_cv.py``, which only calls them.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from covidct.errors import CovidctError
from covidct.executor import parse_executor
from covidct.experiments.rounds import CANDIDATES, ROUNDS

DESCRIPTION = (
    "Choose a recipe by grouped k-fold cross-validation over the non-test rows: every candidate is trained on "
    "every fold, the held-out predictions are pooled, and a rule fixed in advance chooses; the test split is "
    "never loaded. See docs/experiments.md."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The protocol's options (shared by ``covidct cv`` and the benchmark script)."""
    parser.add_argument("--round", default="recipes", choices=list(ROUNDS),
                        help="which comparison, fixed in advance (its base and candidates; default recipes)")
    parser.add_argument("--candidates", nargs="+", default=None, choices=list(CANDIDATES),
                        help="a subset of the round's candidates (default all; the rule needs the round's base)")
    parser.add_argument("--folds", type=int, default=4, help="grouped folds over the non-test rows (default 4)")
    parser.add_argument("--cv-seed", type=int, default=0, help="seed of the fold assignment (default 0)")
    parser.add_argument("--seed", type=int, default=0, help="training seed of every fold (default 0)")
    parser.add_argument("--n-bootstrap", type=int, default=1000, help="bootstrap replicates for the CIs")
    parser.add_argument("--max-steps", type=int, default=None, help="cap on batches per epoch (quick runs)")
    parser.add_argument("--runs-root", default="runs/recipe_cv", help="parent folder of the fold runs")
    parser.add_argument("--cache-root", default=".cache/covidct", help="preprocessing cache folder")
    parser.add_argument("--out", default=None, help="write the results JSON here")
    parser.add_argument("--markdown", default=None, help="also write the markdown table here")
    parser.add_argument("--overwrite", action="store_true", help="retrain finished folds")
    parser.add_argument("--smoke", action="store_true", help="phantom data, tiny runs (tests the pipeline)")
    parser.add_argument("--data-dir", default=None, help="read the non-test data written by --export-data")
    parser.add_argument("--export-data", default=None, help="write the candidates' non-test data here and exit")
    parser.add_argument("--fold", type=int, nargs="+", default=None, help="with --train-only: train these folds only")
    parser.add_argument("--train-only", action="store_true",
                        help="train the candidates' folds and score nothing (one worker of a parallel run)")
    parser.add_argument("--executor", default="local",
                        help="local (the folds one after another, here), dask (a LocalCluster) or dask:ADDRESS: "
                        "each unfinished fold is trained as a task, then the folds are scored here")
    parser.add_argument("--score-only", action="store_true",
                        help="train nothing: score the candidates whose folds all finished, list the others")


def check_arguments(parser: argparse.ArgumentParser, args: argparse.Namespace) -> argparse.Namespace:
    """Fill the round's candidates and refuse contradictory options (``parser.error``: exit code 2)."""
    if args.candidates is None:
        args.candidates = list(ROUNDS[args.round][1])
    if args.fold is not None and (not args.train_only or any(not 0 <= k < args.folds for k in args.fold)):
        parser.error(f"--fold needs --train-only and fold numbers in 0..{args.folds - 1}")
    if args.train_only and args.score_only:
        parser.error("--train-only and --score-only exclude each other")
    try:
        parse_executor(args.executor)
    except CovidctError as error:
        parser.error(str(error))
    if args.folds < 2:
        parser.error("--folds must be at least 2")
    if args.smoke:
        args.n_bootstrap = min(args.n_bootstrap, 50)
    return args


def parse_args(argv=None) -> argparse.Namespace:
    """The options of a cross-validation run from a command line (without the ``cv`` word)."""
    parser = argparse.ArgumentParser(prog="covidct cv", description=DESCRIPTION)
    add_arguments(parser)
    return check_arguments(parser, parser.parse_args(argv))


def add_parser(subparsers) -> None:
    """Register ``covidct cv`` with the main command's subparsers."""
    parser = subparsers.add_parser("cv", help="choose a recipe by grouped cross-validation over the non-test rows",
                                   description=DESCRIPTION)
    add_arguments(parser)
    parser.set_defaults(func=lambda args: _run(check_arguments(parser, args)))


def _run(args: argparse.Namespace) -> int:
    # Training and evaluation (Keras) load only when the command runs, so `covidct --help` stays quick.
    from covidct.experiments.cv import markdown_table
    from covidct.experiments.cv_tasks import run_cv_tasks
    from covidct.experiments.folds import export_non_test

    if args.export_data:
        for path in export_non_test(args):
            sys.stdout.write(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB)\n")
        return 0
    results = run_cv_tasks(args)
    if args.train_only:
        return 0
    table = markdown_table(results)
    if args.markdown:
        Path(args.markdown).write_text(table + "\n")
    sys.stdout.write(table + "\n")
    return 0


def main(argv=None) -> int:
    """Run the protocol from a command line (the benchmark script's entry point)."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    return _run(parse_args(argv))
