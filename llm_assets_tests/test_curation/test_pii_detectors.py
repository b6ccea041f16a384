"""Structured PII detectors: valid identifiers are found, checksum-invalid and look-alike numbers survive.

Greek identifiers are generated here with checksum logic written independently of the detectors, so a test passes
only when both implementations agree with the published rules.
"""

from __future__ import annotations

import json
import os
import random
import re
from collections import Counter
from pathlib import Path

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from llm_assets.curation.pii import scan_text
from llm_assets.curation.pii.detectors import (
    afm_valid,
    amka_valid,
    card_valid,
    detect_structured,
    iban_valid,
    luhn_valid,
    ssn_valid,
)
from llm_assets.curation.pii.names import presidio_backend

# The shared data sets live beside the checkout (../shared/data), in development and in CI alike;
# LLM_ASSETS_SHARED_DATA points elsewhere. Missing data is a failure, never a silent skip.
SHARED_DATA = Path(os.environ.get("LLM_ASSETS_SHARED_DATA", Path(__file__).resolve().parents[3] / "shared" / "data"))
PRESIDIO_SYNTH = SHARED_DATA / "pii_presidio_synth" / "synth_dataset_v2.json"
GREEK_LAWS = SHARED_DATA / "greek_laws"


# ------------------------------------------------------------------------------------------------ generators


def luhn_check_digit(payload: str) -> str:
    total = 0
    for i, ch in enumerate(reversed(payload)):
        d = int(ch)
        if i % 2 == 0:  # these positions are doubled once the check digit is appended
            d = d * 2 - 9 if d * 2 > 9 else d * 2
        total += d
    return str((10 - total % 10) % 10)


def make_afm(rng: random.Random) -> str:
    body = [rng.randint(0, 9) for _ in range(8)]
    body[0] = rng.randint(1, 9)
    check = sum(d * 2 ** (8 - i) for i, d in enumerate(body)) % 11 % 10
    return "".join(map(str, body)) + str(check)


def make_amka(rng: random.Random) -> str:
    payload = f"{rng.randint(1, 28):02d}{rng.randint(1, 12):02d}{rng.randint(0, 99):02d}{rng.randint(0, 9999):04d}"
    return payload + luhn_check_digit(payload)


def make_card(rng: random.Random, prefix: str = "4", length: int = 16) -> str:
    payload = prefix + "".join(str(rng.randint(0, 9)) for _ in range(length - len(prefix) - 1))
    return payload + luhn_check_digit(payload)


def make_iban_gr(rng: random.Random) -> str:
    bban = "".join(str(rng.randint(0, 9)) for _ in range(23))
    numeric = "".join(str(int(ch, 36)) for ch in bban + "GR00")
    return f"GR{98 - int(numeric) % 97:02d}{bban}"


def spaced(iban: str) -> str:
    return " ".join(iban[i : i + 4] for i in range(0, len(iban), 4))


def make_gr_mobile(rng: random.Random) -> str:
    return f"+30 69{rng.randint(0, 9)} {rng.randint(0, 999):03d} {rng.randint(0, 9999):04d}"


def kinds(text: str) -> list[tuple[str, str]]:
    return sorted((kind, text[start:end]) for kind, start, end, _, _ in detect_structured(text))


@pytest.fixture
def rng() -> random.Random:
    return random.Random(20240312)


# ------------------------------------------------------------------------------------------------ validators


def test_validators_accept_generated_greek_identifiers(rng: random.Random) -> None:
    for _ in range(200):
        assert afm_valid(make_afm(rng))
        assert amka_valid(make_amka(rng))
        assert iban_valid(make_iban_gr(rng))
        assert card_valid(make_card(rng))


def test_validators_reject_one_digit_changes(rng: random.Random) -> None:
    for _ in range(200):
        afm, amka, card = make_afm(rng), make_amka(rng), make_card(rng)
        bad_afm = afm[:8] + str((int(afm[8]) + 1) % 10)
        bad_amka = amka[:10] + str((int(amka[10]) + 1) % 10)
        bad_card = card[:15] + str((int(card[15]) + 1) % 10)
        assert not afm_valid(bad_afm)
        assert not amka_valid(bad_amka)
        assert not luhn_valid(bad_card)


@pytest.mark.parametrize(
    ("value", "valid"),
    [
        ("GR1601101250000000012300695", True),
        ("GB82 WEST 1234 5698 7654 32", True),
        ("DE89370400440532013000", True),
        ("gb82west12345698765432", True),
        ("GR1601101250000000012300696", False),  # mod-97 broken
        ("GB82WEST1234569876543", False),  # one character short for GB
        ("ZZ82WEST12345698765432", False),  # no such country
    ],
)
def test_iban_valid(value: str, valid: bool) -> None:
    assert iban_valid(value) is valid


def test_amka_needs_a_real_birth_date() -> None:
    payload = "3102851234"  # 31 February
    assert not amka_valid(payload + luhn_check_digit(payload))
    payload = "2902001234"  # 29 February 2000
    assert amka_valid(payload + luhn_check_digit(payload))


@pytest.mark.parametrize(
    ("ssn", "valid"),
    [("123-45-6789", True), ("000-12-3456", False), ("666-12-3456", False), ("912-12-3456", False),
     ("123-00-4567", False), ("123-45-0000", False)],
)  # fmt: skip
def test_ssn_valid(ssn: str, valid: bool) -> None:
    assert ssn_valid(*ssn.split("-")) is valid


# ------------------------------------------------------------------------------------------------ detection


def test_each_structured_kind_is_found(rng: random.Random) -> None:
    afm, amka, card, iban = make_afm(rng), make_amka(rng), make_card(rng), make_iban_gr(rng)
    mobile = make_gr_mobile(rng)
    cases = {
        "email": "Γράψτε στο maria.papadopoulou@example.gr για λεπτομέρειες.",
        "phone": f"Τηλέφωνο επικοινωνίας: {mobile}.",
        "credit_card": f"Card: {card[:4]} {card[4:8]} {card[8:12]} {card[12:]} exp 12/27",
        "iban": f"IBAN: {spaced(iban)}, Εθνική Τράπεζα",
        "us_ssn": "SSN 123-45-6789 on file",
        "ip_address": "login from 192.168.10.25 at 10:31",
        "gr_afm": f"με ΑΦΜ {afm} και ΔΟΥ Α' Αθηνών",
        "gr_amka": f"Α.Μ.Κ.Α.: {amka}",
    }
    for kind, text in cases.items():
        assert kind in {k for k, _ in kinds(text)}, (kind, text, kinds(text))


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Call +30 210 123 4567 today", "+30 210 123 4567"),
        ("Κινητό: 6944123456", "6944123456"),
        ("τηλ. 210 1234567", "210 1234567"),
        ("Tel: +44 20 7946 0958", "+44 20 7946 0958"),
        ("Mobil +49 30 12345678", "+49 30 12345678"),
        ("Tél. +33 1 42 68 53 00", "+33 1 42 68 53 00"),
        ("call (415) 555-2671 now", "(415) 555-2671"),
        ("office 415-555-2671 ext. 12", "415-555-2671 ext. 12"),
        ("US line +1 415 555 2671", "+1 415 555 2671"),
        ("UK mobile 07700 900123", "07700 900123"),
    ],
)
def test_phone_formats(text: str, expected: str) -> None:
    assert ("phone", expected) in kinds(text)


@pytest.mark.parametrize(
    "text",
    [
        "Ημερομηνία 12/03/2024 και 2024-03-12, ώρα 10:30:45",
        "σύμφωνα με τον ν. 5080/2024 και τον Ν. 4624/2019 (Α' 137)",
        "όπως ορίζεται στο π.δ. 80/2016 και στο ΦΕΚ Α' 123/2024",
        "ISBN 978-3-16-148410-0 and ISBN 0-306-40615-2",
        "upgrade to version 1.2.3.4 or v1.2.3.4 or v. 10.0.0.1",
        "ποσό €1.234,56 και 1.234.567,89 ευρώ και 2.088.000.000 ευρώ",
        "άρθρο 12 παρ. 3 περ. β', άρθρα 4, 31, 32, 37 και 38",
        "ΚΑΕΚ 210675501030/0/0 και ΑΛΕ 2120207001",
        "τηλεφωνικό κέντρο 1.000.000 κλήσεων",
        "ΑΔΑ: 6ΡΞΖ46ΜΤΛΡ-7ΥΛ, αρ. πρωτ. 12345/678",
        "deployedModelId: '5251549009234886656'",
        "grammar: <item> ::= <type>:<value> and B::C in Perl",
        "ratio 1:2:3 and time 12:30:45",
    ],
)
def test_look_alikes_survive(text: str) -> None:
    assert kinds(text) == []


def test_checksum_invalid_look_alikes_survive(rng: random.Random) -> None:
    card = make_card(rng)
    bad_card = card[:15] + str((int(card[15]) + 1) % 10)
    iban = make_iban_gr(rng)
    bad_iban = iban[:-1] + str((int(iban[-1]) + 1) % 10)
    afm = make_afm(rng)
    bad_afm = afm[:8] + str((int(afm[8]) + 1) % 10)
    amka = make_amka(rng)
    bad_amka = amka[:10] + str((int(amka[10]) + 1) % 10)
    texts = [
        f"card {bad_card} and {bad_card[:4]} {bad_card[4:8]} {bad_card[8:12]} {bad_card[12:]}",
        f"IBAN {bad_iban} / {spaced(bad_iban)}",
        f"ΑΦΜ {bad_afm}",
        f"ΑΜΚΑ {bad_amka}",
        "SSN 000-12-3456, 666-12-3456, 912-12-3456, 123-00-4567, 123-45-0000",
        "host 256.1.1.1 and 192.168.1.256 and 1.2.3",
        "ΑΜΚΑ 3102851234" + luhn_check_digit("3102851234"),
    ]
    for text in texts:
        assert kinds(text) == [], (text, kinds(text))


def test_afm_and_amka_need_context(rng: random.Random) -> None:
    afm, amka = make_afm(rng), make_amka(rng)
    assert kinds(f"αριθμός {afm} και κωδικός {amka}") == []
    assert kinds(f"ΑΦΜ: {afm}") == [("gr_afm", afm)]
    assert kinds(f"VAT EL{afm}") == [("gr_afm", f"EL{afm}")]
    assert kinds(f"Tax ID {afm}") == [("gr_afm", afm)]
    assert kinds(f"AMKA {amka}") == [("gr_amka", amka)]
    assert kinds(f"Αριθμός Μητρώου Κοινωνικής Ασφάλισης {amka}") == [("gr_amka", amka)]


def test_cards_with_separators_and_lengths(rng: random.Random) -> None:
    visa16 = make_card(rng, "4", 16)
    amex = make_card(rng, "37", 15)
    visa13 = make_card(rng, "4", 13)
    maestro12 = make_card(rng, "50", 12)
    assert kinds(f"pay with {visa16[:4]}-{visa16[4:8]}-{visa16[8:12]}-{visa16[12:]}") == [
        ("credit_card", f"{visa16[:4]}-{visa16[4:8]}-{visa16[8:12]}-{visa16[12:]}")
    ]
    assert kinds(f"amex {amex[:4]} {amex[4:10]} {amex[10:]}") == [
        ("credit_card", f"{amex[:4]} {amex[4:10]} {amex[10:]}")
    ]
    assert kinds(f"no {visa13} here") == []  # 13 digits bare: a card only with a card word near
    assert kinds(f"my card {visa13}") == [("credit_card", visa13)]
    assert kinds(f"card number {maestro12}") == [("credit_card", maestro12)]
    assert kinds(f"number {maestro12}") == []


def test_ssn_dashed_and_spaced() -> None:
    assert kinds("SSN: 123-45-6789") == [("us_ssn", "123-45-6789")]
    assert kinds("ssn 123 45 6789") == [("us_ssn", "123 45 6789")]
    assert kinds("social security number 123456789") == [("us_ssn", "123456789")]


def test_ip_addresses() -> None:
    assert kinds("from 8.8.8.8 and 2001:db8:85a3::8a2e:370:7334.") == [
        ("ip_address", "2001:db8:85a3::8a2e:370:7334"),
        ("ip_address", "8.8.8.8"),
    ]
    assert kinds("link-local fe80::1ff:fe23:4567:890a%eth0") == [("ip_address", "fe80::1ff:fe23:4567:890a")]
    assert kinds("MAC 00:1A:2B:3C:4D:5E is not an address") == []


def test_emails() -> None:
    assert kinds("<john.o'neil+news@mail.example.co.uk>") == [("email", "john.o'neil+news@mail.example.co.uk")]
    assert kinds("user@localhost and @handle and a@b") == []
    assert kinds("γράψτε στο info@υπουργείο.gr") == [("email", "info@υπουργείο.gr")]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # neighbours in one run of digits and separators are still told apart
        ("GR1601101250000000012300695 GR1601101250000000012300695",
         [("iban", "GR1601101250000000012300695"), ("iban", "GR1601101250000000012300695")]),
        ("ΑΦΜ 094014201 123-45-6789", [("gr_afm", "094014201"), ("us_ssn", "123-45-6789")]),
        ("ΑΜΚΑ 01018512341) 1. Όποιος", [("gr_amka", "01018512341")]),
        ("5. 696 016 4389 Κατά τα λοιπά", [("phone", "696 016 4389")]),
        ("2008 6011 0000 0000 0004 von", [("credit_card", "6011 0000 0000 0004")]),
        ("+30 694 123 4567 4111111111111111", [("credit_card", "4111111111111111"), ("phone", "+30 694 123 4567")]),
        ("(250.000) ευρώ 123-45-6789", [("us_ssn", "123-45-6789")]),
        ("DE63 6735 9271 7523 9655 12 is a broken IBAN", []),  # not a card either
        ("C++. 258-11-0061", [("us_ssn", "258-11-0061")]),
    ],
)  # fmt: skip
def test_adjacent_numbers(text: str, expected: list[tuple[str, str]]) -> None:
    assert kinds(text) == sorted(expected)


def test_offsets_are_code_points() -> None:
    text = "Ελληνικό κείμενο, email: ελένη@example.gr"
    [(kind, start, end, _, _)] = detect_structured(text)
    assert (kind, text[start:end]) == ("email", "ελένη@example.gr")


def test_greek_laws_have_no_structured_pii() -> None:
    """55 number-heavy laws: law numbers, dates, amounts, budget codes; none of them is PII."""
    found = Counter()
    for path in sorted(GREEK_LAWS.glob("n*.txt")):
        found.update(kind for kind, *_ in detect_structured(path.read_text(encoding="utf-8")))
    assert found == Counter()


PRESIDIO_TYPES = {
    "CREDIT_CARD": "credit_card",
    "EMAIL_ADDRESS": "email",
    "IBAN_CODE": "iban",
    "US_SSN": "us_ssn",
    "IP_ADDRESS": "ip_address",
    "PHONE_NUMBER": "phone",
}


def test_recall_on_presidio_synth() -> None:
    """Recall per structured type on presidio-research's synthetic set (span overlap counts as found).

    Known misses, by design: a 12-digit "card" starting 06 (no card network issues that prefix) and a bare
    7-digit local number after "my registered" (no phone word; flagging every 7-digit run would flag amounts).
    """
    records = json.loads(PRESIDIO_SYNTH.read_text(encoding="utf-8"))
    found, total, predicted, false_pos = Counter(), Counter(), Counter(), Counter()
    misses: list[str] = []
    for record in records:
        text = record["full_text"]
        detections = detect_structured(text)
        labels = [
            (PRESIDIO_TYPES[s["entity_type"]], s["start_position"], s["end_position"])
            for s in record["spans"]
            if s["entity_type"] in PRESIDIO_TYPES
        ]
        for kind, start, end in labels:
            total[kind] += 1
            if any(k == kind and s < end and e > start for k, s, e, _, _ in detections):
                found[kind] += 1
            else:
                misses.append(f"{kind}: {text[max(0, start - 30) : end + 5]!r}")
        for kind, start, end, _, _ in detections:
            predicted[kind] += 1
            if not any(k == kind and s < end and e > start for k, s, e in labels):
                false_pos[kind] += 1
    print()
    for kind in PRESIDIO_TYPES.values():
        recall = found[kind] / total[kind]
        precision = (predicted[kind] - false_pos[kind]) / max(predicted[kind], 1)
        print(f"{kind:12s} recall {found[kind]:3d}/{total[kind]:3d} = {recall:.3f}  precision {precision:.3f}")
        assert recall >= 0.95, kind
        assert precision >= 0.95, kind
    print("misses:", *misses, sep="\n  ")
    assert len(misses) <= 3


# ------------------------------------------------------------------------------------------------ names


def names(text: str, kinds: tuple[str, ...] = ("person", "location")) -> list[tuple[str, str]]:
    return sorted((h.kind, text[h.start : h.end]) for h in scan_text(text, kinds))


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Ο Γιώργος Παπαδόπουλος υπέγραψε.", [("person", "Γιώργος Παπαδόπουλος")]),
        (
            "Οι Υπουργοί\nΚΩΝΣΤΑΝΤΙΝΟΣ ΣΚΡΕΚΑΣ\tΜΑΡΙΑ ΜΙΧΑΗΛΙΔΟΥ\n",
            [("person", "ΚΩΝΣΤΑΝΤΙΝΟΣ ΣΚΡΕΚΑΣ"), ("person", "ΜΑΡΙΑ ΜΙΧΑΗΛΙΔΟΥ")],
        ),
        ("Letter from Valentine S. Yermakov and Julieta Souza Almeida.", [("person", "Julieta Souza Almeida")]),
        ("Ask Dr. Garðar Matthíasson or Mrs Jones.", [("person", "Garðar Matthíasson"), ("person", "Jones")]),
        ("Ενημερώθηκε ο κ. Παπαδόπουλος.", [("person", "Παπαδόπουλος")]),
        ("Nicole Mahler signed.", [("person", "Nicole Mahler")]),
    ],
)
def test_person_names(text: str, expected: list[tuple[str, str]]) -> None:
    assert names(text, ("person",)) == expected


@pytest.mark.parametrize(
    "text",
    [
        "Will you come in May?",
        "Grace is a virtue.",
        "In May King Charles spoke.",  # two common words are not a name
        "Mark the date.",
        "Ο Δήμος Θεσσαλονίκης και ο δήμος Αθηναίων.",  # "Δήμος" is a name but the text uses "δήμος" as a noun
        "Η Επιτροπή Διαπραγμάτευσης Τιμών Φαρμάκων.",  # "Τιμών" (of prices) is not "Τίμων"
    ],
)
def test_common_words_are_not_names(text: str) -> None:
    assert names(text, ("person",)) == []


def test_locations_and_streets() -> None:
    assert ("location", "Θεσσαλονίκη") in names("Η έδρα είναι στη Θεσσαλονίκη.")
    assert ("location", "Via Roma 131") in names("Abita in Via Roma 131, Milano.")
    assert ("location", "24 Clarke Avenue") in names("Send it to 24 Clarke Avenue please.")
    assert ("location", "Friedhofstrasse 33") in names("Wohnt in der Friedhofstrasse 33.")
    assert ("location", "Λεωφόρος Συγγρού 12") in names("Γραφεία: Λεωφόρος Συγγρού 12, Αθήνα.")


def test_ner_backend_hook_is_optional_and_merged() -> None:
    assert presidio_backend("en", "no_such_spacy_model") is None

    class FakeNer:
        name = "fake"

        def analyze(self, text: str, kinds: frozenset[str]) -> list[tuple[str, int, int, str, float]]:
            start = text.index("Zyx")
            return [("person", start, start + 3, "fake", 0.9)] if "person" in kinds else []

    hits = scan_text("Meet Zyx tomorrow.", ["person"], ner=FakeNer())
    assert [(h.kind, h.recognizer) for h in hits] == [("person", "fake")]


def test_name_dictionaries_on_presidio_synth() -> None:
    """Dictionary names are precise but miss single names by design and names from locales Faker lacks here."""
    records = json.loads(PRESIDIO_SYNTH.read_text(encoding="utf-8"))
    predicted = correct = multi_total = multi_found = 0
    for record in records:
        text = record["full_text"]
        hits = [(h.start, h.end) for h in scan_text(text, ["person"])]
        gold = [(s["start_position"], s["end_position"], s["entity_value"]) for s in record["spans"]
                if s["entity_type"] == "PERSON"]  # fmt: skip
        predicted += len(hits)
        correct += sum(any(a < e and b > s for a, b, _ in gold) for s, e in hits)
        for a, b, value in gold:
            if len(value.split()) >= 2 and value[0].isupper():
                multi_total += 1
                multi_found += any(s < b and e > a for s, e in hits)
    precision, recall = correct / predicted, multi_found / multi_total
    print(f"\nperson precision {correct}/{predicted} = {precision:.3f}; "
          f"recall on 'First Last' labels {multi_found}/{multi_total} = {recall:.3f}")  # fmt: skip
    assert precision >= 0.9
    assert recall >= 0.5


def test_name_prefilters_cover_every_key_a_rule_starts_from() -> None:
    """detect_names passes over a capitalised word after one or two set lookups: those sets must hold every
    key the person and location rules start from, or a name or street would be missed."""
    from llm_assets.curation.pii.names import TITLES, dictionaries, normalize_key

    d = dictionaries()
    assert {normalize_key(title) for title in TITLES} <= d.title_keys
    assert d.street_words | d.street_prefixes | d.streets | d.places | set(d.multi_places) <= d.location_keys
    assert all(suffix[-2:] in d.suffix_tails for suffix in d.street_suffixes)
    found = scan_text("Dr Smith lives at 24 Clarke Avenue near Hauptstraße 5 in Thessaloniki.", ["person", "location"])
    assert {h.kind for h in found} == {"person", "location"}


# Every character the cluster, IBAN and IPv6 patterns tell apart (U+00A0 the only non-ASCII one), plus others.
SCAN_ALPHABET = [
    *"0123456789+().- \t\u00a0AbZxΩ,/:@_",
    "\u00a0\u00a0",
    "  ",
    "DE",
    "GR16",
    "1234567",
    "::",
    "fe80",
    "2001:db8:",
    ":0:",
    "DEAD:beef",
]


def _regex_scan(text: str) -> tuple[list[tuple[int, int]], list[tuple[int, int]], list[tuple[int, int]]]:
    from llm_assets.curation.pii import detectors

    clusters = [m.span() for m in detectors._CLUSTER.finditer(text) if detectors._numeric_candidate(m.group())]
    ibans = sorted({m.span() for p in range(len(text) + 1) if (m := detectors._IBAN.search(text, p))})
    ipv6 = [
        (hint.start(), run.end())
        for run in re.finditer(r"[0-9A-Fa-f:.]+", text)
        if (hint := detectors._IPV6_HINT.search(text, run.start(), run.end()))
        and re.search("[0-9]", run.group())
        and ("::" in run.group() or run.group().count(":") >= 6)
    ]
    return clusters, ibans, ipv6


# IBAN-shaped runs at the pattern's bounds: 10 and 11 letters or digits after "GR16", 30 and 31, with spaces.
IBAN_BOUNDS = ["GR16" + "7" * 10, "GR16" + "7" * 11, "x GR16 0110 125" + "0" * 4, "GR16" + "1" * 30, "GR16" + "1" * 31]


@settings(max_examples=400, deadline=None)
@example(texts=IBAN_BOUNDS)
@example(texts=["GR16 " + " ".join("0123456789" * 3), "DE89 3704 0044 0532 0130 00 and 12 345 678"])
@example(texts=["host fe80::1 and 2001:db8::8a2e:370:7334, Foo::Bar, a:b:c, 1.:.:., x::=y", "::1", "1::", ":a:1"])
@example(texts=["1:2:3:4:5:6:1.2.3.4 at 12:30:45", "1:2:3:4:5:6:7:8", "fe80::.:1", "::.1", ":.::1"])
@example(texts=["pi 3.14159265, 12345.678901, 1234567.1, 1.1234567, EL123456.7 a123.4567 (12.3456789 x1.234567y"])
@example(texts=["GR16 0110 1250 0000 0001 2300 695.123456 and 2024.5 and 0.000001 and 123456.1234567"])
@example(texts=["tel. 2345678.5x", "ab5.2345678 fax", "call 6945123456.5x now", "EL094014201.5"])  # 7-digit groups
@given(
    texts=st.lists(
        st.lists(st.sampled_from(SCAN_ALPHABET), max_size=60).map("".join) | st.text(max_size=40) | st.none(),
        max_size=6,
    )
)
def test_compiled_prescan_finds_what_the_regexes_find(texts: list[str | None]) -> None:
    """The batch scan gives the numeric-cluster matches `finditer` gives (less those too short for any
    identifier), every IBAN match start and the IPv6 candidate runs, in code points, and detections with it
    equal detections without it, and without leaving out the short clusters."""
    from llm_assets.curation.pii import detectors

    scanned = detectors.prescan(texts)
    for text, found in zip(texts, scanned, strict=True):
        assert found == _regex_scan(text or "")
        if text:
            detections = sorted(detect_structured(text, prescanned=found))
            assert detections == sorted(detect_structured(text))
            with pytest.MonkeyPatch.context() as patch:
                patch.setattr(detectors, "_numeric_candidate", lambda cluster: True)
                assert detections == sorted(detect_structured(text))
