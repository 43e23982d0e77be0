"""The shipped cross-hospital results (copied exactly from the pages they cite) and the lesion-evidence figures."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from matplotlib.figure import Figure

from covidct.errors import CovidctError
from covidct.evidence.levers import levers_table, load_levers, source_probe_table
from covidct.evidence.plots import LesionMap, example_slices, plot_burden_curves, plot_lesion_maps

REPO = Path(__file__).resolve().parents[2]


def _cell(value, low, high) -> str:
    return f"{value:.3f} [{low:.3f}, {high:.3f}]"


def test_every_measured_lever_is_copied_from_the_page_it_cites():
    table = levers_table()
    assert len(table) == 10 and table["lever"].str.startswith("lesion evidence").sum() == 2
    for row in table.itertuples():
        page = (REPO / row.source.split(" (")[0]).read_text().replace("**", "")  # bold headline numbers
        if np.isnan(row._4):  # internal AUC: NaN only for the lever that was not trained
            assert row.lever == "intensity harmonisation" and np.isnan(row._7)
            continue
        for value, low, high in ((row._4, row._5, row._6), (row._7, row._8, row._9)):
            assert _cell(value, low, high) in page, (row.model, _cell(value, low, high), row.source)
        assert row.command.split(" && ")[-1].split(" --out")[0].split(" --")[0] in page
    evidence = table[table["lever"] == "lesion evidence"].iloc[0]
    assert (evidence["external AUC"], evidence["external low"], evidence["external high"]) == (0.640, 0.578, 0.714)
    assert evidence["COVID patients first"] == "yes"


def test_source_probe_rows_are_the_benchmark_file():
    raw = json.loads((REPO / "benchmarks/results/cross_hospital_source_probe.json").read_text())
    table = source_probe_table()
    keys = {"covid-ct-md vs sars-cov-2-ct": "covid-ct-md_vs_sars-cov-2-ct", "medseg vs rest": "medseg_vs_rest",
            "sars-cov-2-ct vs rest": "sars-cov-2-ct_vs_rest"}
    for row in table.itertuples():
        block = raw["evidence" if row.features.startswith("lesion") else "cnn"][keys[row.comparison]]
        assert (row.AUC, row.low, row.high, row.groups) == (block["value"], block["low"], block["high"], block["n_groups"])
    assert load_levers()["source_probe"]["raw"] == "benchmarks/results/cross_hospital_source_probe.json"


def test_a_file_without_levers_is_refused(tmp_path):
    path = tmp_path / "other.json"
    path.write_text("{}")
    with pytest.raises(CovidctError, match="not a cross-hospital results file"):
        levers_table(path)


def features_frame() -> pd.DataFrame:
    rows = []
    for group, label in (("P2", "COV"), ("P1", "COV"), ("cap1", "OtherPneumonia"), ("n1", "Normal")):
        for k in range(6):
            rows.append({"path": f"{group}.nii.gz", "label": label, "group": group, "slice_index": k,
                         "lung_fraction": [0.01, 0.3, 0.1, 0.3, 0.3, 0.3][k], "burden": [0.9, 0.1, 0.5, 0.2, 0.3, 0.0][k]})
    return pd.DataFrame(rows)


def test_examples_are_each_labels_first_patient_at_its_largest_mid_lung_lesion_area():
    examples = example_slices(features_frame())
    assert list(examples["label"]) == ["COV", "OtherPneumonia", "Normal"]
    assert list(examples["group"]) == ["P1", "cap1", "n1"]
    # slice 0: almost no lung (never a candidate); slice 2: burden 0.5 but a third of the largest lung area (not
    # mid-lung); slice 4: the largest lesion area (0.3 x 0.3) of the others
    assert list(examples["slice_index"]) == [4, 4, 4]
    # every lung slice a candidate: slice 2's area 0.05 still loses to slice 4's 0.09
    assert list(example_slices(features_frame(), central=0.0)["slice_index"]) == [4, 4, 4]
    frame = features_frame()
    frame.loc[frame["slice_index"] == 2, "burden"] = 1.0  # area 0.1 > 0.09: wins only when it is a candidate
    assert list(example_slices(frame, central=0.0)["slice_index"]) == [2, 2, 2]
    assert list(example_slices(frame)["slice_index"]) == [4, 4, 4]
    with pytest.raises(CovidctError, match="labels present"):
        example_slices(features_frame(), labels=("CAP",))


def test_burden_curves_have_one_panel_per_patient():
    figure = plot_burden_curves(features_frame())
    assert isinstance(figure, Figure)
    titles = [axis.get_title() for axis in figure.axes if axis.get_title()]
    assert titles == ["P1 (COV)", "P2 (COV)", "cap1 (OtherPneumonia)", "n1 (Normal)"]
    with pytest.raises(CovidctError, match="need volumes"):
        plot_burden_curves(features_frame().assign(slice_index=-1))


def test_lesion_map_titles_give_the_lung_share_above_the_threshold():
    lungs = np.zeros((20, 20), np.uint8)
    lungs[5:15, 5:15] = 1  # 100 lung pixels
    probability = np.zeros((20, 20), np.float32)
    probability[5:10, 5:9] = 0.8  # 20 of them above 0.5
    probability[0:3, 0:3] = 1.0  # outside the lungs: not counted
    figure = plot_lesion_maps([LesionMap(np.full((20, 20), 100.0), lungs, probability, "COV · P1, slice 3")])
    titles = [axis.get_title() for axis in figure.axes]
    assert "COV · P1, slice 3" in titles
    assert any(re.search(r"burden 0\.200 ", title) for title in titles)
