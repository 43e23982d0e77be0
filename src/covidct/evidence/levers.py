"""The measured levers across hospitals, as shipped data (``covidct/results/cross-hospital-levers.json``).

Each row is one way of building a classifier on sars-cov-2-ct only (from scratch, an ImageNet backbone frozen or
fine-tuned, lesion evidence, intensity harmonisation), with its internal test AUC and its COVID-CT-MD AUC and the
page, raw result file and command that produced them. The numbers are copied from the experiment pages, never
recomputed here; ``covidct evaluate --run EVIDENCE_RUN`` recomputes the lesion-evidence rows from a run folder.
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

import pandas as pd

from covidct.errors import CovidctError

RESULTS_FILE = "cross-hospital-levers.json"


def load_levers(path: str | Path | None = None) -> dict:
    """The levers results file (default: the one shipped with the package)."""
    path = Path(path) if path is not None else Path(str(resources.files("covidct") / "results" / RESULTS_FILE))
    if not path.is_file():
        raise CovidctError(f"{path} does not exist: the installed package lacks its results files; reinstall covidct.")
    results = json.loads(path.read_text())
    if "levers" not in results or "source_probe" not in results:
        raise CovidctError(f"{path} is not a cross-hospital results file (no 'levers' / 'source_probe').")
    return results


def _interval(block: dict) -> tuple:
    return block.get("value"), block.get("low"), block.get("high")


def levers_table(path: str | Path | None = None) -> pd.DataFrame:
    """One row per measured lever: internal test AUC and COVID-CT-MD slice AUC with their 95% CIs over patients,
    the patient-mean AUC, whether both COVID patients rank first, and where the row comes from.

    Returns:
        DataFrame with columns lever, model, short (a label for plots), internal AUC, internal low, internal high, external AUC,
        external low, external high, external patient AUC, COVID patients first, source, command, note.
        Missing measurements are NaN.
    """
    rows = []
    for row in load_levers(path)["levers"]:
        internal = _interval(row["internal_test_auc"])
        external = _interval(row["external_slice_auc"])
        rows.append({
            "lever": row["lever"], "model": row["model"], "short": row.get("short", row["model"]),
            "internal AUC": internal[0], "internal low": internal[1], "internal high": internal[2],
            "external AUC": external[0], "external low": external[1], "external high": external[2],
            "external patient AUC": row.get("external_patient_auc"),
            "COVID patients first": row.get("covid_patients_first", ""),
            "source": row["source"], "command": row["command"], "note": row.get("note", ""),
        })
    frame = pd.DataFrame(rows)
    numeric = [c for c in frame if "AUC" in c or c.endswith(("low", "high"))]
    frame[numeric] = frame[numeric].astype(float)
    return frame


def source_probe_table(path: str | Path | None = None) -> pd.DataFrame:
    """The source probe: how well frozen features tell which dataset a slice came from (AUC with its CI)."""
    rows = [{"features": row["features"], "comparison": row["comparison"], "AUC": row["auc"]["value"],
             "low": row["auc"]["low"], "high": row["auc"]["high"], "groups": row["n_groups"]}
            for row in load_levers(path)["source_probe"]["rows"]]
    return pd.DataFrame(rows)


__all__ = ["load_levers", "levers_table", "source_probe_table"]
