"""Labelled regions (mosaic/pipeline/regions.py): properties of the hierarchy and labels.

A planted facet on blobs of a 2-D layout: the top regions follow the blobs, their
labels name each region's majority value; the same values shuffled over the items
(the negative control) give less pure regions and (almost) no labels.
"""

from __future__ import annotations

import numpy as np
import pytest

from mosaic.pipeline import regions

N_BLOBS = 10
PER_BLOB = 120
NOISE = 0.1  # share of items whose planted value is another blob's


def blobs(seed: int = 0):
    """(xy (N, 2), blob per item, a planted value per item: the blob's name mostly)."""
    rng = np.random.default_rng(seed)
    centres = rng.uniform(0, 40, size=(N_BLOBS, 2))
    blob = np.repeat(np.arange(N_BLOBS), PER_BLOB)
    xy = centres[blob] + rng.normal(0, 1, size=(len(blob), 2))
    values = np.array([f"kind {b}" for b in blob], dtype=object)
    noisy = rng.random(len(blob)) < NOISE
    values[noisy] = [f"kind {b}" for b in rng.integers(0, N_BLOBS, int(noisy.sum()))]
    return xy, blob, list(values)


@pytest.fixture(scope="module")
def hierarchy():
    xy, _, _ = blobs()
    return xy, *regions.build_hierarchy(xy, region_size=50, random_state=0)


def test_every_item_is_in_exactly_one_region_per_level_and_children_nest(hierarchy):
    xy, ids, parents, spans = hierarchy
    n_items, n_levels = ids.shape
    assert n_items == len(xy) and n_levels >= 2
    assert ids.dtype == np.int32 and ids.min() >= 0 and ids.max() == len(parents) - 1
    assert set(np.unique(ids[:, 0])) == set(np.flatnonzero(parents == -1))
    for level in range(1, n_levels):
        for child in np.unique(ids[:, level]):
            members = ids[:, level] == child
            above = np.unique(ids[members, level - 1])
            assert len(above) == 1  # a region lies inside one region of the level above
            assert above[0] == (parents[child] if spans[child, 0] == level + 1 else child)
    # each region is shown over a contiguous span of levels, ending at its split
    for region in range(len(parents)):
        shown = [level for level in range(n_levels) if (ids[:, level] == region).any()]
        assert shown == list(range(spans[region, 0] - 1, spans[region, 1]))


def test_sizes_top_count_and_the_finest_level(hierarchy):
    xy, ids, parents, spans = hierarchy
    counts = regions.level_counts(spans, ids.shape[1])
    assert counts[0] == regions.top_count(len(xy)) == regions.TOP_REGIONS
    assert counts == sorted(counts) and counts[-1] > counts[0]
    finest = np.bincount(ids[:, -1])
    assert finest[finest > 0].max() < 2 * 50  # nothing left to split
    assert np.median(finest[finest > 0]) > 20


def test_region_order_makes_every_region_one_run(hierarchy):
    xy, ids, parents, spans = hierarchy
    labels = [(None, [])] * len(parents)
    described = regions.describe_regions(ids, parents, spans, xy, np.zeros_like(ids[:, :2]),
                                         labels)
    order = regions.region_order(ids)
    assert sorted(order.tolist()) == list(range(len(xy)))
    for region in described:
        level = region["level"] - 1
        members = np.flatnonzero(ids[:, level] == region["id"])
        assert region["size"] == len(members) == region["end"] - region["start"]
        assert sorted(order[region["start"]:region["end"]].tolist()) == members.tolist()
        assert ids[region["representative"], level] == region["id"]


def test_regions_repeat_with_a_seed(hierarchy):
    xy, ids, _, _ = hierarchy
    again, _, _ = regions.build_hierarchy(xy, region_size=50, random_state=0)
    assert np.array_equal(ids, again)


def test_labels_name_the_majority_value_and_a_shuffle_is_less_pure(hierarchy):
    xy, ids, parents, spans = hierarchy
    _, _, values = blobs()
    kinds = {"kind": "facet"}
    terms, vocabulary = regions.item_terms({"kind": values}, kinds)
    labels = regions.label_regions(ids, spans, terms, vocabulary)
    top = np.flatnonzero(parents == -1)
    named = [labels[r][0] == regions.majority([values[i] for i in
                                               np.flatnonzero(ids[:, 0] == r)]) for r in top]
    assert np.mean(named) >= 0.9
    assert regions.purity(ids[:, 0], values) > 0.8
    # negative control: the same values over a random permutation of the items
    shuffled = list(np.random.default_rng(1).permutation(np.array(values, dtype=object)))
    terms, vocabulary = regions.item_terms({"kind": shuffled}, kinds)
    control = regions.label_regions(ids, spans, terms, vocabulary)
    assert regions.purity(ids[:, 0], shuffled) < 0.4
    assert sum(control[r][0] is not None for r in top) <= 2 < sum(
        labels[r][0] is not None for r in top)


def test_no_metadata_no_words():
    xy, _, _ = blobs()
    ids, parents, spans = regions.build_hierarchy(xy, region_size=50)
    terms, vocabulary = regions.item_terms({}, {})
    labels = regions.label_regions(ids, spans, terms, vocabulary)
    assert all(label is None and kept == [] for label, kept in labels)
    # numbers and years are not terms either; empty values are none
    terms, vocabulary = regions.item_terms({"year": ["1990"] * len(xy), "c": [""] * len(xy)},
                                           {"year": "year", "c": "facet"})
    assert vocabulary == []


def test_terms_from_text_and_tags_columns():
    values = {"notes": ["The red house", "a RED door, red", None], "tags": ["sky|sea", "sea|", ""]}
    terms, vocabulary = regions.item_terms(values, {"notes": "text", "tags": "tags"})
    carried = dict(zip(vocabulary, np.asarray(terms.sum(axis=0)).ravel().tolist()))
    assert carried == {("notes", "red"): 2, ("notes", "house"): 1, ("notes", "door"): 1,
                       ("tags", "sky"): 1, ("tags", "sea"): 2}


def test_tiny_collections():
    for n_items in (1, 2, 3, 7):
        xy = np.random.default_rng(n_items).random((n_items, 2))
        ids, parents, spans = regions.build_hierarchy(xy, region_size=50)
        assert ids.shape == (n_items, 1) and len(parents) == min(2, n_items)
    same = np.zeros((30, 2))  # every item at one point: one region, not empty ones
    ids, parents, _ = regions.build_hierarchy(same, region_size=5)
    assert len(np.unique(ids[:, 0])) == len(parents) == 1


def test_the_vocabulary_does_not_depend_on_the_hash_seed():
    """Equally scored terms are ranked by their place in the vocabulary, so that place
    must not follow a set's order, which changes with PYTHONHASHSEED from one process
    to the next (a resumed run would label a region otherwise)."""
    import subprocess
    import sys
    from pathlib import Path

    code = ("from mosaic.pipeline import regions; "
            "print(regions.item_terms({'t': ['harbour boats night lanterns quay', "
            "'boats harbour'], 'k': ['a|b|c|d', 'd|c']}, {'t': 'text', 'k': 'tags'})[1])")
    root = Path(__file__).resolve().parents[1]
    seen = {subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True,
                           text=True, check=True, env={"PYTHONHASHSEED": str(seed)}).stdout
            for seed in range(6)}
    assert len(seen) == 1, seen
