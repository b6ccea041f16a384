"""A static open-addressing index of uint64 keys, built once and probed many times: the character n-gram
model's tables (`perplexity`) and the stop-word and block lists of the quality features (`quality`). The
compiled loops probe it with `_ngram_kernels._find`; `find` is the vectorised numpy probe."""

from __future__ import annotations

import numpy as np

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def _stable_order(home: np.ndarray, size: int) -> np.ndarray:
    """np.argsort(home, kind="stable"): by the compiled counting sort where numba loads (O(n), ~10x faster)."""
    try:
        from llm_assets.curation._ngram_kernels import stable_order
    except (ImportError, RuntimeError):  # pragma: no cover - numba is a dependency
        return np.argsort(home, kind="stable")
    return np.asarray(stable_order(home, size))


class HashIndex:
    """Vectorised open-addressing lookup of uint64 keys: ~2 probes per query instead of a binary search's ~20
    dependent memory reads, which is what makes scoring fast."""

    def __init__(self, keys: np.ndarray) -> None:
        self.keys = keys
        bits = max(4, int(2 * len(keys)).bit_length())
        self.shift = np.uint64(64 - bits)
        # Linear probing without wrap-around, built in one pass: in order of home slot, each key takes the first
        # free slot at or after its home, i.e. max(home, previous key's slot + 1). The table runs len(keys) + 1
        # slots past the last home, so every probe sequence ends at an empty slot.
        home = self._home(keys).astype(np.int64)
        by_home = _stable_order(home, 1 << bits)
        rank = np.arange(len(keys), dtype=np.int64)
        position = rank + np.maximum.accumulate(home[by_home] - rank) if len(keys) else rank
        # int32 indices (a model has far fewer than 2^31 n-grams per order): half the memory of int64 slots
        self.slots = np.full((1 << bits) + len(keys) + 1, -1, dtype=np.int32)
        self.slots[position] = by_home

    def _home(self, keys: np.ndarray) -> np.ndarray:
        return (keys * _GOLDEN) >> self.shift

    def find(self, queries: np.ndarray) -> np.ndarray:
        """Index of each query in `keys`, or -1."""
        if not len(self.keys):
            return np.full(len(queries), -1, dtype=np.int64)
        # The first probe settles almost every query; only the rest go round again.
        slot = self._home(queries).astype(np.int64)
        result = self.slots[slot]
        occupied = result >= 0
        wrong = occupied & (self.keys[np.where(occupied, result, 0)] != queries)
        result[wrong] = -1
        pending = np.flatnonzero(wrong)
        while pending.size:
            slot[pending] += 1
            candidate = self.slots[slot[pending]]
            empty = candidate < 0
            hit = ~empty & (self.keys[np.where(empty, 0, candidate)] == queries[pending])
            result[pending[hit]] = candidate[hit]
            pending = pending[~(hit | empty)]
        return result
