"""Structured PII detectors: e-mail, phone, payment card, IBAN, US SSN, IP address, Greek AFM and AMKA.

Built for throughput on number-heavy text (Greek legislation): each text is scanned by four cheap regexes, each
starting on a literal or a character class so the regex engine skips ahead in C: '@' for e-mail, ':' for IPv6,
"two letters + digit" for IBAN, and one "numeric cluster" regex (digits joined by space . - ( ) of at least
7 characters) for everything numeric. Only the few candidates are classified in Python, and each kind is
confirmed by its checksum (Luhn, mod-97, AFM, AMKA date + Luhn) or by its format plus the words around it, so
dates, amounts, law numbers ("ν. 4624/2019"), ISBNs and version strings survive.

A detection is a plain tuple `(kind, start, end, recognizer, score)` with code-point offsets into the text.
"""

from __future__ import annotations

import bisect
import functools
import ipaddress
import itertools
import re
from collections.abc import Collection, Sequence
from datetime import date
from typing import Final

import numpy as np
import pyarrow as pa

Detection = tuple[str, int, int, str, float]

STRUCTURED_KINDS: Final[tuple[str, ...]] = (
    "email",
    "phone",
    "credit_card",
    "iban",
    "us_ssn",
    "ip_address",
    "gr_afm",
    "gr_amka",
)
_NUMERIC_KINDS: Final = frozenset({"phone", "credit_card", "us_ssn", "ip_address", "gr_afm", "gr_amka"})

# ---------------------------------------------------------------------------------------------- validators

_LUHN_DOUBLE: Final = (0, 2, 4, 6, 8, 1, 3, 5, 7, 9)


def luhn_valid(digits: str) -> bool:
    """Luhn (mod 10) check over a string of ASCII digits."""
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = ord(ch) - 48
        total += _LUHN_DOUBLE[d] if i & 1 else d
    return total % 10 == 0


# Issuer prefixes of the card networks (Visa, Mastercard incl. 2-series, Amex, Diners, Discover, JCB incl.
# 1800/2131, Maestro, UnionPay, Mir, RuPay). Luhn alone accepts one random number in ten.
_CARD_PREFIX = re.compile(r"4|5|6|3[0-9]|2(?:131|2[0-9]|[3-6][0-9]|7[0-2])|1800|8[12]")


def card_valid(digits: str) -> bool:
    return 12 <= len(digits) <= 19 and _CARD_PREFIX.match(digits) is not None and luhn_valid(digits)


# IBAN length per country (SWIFT IBAN registry; every EU/EEA state and the common others).
IBAN_LENGTHS: Final[dict[str, int]] = {
    "AD": 24, "AE": 23, "AL": 28, "AT": 20, "AZ": 28, "BA": 20, "BE": 16, "BG": 22, "BH": 22, "BR": 29,
    "BY": 28, "CH": 21, "CR": 22, "CY": 28, "CZ": 24, "DE": 22, "DK": 18, "DO": 28, "EE": 20, "EG": 29,
    "ES": 24, "FI": 18, "FO": 18, "FR": 27, "GB": 22, "GE": 22, "GI": 23, "GL": 18, "GR": 27, "GT": 28,
    "HR": 21, "HU": 28, "IE": 22, "IL": 23, "IQ": 23, "IS": 26, "IT": 27, "JO": 30, "KW": 30, "KZ": 20,
    "LB": 28, "LC": 32, "LI": 21, "LT": 20, "LU": 20, "LV": 21, "MC": 27, "MD": 24, "ME": 22, "MK": 19,
    "MR": 27, "MT": 31, "MU": 30, "NL": 18, "NO": 15, "PK": 24, "PL": 28, "PS": 29, "PT": 25, "QA": 29,
    "RO": 24, "RS": 22, "SA": 24, "SC": 31, "SE": 24, "SI": 19, "SK": 24, "SM": 27, "ST": 25, "SV": 28,
    "TL": 23, "TN": 24, "TR": 26, "UA": 29, "VA": 22, "VG": 24, "XK": 20,
}  # fmt: skip


def iban_valid(iban: str) -> bool:
    """Country length and ISO 7064 mod-97 check; spaces allowed, case-insensitive."""
    compact = iban.replace(" ", "").upper()
    if IBAN_LENGTHS.get(compact[:2]) != len(compact) or not compact.isalnum() or not compact[2:4].isdigit():
        return False
    rearranged = compact[4:] + compact[:4]
    return int("".join(str(int(ch, 36)) for ch in rearranged)) % 97 == 1


def afm_valid(digits: str) -> bool:
    """Greek tax number: 9 digits, sum(d_i * 2^(8-i), i=0..7) mod 11 mod 10 == d_8; all-zero is not issued."""
    if len(digits) != 9 or not digits.isdigit() or digits == "000000000":
        return False
    total = sum(int(digits[i]) << (8 - i) for i in range(8))
    return total % 11 % 10 == int(digits[8])


def amka_valid(digits: str) -> bool:
    """Greek social-security number: 11 digits, DDMMYY birth date first, Luhn over all 11."""
    if len(digits) != 11 or not digits.isdigit():
        return False
    day, month, year = int(digits[:2]), int(digits[2:4]), int(digits[4:6])
    if not _valid_date(1900 + year, month, day) and not _valid_date(2000 + year, month, day):
        return False
    return luhn_valid(digits)


def ssn_valid(area: str, group: str, serial: str) -> bool:
    """US SSN: area not 000, 666 or 9xx; group not 00; serial not 0000."""
    return area not in ("000", "666") and area[0] != "9" and group != "00" and serial != "0000"


def _valid_date(year: int, month: int, day: int) -> bool:
    try:
        date(year, month, day)
    except ValueError:
        return False
    return True


# ---------------------------------------------------------------------------------------------- candidates

_EMAIL_DOMAIN = re.compile(
    r"(?:[^\W_](?:[\w-]{0,61}[^\W_])?\.){1,8}(?:[^\W\d_]{2,24}|xn--[a-z0-9-]{1,59})(?![\w-])",
)
_EMAIL_LOCAL_REVERSED = re.compile(r"[\w!#$%&'*+/=?^`{|}~.-]{1,64}")

_IBAN = re.compile(r"[0-9](?<=[A-Za-z]{2}[0-9])[0-9](?: ?[A-Za-z0-9]){11,30}")

_IPV6_HINT = re.compile(r":[0-9A-Fa-f:]")
_IPV6_CHARS = re.compile(r"[0-9A-Fa-f:.]+")  # forward from the colon, and over the reversed text before it

# Digits joined by single-line separators; >= 7 characters so "Άρθρο 5" and "4624/2019" never reach Python.
_CLUSTER = re.compile(r"[+(0-9](?:[0-9.()-]|[ \t\u00a0](?![ \t\u00a0])){5,}[0-9]")

_STRONG = re.compile(
    r"(?P<ip>(?<![0-9.])(?:(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])\.){3}"
    r"(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])(?![0-9]|\.[0-9]))"
    r"|(?P<ssn>(?<![0-9-])(?P<area>[0-9]{3})-(?P<group>[0-9]{2})-(?P<serial>[0-9]{4})(?![0-9]|-[0-9])"
    r"|(?<![0-9])(?<![0-9][ .-])(?P<sarea>[0-9]{3}) (?P<sgroup>[0-9]{2}) (?P<sserial>[0-9]{4})(?![0-9]|[ .-][0-9]))"
    r"|(?P<card>(?<![0-9+])(?:[0-9]{4}(?P<csep>[ -])[0-9]{4}(?P=csep)[0-9]{4}(?P=csep)[0-9]{1,4}"
    r"(?:(?P=csep)[0-9]{1,3})?|[0-9]{4}[ -][0-9]{6}[ -][0-9]{4,5}|[0-9]{13,19})(?![0-9]))"
)
_DATE_PREFIX = re.compile(r"\(?([0-9]{1,4})([./-])([0-9]{1,2})\2([0-9]{4}|[0-9]{2})(?![0-9])")
# NNN-NNN-NNNN / NNN.NNN.NNNN (one separator throughout, so "252.227-7013" clause numbers stay) / (NNN) NNN-NNNN
_US_PHONE = re.compile(r"(?:\+?1[ .-]?)?(?:\([2-9][0-9]{2}\) ?|[2-9][0-9]{2}([.-]))[0-9]{3}(?(1)\1|[.-])[0-9]{4}")
_EXTENSION = re.compile(r" ?(?:x|ext\.?|#) ?[0-9]{1,6}(?![0-9A-Za-z])", re.IGNORECASE)
_SSN_SHAPE = re.compile(r"[0-9]{3}-[0-9]{2}-[0-9]{4}")
_INTERNATIONAL_START = re.compile(r"\+\(?[1-9]")
_LIST_NUMBER = re.compile(r"\(?[0-9]{1,4}[.)]{1,2}[ \t\u00a0]")
_DROP_SEPARATORS: Final = str.maketrans("", "", " \t.()\u00a0-+")
_MIN_DIGITS: Final = 7  # every numeric kind has 7+ digits except dotted IPv4 (`_scan_kernels.MIN_DIGITS` too)
_CIDR_SUFFIX = re.compile(r"/[0-9]{1,2}(?![0-9/])")
_SEPARATORS = re.compile(r"[ \t.()\u00a0-]+")
_AMOUNT_GROUPS = re.compile(r"[0-9]{1,3}(?:([ .\u00a0])[0-9]{3})(?:\1[0-9]{3})*")

# Two-digit E.164 country codes; 1 and 7 are one digit, everything else is three.
_CC2: Final = frozenset(
    {"20", "27", "30", "31", "32", "33", "34", "36", "39", "40", "41", "43", "44", "45", "46", "47", "48", "49",
     "51", "52", "53", "54", "55", "56", "57", "58", "60", "61", "62", "63", "64", "65", "66", "81", "82", "84",
     "86", "90", "91", "92", "93", "94", "95", "98"}
)  # fmt: skip
# How Greek 10-digit numbers are written: "210 1234567", "2310 123456", "27410 12345", "694 123 4567", ...
_GREEK_GROUPINGS: Final = frozenset({(3, 7), (4, 6), (5, 5), (3, 3, 4), (2, 4, 4), (4, 3, 3), (3, 4, 3), (2, 8)})
# National significant number lengths where they are fixed or well known; others: 6..12.
_NSN_LENGTHS: Final[dict[str, tuple[int, int]]] = {
    "1": (10, 10), "30": (10, 10), "44": (9, 10), "49": (6, 13), "33": (9, 9), "39": (6, 11), "34": (9, 9),
    "41": (9, 9), "43": (4, 13), "31": (9, 9), "32": (8, 9), "351": (9, 9), "353": (7, 9), "46": (7, 10),
    "45": (8, 8), "47": (8, 8), "358": (5, 12), "48": (9, 9), "420": (9, 9), "36": (8, 9), "40": (9, 9),
    "357": (8, 8), "359": (7, 9), "385": (8, 9), "386": (8, 8), "421": (9, 9), "370": (8, 8), "371": (8, 8),
    "372": (7, 8), "352": (4, 11), "356": (8, 8), "61": (9, 9), "7": (10, 10),
}  # fmt: skip

# Words that make a bare number a phone number when they precede it ("Phone:", "τηλ.", "call me on") or follow
# it ("... office", "... fax"). The "before" pattern runs on the reversed window, anchored at the number, so each
# check is one anchored match instead of a search over the window.
_PHONE_WORDS = (
    "phone telephone tel tlf tfno mobile mob cell cellphone fax desk call calling answering sms whatsapp "
    "viber dial message messages contact hotline τηλ τηλέφωνο τηλέφωνα τηλεφώνου κινητό κιν "
    "φαξ τηλεομοιοτυπία "
    "telefon handy mobil tél téléphone portable telefono cellulare teléfono móvil telemóvel telefoon"
)
_PHONE_FILLERS = "number no nr num is at on me us to my our his her αριθμός αρ στο επικοινωνίας nummer numéro"


def _reversed_words(words: str) -> str:
    return "|".join(re.escape(w[::-1]) for w in sorted(words.split(), key=len, reverse=True))


_PHONE_BEFORE_REVERSED = re.compile(
    rf"(?:[\s:.#=()\-]|\b(?:{_reversed_words(_PHONE_FILLERS)})\b){{0,24}}(?:{_reversed_words(_PHONE_WORDS)})\b(?!\[)",
    re.IGNORECASE,
)
_PHONE_AFTER = re.compile(r"[ \t]?[-(]?(?:office|fax|mobile|cell)\b", re.IGNORECASE)
# Every context pattern starts with (?<![\[_\w]) so that placeholders ("[SSN]", "[CREDIT_CARD]") left by an earlier
# redaction never turn a nearby number into PII on a rescan.
_AFM_CONTEXT = re.compile(
    r"(?<![\[_\w])(?:α\.?\s?φ\.?\s?μ|afm\b|a\.f\.m|vat\b|tin\b|tax\s*(?:id|identification|number|no|code)|"
    r"φορολογικ\w*\s+μητρώου|αριθμ\w*\s+φορολογικού|steuernummer|steuer-?id|n°\s*tva|partita\s+iva|nif\b)",
    re.IGNORECASE,
)
_AMKA_CONTEXT = re.compile(
    r"(?<![\[_\w])(?:α\.?\s?μ\.?\s?κ\.?\s?α|amka\b|a\.m\.k\.a|social\s+security|κοινωνικής\s+ασφάλισης|κοινωνικης\s+ασφαλισης|"
    r"ασφαλισμέν\w*|μητρώου\s+κοινωνικής)",
    re.IGNORECASE,
)
_SSN_CONTEXT = re.compile(r"(?<![\[_\w])(?:ssn\b|social\s+security|soc\.?\s*sec)", re.IGNORECASE)
_CARD_CONTEXT = re.compile(
    r"(?<![\[_\w])(?:card|cc\b|visa|mastercard|maestro|amex|κάρτα|κάρτας|karte|carte|tarjeta|carta)", re.IGNORECASE
)
_VERSION_BEFORE = re.compile(
    r"(?:\b(?:v|ver|έκδ)\.?|\b(?:version|since|release|build|firmware|kernel|dpkg|python|perl|linux|έκδοση|versión|"
    r"versione))\s*$",
    re.IGNORECASE,
)
_NOT_PII_BEFORE = re.compile(
    r"(?<![^\W\d_])(?:isbn(?:-1[03])?|issn|doi|ΦΕΚ|ΑΔΑ|ΚΑΕΚ|Α\.?Λ\.?Ε\.?|ΚΑΕ)[\s:'’Α-Ω.]{0,6}$|(?:€|\beur|\$|£)\s*$",
    re.IGNORECASE,
)

_CONTEXT_WINDOW = 48


# What `_CLUSTER` and `_IBAN` match in one text, and its IPv6 candidates (first hint's colon, end of its run),
# found by the compiled batch scan (`prescan`): (start, end) pairs in code points, in order.
Prescanned = tuple[list[tuple[int, int]], list[tuple[int, int]], list[tuple[int, int]]]
_NOTHING: Final[Prescanned] = ([], [], [])


@functools.cache
def _ascii_classes() -> np.ndarray:
    from llm_assets.curation.pii import _scan_kernels

    return _scan_kernels.ascii_classes()


def prescan(texts: Sequence[str | None] | pa.Array | pa.ChunkedArray) -> list[Prescanned]:
    """Per text, the matches of the numeric-cluster and IBAN regexes and the IPv6 candidates, from one compiled
    pass over the batch's UTF-8 (Python's regex engine tries the first two at every digit, most of the
    structured scan's time on number-heavy text). Pass each as `detect_structured(..., prescanned=...)`: the
    detections are the same."""
    from llm_assets.curation.pii import _scan_kernels

    if not isinstance(texts, pa.Array | pa.ChunkedArray):
        texts = pa.array(texts, type=pa.large_string())
    array = texts.combine_chunks() if isinstance(texts, pa.ChunkedArray) else texts
    if not pa.types.is_large_string(array.type):
        array = array.cast(pa.large_string())
    n = len(array)
    offsets = np.frombuffer(array.buffers()[1], dtype=np.int64)[array.offset : array.offset + n + 1]
    buffer = array.buffers()[2]
    data = np.frombuffer(buffer, dtype=np.uint8) if buffer is not None else np.zeros(1, dtype=np.uint8)
    clusters, ibans, ipv6 = _scan_kernels.scan(data, offsets, _ascii_classes())
    by_cluster, by_iban, by_ipv6 = _spans_by_doc(clusters), _spans_by_doc(ibans), _spans_by_doc(ipv6)
    result: list[Prescanned] = [_NOTHING] * n
    for doc in by_cluster.keys() | by_iban.keys() | by_ipv6.keys():
        result[doc] = (by_cluster.get(doc, []), by_iban.get(doc, []), by_ipv6.get(doc, []))
    return result


def _spans_by_doc(rows: np.ndarray) -> dict[int, list[tuple[int, int]]]:
    """(doc, start, end) rows, sorted by doc, as each doc's list of (start, end)."""
    spans = list(zip(rows[:, 1].tolist(), rows[:, 2].tolist(), strict=True))
    cuts = [0, *(np.flatnonzero(rows[1:, 0] != rows[:-1, 0]) + 1).tolist(), len(spans)]
    docs = rows[:, 0].tolist()
    return {docs[lo]: spans[lo:hi] for lo, hi in itertools.pairwise(cuts) if hi > lo}


def detect_structured(
    text: str, kinds: Collection[str] = STRUCTURED_KINDS, *, prescanned: Prescanned | None = None
) -> list[Detection]:
    """All structured detections of `kinds` in `text`, possibly overlapping across kinds, in no set order.
    `prescanned` (this text's entry of `prescan`) replaces the cluster, IBAN and IPv6 scans; same result."""
    want = frozenset(kinds)
    clusters, ibans, ipv6 = prescanned if prescanned is not None else (None, None, None)
    found: list[Detection] = []
    if "email" in want and "@" in text:
        _find_emails(text, found)
    # IBAN-shaped tokens, valid or not, are masked from the numeric pass: "DE63 6735 9271 7523 9655 12" with a
    # broken check digit is not a card number either.
    iban_shapes: list[tuple[int, int]] = []
    if "iban" in want or want & _NUMERIC_KINDS:
        _find_ibans(text, found if "iban" in want else [], iban_shapes, ibans)
    if "ip_address" in want and ":" in text:
        _find_ipv6(text, found, ipv6)
    if want & _NUMERIC_KINDS:
        _find_numeric(text, want, found, iban_shapes, clusters)
    return found


def _find_emails(text: str, found: list[Detection]) -> None:
    at = text.find("@")
    while at != -1:
        domain = _EMAIL_DOMAIN.match(text, at + 1)
        if domain is not None and at > 0:
            local = _EMAIL_LOCAL_REVERSED.match(text[at - 1 : max(0, at - 65) or None : -1])
            if local is not None:
                start = at - len(local.group())
                while start < at and text[start] in ".-":
                    start += 1
                if start < at and text[at - 1] != ".":
                    found.append(("email", start, domain.end(), "email_format", 0.95))
        at = text.find("@", at + 1)


def _iban_search(text: str, resume: int, matches: list[tuple[int, int]] | None) -> tuple[int, int] | None:
    """`_IBAN.search(text, resume).span()`, or the first of `matches` (every start where it matches) from
    `resume` on."""
    if matches is None:
        m = _IBAN.search(text, resume)
        return None if m is None else m.span()
    k = bisect.bisect_left(matches, (resume, -1))
    return matches[k] if k < len(matches) else None


def _find_ibans(
    text: str, found: list[Detection], shapes: list[tuple[int, int]], matches: list[tuple[int, int]] | None = None
) -> None:
    resume = 0
    while (span := _iban_search(text, resume, matches)) is not None:
        m_start, m_end = span
        # the regex may run on into a following IBAN; the next search resumes where this one really ends
        resume = m_start + 1
        start = m_start - 2
        if start > 0 and (text[start - 1].isalnum() or text[start - 1] == "_"):
            continue
        country = text[start : start + 2].upper()
        length = IBAN_LENGTHS.get(country)
        if length is None:
            continue
        # Walk `length` alphanumerics from the country code; a trailing word the regex swallowed is left out.
        count, pos, end = 0, start, m_end
        while pos < end and count < length:
            if text[pos] != " ":
                count += 1
            pos += 1
        if count != length or (pos < len(text) and (text[pos].isalnum() or text[pos] == "_")):
            shapes.append((start, m_end))
            continue
        shapes.append((start, pos))
        resume = pos
        if iban_valid(text[start:pos]):
            found.append(("iban", start, pos, "iban_mod97", 0.99))


def _ipv6_hints(text: str) -> list[tuple[int, int]]:
    """The first `_IPV6_HINT` of each maximal `[0-9A-Fa-f:.]` run: (its colon, the run's end). Later hints of
    a run would read the same run."""
    hints: list[tuple[int, int]] = []
    run_end = -1
    for m in _IPV6_HINT.finditer(text):
        colon = m.start()
        if colon >= run_end:
            run_end = _IPV6_CHARS.match(text, colon).end()  # type: ignore[union-attr]  # the colon is in it
            hints.append((colon, run_end))
    return hints


def _find_ipv6(text: str, found: list[Detection], hints: list[tuple[int, int]] | None = None) -> None:
    """IPv6 addresses around `hints` (`_ipv6_hints`, or the candidates `prescan` kept of them)."""
    for colon, run_end in _ipv6_hints(text) if hints is None else hints:
        back = _IPV6_CHARS.match(text[colon - 1 : max(0, colon - 46) or None : -1]) if colon else None
        start = colon - (len(back.group()) if back else 0)
        end = run_end
        while end > start and text[end - 1] in ".:" and not text[start:end].endswith("::"):
            end -= 1
        while start < end and text[start] == ".":
            start += 1
        candidate = text[start:end]
        groups = [g for g in candidate.split(":") if g]
        # "::", "B::C" and BNF "::=" parse as addresses; real ones carry digits and several or long groups.
        if (
            candidate.count(":") < 2
            or not any(ch.isdigit() for ch in candidate)
            or not (len(groups) >= 3 or (len(groups) == 2 and max(len(g) for g in groups) == 4))
        ):
            continue
        if (start > 0 and (text[start - 1].isalnum() or text[start - 1] in "_:")) or (
            end < len(text) and (text[end].isalnum() or text[end] == "_")
        ):
            continue
        try:
            ipaddress.IPv6Address(candidate)
        except ValueError:
            continue
        found.append(("ip_address", start, end, "ipv6_parse", 0.95))


def _numeric_candidate(cluster: str) -> bool:
    """Whether a `_CLUSTER` match can hold an identifier: 7+ digits, or 3 dots (a dotted IPv4), and not a
    decimal whose two digit groups are both under 7 digits ("3.14159265", "12345.678901": a fifth of the
    clusters of technical prose). Trimming a cluster only removes characters, and `_find_numeric` classifies
    nothing with fewer digits, nor a decimal or what trimming leaves of one (a digit group or a shorter
    decimal), so the compiled prescan drops these before they reach Python; a test compares detections with
    and without the cut."""
    head, dot, tail = cluster.partition(".")
    if dot and head.isdigit() and tail.isdigit() and len(head) < _MIN_DIGITS and len(tail) < _MIN_DIGITS:
        return False
    return len(cluster.translate(_DROP_SEPARATORS)) >= _MIN_DIGITS or cluster.count(".") >= 3


def _find_numeric(
    text: str,
    want: frozenset[str],
    found: list[Detection],
    masked: list[tuple[int, int]],
    clusters: list[tuple[int, int]] | None = None,
) -> None:
    n = len(text)
    if clusters is None:
        clusters = [m.span() for m in _CLUSTER.finditer(text) if _numeric_candidate(m.group())]
    for start, end in clusters:
        cluster = text[start:end]
        if masked:
            covered = max((m_end for m_start, m_end in masked if m_start < end and start < m_end), default=start)
            if covered > start:
                # digits inside an IBAN-shaped token belong to it; what follows it is classified on its own
                cluster = text[covered:end].lstrip(" \t\u00a0.-")
                if len(cluster) < 7:
                    continue
                start = end - len(cluster)
        prev = text[start - 1] if start else " "
        nxt = text[end] if end < n else " "
        if (
            prev.isalpha()
            and "gr_afm" in want
            and text[start - 2 : start].upper() in ("EL", "GR")
            and not text[start - 3 : start - 2].isalnum()
            and cluster[:9].isdigit()
            and afm_valid(cluster[:9])
            and not text[start + 9 : start + 10].isalnum()
        ):
            found.append(("gr_afm", start - 2, start + 9, "afm_checksum_vat_prefix", 0.99))
            continue
        # A digit group glued to a word, a path or a decimal part is a code, not an identifier
        # ("ΚΑΕΚ 210675501030/0/0", "GR16...695"): drop that group and classify what is left.
        if prev.isalnum() or prev in "_/\\" or (prev in ",." and start > 1 and text[start - 2].isdigit()):
            first_gap = _SEPARATORS.search(cluster)
            if first_gap is None:
                continue
            start += first_gap.end()
            cluster = cluster[first_gap.end() :]
        cidr = nxt == "/" and cluster.count(".") == 3 and _CIDR_SUFFIX.match(text, end) is not None
        if (
            (nxt.isalnum() and _EXTENSION.match(text, end) is None)
            or (nxt in "/_" and not cidr)
            or (nxt in ",." and end + 1 < n and text[end + 1].isdigit())
        ):
            gaps = list(_SEPARATORS.finditer(cluster))
            if not gaps:
                continue
            end -= len(cluster) - gaps[-1].start()
            cluster = cluster[: gaps[-1].start()]
        if cluster[:1] == "(" and ")" not in cluster:
            cluster, start = cluster[1:], start + 1
        elif cluster[:1] == "+" and not _INTERNATIONAL_START.match(cluster):
            cluster = cluster[1:].lstrip(" \t\u00a0.-")  # "C++. 258-11-0061": the plus is not a dialling prefix
            start = end - len(cluster)
        digits = cluster.translate(_DROP_SEPARATORS)
        # Every numeric kind has 7+ digits except dotted IPv4 ("1.2.3.4"); "5.97756" is a decimal, not an id.
        dots = cluster.count(".")
        if (len(digits) < _MIN_DIGITS and dots != 3) or (dots == 1 and len(digits) == len(cluster) - 1):
            continue
        before = len(found)
        _classify_cluster(text, cluster, start, end, want, found)
        # "ISBN 978-...", "€ 1.234.567", "ΑΛΕ 2120207001": numbers named as something else are never PII
        if len(found) > before and _NOT_PII_BEFORE.search(text, max(0, start - 12), start) is not None:
            del found[before:]


def _classify_cluster(
    text: str, cluster: str, start: int, end: int, want: frozenset[str], found: list[Detection], retries: int = 2
) -> None:
    before = len(found)
    _classify_whole(text, cluster, start, end, want, found)
    if len(found) > before or not retries:
        return
    # "5. 696 016 4389": a list number before the id; "ΑΦΜ 123456789 1 του": a number of the sentence after it
    lead = _LIST_NUMBER.match(cluster)
    if lead is not None and len(cluster) - lead.end() >= 7:
        _classify_cluster(text, cluster[lead.end() :], start + lead.end(), end, want, found, 0)
        if len(found) > before:
            return
    cut = max(cluster.rfind(" "), cluster.rfind("\t"), cluster.rfind("\u00a0"))
    head = cluster[:cut].rstrip(" \t\u00a0.-()")
    # only an unspaced id keeps its meaning without the trailing group ("6011 9708 7344 4987" minus a group
    # would be a new, different number)
    if cut >= 7 and not any(ch in head for ch in " \t\u00a0"):
        _classify_cluster(text, head, start, start + len(head), want, found, retries - 1)


def _classify_whole(
    text: str, cluster: str, start: int, end: int, want: frozenset[str], found: list[Detection]
) -> None:
    if cluster[0] == "+":
        # "+30 694 123 4567 4111111111111111": the longest valid international prefix is the phone and the rest
        # is classified on its own.
        cut = _international_prefix(cluster) if "phone" in want else 0
        if cut == len(cluster):
            _classify_phone(text, cluster, start, end, found)
        elif cut:
            found.append(("phone", start, start + cut, "phone_international", 0.85))
            rest = cluster[cut:].lstrip(" \t.-\u00a0")
            if len(rest) >= 7:
                _classify_cluster(text, rest, end - len(rest), end, want, found)
        return
    before = len(found)
    if _classify_strong(text, cluster, start, want, found):
        # "ΑΦΜ 094014201 123-45-6789": what precedes or follows the strong hits is classified on its own
        first, last = found[before][1], found[-1][2]
        head = cluster[: first - start].rstrip(" \t\u00a0.-()")
        tail = cluster[last - start :].lstrip(" \t\u00a0.-()")
        if len(head) >= 7:
            _classify_cluster(text, head, start, start + len(head), want, found)
        if len(tail) >= 7:
            _classify_cluster(text, tail, end - len(tail), end, want, found)
        return
    if _classify_with_context(text, cluster, start, end, want, found):
        return
    if "phone" in want:
        _classify_phone(text, cluster, start, end, found)


def _international_prefix(cluster: str) -> int:
    """Length of the longest prefix of a '+' cluster, cut between digit groups, that is a valid number."""
    cuts = [m.start() for m in _SEPARATORS.finditer(cluster) if m.start() > 0] + [len(cluster)]
    for cut in reversed(cuts):
        prefix = cluster[:cut].rstrip("(")
        if _international_valid(prefix):
            return len(prefix)
    return 0


def _classify_strong(text: str, cluster: str, offset: int, want: frozenset[str], found: list[Detection]) -> bool:
    """IPv4, dashed/spaced SSN and card numbers: format + validator, no context needed. A candidate that fails its
    validator is retried one character later, so "2008 6011 0559 5224 3788" still yields the card after the year."""
    if cluster[0] == "+":
        return False
    hit = False
    pos = 0
    while (sm := _STRONG.search(cluster, pos)) is not None:
        start, end = offset + sm.start(), offset + sm.end()
        detection = _strong_detection(text, sm, start, end, want)
        if detection is None:
            pos = sm.start() + 1
            continue
        found.append(detection)
        hit = True
        pos = sm.end()
    return hit


def _strong_detection(text: str, sm: re.Match[str], start: int, end: int, want: frozenset[str]) -> Detection | None:
    if sm.group("ip") is not None:
        if "ip_address" in want and _VERSION_BEFORE.search(text, max(0, start - 16), start) is None:
            return ("ip_address", start, end, "ipv4_octets", 0.9)
        return None
    if sm.group("ssn") is not None:
        parts = sm.group("area", "group", "serial") if sm.group("area") else sm.group("sarea", "sgroup", "sserial")
        if "us_ssn" in want and ssn_valid(*parts):
            return ("us_ssn", start, end, "ssn_format", 0.85)
        return None
    if "credit_card" not in want:
        return None
    card = sm.group("card")
    digits = card.replace(" ", "").replace("-", "")
    if len(digits) < 13 or not card_valid(digits):
        return None
    # Unseparated 13-19 digit runs are also database ids; only the common 16-digit and Amex shapes count without a
    # "card" word nearby.
    if card.isdigit() and not (len(digits) == 16 or (len(digits) == 15 and digits[:2] in ("34", "37"))):
        if _CARD_CONTEXT.search(text, *_before(text, start)) is None:
            return None
        return ("credit_card", start, end, "card_luhn_context", 0.9)
    return ("credit_card", start, end, "card_luhn", 0.95)


def _date_like(cluster: str) -> bool:
    """Starts with a plausible date: YYYY-MM-DD, DD.MM.YYYY, MM/DD/YY (separators . / -)."""
    m = _DATE_PREFIX.match(cluster)
    if m is None:
        return False
    a, b, c = m.group(1), int(m.group(3)), m.group(4)
    if len(a) == 4:
        return 1 <= b <= 12 and 1 <= int(c) <= 31 and len(c) == 2
    if len(a) == 3:
        return False
    x = int(a)
    return 1 <= x <= 31 and 1 <= b <= 31 and (x <= 12 or b <= 12)


def _before(text: str, start: int) -> tuple[int, int]:
    return max(0, start - _CONTEXT_WINDOW), start


def _classify_with_context(
    text: str, cluster: str, start: int, end: int, want: frozenset[str], found: list[Detection]
) -> bool:
    """Bare digit runs that are identifiers only with a context word: AFM (9), SSN (9), AMKA (11), card (12)."""
    digits = cluster.replace(" ", "") if cluster.count(" ") <= 2 else cluster
    if not digits.isdigit():
        return False
    lo, hi = _before(text, start)
    after = text[end : end + 20]
    if len(digits) == 9:
        if (
            "gr_afm" in want
            and afm_valid(digits)
            and (_AFM_CONTEXT.search(text, lo, hi) or _AFM_CONTEXT.match(after.lstrip(" (")))
        ):
            found.append(("gr_afm", start, end, "afm_checksum_context", 0.95))
            return True
        if "us_ssn" in want and ssn_valid(digits[:3], digits[3:5], digits[5:]) and _SSN_CONTEXT.search(text, lo, hi):
            found.append(("us_ssn", start, end, "ssn_context", 0.8))
            return True
    elif len(digits) == 11:
        if (
            "gr_amka" in want
            and amka_valid(digits)
            and (_AMKA_CONTEXT.search(text, lo, hi) or _AMKA_CONTEXT.match(after.lstrip(" (")))
        ):
            found.append(("gr_amka", start, end, "amka_checksum_context", 0.97))
            return True
    elif len(digits) == 12 and "credit_card" in want and card_valid(digits) and _CARD_CONTEXT.search(text, lo, hi):
        found.append(("credit_card", start, end, "card_luhn_context", 0.85))
        return True
    return False


def _classify_phone(text: str, cluster: str, start: int, end: int, found: list[Detection]) -> None:
    recognizer = _phone_format(cluster)
    score = 0.85
    if recognizer is None:
        if (
            not 7 <= len(_SEPARATORS.sub("", cluster)) <= 15
            or _date_like(cluster)
            or cluster.count(".") >= 3
            or _SSN_SHAPE.fullmatch(cluster)
            or (_AMOUNT_GROUPS.fullmatch(cluster) and ("." in cluster or cluster.find(" ") == 1))
        ):
            return
        window = text[start - 1 : max(0, start - 33) or None : -1] if start else ""
        # both context words are letters: skip the regexes when no letter is next to the number
        letter_before = window.lstrip(" \t\n:.#=()-")[:1].isalpha()
        letter_after = text[end : end + 8].lstrip(" \t\n-(")[:1].isalpha()
        if not (letter_after and _PHONE_AFTER.match(text, end)) and not (
            letter_before and _PHONE_BEFORE_REVERSED.match(window)
        ):
            return
        recognizer, score = "phone_context", 0.6
    ext = _EXTENSION.match(text, end)
    if ext is not None:
        end = ext.end()
    found.append(("phone", start, end, recognizer, score))


def _phone_format(cluster: str) -> str | None:
    """A recognizer name when the cluster alone is a phone number: international, US, or a European national
    format (trunk 0, Greek 2x/69x, UK 07)."""
    if cluster[0] == "+" or (cluster.startswith("00") and len(cluster) > 4 and cluster[2:3].isdigit()):
        return "phone_international" if _international_valid(cluster) else None
    if _US_PHONE.fullmatch(cluster):
        return "phone_us"
    digits = _SEPARATORS.sub("", cluster)
    if not digits.isdigit() or _date_like(cluster):
        return None
    groups = _SEPARATORS.split(cluster.strip("()"))
    seps = {ch for ch in cluster if ch in " .-\t\u00a0"}
    if len(seps) > 1 or (len(groups) > 2 and _AMOUNT_GROUPS.fullmatch(cluster)):
        return None
    if (
        digits[0] == "0"
        and digits[1] != "0"
        and 9 <= len(digits) <= 12
        and (len(groups) > 2 or (len(groups) == 2 and len(digits) >= 10))
        and all(len(g) >= 2 for g in groups)
        and (len(groups) == 5 or any(len(g) > 2 for g in groups))  # digit pairs: the French 0X XX XX XX XX only
    ):
        return "phone_national"
    if len(digits) == 10 and (digits.startswith("69") or digits[0] == "2"):
        if len(groups) == 1:
            return "phone_gr" if digits.startswith("69") else None
        if tuple(len(g) for g in groups) in _GREEK_GROUPINGS:
            return "phone_gr"
    # UK mobiles 07xxx xxxxxx; bare ones only 077-079, as 070-075 + 6 digits is also a Greek AMKA (7 Oct 19xx...)
    if len(digits) == 11 and digits.startswith("07") and len(groups) <= 3 and (len(groups) > 1 or digits[2] in "789"):
        return "phone_uk"
    return None


def _international_valid(cluster: str) -> bool:
    body = cluster[1:] if cluster[0] == "+" else cluster[2:]
    body = body.replace("(0)", "")
    digits = _SEPARATORS.sub("", body)
    if not digits.isdigit() or digits[0] == "0" or not 8 <= len(digits) <= 15:
        return False
    if digits[0] in "17":
        cc = digits[0]
    elif digits[:2] in _CC2:
        cc = digits[:2]
    else:
        cc = digits[:3]
    national = digits[len(cc) :]
    low, high = _NSN_LENGTHS.get(cc, (6, 12))
    if not low <= len(national) <= high:
        return False
    if cc == "30":
        return national[0] == "2" or national.startswith(("69", "80"))
    if cc == "1":
        return national[0] in "23456789"
    return national[0] != "0"
