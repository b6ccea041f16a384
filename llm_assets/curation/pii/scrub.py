"""The PII stage: scan, redact or drop per policy and jurisdiction, and log every hit without its value.

`scrub_batch` keeps `kept.num_rows + rejects.num_rows == table.num_rows`. No raw PII leaves this module: the
events carry a keyed hash of each value (HMAC-SHA256 with the caller's salt, over a normalised form so the same
card written with spaces or dashes hashes alike), reject reasons name kinds and counts, and reject excerpts are
taken from the redacted text.
"""

from __future__ import annotations

import bisect
import hmac
from collections import Counter
from collections.abc import Collection, Sequence
from dataclasses import dataclass

import pyarrow as pa

from llm_assets.curation.pii.detectors import STRUCTURED_KINDS, Detection, Prescanned, detect_structured, prescan
from llm_assets.curation.pii.names import NerBackend, detect_names
from llm_assets.curation.pii.policy import PII_KINDS, PLACEHOLDERS, PiiAction, PiiPolicy
from llm_assets.curation.stage import StageOutput, empty_rejects, reject_rows

STAGE = "pii"

PII_EVENT_SCHEMA = pa.schema(
    [
        pa.field("record_id", pa.string(), nullable=False),
        pa.field("kind", pa.string(), nullable=False),
        pa.field("start", pa.int64(), nullable=False),  # code-point offsets into the ORIGINAL text
        pa.field("end", pa.int64(), nullable=False),
        pa.field("recognizer", pa.string(), nullable=False),
        pa.field("score", pa.float64(), nullable=False),
        pa.field("action", pa.string(), nullable=False),
        pa.field("value_hash", pa.string(), nullable=False),
        pa.field("jurisdiction", pa.string()),
        pa.field("policy", pa.string(), nullable=False),
        pa.field("policy_version", pa.string(), nullable=False),
        pa.field("policy_sha256", pa.string(), nullable=False),
    ]
)

_NAME_KINDS = frozenset({"person", "location"})
_KIND_ORDER = {kind: i for i, kind in enumerate(PII_KINDS)}


@dataclass(frozen=True, slots=True)
class PiiHit:
    """One PII occurrence: `text[start:end]` (code points) is a `kind` value found by `recognizer`."""

    kind: str
    start: int
    end: int
    recognizer: str
    score: float


_MAX_SCAN_PASSES = 4


def scan_text(
    text: str, policy_or_kinds: PiiPolicy | Collection[str], *, ner: NerBackend | None = None
) -> list[PiiHit]:
    """Non-overlapping hits ordered by start. For a policy, the kinds it redacts or drops (base actions)."""
    kinds = policy_or_kinds.kinds_to_scan() if isinstance(policy_or_kinds, PiiPolicy) else frozenset(policy_or_kinds)
    unknown = kinds - set(PII_KINDS)
    if unknown:
        raise ValueError(f"unknown PII kind(s) {sorted(unknown)}: use {', '.join(PII_KINDS)}")
    return _resolve(_detect(text, kinds, ner))


def scan_texts(
    texts: Sequence[str | None], policy_or_kinds: PiiPolicy | Collection[str], *, ner: NerBackend | None = None
) -> list[list[PiiHit]]:
    """`scan_text` of each text, with the batch's numeric and IBAN candidates found in one compiled pass."""
    kinds = policy_or_kinds.kinds_to_scan() if isinstance(policy_or_kinds, PiiPolicy) else frozenset(policy_or_kinds)
    unknown = kinds - set(PII_KINDS)
    if unknown:
        raise ValueError(f"unknown PII kind(s) {sorted(unknown)}: use {', '.join(PII_KINDS)}")
    scanned = prescan(texts)
    return [
        _resolve(_detect(text, kinds, ner, found)) if text else [] for text, found in zip(texts, scanned, strict=True)
    ]


def _detect(
    text: str, kinds: frozenset[str], ner: NerBackend | None, prescanned: Prescanned | None = None
) -> list[Detection]:
    if not text or not kinds:
        return []
    detections = detect_structured(text, kinds, prescanned=prescanned) if kinds.difference(_NAME_KINDS) else []
    if kinds & _NAME_KINDS:
        detections.extend(detect_names(text, kinds))
    if ner is not None:
        detections.extend(ner.analyze(text, kinds))
    return detections


def _resolve(detections: list[Detection]) -> list[PiiHit]:
    """Longest wins; ties go to the higher score, then to the earlier kind in PII_KINDS (structured first)."""
    if not detections:
        return []
    ordered = sorted(detections, key=lambda d: (d[1] - d[2], -d[4], _KIND_ORDER.get(d[0], 99), d[1], d[3]))
    starts: list[int] = []  # accepted spans, kept sorted and disjoint, so each overlap test is a bisection
    ends: list[int] = []
    hits: list[PiiHit] = []
    for kind, start, end, recognizer, score in ordered:
        i = bisect.bisect_right(starts, start)
        if end <= start or (i and ends[i - 1] > start) or (i < len(starts) and starts[i] < end):
            continue
        starts.insert(i, start)
        ends.insert(i, end)
        hits.append(PiiHit(kind, start, end, recognizer, score))
    hits.sort(key=lambda h: h.start)
    return hits


def redact_text(text: str, hits: Sequence[PiiHit], policy: PiiPolicy, *, jurisdiction: str | None = None) -> str:
    """Replace every hit whose action is `redact` or `drop` with its typed placeholder (`[EMAIL]`, ...)."""
    pieces: list[str] = []
    pos = 0
    for hit in sorted(hits, key=lambda h: h.start):
        if hit.start < pos or policy.action_for(hit.kind, jurisdiction) == "keep":
            continue
        pieces.append(text[pos : hit.start])
        pieces.append(PLACEHOLDERS[hit.kind])
        pos = hit.end
    if not pieces:
        return text
    pieces.append(text[pos:])
    return "".join(pieces)


def value_hash(value: str, kind: str, salt: str) -> str:
    """HMAC-SHA256 (key = salt) of the normalised value: digits/letters only for numbers, lower case for text."""
    if kind in ("email", "person", "location"):
        normal = " ".join(value.casefold().split())
    else:
        normal = "".join(ch for ch in value.upper() if ch.isalnum())
    return hmac.digest(salt.encode("utf-8"), f"{kind}:{normal}".encode(), "sha256").hex()  # one C call


def scrub_batch(table: pa.Table, policy: PiiPolicy, *, salt: str, ner: NerBackend | None = None) -> StageOutput:
    """Redact each record's `text` per `policy` (and its `jurisdiction` column), reject records holding a
    `drop` kind, and log every hit in `events` (PII_EVENT_SCHEMA). All input columns stay on kept rows."""
    if not salt:
        raise ValueError("scrub_batch needs a non-empty salt: unsalted hashes of phone or card numbers can be reversed")
    for column in ("id", "text", "source"):
        if column not in table.column_names:
            raise ValueError(f"scrub_batch: input has no {column!r} column (expected RECORD_SCHEMA columns)")
    texts: list[str | None] = table.column("text").to_pylist()
    ids: list[str] = table.column("id").to_pylist()
    jurisdictions: list[str | None] = (
        table.column("jurisdiction").to_pylist() if "jurisdiction" in table.column_names else [None] * len(texts)
    )
    kinds_by_jurisdiction: dict[str | None, frozenset[str]] = {}
    actions_by_jurisdiction: dict[str | None, dict[str, PiiAction]] = {}
    events: dict[str, list[object]] = {field.name: [] for field in PII_EVENT_SCHEMA}
    new_texts: list[str | None] = []
    keep_mask: list[bool] = []
    reject_index: list[int] = []
    reject_rule: list[str] = []
    reject_reason: list[str] = []
    reject_score: list[float | None] = []
    reject_excerpt: list[str | None] = []
    hits_by_kind: Counter[str] = Counter()
    docs_with_pii = redacted_docs = chars_redacted = 0
    digests: dict[tuple[str, str], str] = {}  # the same value recurs (a project's contact address on every page)

    scanned = prescan(table.column("text"))
    for row, (record_id, text, jurisdiction) in enumerate(zip(ids, texts, jurisdictions, strict=True)):
        code = jurisdiction.strip().upper() if jurisdiction else None
        kinds = kinds_by_jurisdiction.get(code)
        if kinds is None:
            kinds = kinds_by_jurisdiction[code] = policy.kinds_to_scan(code)
            actions_by_jurisdiction[code] = {kind: policy.action_for(kind, code) for kind in PII_KINDS}
        actions = actions_by_jurisdiction[code]
        hits = _resolve(_detect(text, kinds, ner, scanned[row])) if text else []
        if not text or not hits:
            new_texts.append(text)
            keep_mask.append(True)
            continue
        docs_with_pii += 1
        drops: Counter[str] = Counter()
        redacted, current, chars = text, text, 0
        # Redaction shortens text, which can bring a checksum-valid number within reach of a context word
        # ("ΑΦΜ ... 788420768"): scan the redacted text again until nothing new is found (bounded).
        for scan_pass in range(_MAX_SCAN_PASSES):
            for hit in hits:
                action = actions[hit.kind]
                hits_by_kind[hit.kind] += 1
                if action == "drop":
                    drops[hit.kind] += 1
                events["record_id"].append(record_id)
                events["kind"].append(hit.kind)
                events["start"].append(hit.start)
                events["end"].append(hit.end)
                events["recognizer"].append(hit.recognizer if scan_pass == 0 else f"{hit.recognizer} (rescan)")
                events["score"].append(hit.score)
                events["action"].append(action)
                value = current[hit.start : hit.end]
                digest = digests.get((value, hit.kind))
                if digest is None:
                    digest = digests[value, hit.kind] = value_hash(value, hit.kind, salt)
                events["value_hash"].append(digest)
                events["jurisdiction"].append(code)
            redacted = redact_text(current, hits, policy, jurisdiction=code)
            chars += sum(h.end - h.start for h in hits if actions[h.kind] != "keep")
            if drops or redacted == current:
                break
            current = redacted
            rescanned = _resolve(_detect(current, kinds, ner, prescan([current])[0]))
            hits = [h for h in rescanned if actions[h.kind] != "keep"]
            if not hits:
                break
        if drops:
            kind, count = min(drops.items(), key=lambda kv: (-kv[1], _KIND_ORDER[kv[0]]))
            others = ", ".join(f"{n} {k}" for k, n in sorted(drops.items()) if k != kind)
            reject_index.append(row)
            reject_rule.append(f"pii_drop_{kind}")
            reject_reason.append(
                f"{count} {kind} value(s); policy {policy.name} {policy.version} drops documents containing {kind}"
                + (f" (also {others})" if others else "")
            )
            reject_score.append(float(sum(drops.values())))
            reject_excerpt.append(redacted)
            new_texts.append(None)
            keep_mask.append(False)
            continue
        if redacted != text:
            redacted_docs += 1
            chars_redacted += chars
        new_texts.append(redacted)
        keep_mask.append(True)

    n_events = len(events["record_id"])
    events["policy"] = [policy.name] * n_events
    events["policy_version"] = [policy.version] * n_events
    events["policy_sha256"] = [policy.sha256] * n_events
    kept = _kept_rows(table, keep_mask, new_texts)
    rejects = (
        reject_rows(
            table,
            reject_index,
            stage=STAGE,
            rules=reject_rule,
            reasons=reject_reason,
            scores=reject_score,
            thresholds=[0.0] * len(reject_index),
            excerpts=reject_excerpt,
        )
        if reject_index
        else empty_rejects()
    )
    stats = {
        "docs_in": table.num_rows,
        "docs_with_pii": docs_with_pii,
        "hits_by_kind": {
            kind: hits_by_kind.get(kind, 0) for kind in sorted(policy.all_kinds_to_scan(), key=_KIND_ORDER.__getitem__)
        },
        "redacted_docs": redacted_docs,
        "dropped_docs": len(reject_index),
        "chars_redacted": chars_redacted,
        "policy": policy.name,
        "policy_version": policy.version,
        "policy_sha256": policy.sha256,
    }
    return StageOutput(kept=kept, rejects=rejects, stats=stats, events=pa.table(events, schema=PII_EVENT_SCHEMA))


def _kept_rows(table: pa.Table, keep_mask: list[bool], new_texts: list[str | None]) -> pa.Table:
    index = table.schema.get_field_index("text")
    field = table.schema.field(index)
    kept_texts = [t for t, keep in zip(new_texts, keep_mask, strict=True) if keep]
    kept = table.filter(pa.array(keep_mask, type=pa.bool_())) if not all(keep_mask) else table
    return kept.set_column(index, field, pa.array(kept_texts, type=field.type))


def rescan_clean(texts: Sequence[str | None], kinds: Collection[str] = STRUCTURED_KINDS) -> dict[str, int]:
    """Structured PII still present in (already scrubbed) texts, per kind, zeros included: the figure a blocking
    check asserts to be all zero. Placeholders such as `[EMAIL]` never match."""
    wanted = frozenset(kinds)
    unknown = wanted - set(STRUCTURED_KINDS)
    if unknown:
        raise ValueError(f"rescan_clean checks structured kinds only; not {sorted(unknown)}")
    counts: Counter[str] = Counter()
    for text, scanned in zip(texts, prescan(texts), strict=True):
        if text:
            counts.update(hit.kind for hit in _resolve(detect_structured(text, wanted, prescanned=scanned)))
    return {kind: counts.get(kind, 0) for kind in STRUCTURED_KINDS if kind in wanted}
