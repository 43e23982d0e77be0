"""Results of the generalisation ablation (trained on one hospital, scored on another): read, tabulate, plot.

A results file is the JSON ``benchmarks/bench_generalization.py`` writes: per recipe arm, each seed's internal
test scores and external scores (slice AUC with a CI over patients, patient-mean AUC, the mean COVID
probability per external patient) and, with several seeds, the seed ensemble. Measured results ship with
the package (:func:`shipped_results`), so notebooks show the real numbers without retraining.
"""

from __future__ import annotations

import json
import os
from importlib import resources
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from covidct.errors import CovidctError, did_you_mean

DEFAULT_RESULTS = "generalization-ablation-4arms-seed0"
"""The shipped ablation (four arms of the ``robust`` recipe, one seed, H200, 128 px)."""


def shipped_results() -> dict[str, Path]:
    """``{name: file}`` of the generalisation results that ship with the package (``covidct/results``)."""
    folder = Path(str(resources.files("covidct") / "results"))
    if not folder.is_dir():
        return {}
    return {path.stem: path for path in sorted(folder.glob("generalization-*.json"))}


def load_generalization_results(source: str | os.PathLike = "") -> dict:
    """Read a generalisation results file: a path, the name of a shipped one, or "" for the default.

    Args:
        source: a JSON file written by ``bench_generalization.py``, a name from :func:`shipped_results`, or
            "" for :data:`DEFAULT_RESULTS`.

    Returns:
        The results dict, with ``"source"`` set to the file it came from.

    Raises:
        CovidctError: neither an existing file nor a shipped name (the shipped names are listed).
    """
    shipped = shipped_results()
    name = str(source) or DEFAULT_RESULTS
    path = Path(name) if Path(name).is_file() else shipped.get(name)
    if path is None:
        known = ", ".join(shipped) or "none (the installed package has no results folder)"
        raise CovidctError(f"Generalisation results {name!r}: no such file and no such shipped result."
                           f"{did_you_mean(name, list(shipped))} Shipped: {known}.")
    results = json.loads(Path(path).read_text())
    if "arms" not in results:
        raise CovidctError(f"{path}: not a generalisation results file (no 'arms'); "
                           "write one with benchmarks/bench_generalization.py --out FILE.")
    results["source"] = str(path)
    return results


def summarise_generalization(results: dict) -> pd.DataFrame:
    """One row per arm: mean ± SD over seeds of each score, and the seed ensemble's scores when present."""
    rows = []
    for arm, block in results["arms"].items():
        seeds = block["seeds"]
        nan = float("nan")  # older results files lack some scores (e.g. the internal macro-F1)
        values = {
            "val_auc": [s.get("val_auc", nan) for s in seeds],
            "internal_test_auc": [s.get("internal_test_auc", nan) for s in seeds],
            "internal_test_macro_f1": [s.get("internal_test_macro_f1", nan) for s in seeds],
            "external_slice_auc": [s["external"].get("slice_auc", nan) for s in seeds],
            "external_patient_auc": [s["external"].get("patient_mean_auc", nan) for s in seeds],
        }
        row = {"arm": arm, "seeds": len(seeds), "train_seconds_mean": float(np.mean(block["train_seconds"]))}
        for name, vals in values.items():
            vals = np.asarray(vals, dtype=float)
            known = vals[np.isfinite(vals)]
            row[f"{name}_mean"] = float(known.mean()) if len(known) else nan
            row[f"{name}_sd"] = float(known.std(ddof=1)) if len(known) > 1 else nan
        row["covid_ranked_first_seeds"] = int(sum(s["external"]["covid_patients_ranked_first"] for s in seeds))
        ens = block.get("ensemble")
        if ens:
            row["ensemble_internal_auc"] = ens["internal_test_auc"]
            row["ensemble_external_slice_auc"] = ens["external"]["slice_auc"]
            row["ensemble_external_patient_auc"] = ens["external"]["patient_mean_auc"]
            row["ensemble_covid_ranked_first"] = ens["external"]["covid_patients_ranked_first"]
        rows.append(row)
    return pd.DataFrame(rows)


def generalization_markdown(results: dict) -> str:
    """The results as a markdown table (mean ± SD over seeds; ensemble with 95% CI over groups)."""
    lines = [
        "| arm | val AUC (kept epoch) | internal test AUC | internal test macro-F1 | external slice AUC | external patient AUC | COVID ranked first "
        "| ensemble: internal AUC [95% CI] | ensemble: internal macro-F1 [95% CI] | ensemble: external slice AUC [95% CI] | ensemble: patient AUC, ranked first "
        "| train s/run |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]

    def fmt(mean, sd):
        return f"{mean:.3f} ± {sd:.3f}" if np.isfinite(sd) else f"{mean:.3f}"

    def ci(value, interval):
        return f"{value:.3f} [{interval[0]:.3f}, {interval[1]:.3f}]" if interval else f"{value:.3f}"

    for row in summarise_generalization(results).to_dict("records"):
        ens = results["arms"][row["arm"]].get("ensemble") or {}
        ens_ext = ens.get("external", {})
        patient_cell = "-"
        if ens:
            ranked = "yes" if ens_ext["covid_patients_ranked_first"] else "no"
            patient_cell = f"{ens_ext['patient_mean_auc']:.3f}, {ranked}"
        lines.append(
            f"| {row['arm']} | {fmt(row['val_auc_mean'], row['val_auc_sd'])} "
            f"| {fmt(row['internal_test_auc_mean'], row['internal_test_auc_sd'])} "
            f"| {fmt(row['internal_test_macro_f1_mean'], row['internal_test_macro_f1_sd'])} "
            f"| {fmt(row['external_slice_auc_mean'], row['external_slice_auc_sd'])} "
            f"| {fmt(row['external_patient_auc_mean'], row['external_patient_auc_sd'])} "
            f"| {row['covid_ranked_first_seeds']}/{row['seeds']} seeds "
            f"| {ci(ens['internal_test_auc'], ens.get('internal_test_auc_ci')) if ens else '-'} "
            f"| {ci(ens['internal_test_macro_f1'], ens.get('internal_test_macro_f1_ci')) if 'internal_test_macro_f1' in ens else '-'} "
            f"| {ci(ens_ext['slice_auc'], ens_ext.get('slice_auc_ci')) if ens else '-'} "
            f"| {patient_cell} "
            f"| {row['train_seconds_mean']:.0f} |"
        )
    return "\n".join(lines)


def generalization_table(results: dict) -> pd.DataFrame:
    """Per arm: seeds, internal test AUC and macro-F1, external slice and patient AUC (seed means), indexed by arm."""
    table = summarise_generalization(results).set_index("arm")
    columns = {"seeds": "seeds", "val_auc_mean": "val AUC", "internal_test_auc_mean": "internal test AUC",
               "internal_test_macro_f1_mean": "internal test macro-F1", "external_slice_auc_mean": "external slice AUC",
               "external_patient_auc_mean": "external patient AUC", "ensemble_external_slice_auc": "ensemble external slice AUC",
               "covid_ranked_first_seeds": "seeds ranking COVID first"}
    return table[[c for c in columns if c in table]].rename(columns=columns).round(3)


def external_patient_scores(results: dict) -> pd.DataFrame:
    """Mean COVID probability per external patient and arm (the seed ensemble, else the first seed)."""
    rows = {}
    for arm, block in results["arms"].items():
        scores = block.get("ensemble", block["seeds"][0])["external"]["patients"]
        rows[arm] = {f"{name} ({row['label']})": row["mean_prob_covid"] for name, row in scores.items()}
    return pd.DataFrame(rows).T.round(3)


def plot_generalization(results: dict) -> Figure:
    """Internal test vs external slice AUC per arm (seed means ± SD, the seed ensemble as a diamond)."""
    table = summarise_generalization(results)
    fig = Figure(figsize=(7, 3.6))
    ax = fig.add_subplot()
    x = np.arange(len(table))
    for offset, (name, label) in enumerate((("internal_test_auc", "internal test"), ("external_slice_auc", "external slices"))):
        ax.errorbar(x + (offset - 0.5) * 0.25, table[f"{name}_mean"], yerr=np.nan_to_num(table[f"{name}_sd"]),
                    fmt="o", capsize=3, label=f"{label} (seeds mean ± SD)")
    if "ensemble_external_slice_auc" in table:
        ax.scatter(x + 0.125, table["ensemble_external_slice_auc"], marker="D", color="k", label="external, seed ensemble")
    ax.axhline(0.5, color="grey", lw=0.8, ls=":")
    ax.set_xticks(x, table["arm"], rotation=20)
    ax.set_ylabel("AUC (COVID vs rest)")
    ax.set_ylim(0.3, 1.02)
    ax.legend(fontsize=7, loc="lower left")
    ax.set_title("Trained on sars-cov-2-ct; external = covid-ct-md" if not results.get("smoke") else "smoke run (phantoms)")
    fig.tight_layout()
    return fig
