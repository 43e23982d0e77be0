"""Grouped cross-validation over the non-test rows to choose a recipe (``covidct cv``).

For each candidate (config overrides of ``rounds.BASE_CONFIG``) and each of ``--folds`` grouped folds of
the non-test rows (``covidct.data.splits.grouped_kfold``: stratified by class, whole groups), the fold's
held-out groups are the run's ``val`` split and the other folds its ``train`` split. Every candidate keeps
``training.monitor: last`` (a fixed budget, the final epoch is kept), so the held-out fold selects
nothing; it is scored once after the last epoch through ``covidct.evaluate.evaluate_run``. The held-out
predictions are pooled (``oof``), compared with the round's base by a paired bootstrap and the fixed rule
chooses (``selection``). Finished folds are reused; ``--overwrite`` retrains. With ``--executor dask[:ADDRESS]``
the folds are trained as tasks first (``covidct.experiments.cv_tasks.run_cv_tasks``), then scored here as before.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from pathlib import Path

import keras

from covidct.data.splits import grouped_kfold
from covidct.evaluate import evaluate_run
from covidct.experiments.folds import candidate_config, candidate_data, fold_data
from covidct.experiments.oof import candidate_scores, out_of_fold
from covidct.experiments.rounds import (
    BASE_CONFIG,
    CANDIDATES,
    EVALUATION_ONLY,
    MIN_GAIN,
    ROUNDS,
    TRAIN_FRACTION,
)
from covidct.experiments.selection import choose, versus_base
from covidct.runs import run_status, write_json_atomic
from covidct.train import train

log = logging.getLogger(__name__)


class Unfinished(Exception):
    """A fold that ``--score-only`` finds untrained."""


def run_fold(name: str, fold: int, data, args) -> tuple[Path, float]:
    """Train (or reuse) one candidate on one fold and write its held-out predictions (``predictions_val.csv``).

    An ``EVALUATION_ONLY`` candidate copies the finished fold model of the candidate it shares its training
    with into its own run folder and only predicts (with its own ``evaluation`` settings)."""
    cfg = candidate_config(name, fold, args)
    run_dir = Path(cfg.output_root) / cfg.run_name
    status = run_status(run_dir)
    if name in EVALUATION_ONLY and (status != "finished" or args.overwrite):
        source, seconds = run_fold(EVALUATION_ONLY[name], fold, data, args)
        if run_dir.exists():
            shutil.rmtree(run_dir)
        shutil.copytree(source, run_dir, ignore=shutil.ignore_patterns("predictions_*", "metrics_*", "figures"))
    elif status != "finished" or args.overwrite:
        if args.score_only:
            raise Unfinished(f"{run_dir} is {status}")
        started = time.perf_counter()
        train(cfg, run_dir=run_dir, resume=status == "interrupted" and not args.overwrite, overwrite=args.overwrite,
              data=data, progress=False)
        seconds = time.perf_counter() - started
    else:
        seconds = float(json.loads((run_dir / "run.json").read_text()).get("seconds", float("nan")))
    if not args.train_only and (args.overwrite or not (run_dir / "predictions_val.csv").is_file()):
        evaluate_run(run_dir, split="val", data=data, n_bootstrap=0, figures=False, tta=cfg.evaluation.tta)
    return run_dir, seconds


def run_cv(args) -> dict:
    """Train (or reuse) every candidate on every fold, pool the held-out predictions, score and choose.

    Args:
        args: the parsed ``covidct cv`` options (``covidct.experiments.cli.parse_args``).

    Returns:
        The results dict (also written to ``args.out``): settings, each candidate's pooled and per-fold scores,
        its difference to the round's base, the candidates whose folds did not all finish, and the choice.
    """
    base = ROUNDS[args.round][0]
    _, datasets = candidate_data(args)
    data = datasets[args.candidates[0]]
    folds = grouped_kfold(data.manifest, k=args.folds, seed=args.cv_seed)
    results = {
        "protocol": __doc__.strip(),
        "config": f"configs/{BASE_CONFIG.parent.name}/{BASE_CONFIG.name}", "backend": keras.backend.backend(), "smoke": bool(args.smoke),
        "round": args.round, "base": base,
        "folds": args.folds, "cv_seed": args.cv_seed, "seed": args.seed, "min_gain": MIN_GAIN,
        "non_test_slices": int(len(data.manifest)), "non_test_groups": int(data.manifest["group"].nunique()),
        "candidates": {}, "unfinished": {},
    }
    if args.train_only:  # one worker's share of a parallel run: train the folds, score nothing
        for name in args.candidates:
            for k in args.fold if args.fold is not None else range(args.folds):
                log.info("candidate %s, fold %d/%d: training only", name, k + 1, args.folds)
                run_fold(name, k, fold_data(datasets[name], folds[k][1], TRAIN_FRACTION.get(name, 1.0), args.cv_seed),
                         args)
        return results
    tables = {}
    for name in args.candidates:
        run_dirs, seconds = [], []
        try:
            for k, (_, held_out) in enumerate(folds):
                log.info("candidate %s, fold %d/%d (%d held-out slices)", name, k + 1, args.folds, len(held_out))
                fold = fold_data(datasets[name], held_out, TRAIN_FRACTION.get(name, 1.0), args.cv_seed)
                run_dir, took = run_fold(name, k, fold, args)
                run_dirs.append(run_dir)
                seconds.append(took)
        except Unfinished as error:  # --score-only: a fold never finished; the candidate is not eligible
            results["unfinished"][name] = str(error)
            log.warning("candidate %s is not scored: %s", name, error)
            continue
        tables[name] = out_of_fold(run_dirs)
        block = candidate_scores(tables[name], args.n_bootstrap)
        block.update(overrides=CANDIDATES[name], train_fraction=TRAIN_FRACTION.get(name, 1.0), train_seconds=seconds,
                     run_dirs=[str(d) for d in run_dirs])
        if name != base and base in tables:
            block["minus_base"] = versus_base(tables[base], tables[name], args.n_bootstrap)
        results["candidates"][name] = block
        if args.out:
            write_json(results, args.out)  # after every candidate: a long run keeps what it measured
    if base in results["candidates"]:
        results["choice"] = choose(results["candidates"], base)
    if args.out:
        write_json(results, args.out)
    return results


def markdown_table(results: dict) -> str:
    lines = [
        "| candidate | overrides | pooled OOF macro-F1 [95% CI] | pooled OOF AUC [95% CI] | per-fold macro-F1 | "
        "macro-F1 minus base [95% CI] (share of replicates better) | train s (folds) |",
        "|---|---|---|---|---|---|---|",
    ]

    def ci(value, interval):
        return f"{value:.3f}" + (f" [{interval[0]:.3f}, {interval[1]:.3f}]" if interval else "")

    for name, block in results["candidates"].items():
        diff = block.get("minus_base", {}).get("macro_f1")
        versus = f"{diff['value']:+.3f} [{diff['low']:+.3f}, {diff['high']:+.3f}] ({diff['share_b_better']:.2f})" if diff else ""
        folds = " / ".join(f"{f['macro_f1']:.3f}" for f in block["folds"])
        change = ' '.join(block['overrides']) or '(shipped recipe)'
        if block.get('train_fraction', 1.0) < 1.0:
            change += f" (training folds subsampled to {block['train_fraction']:.0%} by groups)"
        lines.append(f"| {name} | {change} | "
                     f"{ci(block['oof_macro_f1'], block['oof_macro_f1_ci'])} | {ci(block['oof_auc'], block['oof_auc_ci'])} | "
                     f"{folds} | {versus} | {sum(block['train_seconds']):.0f} |")
    for name, why in results.get("unfinished", {}).items():
        lines.append(f"| {name} | {' '.join(CANDIDATES[name])} | not scored: {why} (not eligible) | | | | |")
    if "choice" in results:
        c = results["choice"]
        lines.append(f"\nRule: {c['rule']}. Best: {c['best_by_oof_macro_f1']} ({c['gain_over_base']:+.3f}); "
                     f"**chosen: {c['chosen']}**.")
    return "\n".join(lines)


def write_json(results: dict, path) -> None:
    """The results JSON, written atomically (``covidct.runs.write_json_atomic``; NaN as null)."""
    write_json_atomic(path, results)
