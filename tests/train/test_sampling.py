"""training.sampler: the source-balanced epochs (counts by hand, determinism per (seed, epoch)), the class weights
of the rows it draws, and the default shuffle left as it was."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from covidct.errors import CovidctError
from covidct.train.samples import SliceSequence
from covidct.train.sampling import SourceBalancedSampler, balanced_weights, make_sampler

# Ten training rows 10..19: eight of source A (10..17), two of source B (18, 19).
INDICES = np.arange(10, 20)
SOURCES = np.array(["A"] * 8 + ["B"] * 2)


def test_each_epoch_draws_the_same_rows_from_each_source():
    sampler = SourceBalancedSampler.from_sources(INDICES, SOURCES)
    assert sampler.per_source == 5 and len(sampler) == 10  # ceil(10 rows / 2 sources)
    for epoch in range(6):
        order = sampler(seed=3, epoch=epoch)
        from_a, from_b = order[order < 18], order[order >= 18]
        # A (8 rows > 5): five distinct rows, a random subset; B (2 rows < 5): each row twice, one of them a third time.
        assert len(from_a) == 5 and len(set(from_a)) == 5 and set(from_a) <= set(range(10, 18))
        assert len(from_b) == 5 and sorted(np.bincount(from_b - 18).tolist()) == [2, 3]


def test_a_source_larger_than_its_quota_is_down_sampled_afresh_each_epoch():
    sampler = SourceBalancedSampler.from_sources(INDICES, SOURCES)
    subsets = {tuple(sorted(set(sampler(0, epoch)[sampler(0, epoch) < 18]))) for epoch in range(8)}
    assert len(subsets) > 1  # not the same five A rows every epoch
    seen = set().union(*subsets)
    assert seen == set(range(10, 18))  # over 8 epochs every A row was drawn


def test_the_draw_is_a_pure_function_of_seed_and_epoch_so_a_resumed_run_draws_the_same_batches():
    sampler = SourceBalancedSampler.from_sources(INDICES, SOURCES)
    np.testing.assert_array_equal(sampler(7, 4), sampler(7, 4))
    assert not np.array_equal(sampler(7, 4), sampler(7, 5))
    assert not np.array_equal(sampler(7, 4), sampler(8, 4))
    images = np.zeros((20, 4, 4, 1), np.uint8)
    labels = np.zeros(20, int)
    uninterrupted = SliceSequence(images, INDICES, labels, batch_size=4, shuffle=True, seed=7, sampler=sampler)
    for epoch in range(4):
        uninterrupted.set_epoch(epoch)
    resumed = SliceSequence(images, INDICES, labels, batch_size=4, shuffle=True, seed=7, sampler=sampler)
    resumed.set_epoch(3)
    np.testing.assert_array_equal(uninterrupted.order, resumed.order)
    np.testing.assert_array_equal(resumed.order, sampler(7, 3))
    assert len(resumed) == 3  # ceil(10 / 4) batches
    np.testing.assert_array_equal(resumed[2][0], images[resumed.order[8:10]].astype("float32"))


def test_the_default_shuffle_is_unchanged():
    images = np.zeros((20, 4, 4, 1), np.uint8)
    sequence = SliceSequence(images, INDICES, np.zeros(20, int), batch_size=4, shuffle=True, seed=5)
    sequence.set_epoch(2)
    # The order shuffle has always drawn: a permutation of the rows by numpy's default_rng([seed, epoch]).
    np.testing.assert_array_equal(sequence.order, INDICES[np.random.default_rng([5, 2]).permutation(10)])
    assert make_sampler("shuffle", INDICES, pd.DataFrame({"path": range(20)})) is None  # no source column needed


def test_class_weights_follow_the_rows_the_sampler_draws():
    labels = np.zeros(20, int)
    labels[[14, 15, 16, 17]] = 1  # A: four of class 0, four of class 1; B: two of class 0
    sampler = SourceBalancedSampler.from_sources(INDICES, SOURCES)
    counts = sampler.expected_class_counts(labels, 2)
    # Per epoch: 5 rows of A (half class 0) and 5 of B (all class 0): 2.5 + 5 = 7.5 of class 0, 2.5 of class 1.
    np.testing.assert_allclose(counts, [7.5, 2.5])
    np.testing.assert_allclose(balanced_weights(counts), [10 / (2 * 7.5), 10 / (2 * 2.5)])
    drawn = np.concatenate([sampler(0, epoch) for epoch in range(400)])
    np.testing.assert_allclose(np.bincount(labels[drawn]) / 400, counts, atol=0.05)
    with pytest.raises(CovidctError, match=r"class\(es\) \[1\] have no training rows"):
        balanced_weights([3.0, 0.0])


def test_make_sampler_reads_the_manifest_source_column_and_refuses_what_it_cannot_use():
    manifest = pd.DataFrame({"source": [""] * 10 + list(SOURCES)})
    sampler = make_sampler("source_balanced", INDICES, manifest)
    assert sampler.sources == ("A", "B") and sampler.counts() == {"A": (8, 5), "B": (2, 5)}
    with pytest.raises(CovidctError, match="needs a 'source' column"):
        make_sampler("source_balanced", INDICES, pd.DataFrame({"path": range(20)}))
    with pytest.raises(CovidctError, match="is not one of"):
        make_sampler("balanced", INDICES, manifest)
    with pytest.raises(CovidctError, match="one source name per training row"):
        SourceBalancedSampler.from_sources(INDICES, SOURCES[:3])
