"""Typed search-index values: what the write side stores per (resource, parameter), one class per table.

All are frozen and hashable, so duplicates are dropped with a set. String and token text is normalised
here, once, by `normalize_string`; the query side must normalise its input with the same function.
"""
from __future__ import annotations

import unicodedata
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from functools import lru_cache

DATE_MIN = datetime.min.replace(tzinfo=UTC)
DATE_MAX = datetime.max.replace(tzinfo=UTC)
NEGATIVE_INFINITY = Decimal("-Infinity")
POSITIVE_INFINITY = Decimal("Infinity")


def normalize_string(text: str) -> str:
    """Case- and accent-insensitive form: NFKD, combining marks dropped, case folded, whitespace collapsed.

    `casefold` rather than `lower` so that `Straße` matches `strasse`; 'Müller' becomes 'muller'.
    """
    if text.isascii():  # the common case, ten times faster
        return " ".join(text.lower().split())
    return _normalize_unicode(text)


@lru_cache(maxsize=16384)
def _normalize_unicode(text: str) -> str:
    decomposed = unicodedata.normalize("NFKD", text)
    stripped = "".join(c for c in decomposed if not unicodedata.combining(c))
    return " ".join(stripped.casefold().split())


@dataclass(frozen=True, slots=True)
class TokenValue:
    """A token: `system|code`, plus normalised text for `:text`.

    A Coding gives (system, code, display); a CodeableConcept one value per coding and, for its `text`,
    a value with only `text`. An Identifier gives (system, value, type.text) and, for `:of-type`, carries its
    type coding in `type_system`/`type_code` (one value per type coding). Primitives give (None, value, None);
    booleans their JSON spelling `true`/`false`.
    """

    system: str | None
    code: str | None
    text: str | None = None
    type_system: str | None = None
    type_code: str | None = None


@dataclass(frozen=True, slots=True)
class StringValue:
    normalized: str   # normalize_string(exact): for the default (starts-with) and :contains searches
    exact: str        # as written: for :exact


@dataclass(frozen=True, slots=True)
class DateValue:
    """The half-open UTC range [low, high) a date, dateTime, instant, Period or Timing covers.

    Open Period ends are DATE_MIN / DATE_MAX (timezone-aware).
    """

    low: datetime
    high: datetime


@dataclass(frozen=True, slots=True)
class NumberValue:
    """A number and the range its precision implies: 100 -> [99.5, 100.5), 1.50 -> [1.495, 1.505).

    A Range gives [low's lower bound, high's upper bound) with infinite open ends; its `value` is the low
    value (or the high one when there is no low).
    """

    low: Decimal
    high: Decimal
    value: Decimal
    is_range: bool = False   # a Range: compared as the range it is, not as a number with a precision


@dataclass(frozen=True, slots=True)
class QuantityValue:
    """A Quantity (or Age, Duration, Money, ...) as a NumberValue-style range plus its units.

    Comparators widen the range: `< 5` -> [-inf, 5), `>= 5` -> [5, +inf). Money puts its currency in
    `code` with system urn:iso:std:iso:4217. Units are stored as written (no UCUM canonicalisation).
    """

    low: Decimal
    high: Decimal
    value: Decimal
    system: str | None
    code: str | None
    unit: str | None
    is_range: bool = False   # a Range or a comparator (`<5`): compared as a range


@dataclass(frozen=True, slots=True)
class ReferenceValue:
    """A reference target. `Patient/1` -> type+id; an absolute URL keeps `url` and also type+id when its
    path ends in `[type]/[id]`; `urn:uuid:` / `urn:oid:` and other URLs -> url only; canonical `url|1.0` ->
    url + version; `_history/2` -> version '2'; Reference.identifier -> identifier_system/value."""

    res_type: str | None
    res_id: str | None
    url: str | None
    identifier_system: str | None = None
    identifier_value: str | None = None
    version: str | None = None


@dataclass(frozen=True, slots=True)
class UriValue:
    uri: str


@dataclass(frozen=True, slots=True)
class CompositeValue:
    """One combination of component values, in the order the SearchParameter lists its components."""

    parts: tuple[IndexValue, ...]


IndexValue = (TokenValue | StringValue | DateValue | NumberValue | QuantityValue | ReferenceValue | UriValue
              | CompositeValue)
