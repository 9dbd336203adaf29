"""Detectors for personal data that must not leave the company in answers or archives.

Each detector returns spans over the original text, validated beyond the regex
(checksums, dates, Luhn) so that ordinary numbers such as order ids are not flagged.
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass
from enum import StrEnum

__all__ = [
    "PiiKind",
    "PiiMatch",
    "find_bank_cards",
    "find_emails",
    "find_mobiles",
    "find_pii",
    "find_resident_ids",
    "is_valid_resident_id",
    "luhn_valid",
]


class PiiKind(StrEnum):
    RESIDENT_ID = "resident_id"
    MOBILE = "mobile"
    BANK_CARD = "bank_card"
    EMAIL = "email"


@dataclass(frozen=True, slots=True)
class PiiMatch:
    """One detected item; ``value`` is the text as written, separators included."""

    kind: PiiKind
    start: int
    end: int
    value: str


# Numbers must not be glued to other ASCII letters/digits or be the tail/head of a
# decimal ("3.14159..."), otherwise pieces of hashes and long ids would be flagged.
_NUM_BEFORE = r"(?<![0-9A-Za-z])(?<![0-9][.,])"
_NUM_AFTER = r"(?![0-9A-Za-z])(?![.,][0-9])"

_RESIDENT_ID_RE = re.compile(_NUM_BEFORE + r"[1-9][0-9]{16}[0-9Xx]" + _NUM_AFTER)
_MOBILE_RE = re.compile(
    r"(?<![0-9A-Za-z+])(?<![0-9][.,])"
    r"(?:(?:\+|00)?86[ -]?)?"
    r"1[3-9][0-9](?:[ -]?[0-9]{4}){2}" + _NUM_AFTER
)
_BANK_CARD_RE = re.compile(
    _NUM_BEFORE
    + r"(?:[0-9]{13,19}"  # printed without separators
    + r"|[0-9]{4}([ -])[0-9]{4}\1[0-9]{4}(?:\1[0-9]{4})?(?:\1[0-9]{1,4})?"  # 4-4-4-4(-3)
    + r"|[0-9]{4}([ -])[0-9]{6}\2[0-9]{4,5}"  # 4-6-5 (15-digit cards)
    + r"|[0-9]{6}([ -])[0-9]{13})"  # 6-13 (19-digit UnionPay)
    + _NUM_AFTER
)
_EMAIL_RE = re.compile(
    r"(?<![A-Za-z0-9._%+-])"
    r"[A-Za-z0-9_%+-]+(?:\.[A-Za-z0-9_%+-]+)*"
    r"@(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)+[A-Za-z]{2,24}"
    r"(?![A-Za-z0-9-])"
)

# GB 11643-1999: weights of the first 17 digits and the check character per remainder.
_ID_WEIGHTS = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)
_ID_CHECK = "10X98765432"
# Province-level prefixes of GB/T 2260 codes, plus 81/82/83 used by residence permits
# for Hong Kong, Macao and Taiwan residents.
_ID_PROVINCES = frozenset(
    {11, 12, 13, 14, 15, 21, 22, 23, 31, 32, 33, 34, 35, 36, 37, 41, 42, 43, 44, 45, 46}
    | {50, 51, 52, 53, 54, 61, 62, 63, 64, 65, 71, 81, 82, 83}
)


def is_valid_resident_id(candidate: str, *, today: dt.date | None = None) -> bool:
    """Check an 18-character mainland resident ID: province, birth date and checksum."""
    if len(candidate) != 18 or not candidate[:17].isascii() or not candidate[:17].isdigit():
        return False
    if int(candidate[:2]) not in _ID_PROVINCES:
        return False
    try:
        born = dt.date(int(candidate[6:10]), int(candidate[10:12]), int(candidate[12:14]))
    except ValueError:
        return False
    if born.year < 1900 or born > (today or dt.date.today()):
        return False
    total = sum(int(digit) * weight for digit, weight in zip(candidate, _ID_WEIGHTS, strict=False))
    return candidate[17].upper() == _ID_CHECK[total % 11]


def luhn_valid(digits: str) -> bool:
    """Luhn (mod 10) check used by payment card numbers."""
    if not digits.isascii() or not digits.isdigit():
        return False
    total = 0
    for position, char in enumerate(reversed(digits)):
        value = int(char)
        if position % 2:
            value = value * 2 - 9 if value > 4 else value * 2
        total += value
    return total % 10 == 0


def _spans(kind: PiiKind, pattern: re.Pattern[str], text: str) -> list[PiiMatch]:
    return [PiiMatch(kind, m.start(), m.end(), m.group()) for m in pattern.finditer(text)]


def find_resident_ids(text: str, *, today: dt.date | None = None) -> list[PiiMatch]:
    """Find 18-character resident IDs whose date and checksum are valid."""
    return [
        PiiMatch(PiiKind.RESIDENT_ID, m.start(), m.end(), m.group())
        for m in _RESIDENT_ID_RE.finditer(text)
        if is_valid_resident_id(m.group(), today=today)
    ]


def find_mobiles(text: str) -> list[PiiMatch]:
    """Find mainland mobile numbers, with optional +86/0086 and space or dash groups."""
    return _spans(PiiKind.MOBILE, _MOBILE_RE, text)


def find_bank_cards(text: str) -> list[PiiMatch]:
    """Find 13–19 digit card numbers (plain or in printed groups) that pass Luhn."""
    found = []
    for m in _BANK_CARD_RE.finditer(text):
        digits = re.sub(r"[ -]", "", m.group())
        if 13 <= len(digits) <= 19 and luhn_valid(digits):
            found.append(PiiMatch(PiiKind.BANK_CARD, m.start(), m.end(), m.group()))
    return found


def find_emails(text: str) -> list[PiiMatch]:
    """Find e-mail addresses with a dotted domain and an alphabetic top-level label."""
    return _spans(PiiKind.EMAIL, _EMAIL_RE, text)


# When spans overlap, the more specific detector wins: an 18-digit resident ID can also
# pass Luhn, and a card printed in groups can contain something shaped like a mobile.
_PRIORITY = (PiiKind.RESIDENT_ID, PiiKind.BANK_CARD, PiiKind.MOBILE, PiiKind.EMAIL)


def find_pii(text: str, *, today: dt.date | None = None) -> list[PiiMatch]:
    """Run every detector and return non-overlapping matches ordered by position."""
    candidates = {
        PiiKind.RESIDENT_ID: find_resident_ids(text, today=today),
        PiiKind.BANK_CARD: find_bank_cards(text),
        PiiKind.MOBILE: find_mobiles(text),
        PiiKind.EMAIL: find_emails(text),
    }
    kept: list[PiiMatch] = []
    for kind in _PRIORITY:
        for match in candidates[kind]:
            if all(match.end <= other.start or match.start >= other.end for other in kept):
                kept.append(match)
    return sorted(kept, key=lambda m: m.start)
