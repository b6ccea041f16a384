"""The PII stage: redaction and drops per policy and jurisdiction, hashed events, no raw PII anywhere, in == out."""

from __future__ import annotations

import itertools
import random

import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from llm_assets.curation.pii import (
    PII_EVENT_SCHEMA,
    PiiHit,
    load_policy,
    redact_text,
    rescan_clean,
    scan_text,
    scrub_batch,
)
from llm_assets.curation.pii.policy import PII_KINDS, PiiPolicy
from llm_assets.curation.pii.scrub import value_hash
from llm_assets.schemas import REJECT_SCHEMA

SALT = "test-salt"


def luhn_complete(payload: str) -> str:
    for check in "0123456789":
        digits = payload + check
        total = sum(
            (int(ch) * 2 - 9 if int(ch) * 2 > 9 else int(ch) * 2) if i % 2 else int(ch)
            for i, ch in enumerate(reversed(digits))
        )
        if total % 10 == 0:
            return digits
    raise AssertionError("unreachable")


def afm_complete(body: str) -> str:
    return body + str(sum(int(d) * 2 ** (8 - i) for i, d in enumerate(body)) % 11 % 10)


CARD = luhn_complete("411111111111111")
AMKA = luhn_complete("0101851234")
AFM = afm_complete("09401420")
IBAN = "GR1601101250000000012300695"
EMAIL = "eleni.k@example.gr"
PHONE = "+30 694 123 4567"
SSN = "123-45-6789"
IP = "83.212.5.17"
RAW_VALUES = [CARD, AMKA, AFM, IBAN, EMAIL, PHONE, SSN, IP]


def records(texts: list[str], jurisdictions: list[str | None] | None = None) -> pa.Table:
    n = len(texts)
    return pa.table(
        {
            "id": [f"r{i}" for i in range(n)],
            "text": texts,
            "source": ["test"] * n,
            "file": [f"f{i}.txt" for i in range(n)],
            "locator": [f"line {i}" for i in range(n)],
            "jurisdiction": jurisdictions if jurisdictions is not None else [None] * n,
            "language_hint": ["el"] * n,
        }
    )


def all_strings(table: pa.Table) -> str:
    return "\n".join(str(value) for column in table.columns for value in column.to_pylist())


def assert_no_raw_pii(*blobs: str) -> None:
    for blob in blobs:
        for value in RAW_VALUES:
            assert value not in blob, value
            assert value.replace(" ", "") not in blob.replace(" ", ""), value


def test_scan_text_orders_and_never_overlaps() -> None:
    text = f"Email {EMAIL}, card {CARD}, IBAN {IBAN}, phone {PHONE}, ΑΦΜ {AFM}, ΑΜΚΑ {AMKA}, ip {IP}, ssn {SSN}."
    hits = scan_text(text, PII_KINDS)
    assert [h.kind for h in hits] == [
        "email",
        "credit_card",
        "iban",
        "phone",
        "gr_afm",
        "gr_amka",
        "ip_address",
        "us_ssn",
    ]
    for a, b in itertools.pairwise(hits):
        assert a.end <= b.start
    assert [text[h.start : h.end] for h in hits] == [EMAIL, CARD, IBAN, PHONE, AFM, AMKA, IP, SSN]
    assert scan_text(text, PII_KINDS) == hits  # deterministic


def test_scan_text_with_policy_skips_kept_kinds() -> None:
    text = f"Mrs Eleni Papadopoulou at {EMAIL}"
    default_kinds = {h.kind for h in scan_text(text, load_policy("default"))}
    gdpr_kinds = {h.kind for h in scan_text(text, load_policy("eu-gdpr"))}
    assert default_kinds == {"email"}
    assert gdpr_kinds == {"email", "person"}


def test_longest_wins_between_kinds() -> None:
    # The local part is a Greek mobile number on its own; the whole address must win as one e-mail hit.
    text = "γράψτε στο 6944123456@example.gr"
    hits = scan_text(text, ["email", "phone"])
    assert [(h.kind, text[h.start : h.end]) for h in hits] == [("email", "6944123456@example.gr")]
    assert {h.kind for h in scan_text("6944123456", ["email", "phone"])} == {"phone"}


def test_unknown_kind_is_an_error() -> None:
    with pytest.raises(ValueError, match="unknown PII kind"):
        scan_text("x", ["passport"])


def test_redact_text_uses_typed_placeholders() -> None:
    policy = load_policy("default")
    text = f"Στείλτε στο {EMAIL} ή καλέστε {PHONE}, IBAN {IBAN}."
    redacted = redact_text(text, scan_text(text, policy), policy)
    assert redacted == "Στείλτε στο [EMAIL] ή καλέστε [PHONE], IBAN [IBAN]."


def test_redact_text_keeps_keep_kinds() -> None:
    policy = PiiPolicy(name="p", version="1", actions={**dict.fromkeys(PII_KINDS, "redact"), "email": "keep"})
    text = f"{EMAIL} {SSN}"
    hits = [PiiHit("email", 0, len(EMAIL), "t", 1.0), PiiHit("us_ssn", len(EMAIL) + 1, len(text), "t", 1.0)]
    assert redact_text(text, hits, policy) == f"{EMAIL} [SSN]"


def test_scrub_default_redacts_and_keeps_columns() -> None:
    texts = [f"Επικοινωνία: {EMAIL}, τηλ. {PHONE}", "Καθαρό κείμενο χωρίς δεδομένα.", f"card {CARD}"]
    table = records(texts)
    out = scrub_batch(table, load_policy("default"), salt=SALT)
    assert out.kept.num_rows == 3 and out.rejects.num_rows == 0
    assert out.kept.schema == table.schema
    assert out.kept.column("text").to_pylist() == [
        "Επικοινωνία: [EMAIL], τηλ. [PHONE]",
        "Καθαρό κείμενο χωρίς δεδομένα.",
        "card [CREDIT_CARD]",
    ]
    assert out.kept.column("id").to_pylist() == ["r0", "r1", "r2"]
    assert out.kept.column("locator").to_pylist() == table.column("locator").to_pylist()
    assert out.stats["docs_in"] == 3
    assert out.stats["docs_with_pii"] == 2
    assert out.stats["redacted_docs"] == 2
    assert out.stats["dropped_docs"] == 0
    assert out.stats["hits_by_kind"]["email"] == 1
    assert out.stats["hits_by_kind"]["credit_card"] == 1
    assert out.stats["chars_redacted"] == len(EMAIL) + len(PHONE) + len(CARD)


def test_events_point_into_the_original_text() -> None:
    text = f"α {EMAIL} β {IBAN} γ"
    out = scrub_batch(records([text]), load_policy("default"), salt=SALT)
    assert out.events is not None
    assert out.events.schema == PII_EVENT_SCHEMA
    rows = out.events.to_pylist()
    assert [(r["kind"], text[r["start"] : r["end"]]) for r in rows] == [("email", EMAIL), ("iban", IBAN)]
    assert {r["action"] for r in rows} == {"redact"}
    assert {r["policy"] for r in rows} == {"default"}
    assert {r["policy_version"] for r in rows} == {"1.0.0"}
    assert rows[0]["value_hash"] == value_hash(EMAIL, "email", SALT)


def test_value_hash_is_salted_and_normalised() -> None:
    assert value_hash(CARD, "credit_card", "a") != value_hash(CARD, "credit_card", "b")
    spaced = " ".join(CARD[i : i + 4] for i in range(0, 16, 4))
    assert value_hash(spaced, "credit_card", "a") == value_hash(CARD, "credit_card", "a")
    assert len(value_hash(CARD, "credit_card", "a")) == 64


def test_salt_is_required() -> None:
    with pytest.raises(ValueError, match="salt"):
        scrub_batch(records(["x"]), load_policy("default"), salt="")


def test_eu_gdpr_drops_cards_with_redacted_excerpt() -> None:
    text = f"Πελάτης {EMAIL} με κάρτα {CARD} και δεύτερη {CARD}."
    out = scrub_batch(records([text, "ok"]), load_policy("eu-gdpr"), salt=SALT)
    assert out.kept.num_rows == 1 and out.rejects.num_rows == 1
    assert out.rejects.schema == REJECT_SCHEMA
    reject = out.rejects.to_pylist()[0]
    assert reject["stage"] == "pii"
    assert reject["rule"] == "pii_drop_credit_card"
    assert "2 credit_card" in reject["reason"]
    assert reject["record_id"] == "r0"
    assert reject["excerpt"].startswith("Πελάτης [EMAIL] με κάρτα [CREDIT_CARD]")
    assert reject["file"] == "f0.txt" and reject["locator"] == "line 0"
    assert out.stats["dropped_docs"] == 1
    events = out.events.to_pylist() if out.events is not None else []
    assert {e["action"] for e in events if e["kind"] == "credit_card"} == {"drop"}


def test_gr_profile_drops_amka_only_for_greek_records() -> None:
    text = f"Ασφαλισμένος με ΑΜΚΑ {AMKA}."
    out = scrub_batch(records([text, text, text], ["GR", "de", None]), load_policy("gr"), salt=SALT)
    assert out.rejects.column("record_id").to_pylist() == ["r0"]
    assert out.rejects.column("rule").to_pylist() == ["pii_drop_gr_amka"]
    assert out.kept.column("text").to_pylist() == ["Ασφαλισμένος με ΑΜΚΑ [AMKA].", "Ασφαλισμένος με ΑΜΚΑ [AMKA]."]
    jurisdictions = out.events.column("jurisdiction").to_pylist() if out.events is not None else []
    assert jurisdictions == ["GR", "DE", None]


def test_keep_policy_leaves_text_alone() -> None:
    policy = PiiPolicy(name="keep-all", version="1", actions=dict.fromkeys(PII_KINDS, "keep"))
    table = records([f"{EMAIL} {CARD}"])
    out = scrub_batch(table, policy, salt=SALT)
    assert out.kept.column("text").to_pylist() == table.column("text").to_pylist()
    assert out.events is not None and out.events.num_rows == 0
    assert out.stats["docs_with_pii"] == 0


def test_no_raw_pii_in_events_rejects_or_stats() -> None:
    texts = [
        f"ΑΜΚΑ {AMKA}, ΑΦΜ {AFM}, {EMAIL}, {PHONE}",
        f"IBAN {IBAN}, card {CARD}, SSN {SSN}, ip {IP}",
        f"Ο κ. Παπαδόπουλος, ΑΦΜ {AFM}, IBAN {IBAN}",
    ]
    for name in ("default", "eu-gdpr", "gr"):
        out = scrub_batch(records(texts, ["GR", "GR", "GR"]), load_policy(name), salt=SALT)
        assert out.events is not None and out.events.num_rows >= 10
        assert_no_raw_pii(all_strings(out.events), all_strings(out.rejects), repr(out.stats), all_strings(out.kept))


def test_rescan_clean_after_scrub() -> None:
    texts = [f"{EMAIL} {PHONE} {CARD} {IBAN} {SSN} {IP} ΑΦΜ {AFM} ΑΜΚΑ {AMKA}"]
    before = rescan_clean(texts)
    assert all(count == 1 for count in before.values()), before
    out = scrub_batch(records(texts), load_policy("default"), salt=SALT)
    after = rescan_clean(out.kept.column("text").to_pylist())
    assert set(after) == set(before)
    assert sum(after.values()) == 0


def test_placeholders_do_not_rescan() -> None:
    placeholders = "[EMAIL] [PHONE] [CREDIT_CARD] [IBAN] [SSN] [IP] [AFM] [AMKA] [PERSON] [LOCATION]"
    assert sum(rescan_clean([placeholders, None, ""]).values()) == 0
    with pytest.raises(ValueError, match="structured"):
        rescan_clean(["x"], ["person"])


def test_eu_gdpr_redacts_names() -> None:
    out = scrub_batch(records(["Η Dr. Maria Schmidt και ο Γιώργος Παπαδόπουλος."]), load_policy("eu-gdpr"), salt=SALT)
    assert out.kept.column("text").to_pylist() == ["Η Dr. [PERSON] και ο [PERSON]."]


def test_empty_batch() -> None:
    out = scrub_batch(records([]), load_policy("default"), salt=SALT)
    assert out.kept.num_rows == 0 and out.rejects.num_rows == 0
    assert out.events is not None and out.events.num_rows == 0


def _pii_text(draw: st.DrawFn) -> str:
    rng = random.Random(draw(st.integers(0, 2**32)))
    parts = draw(st.lists(st.sampled_from(["word", "number", "pii", "greek"]), max_size=12))
    out = []
    for part in parts:
        if part == "pii":
            out.append(rng.choice([f"ΑΜΚΑ {AMKA}", f"κάρτα {CARD}", EMAIL, PHONE, f"ΑΦΜ {AFM}", IBAN, SSN, IP]))
        elif part == "number":
            out.append(rng.choice(["ν. 4624/2019", "12/03/2024", "€1.234,56", "v1.2.3.4", str(rng.randint(0, 10**9))]))
        elif part == "greek":
            out.append(rng.choice(["Άρθρο 5", "παρ. 2", "Αθήνα", "Γιώργος Παπαδόπουλος"]))
        else:
            out.append(draw(st.text(max_size=12)))
    return " ; ".join(out)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    data=st.lists(st.tuples(st.composite(_pii_text)(), st.sampled_from(["GR", "DE", None])), max_size=8),
    policy_name=st.sampled_from(["default", "eu-gdpr", "gr"]),
)
def test_invariant_in_equals_kept_plus_rejected(data: list[tuple[str, str | None]], policy_name: str) -> None:
    texts = [t for t, _ in data]
    table = records(texts, [j for _, j in data])
    out = scrub_batch(table, load_policy(policy_name), salt=SALT)
    assert out.kept.num_rows + out.rejects.num_rows == table.num_rows
    assert set(out.kept.column("id").to_pylist()).isdisjoint(out.rejects.column("record_id").to_pylist())
    assert out.kept.schema == table.schema
    assert out.stats["dropped_docs"] == out.rejects.num_rows
    assert sum(rescan_clean(out.kept.column("text").to_pylist()).values()) == 0
    assert_no_raw_pii(all_strings(out.events) if out.events is not None else "", all_strings(out.rejects))


class _SpansNer:
    """A stand-in NER backend that reports the spans it is given."""

    name = "spans"

    def __init__(self, spans: list[tuple[int, int]]) -> None:
        self.spans = spans

    def analyze(self, text: str, kinds: frozenset[str]) -> list[tuple[str, int, int, str, float]]:
        return [("person", start, end, "spans", 0.5) for start, end in self.spans]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 60), st.integers(1, 15)), max_size=25))
def test_resolution_keeps_longest_disjoint_spans(raw: list[tuple[int, int]]) -> None:
    spans = [(start, start + length) for start, length in raw]
    hits = scan_text("x" * 80, ["person"], ner=_SpansNer(spans))
    assert [h.start for h in hits] == sorted(h.start for h in hits)
    for a, b in itertools.pairwise(hits):
        assert a.end <= b.start
    kept = {(h.start, h.end) for h in hits}
    for start, end in spans:  # every span left out overlaps a kept one at least as long
        assert (start, end) in kept or any(s < end and start < e and e - s >= end - start for s, e in kept), (
            start,
            end,
        )


def test_redaction_that_brings_a_number_into_context_is_scanned_again() -> None:
    """'[AFM]' is shorter than the AFM it replaces, which brings the last checksum-valid number within the
    context window of 'ΑΦΜ': the scrubber scans the redacted text again, so the re-scan check finds nothing."""
    text = "ΑΦΜ 094014201 ; 00000000 ; 483082311 ; Άρθρο 5 ; 788420768"
    out = scrub_batch(records([text], ["GR"]), load_policy("gr"), salt=SALT)
    (kept,) = out.kept.column("text").to_pylist()
    assert kept.endswith("Άρθρο 5 ; [AFM]") and "483082311" in kept
    assert sum(rescan_clean([kept]).values()) == 0
    assert out.events is not None and "gr_afm (rescan)" not in out.events.column("recognizer").to_pylist()
    assert any(r.endswith("(rescan)") for r in out.events.column("recognizer").to_pylist())
