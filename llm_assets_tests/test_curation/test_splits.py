"""Splits depend only on the record id (and salt): stable across batches, reruns and mapping order."""

from __future__ import annotations

import random
from collections import Counter

import pyarrow as pa
import pytest

from llm_assets.curation.splits import DEFAULT_RATIOS, assign_splits, split_point, tag_batch

IDS = [f"{i:08x}-record" for i in range(10_000)]


def test_deterministic_and_independent_of_batch_order() -> None:
    expected = dict(zip(IDS, assign_splits(IDS), strict=True))
    shuffled = IDS[:]
    random.Random(3).shuffle(shuffled)
    batches = [shuffled[i : i + 777] for i in range(0, len(shuffled), 777)]
    got = {i: s for batch in batches for i, s in zip(batch, assign_splits(batch), strict=True)}
    assert got == expected


def test_close_to_the_ratios_on_10k_ids() -> None:
    counts = Counter(assign_splits(IDS))
    for name, ratio in DEFAULT_RATIOS.items():
        assert counts[name] / len(IDS) == pytest.approx(ratio, abs=0.01)


def test_mapping_order_does_not_matter_and_salt_does() -> None:
    reordered = {"test": 0.05, "train": 0.9, "dev": 0.05}
    assert assign_splits(IDS[:500], reordered) == assign_splits(IDS[:500])
    assert assign_splits(IDS[:500], salt="other") != assign_splits(IDS[:500])


def test_zero_ratio_split_is_never_assigned() -> None:
    assert set(assign_splits(IDS[:2000], {"train": 0.8, "dev": 0.0, "test": 0.2})) == {"train", "test"}
    assert set(assign_splits(IDS[:100], {"all": 1.0})) == {"all"}


def test_split_point_is_uniform_in_unit_interval() -> None:
    points = [split_point(i) for i in IDS]
    assert all(0.0 <= p < 1.0 for p in points)
    assert sum(p < 0.5 for p in points) / len(points) == pytest.approx(0.5, abs=0.02)


@pytest.mark.parametrize(
    ("ratios", "message"),
    [
        ({"train": 0.9, "dev": 0.05}, "sum to 1"),
        ({"train": 1.1, "dev": -0.1}, "within"),
        ({}, "empty"),
        ({"": 1.0}, "non-empty"),
    ],
)
def test_invalid_ratios_fail_fast(ratios: dict[str, float], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        assign_splits(["a"], ratios)


def test_tag_batch_adds_domain_and_split_and_keeps_everything_else() -> None:
    table = pa.table(
        {
            "id": IDS[:4],
            "text": ["a", "b", "c", "d"],
            "source": ["greek_laws", "banking77", "udhr", "greek_laws"],
            "jurisdiction": ["GR", "INT", "INT", "GR"],
            "lang": ["el", "en", "de", "el"],
        }
    )
    tagged = tag_batch(table, domain_by_source={"greek_laws": "legal", "banking77": "customer-support"})
    assert tagged.column_names == [*table.column_names, "domain", "split"]
    assert tagged.select(table.column_names).equals(table)
    assert tagged.column("domain").to_pylist() == ["legal", "customer-support", "general", "legal"]
    assert tagged.column("split").to_pylist() == assign_splits(IDS[:4])
    retagged = tag_batch(tagged, domain_by_source={}, ratios={"train": 1.0})
    assert retagged.column_names == tagged.column_names
    assert set(retagged.column("split").to_pylist()) == {"train"}
