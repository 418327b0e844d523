"""FHIR JSON in and out, fast (orjson) and faithful to decimal precision.

R4 says the precision of a decimal is significant (`1.50` is not `1.5`). orjson reads
numbers as floats, so text holding a number whose form a float would lose (trailing
fraction zeros, exponents, 16+ digits) takes a slower path that keeps it as Decimal;
`dumps` writes Decimals back verbatim.
"""
from __future__ import annotations

import json
import re
import sys
from decimal import Decimal
from typing import Any

import orjson

from resources.outcome import BadRequest

# A JSON number (between `:`/`[`/`,` and `,`/`]`/`}`) that a float might not write back the same: a trailing
# fraction zero, an exponent, 16+ integer digits or 15+ fraction digits. Text inside strings rarely has that shape
# (a string's characters are followed by a quote), so resources with OIDs or versions keep the fast path.
_LOSSY_NUMBER = re.compile(rb"[:\[,]\s*-?(?:\d+\.\d*0|\d+(?:\.\d+)?[eE][+-]?\d+|\d{16,}|\d+\.\d{15,})\s*[,\]}]")


def _default(obj: Any) -> Any:
    if isinstance(obj, Decimal):
        return orjson.Fragment(str(obj))
    raise TypeError(f"{type(obj).__name__} is not JSON serialisable")


def loads(data: bytes | str) -> Any:
    """Parse JSON; raises ValueError (orjson.JSONDecodeError) on malformed input."""
    raw = data.encode() if isinstance(data, str) else data
    if _LOSSY_NUMBER.search(raw) is None:
        return orjson.loads(raw)   # strict: rejects invalid UTF-8, lone surrogates, NaN, over-deep nesting
    # The slow path alone, as strict as orjson: UTF-8 decoded strictly, NaN/Infinity and numbers beyond a
    # double refused, nesting limited by the recursion limit (under orjson's 1,024 levels). orjson still
    # judges what the stdlib would take: lone surrogates, and deep nesting under a raised recursion limit.
    if b"\\ud" in raw or b"\\uD" in raw or (sys.getrecursionlimit() > 1024 and raw.count(b"[") > 1000):
        orjson.loads(raw)
    try:
        return json.loads(raw.decode(), parse_float=_parse_float, parse_int=_parse_int,
                          parse_constant=_reject_constant)
    except RecursionError as exc:
        raise ValueError("the JSON is nested too deeply") from exc


_DOUBLE_MAX = Decimal("1.7976931348623157e308")


def _parse_float(text: str) -> Decimal:
    value = Decimal(text)
    if ("e" in text or "E" in text) and abs(value) > _DOUBLE_MAX:
        raise ValueError(f"number is infinity when parsed as double: {text[:40]}")
    return value


def _parse_int(text: str) -> int | Decimal:
    value = int(text)
    if -(2**63) <= value < 2**64:   # orjson writes only 64-bit ints
        return value
    if abs(value) > _DOUBLE_MAX:
        raise ValueError(f"number is infinity when parsed as double: {text[:40]}")
    return Decimal(text)


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def dumps(obj: Any, *, pretty: bool = False) -> bytes:
    return orjson.dumps(obj, default=_default, option=orjson.OPT_INDENT_2 if pretty else 0)


_QUOTED = re.compile(rb'"[^"]*"')
_INNERMOST = re.compile(rb"\[\]|\{\}")
_NOT_STRUCTURE = bytes(c for c in range(256) if c not in b'"[]{}')


def nested_deeper_than(data: bytes, limit: int) -> bool:
    """Does the JSON text nest arrays/objects more than `limit` levels deep? Escaped backslashes, then escaped
    quotes are dropped, so every quote left delimits a string; then all but quotes and brackets, then the strings
    (only brackets remain); then innermost pairs are peeled off one level per pass, at most `limit` + 1. All in
    C (bytes methods; regular expressions only over the short remainder). Text that is not JSON may be judged
    either way: the parser refuses it next."""
    skeleton = data.replace(b"\\\\", b"").replace(b'\\"', b"").translate(None, _NOT_STRUCTURE)
    # two quotes in a row are an empty string, or the end of one string and the start of the next with nothing
    # between them that is kept: dropping them leaves quotes paired as before and the same brackets outside
    brackets = _QUOTED.sub(b"", skeleton.replace(b'""', b""))
    for _ in range(limit):
        if not brackets:
            return False
        brackets = _INNERMOST.sub(b"", brackets)
    return bool(brackets)


def parse_body(data: bytes, max_depth: int = 64) -> Any:
    """Parse a request body, turning every JSON error (and nesting deeper than `max_depth`) into a 400."""
    if not data.strip():
        raise BadRequest("The request body is empty; a JSON resource was expected")
    if nested_deeper_than(data, max_depth):
        raise BadRequest(f"The request body nests deeper than {max_depth} levels")
    try:
        return loads(data)
    except (ValueError, RecursionError) as exc:
        raise BadRequest(f"The request body is not valid JSON: {str(exc)[:200]}") from exc


def canonical(obj: Any) -> bytes:
    """A comparable serialisation: sorted keys, numbers written as their shortest exact form."""
    return orjson.dumps(obj, default=_default, option=orjson.OPT_SORT_KEYS)
