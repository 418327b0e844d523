"""FHIR date, dateTime and instant values as half-open [low, high) UTC ranges by precision.

`2020` covers the whole year, `2020-03-04T10:00` the whole minute, and so on (R4 search.html#date).
A value without a time zone is read as UTC.
"""
from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta, timezone

from resources.outcome import BadRequest

_DATE = re.compile(
    r"(?P<y>\d{4})(?:-(?P<m>\d{2})(?:-(?P<d>\d{2})"
    r"(?:T(?P<H>\d{2}):(?P<M>\d{2})(?::(?P<S>\d{2})(?P<f>\.\d+)?)?(?P<tz>Z|[+-]\d{2}:\d{2})?)?)?)?"
)


def _add_months(moment: datetime, months: int) -> datetime:
    year, month = divmod(moment.month - 1 + months, 12)
    return moment.replace(year=moment.year + year, month=month + 1)


def date_range(value: str, *, param: str = "date") -> tuple[datetime, datetime]:
    """Return [low, high) for a FHIR date/dateTime/instant of any precision."""
    match = _DATE.fullmatch(value.strip())
    if not match:
        raise BadRequest(f"{param}: {value!r} is not a valid FHIR date or dateTime", expression=param)
    g = match.groupdict()
    try:
        tz: timezone = UTC
        if g["tz"] and g["tz"] != "Z":
            sign = 1 if g["tz"][0] == "+" else -1
            hours, minutes = int(g["tz"][1:3]), int(g["tz"][4:6])
            tz = timezone(timedelta(minutes=sign * (hours * 60 + minutes)))
        micro = int(round(float(g["f"]) * 1_000_000)) if g["f"] else 0
        low = datetime(int(g["y"]), int(g["m"] or 1), int(g["d"] or 1), int(g["H"] or 0), int(g["M"] or 0),
                       int(g["S"] or 0), min(micro, 999_999), tzinfo=tz)
    except ValueError as exc:
        raise BadRequest(f"{param}: {value!r} is not a valid date ({exc})", expression=param) from exc
    try:
        high = _upper(low, g)
    except (OverflowError, ValueError):
        high = MAX
    return _utc(low), _utc(high)


MIN = datetime.min.replace(tzinfo=UTC)
MAX = datetime.max.replace(tzinfo=UTC)


def _utc(moment: datetime) -> datetime:
    """To UTC, clamped at the ends of the representable range (year 1 and year 9999)."""
    try:
        return moment.astimezone(UTC)
    except OverflowError:
        return MIN if moment.year == 1 else MAX


def _upper(low: datetime, g: dict[str, str | None]) -> datetime:
    if g["f"]:
        return low + timedelta(microseconds=10 ** (6 - min(len(g["f"]) - 1, 6)))
    if g["S"]:
        return low + timedelta(seconds=1)
    if g["M"]:
        return low + timedelta(minutes=1)
    if g["d"]:
        return low + timedelta(days=1)
    if g["m"]:
        return _add_months(low, 1)
    return low.replace(year=low.year + 1)


def parse_instant(value: str, *, param: str) -> datetime:
    """The start of a date/dateTime/instant (for `_since`)."""
    return date_range(value, param=param)[0]
