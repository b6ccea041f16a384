"""Domain tags and train/dev/test splits that depend only on a record's id, never on batch order or size.

A record keeps its split across reruns, re-sharding and added data, so an evaluation set never leaks into
training when the corpus grows. Changing the salt reshuffles everything on purpose.
"""

from __future__ import annotations

import bisect
import hashlib
import math
from collections.abc import Mapping, Sequence
from itertools import accumulate
from types import MappingProxyType

import pyarrow as pa

DEFAULT_RATIOS: Mapping[str, float] = MappingProxyType({"train": 0.9, "dev": 0.05, "test": 0.05})
DEFAULT_SALT = "llm_assets-v1"
DEFAULT_DOMAIN = "general"


def _validated(ratios: Mapping[str, float]) -> tuple[list[str], list[float]]:
    """Split names in sorted order (so the mapping's order cannot change assignments) and cumulative bounds."""
    if not ratios:
        raise ValueError("ratios is empty; give at least one split, e.g. {'train': 1.0}")
    bad = {name: value for name, value in ratios.items() if not name or not 0.0 <= value <= 1.0}
    if bad:
        raise ValueError(f"split names must be non-empty and ratios within [0, 1]; got {bad}")
    total = math.fsum(ratios.values())
    if not math.isclose(total, 1.0, abs_tol=1e-9):
        raise ValueError(f"split ratios must sum to 1, they sum to {total!r}: {dict(ratios)}")
    names = sorted(ratios)
    bounds = list(accumulate(ratios[name] for name in names))
    bounds[-1] = 1.0
    return names, bounds


def split_point(record_id: str, salt: str = DEFAULT_SALT) -> float:
    """sha256(salt, NUL, id) read as a uniform number in [0, 1) (53 bits, exact in a float)."""
    digest = hashlib.sha256(f"{salt}\x00{record_id}".encode()).digest()
    return (int.from_bytes(digest[:8], "big") >> 11) / float(1 << 53)


def assign_splits(
    ids: Sequence[str], ratios: Mapping[str, float] = DEFAULT_RATIOS, salt: str = DEFAULT_SALT
) -> list[str]:
    """The split of each id: the one whose cumulative ratio interval (names sorted) holds `split_point(id)`."""
    names, bounds = _validated(ratios)
    return [names[min(bisect.bisect_right(bounds, split_point(i, salt)), len(names) - 1)] for i in ids]


def tag_batch(
    table: pa.Table,
    *,
    domain_by_source: Mapping[str, str],
    ratios: Mapping[str, float] = DEFAULT_RATIOS,
    salt: str = DEFAULT_SALT,
) -> pa.Table:
    """Add `domain` (from the record's source, else 'general') and `split`; every other column is kept."""
    sources = table.column("source").to_pylist()
    domains = [domain_by_source.get(source, DEFAULT_DOMAIN) for source in sources]
    splits = assign_splits(table.column("id").to_pylist(), ratios, salt)
    for name, values in (("domain", domains), ("split", splits)):
        column = pa.array(values, type=pa.string())
        if name in table.column_names:
            table = table.set_column(table.schema.get_field_index(name), name, column)
        else:
            table = table.append_column(name, column)
    return table
