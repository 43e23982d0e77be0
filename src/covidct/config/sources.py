"""Checks of ``data.extra_sources`` and ``training.sampler`` (multi-source training) at config load time.

Each extra source is a mapping ``{dataset, label | label_map, options, root}``; its rows join the training
split only (``covidct.train.sources``). Everything that can be checked without reading images is checked here:
the keys, the dataset name, its loader options, one of ``label`` / ``label_map``, and that the label is a class
of the run (``data.classes``, else the classes the primary dataset's label map or registry gives).
"""

from __future__ import annotations

from covidct.config.schema import SAMPLERS, RunConfig, check_choice
from covidct.data.datasets import DATASETS, check_dataset_options, list_datasets
from covidct.errors import CovidctError, did_you_mean, unknown_name_error

#: The keys of one ``data.extra_sources`` entry.
EXTRA_SOURCE_KEYS = ("dataset", "label", "label_map", "options", "root")


def run_classes(cfg: RunConfig) -> tuple:
    """The classes a run can have before its data are read: ``data.classes``, else the values of
    ``data.label_map``, else the primary dataset's registered classes; () when none of these is known."""
    d = cfg.data
    if d.classes:
        return tuple(str(c) for c in d.classes)
    if d.label_map:
        return tuple(dict.fromkeys(str(v) for v in d.label_map.values() if v is not None and v != "drop"))
    spec = DATASETS.get(d.dataset)
    return tuple(spec.classes) if spec is not None else ()


def check_extra_sources(cfg: RunConfig, source: str = "config", task: str = "classification") -> None:
    """Check ``data.extra_sources`` and ``training.sampler`` of a run of ``task`` (``resolve_task``).

    Raises:
        CovidctError: naming the entry (``data.extra_sources[i]``) and the fix: not a mapping, an unknown key or
            dataset (did-you-mean), the training dataset itself or a dataset given twice, neither or both of
            ``label`` and ``label_map``, a label that is not a class of the run, unknown loader options; a
            ``source_balanced`` sampler without extra sources; extra sources on a run that is not a 2-D
            classification.
    """
    check_choice(source, "training.sampler", cfg.training.sampler, SAMPLERS)
    entries = cfg.data.extra_sources or ()
    if not isinstance(entries, (tuple, list)):
        raise CovidctError(f"{source}: data.extra_sources must be a list of mappings, got {type(entries).__name__}.")
    if entries and task != "classification":
        raise CovidctError(f"{source}: data.extra_sources joins 2-D slices to a classifier's training split; this is a "
                           f"{task} run (model {cfg.model.name!r}). Remove data.extra_sources.")
    if cfg.training.sampler == "source_balanced" and not entries:
        raise CovidctError(
            f"{source}: training.sampler=source_balanced balances the sources of the training split, but "
            "data.extra_sources is empty: add a source (e.g. {dataset: medseg, label: COV}) or use sampler: shuffle."
        )
    classes = run_classes(cfg)
    seen = {cfg.data.dataset}
    for i, entry in enumerate(entries):
        where = f"{source}: data.extra_sources[{i}]"
        if not isinstance(entry, dict):
            raise CovidctError(f"{where} must be a mapping such as {{dataset: medseg, label: COV}}, got {entry!r}.")
        unknown = sorted(set(entry) - set(EXTRA_SOURCE_KEYS))
        if unknown:
            raise CovidctError(f"{where}: unknown key {unknown[0]!r}.{did_you_mean(unknown[0], EXTRA_SOURCE_KEYS)} "
                               f"Known keys: {', '.join(EXTRA_SOURCE_KEYS)}.")
        name = entry.get("dataset")
        if not name:
            raise CovidctError(f"{where} names no dataset: add dataset: NAME (one of {', '.join(list_datasets())}).")
        if name not in list_datasets():
            raise CovidctError(f"{where}: {unknown_name_error('dataset', str(name), list_datasets())}")
        if name in seen:
            what = "the training dataset (data.dataset)" if name == cfg.data.dataset else "listed twice"
            raise CovidctError(f"{where}: dataset {name!r} is {what}; each source may appear once.")
        seen.add(name)
        has_label, has_map = entry.get("label") is not None, entry.get("label_map") is not None
        if has_label == has_map:
            raise CovidctError(f"{where} ({name}): give exactly one of label (every row gets that class, e.g. "
                               "label: COV) or label_map ({raw label: class}).")
        if has_map and not isinstance(entry["label_map"], dict):
            raise CovidctError(f"{where} ({name}): label_map must be a mapping {{raw label: class}}, "
                               f"got {entry['label_map']!r}.")
        labels = [entry["label"]] if has_label else [v for v in entry["label_map"].values()
                                                        if v is not None and v != "drop"]
        for label in labels:
            if not isinstance(label, str):
                raise CovidctError(f"{where} ({name}): a label must be a class name, got {label!r}.")
            if classes and label not in classes:
                raise CovidctError(f"{where} ({name}): label {label!r} is not a class of this run {list(classes)}."
                                   f"{did_you_mean(label, classes)}")
        options = entry.get("options") or {}
        if not isinstance(options, dict):
            raise CovidctError(f"{where} ({name}): options must be a mapping of loader options, got {options!r}.")
        check_dataset_options(name, options, where=f"{where}.options")
