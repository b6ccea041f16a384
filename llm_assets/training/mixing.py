"""Data mixing for CPT and SFT: target shares per language or domain, met from whatever data there is.

A mixture names groups ("el", "en", "legal", "parallel") with weights and a budget in characters or
documents. English keeps its share to hold off catastrophic forgetting; parallel pairs (UDHR articles in
two languages) tie the target language to English. Selection is by a hash of (seed, group, text), so a
document's inclusion does not depend on input order, and each group holds only the documents its quota
can use. The report records what was asked, what was available and what was taken, for the manifest.
"""

from __future__ import annotations

import hashlib
import heapq
import json
import math
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any, Literal, NamedTuple

from pydantic import BaseModel, ConfigDict, Field, field_validator


class MixtureError(ValueError):
    """Data that cannot serve a mixture (a weighted group absent, a record without a group); one line."""


class MixtureConfig(BaseModel):
    """Weights per group, a budget, and what to do when a group has too little data."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    weights: dict[str, float] = Field(description="Relative weight per group (language code or domain); 0 drops it.")
    budget: int = Field(gt=0, description="Total size of the mixture, in `unit`.")
    unit: Literal["chars", "docs"] = "chars"
    seed: int = 0
    allow_upsampling: bool = Field(default=False, description="Repeat a group's documents to reach its share.")
    max_epochs: float = Field(default=4.0, ge=1.0, description="Most passes over one group when upsampling.")
    on_shortfall: Literal["shrink", "redistribute"] = Field(
        default="shrink",
        description="shrink: lower the total so every share holds; redistribute: give the rest to other groups.",
    )

    @field_validator("weights")
    @classmethod
    def _weights_are_usable(cls, weights: dict[str, float]) -> dict[str, float]:
        if not weights:
            raise ValueError("weights is empty; give at least one group, e.g. {'el': 0.7, 'en': 0.3}")
        blank = [name for name in weights if not name.strip()]
        if blank:
            raise ValueError("a group name is empty; name each group by language code or domain")
        bad = {name: value for name, value in weights.items() if value < 0 or not math.isfinite(value)}
        if bad:
            raise ValueError(f"weights must be finite and >= 0; got {bad}")
        if not any(weights.values()):
            raise ValueError(f"all weights are 0 ({', '.join(sorted(weights))}); give at least one group a weight > 0")
        return weights

    def shares(self) -> dict[str, float]:
        total = math.fsum(self.weights.values())
        return {name: weight / total for name, weight in self.weights.items()}


class MixedText(NamedTuple):
    group: str
    text: str
    repeat: int  # 0 for the first use of a document, 1.. for upsampled copies


class GroupReport(BaseModel):
    weight: float
    target_share: float
    available_docs: int
    available_chars: int
    quota: float  # units this group was asked for after the shortfall policy
    docs_taken: int  # including repeats
    unique_docs_taken: int
    chars_taken: int
    realised_share: float
    epochs: float  # units taken / units available


class MixtureReport(BaseModel):
    """What the data manifest records about a mixture: the config, per-group figures, totals."""

    config: MixtureConfig
    groups: dict[str, GroupReport]
    ignored_groups: dict[str, int]  # groups in the data with no weight: documents skipped
    total_units: int
    total_docs: int
    total_chars: int
    scale: float  # realised total / budget
    budget_met: bool

    def to_json(self) -> str:
        return json.dumps(self.model_dump(mode="json"), ensure_ascii=False, sort_keys=True, indent=2)


def _key(seed: int, group: str, text: str) -> int:
    digest = hashlib.blake2b(f"{seed}\x00{group}\x00{text}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


class _Pool:
    """The lowest-keyed documents of one group that together cover `bound` units (a bounded max-heap)."""

    def __init__(self, bound: float, unit: str) -> None:
        self.bound = bound
        self.unit = unit
        self.heap: list[tuple[int, int, int, str]] = []  # (-key, -index, units, text)
        self.held = 0
        self.available_docs = 0
        self.available_chars = 0

    def add(self, key: int, index: int, text: str) -> None:
        units = 1 if self.unit == "docs" else len(text)
        self.available_docs += 1
        self.available_chars += len(text)
        if units == 0:
            return
        heapq.heappush(self.heap, (-key, -index, units, text))
        self.held += units
        while self.heap and self.held - self.heap[0][2] >= self.bound:
            self.held -= heapq.heappop(self.heap)[2]

    @property
    def available_units(self) -> int:
        return self.available_docs if self.unit == "docs" else self.available_chars

    def in_key_order(self) -> list[tuple[int, int, int, str]]:
        """(key, index, units, text), lowest key first."""
        return sorted((-k, -i, u, t) for k, i, u, t in self.heap)


def _quotas(config: MixtureConfig, capacity: Mapping[str, float]) -> dict[str, float]:
    """Units per group: budget x share, then the shortfall policy where a group's capacity is below that."""
    shares = {g: s for g, s in config.shares().items() if s > 0}
    if config.on_shortfall == "shrink":
        scale = min([1.0, *(capacity[g] / (config.budget * s) for g, s in shares.items())])
        return {g: config.budget * s * scale for g, s in shares.items()}
    quotas: dict[str, float] = {}
    open_groups = dict(shares)
    remaining = float(config.budget)
    while open_groups:
        total = math.fsum(open_groups.values())
        full = {g for g, s in open_groups.items() if capacity[g] <= remaining * s / total}
        if not full:
            quotas.update({g: remaining * s / total for g, s in open_groups.items()})
            break
        for g in full:
            quotas[g] = capacity[g]
            remaining -= capacity[g]
            del open_groups[g]
    return quotas


def mix(items: Iterable[tuple[str, str]], config: MixtureConfig) -> tuple[list[MixedText], MixtureReport]:
    """Selects (group, text) items to the configured shares; returns them in a seeded shuffle and a report.

    A document is taken whole, so a group may exceed its quota by less than one document. One pass over
    `items`; each group keeps at most the documents its largest possible quota needs.
    """
    shares = config.shares()
    bound = {
        g: (config.budget * s if config.on_shortfall == "shrink" else float(config.budget)) for g, s in shares.items()
    }
    pools: dict[str, _Pool] = {}
    ignored: dict[str, int] = {}
    for index, (group, text) in enumerate(items):
        if group not in shares:
            ignored[group] = ignored.get(group, 0) + 1
            continue
        pool = pools.get(group)
        if pool is None:
            pool = pools[group] = _Pool(bound[group] if shares[group] > 0 else 0.0, config.unit)
        if shares[group] > 0:
            pool.add(_key(config.seed, group, text), index, text)
        else:
            pool.available_docs += 1
            pool.available_chars += len(text)
    missing = sorted(g for g in shares if g not in pools or pools[g].available_units == 0)
    if missing:
        present = sorted(g for g in set(pools) | set(ignored) if g not in missing) or ["none"]
        raise MixtureError(
            f"no data for weighted group(s) {', '.join(missing)}; groups present: {', '.join(present)}"
            " — fix the group names or set their weight to 0"
        )
    epochs = config.max_epochs if config.allow_upsampling else 1.0
    capacity = {g: pool.available_units * epochs for g, pool in pools.items()}
    quotas = _quotas(config, capacity)

    chosen: list[tuple[int, MixedText]] = []
    taken: dict[str, tuple[int, int, int, int]] = {}  # group -> (units, docs, unique docs, chars)
    for group, pool in pools.items():
        quota = quotas.get(group, 0.0)
        units = docs = chars = 0
        unique: set[int] = set()
        ordered = pool.in_key_order()
        full = False
        for repeat in range(math.ceil(epochs)):
            for key, index, size, text in ordered:
                if units >= quota or units + size > capacity[group]:
                    full = True
                    break
                order = _key(config.seed, f"order\x00{repeat}", f"{key}")
                chosen.append((order, MixedText(group, text, repeat)))
                units += size
                docs += 1
                chars += len(text)
                unique.add(index)
            if full:
                break
        taken[group] = (units, docs, len(unique), chars)
    chosen.sort(key=lambda pair: pair[0])

    total_units = sum(t[0] for t in taken.values())
    groups = {}
    for group in sorted(pools):
        units, docs, unique_docs, chars = taken[group]
        pool = pools[group]
        groups[group] = GroupReport(
            weight=config.weights[group],
            target_share=shares[group],
            available_docs=pool.available_docs,
            available_chars=pool.available_chars,
            quota=quotas.get(group, 0.0),
            docs_taken=docs,
            unique_docs_taken=unique_docs,
            chars_taken=chars,
            realised_share=units / total_units if total_units else 0.0,
            epochs=units / pool.available_units if pool.available_units else 0.0,
        )
    report = MixtureReport(
        config=config,
        groups=groups,
        ignored_groups=dict(sorted(ignored.items())),
        total_units=total_units,
        total_docs=sum(t[1] for t in taken.values()),
        total_chars=sum(t[3] for t in taken.values()),
        scale=total_units / config.budget,
        budget_met=total_units >= config.budget,
    )
    return [text for _, text in chosen], report


def grouped(records: Iterable[Mapping[str, Any]], by: str) -> Iterator[tuple[str, str]]:
    """(group, text) from curated records: the column `by` (`lang`, `domain`, `source`) or that metadata key."""
    for record in records:
        value = record.get(by)
        if value is None and record.get("metadata"):
            value = json.loads(record["metadata"]).get(by)
        if not isinstance(value, str) or not value:
            raise MixtureError(
                f"record {record.get('id', '?')}: no '{by}' column or metadata field to group by; "
                "group by a field every record has (lang, domain, source)"
            )
        yield value, record["text"]


# An article heading is a line of two tokens, one of them the article number: "Article 3", "ΑΡΘΡΟ 3",
# "3. cikk", "Artigo 3.º". The numbers must run 1, 2, 3 ... so numbered paragraphs are never headings.
_HEADING = re.compile(r"^\s*(?:(?P<word_first>[^\W\d]\S*)\s+(?P<n1>\d{1,2})\S*|(?P<n2>\d{1,2})\.?\s+[^\W\d]\S*)\s*$")


def udhr_articles(text: str) -> dict[int, str]:
    """Article number -> article text (heading removed) of one UDHR translation; the preamble is left out.

    Article 1 may be spelled out ("Article premier"): it is then the two-token line before article 2
    whose first word is article 2's heading word.
    """
    lines = text.split("\n")
    starts: dict[int, int] = {}
    expected = 1
    for position, line in enumerate(lines):
        match = _HEADING.match(line)
        if not match:
            continue
        number = int(match.group("n1") or match.group("n2"))
        if number == 2 and expected == 1 and match.group("word_first"):
            word = match.group("word_first")
            for back in range(position - 1, -1, -1):
                tokens = lines[back].split()
                if len(tokens) == 2 and tokens[0] == word:
                    starts[1] = back
                    expected = 2
                    break
        if number == expected:
            starts[number] = position
            expected += 1
    if 1 not in starts:
        return {}
    bounds = [*starts.values(), len(lines)]
    articles = {}
    for (number, start), end in zip(starts.items(), bounds[1:], strict=True):
        body = "\n".join(line.strip() for line in lines[start + 1 : end] if line.strip())
        if body:
            articles[number] = body
    return articles


def _language(record: Mapping[str, Any]) -> str | None:
    meta = json.loads(record["metadata"]) if record.get("metadata") else {}
    value = meta.get("language") or record.get("language_hint") or record.get("lang")
    return value if isinstance(value, str) else None


def parallel_texts(
    records: Iterable[Mapping[str, Any]], languages: Sequence[str] = ("en", "el"), *, template: str = "{code}: {text}"
) -> list[str]:
    """One text per UDHR article present in every language of `languages`: the translations one after another.

    Records are UDHR translations (one per language; `metadata.language` as ingested, else `language_hint`
    or `lang`). Only the first record of a language is used. Article order follows the document.
    """
    wanted = list(dict.fromkeys(languages))
    if len(wanted) < 2:
        raise MixtureError(f"parallel texts need two or more distinct languages; got {list(languages)}")
    by_language: dict[str, dict[int, str]] = {}
    seen: set[str] = set()
    for record in records:
        code = _language(record)
        if code is not None:
            seen.add(code)
        if code in wanted and code not in by_language:
            by_language[code] = udhr_articles(record["text"])
    missing = [code for code in wanted if not by_language.get(code)]
    if missing:
        present = ", ".join(sorted(seen)) or "none"
        raise MixtureError(
            f"no UDHR articles for {', '.join(missing)} (languages with records: {present}); "
            "pass records of the udhr source and language codes it has"
        )
    common = sorted(set.intersection(*(set(by_language[code]) for code in wanted)))
    return ["\n".join(template.format(code=code, text=by_language[code][n]) for code in wanted) for n in common]
