"""data.extra_sources: checked at load time with clear messages, joined to the training split only (groups prefixed
by source, the primary dataset's validation and test rows unchanged), and the shipped multi-source config."""

from __future__ import annotations

import numpy as np
import pytest

from covidct.config import config_from_dict, config_to_dict, load_config, validate_config
from covidct.errors import CovidctError
from covidct.train.data import prepare_data
from covidct.train.sources import add_extra_sources, extra_source_manifest


def config(extra=(), sampler="shuffle", dataset="sars-cov-2-ct", model="small_cnn", **data):
    tree = {"data": {"dataset": dataset, "stage": "original", "size": 16, "extra_sources": list(extra), **data},
            "model": {"name": model}, "training": {"sampler": sampler}}
    return config_from_dict(tree, source="multi.yaml")


@pytest.mark.parametrize(
    ("extra", "sampler", "message"),
    [
        ([{"dataset": "medsge", "label": "COV"}], "shuffle", r"data.extra_sources\[0\]: Unknown dataset 'medsge'. Did you mean: medseg\?"),
        ([{"dataset": "medseg", "label": "COVID"}], "shuffle", r"label 'COVID' is not a class of this run \['COV', 'NonCOV'\]. Did you mean: COV, NonCOV\?"),
        ([{"dataset": "medseg", "lable": "COV"}], "shuffle", r"unknown key 'lable'. Did you mean: label, label_map\?"),
        ([{"dataset": "medseg"}], "shuffle", r"\[0\] \(medseg\): give exactly one of label"),
        ([{"dataset": "medseg", "label": "COV", "label_map": {"COV": "COV"}}], "shuffle", "give exactly one of label"),
        ([{"dataset": "kaggle-lungs", "label_map": {"unlabelled": "Normal"}}], "shuffle", "label 'Normal' is not a class"),
        ([{"dataset": "medseg", "label": "COV"}, {"dataset": "medseg", "label": "COV"}], "shuffle",
         r"\[1\]: dataset 'medseg' is listed twice"),
        ([{"dataset": "sars-cov-2-ct", "label": "COV"}], "shuffle", "is the training dataset"),
        ([{"dataset": "medseg", "label": "COV", "options": {"cache_rot": 1}}], "shuffle",
         r"data.extra_sources\[0\].options: dataset 'medseg' has no option 'cache_rot'. Did you mean: cache_root\?"),
        (["medseg"], "shuffle", r"\[0\] must be a mapping such as \{dataset: medseg, label: COV\}"),
        ([], "source_balanced", "data.extra_sources is empty"),
        ([], "balanced", r"training.sampler='balanced' is not one of \['shuffle', 'source_balanced'\]"),
    ],
)
def test_bad_entries_are_refused_naming_the_entry_and_the_fix(extra, sampler, message):
    with pytest.raises(CovidctError, match=message) as error:
        validate_config(config(extra, sampler), source="multi.yaml")
    assert str(error.value).startswith("multi.yaml")


def test_extra_sources_belong_to_2d_classifiers_and_the_classes_come_from_the_config():
    with pytest.raises(CovidctError, match="this is a volume run"):
        validate_config(config([{"dataset": "medseg", "label": "COV"}], model="cnn3d_covidscan"))
    # data.classes (or data.label_map) decides the classes when given.
    validate_config(config([{"dataset": "kaggle-lungs", "label": "Normal"}], classes=["COV", "Normal"]))
    with pytest.raises(CovidctError, match=r"label 'NonCOV' is not a class of this run \['COV', 'Normal'\]"):
        validate_config(config([{"dataset": "kaggle-lungs", "label": "NonCOV"}], classes=["COV", "Normal"]))


def test_the_shipped_config_round_trips_and_defaults_keep_todays_behaviour():
    cfg = load_config("multisource/small_cnn-lungs-robust-medseg-balanced")
    assert cfg.data.extra_sources == ({"dataset": "medseg", "label": "COV"},)
    assert cfg.training.sampler == "source_balanced" and cfg.data.dataset == "sars-cov-2-ct"
    assert config_from_dict(config_to_dict(cfg)) == cfg
    base = load_config("sars-cov-2-ct/small_cnn-lungs-robust-dataaug")
    assert base.data.extra_sources == () and base.training.sampler == "shuffle"
    # The multi-source recipe is the shipped one plus the sources, the sampler and the class weights.
    differ = {(section, key) for section in ("data", "model", "training")
              for key, value in config_to_dict(cfg)[section].items() if config_to_dict(base)[section][key] != value}
    assert differ == {("data", "extra_sources"), ("training", "sampler"), ("training", "class_weight")}


@pytest.fixture()
def phantoms(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_an_extra_source_joins_the_training_split_only(phantoms):
    extra = {"dataset": "phantom", "label": "COV", "options": {"n": 12, "size": 32, "seed": 3},
             "root": str(phantoms / "extra")}
    frame = extra_source_manifest(extra)
    assert len(frame) == 12 and set(frame["split"]) == {"train"} and set(frame["label"]) == {"COV"}
    assert all(g.startswith("phantom:") for g in frame["group"])
    assert set(frame["original_label"]) == {"COV", "Normal", "OtherPneumonia"}

    plain = config(dataset="phantom", options={"n": 30, "size": 32, "seed": 0}, cache_root=str(phantoms / "cache"))
    with_extra = config([extra], dataset="phantom", options={"n": 30, "size": 32, "seed": 0},
                        cache_root=str(phantoms / "cache"))
    before, after = prepare_data(plain, progress=False), prepare_data(with_extra, progress=False)
    assert len(after.images) == len(before.images) + 12
    for split in ("val", "test"):  # validation and test: the primary dataset's rows, unchanged
        np.testing.assert_array_equal(before.indices(split), after.indices(split))
        np.testing.assert_array_equal(before.images[before.indices(split)], after.images[after.indices(split)])
    added = after.manifest.iloc[len(before.images):]
    assert set(added["split"]) == {"train"} and set(added["source"]) == {"phantom"}
    assert not set(added["group"]) & set(before.manifest["group"])  # prefixed: no group shared with the primary
    assert len(after.indices("train")) == len(before.indices("train")) + 12
    assert (after.labels[len(before.images):] == after.class_names.index("COV")).all()

    with pytest.raises(CovidctError, match=r"label\(s\) \['Pneumonia'\] are not classes of this run .* Did you mean: OtherPneumonia\?"):
        add_extra_sources(before.images, before.manifest, [dict(extra, label="Pneumonia")], "original", 32,
                          str(phantoms / "cache"), progress=False)
