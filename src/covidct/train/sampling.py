"""The rows of each training epoch when the training split mixes sources (``training.sampler``).

``shuffle`` (the default) is ``covidct.train.samples.epoch_order``: every training row once, in an order that is
a pure function of (seed, epoch). ``source_balanced`` (``SourceBalancedSampler``) draws the same number of rows
``q`` from each source (the manifest's ``source`` column) every epoch:

- ``q = ceil(N / k)`` for ``N`` training rows of ``k`` sources, so an epoch has as many rows (and batches) as a
  ``shuffle`` epoch over the same rows, give or take ``k - 1``: the mix changes, not the compute.
- A source with ``n`` rows contributes each of its rows ``q // n`` times plus a random ``q % n`` of them once
  more (drawn without replacement): a small source is repeated (with replacement, but evenly), the large one is
  down-sampled to a fresh random subset each epoch, so no row is left out for long.
- The draw and the order are a pure function of (seed, epoch) (``numpy.random.default_rng([seed, epoch])``, as
  ``epoch_order``), so a resumed run draws exactly the batches of an uninterrupted run.

Class weights follow the rows the sampler draws, not the rows of the split: ``expected_class_counts`` gives
the expected rows per class in one epoch and ``balanced_weights`` scikit-learn's "balanced" formula on them.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from covidct.errors import CovidctError

log = logging.getLogger(__name__)

SHUFFLE = "shuffle"
SOURCE_BALANCED = "source_balanced"


@dataclass(frozen=True)
class SourceBalancedSampler:
    """Each epoch, ``per_source`` rows of every source (see the module docstring).

    Attributes:
        sources: the source names, sorted (the order in which they are drawn).
        rows: the training rows (indices into the images) of each source, in the same order.
        per_source: rows drawn from each source per epoch.
    """

    sources: tuple
    rows: tuple
    per_source: int

    @classmethod
    def from_sources(cls, indices, sources, per_source: int | None = None) -> SourceBalancedSampler:
        """Group ``indices`` by their ``sources`` (aligned arrays); ``per_source`` defaults to ceil(N / k).

        Raises:
            CovidctError: no rows, misaligned arrays or a non-positive ``per_source``.
        """
        indices = np.asarray(indices, dtype=np.int64)
        sources = np.asarray(sources).astype(str)
        if len(indices) == 0 or len(indices) != len(sources):
            raise CovidctError(f"source_balanced sampler: {len(indices)} training rows with {len(sources)} source "
                               "names; it needs one source name per training row (the manifest's source column).")
        names = tuple(sorted(set(sources)))
        if per_source is None:
            per_source = int(np.ceil(len(indices) / len(names)))
        if int(per_source) < 1:
            raise CovidctError(f"source_balanced sampler: per_source must be >= 1, got {per_source}.")
        rows = tuple(indices[sources == name] for name in names)
        return cls(names, rows, int(per_source))

    def counts(self) -> dict:
        """``{source: (rows in the split, rows drawn per epoch)}``."""
        return {name: (len(rows), self.per_source) for name, rows in zip(self.sources, self.rows)}

    def __len__(self) -> int:
        return self.per_source * len(self.sources)

    def __call__(self, seed: int, epoch: int) -> np.ndarray:
        """The rows of epoch ``epoch``, shuffled; a pure function of (seed, epoch)."""
        rng = np.random.default_rng([int(seed), int(epoch)])
        parts = []
        for rows in self.rows:
            full, rest = divmod(self.per_source, len(rows))
            parts.append(np.tile(rows, full))
            parts.append(rows[np.sort(rng.choice(len(rows), size=rest, replace=False))])
        order = np.concatenate(parts)
        return order[rng.permutation(len(order))]

    def expected_class_counts(self, labels: np.ndarray, num_classes: int) -> np.ndarray:
        """Expected rows of each class in one epoch: per source, ``per_source`` times its class shares."""
        labels = np.asarray(labels).astype(int)
        counts = np.zeros(num_classes, dtype=float)
        for rows in self.rows:
            counts += self.per_source * np.bincount(labels[rows], minlength=num_classes)[:num_classes] / len(rows)
        return counts


def balanced_weights(counts: np.ndarray) -> np.ndarray:
    """scikit-learn's "balanced" class weights ``n / (k * count_c)`` from (possibly fractional) class counts.

    Raises:
        CovidctError: a class with no rows (it cannot be weighted: the model would never see it).
    """
    counts = np.asarray(counts, dtype=float)
    if (counts <= 0).any():
        raise CovidctError(f"class weights: class(es) {np.flatnonzero(counts <= 0).tolist()} have no training rows.")
    return counts.sum() / (len(counts) * counts)


def make_sampler(name: str, indices, manifest) -> SourceBalancedSampler | None:
    """The sampler of ``training.sampler``: None for ``shuffle`` (``epoch_order``), else a SourceBalancedSampler
    over the training rows ``indices`` of ``manifest`` (its ``source`` column).

    Raises:
        CovidctError: an unknown sampler name, or a manifest without a ``source`` column.
    """
    if name == SHUFFLE:
        return None
    if name != SOURCE_BALANCED:
        raise CovidctError(f"training.sampler={name!r} is not one of {[SHUFFLE, SOURCE_BALANCED]}.")
    if "source" not in manifest:
        raise CovidctError("training.sampler=source_balanced needs a 'source' column in the training manifest "
                           "(the dataset loaders set it; add it to a manifest built by hand).")
    indices = np.asarray(indices, dtype=np.int64)
    sampler = SourceBalancedSampler.from_sources(indices, manifest["source"].astype(str).to_numpy()[indices])
    if len(sampler.sources) == 1:
        log.warning("training.sampler=source_balanced: the training split has one source (%s); every epoch draws "
                    "its rows as shuffle would, in another order.", sampler.sources[0])
    log.info("Source-balanced epochs: %s (rows in the split, rows drawn per epoch).", sampler.counts())
    return sampler
