"""Hypothesis strategies for fuzzing the FHIR REST API with malformed and borderline input.

Bodies are built as Python values and encoded by `to_json`, which writes `Raw` tokens verbatim: that is how
the strategies put into JSON text what `json.dumps` cannot (numbers beyond a float, `\\ud800` escapes,
nesting thousands of levels deep, invalid escapes). Strings may hold lone surrogates: encoded with
`ascii_only` they become `\\ud800` escapes, otherwise raw (invalid UTF-8) bytes.
"""
from __future__ import annotations

import base64
import copy
import json
import re
from typing import Any
from urllib.parse import quote

from hypothesis import strategies as st

ID_PATTERN = re.compile(r"[A-Za-z0-9\-.]{1,64}")   # the R4 id type (datatypes.html#id)


class Raw(str):
    """JSON text written verbatim by `to_json`."""


def to_json(value: Any, *, ascii_only: bool = True) -> str:
    if isinstance(value, Raw):
        return str(value)
    if isinstance(value, dict):
        members = (f"{json.dumps(k, ensure_ascii=ascii_only)}:{to_json(v, ascii_only=ascii_only)}"
                   for k, v in value.items())
        return "{" + ",".join(members) + "}"
    if isinstance(value, list):
        return "[" + ",".join(to_json(v, ascii_only=ascii_only) for v in value) + "]"
    return json.dumps(value, ensure_ascii=ascii_only)   # NaN and Infinity come out as (invalid) bare words


def encode(value: Any, *, ascii_only: bool = True) -> bytes:
    """JSON bytes; without `ascii_only`, lone surrogates become the (invalid) UTF-8 of their code points."""
    return to_json(value, ascii_only=ascii_only).encode("utf-8", "surrogatepass")


def valid_patient(marker: str = "fuzz") -> dict[str, Any]:
    """A valid Patient touching most JSON kinds: a decimal that needs exact precision, an integer, a boolean,
    primitive arrays, nested complex types."""
    return {
        "resourceType": "Patient",
        "identifier": [{"system": "urn:fuzz", "value": marker}],
        "active": True,
        "name": [{"use": "official", "family": "Fuzz", "given": ["Hypo", "Thesis"]}],
        "telecom": [{"system": "phone", "value": "555-0100"}],
        "gender": "female",
        "birthDate": "1970-01-01",
        "address": [{"line": ["1 Main St"], "city": "Springfield", "postalCode": "12345"}],
        "multipleBirthInteger": 2,
        "extension": [{"url": "http://example.org/fuzz", "valueDecimal": Raw("1.50")}],
    }


# --- text, numbers and leaves ---------------------------------------------------------------------------

# NUL, C0 controls, lone surrogates (both halves, reversed), BOM, line/paragraph separators, a non-character,
# an astral character, replacement character.
SPECIAL_CHARACTERS = "\x00\x01\x08\x0b\x1f\x7f\x85\ud800\udbff\udc00\udfff\ufeff\u2028\u2029\uffff\U0001f600\ufffd"
nasty_text = st.text(st.one_of(st.characters(), st.sampled_from(SPECIAL_CHARACTERS)), max_size=20)

BAD_DATES = ["2020-13-01", "2020-02-30", "2020-00-10", "0000-01-01", "10000-01-01", "2020-1-1", "20200101",
             "2020-01-01T25:00:00Z", "2020-01-01T10:00:00+15:00", "2020-01-01T10:00", "2020-01-01T10:00:00",
             "2020-01-01 10:00:00Z", "1970-01-01T00:00:00.Z", "-2020-01-01", "2020-01-01\n", " 2020",
             "9999-12-31T23:59:59-14:00", "0001-01-01T00:00:00+14:00", "2020-٠١-٠١"]

RAW_NUMBERS = ["1.50", "1e400", "-1e400", "1E-400", "1.0e+2", "-0", "0.0", "123456789012345678901234567890",
               "2147483648", "-2147483649", "9223372036854775808", "18446744073709551616", "1." + "0" * 400,
               "NaN", "Infinity", "-Infinity", "01", ".5", "+1", "0x10", "1_000", "1e", "--1"]
RAW_TEXT = ['"\\ud800"', '"\\udfff\\ud800"', '"a\\u0000b"', '"\\u0000"', '"\\x41"', '"\\uZZZZ"', '"\\u12"',
            '"\\"', "'single'", "True", "undefined", '"\t"', '"line\nbreak"', '"\\/"']


def deep_nesting(depth: int, kind: str) -> Raw:
    if kind == "array":
        return Raw("[" * depth + "]" * depth)
    return Raw('{"a":' * depth + "1" + "}" * depth)


raw_tokens = st.one_of(
    st.sampled_from(RAW_NUMBERS).map(Raw),
    st.sampled_from(RAW_TEXT).map(Raw),
    st.builds(deep_nesting, st.sampled_from([2, 99, 100, 101, 300, 500, 990, 1000, 1020, 1025, 5000, 100_000]),
              st.sampled_from(["array", "object"])),
)

huge_strings = st.sampled_from([1_000, 65_536, 300_000]).map(lambda n: "x" * n)

leaves = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(), nasty_text, st.sampled_from(BAD_DATES),
    st.sampled_from(["", " ", "  x", "female", "1970-01-01", "urn:uuid:x", "http://example.org"]),
    raw_tokens, huge_strings,
)

keys = st.one_of(
    st.sampled_from(["", "_", "resourceType", "id", "_id", "meta", "text", "extension", "modifierExtension",
                     "contained", "name", "_name", "family", "given", "_given", "gender", "_gender", "birthDate",
                     "value", "valueString", "value[x]", "url", "a.b", "__proto__", "\ud800", "\x00", "Name"]),
    nasty_text,
)

json_values = st.recursive(
    leaves, lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(keys, inner, max_size=4)),
    max_leaves=12,
)

# Values a resource element typically holds when it is wrong: the empty forms, null, a changed shape.
odd_values = st.one_of(st.sampled_from([None, "", [], {}, [None], [""], [{}], [[]], 0, True]).map(copy.deepcopy),
                       json_values)   # copies: `mutated_patients` edits the values it has placed


# --- Patients with a few things wrong ---------------------------------------------------------------------

Path = tuple[str | int, ...]


def _locations(value: Any, path: Path = ()) -> list[Path]:
    found = [path]
    if isinstance(value, dict):
        for key, item in value.items():
            found += _locations(item, (*path, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            found += _locations(item, (*path, index))
    return found


def _parent(root: Any, path: Path) -> Any:
    for step in path[:-1]:
        root = root[step]
    return root


@st.composite
def mutated_patients(draw: st.DrawFn) -> dict[str, Any]:
    """`valid_patient()` after 1-3 random edits: replace, delete, add a key, wrap in or unwrap from a list.
    Its decimal `1.50` makes the server read it with the precise (stdlib json) parser, which, unlike orjson,
    lets `\\ud800` escapes through."""
    patient = copy.deepcopy(valid_patient())
    for _ in range(draw(st.integers(1, 3))):
        path = draw(st.sampled_from(_locations(patient)))
        target = _parent(patient, path)[path[-1]] if path else patient
        edit = draw(st.sampled_from(["replace", "replace", "delete", "add", "add", "wrap", "unwrap"]))
        if edit == "add" and isinstance(target, dict):
            target[draw(keys)] = draw(odd_values)
        elif edit == "add" and isinstance(target, list):
            target.append(draw(odd_values))
        elif not path:
            continue
        elif edit == "replace" or edit == "add":
            _parent(patient, path)[path[-1]] = draw(odd_values)
        elif edit == "delete":
            del _parent(patient, path)[path[-1]]
        elif edit == "wrap":
            _parent(patient, path)[path[-1]] = [target]
        elif edit == "unwrap" and isinstance(target, list) and target:
            _parent(patient, path)[path[-1]] = target[0]
    return patient


@st.composite
def encoded(draw: st.DrawFn, values: st.SearchStrategy[Any]) -> bytes:
    return encode(draw(values), ascii_only=draw(st.booleans()))


@st.composite
def corrupted(draw: st.DrawFn, data: bytes) -> bytes:
    """`data` with bytes spliced in, cut short, prefixed with a BOM or re-encoded as UTF-16."""
    how = draw(st.sampled_from(["splice", "truncate", "bom", "utf16", "nul"]))
    if how == "bom":
        return b"\xef\xbb\xbf" + data
    if how == "utf16":
        return data.decode("utf-8").encode("utf-16")
    at = draw(st.integers(0, len(data)))
    if how == "truncate":
        return data[:at]
    insert = b"\x00" if how == "nul" else draw(st.binary(min_size=1, max_size=4))
    return data[:at] + insert + data[at:]


def patient_bodies() -> st.SearchStrategy[bytes]:
    """Request bodies for create and update: garbage bytes, arbitrary JSON, and Patients mutated from valid."""
    return st.one_of(
        st.binary(max_size=64),
        encoded(json_values),
        encoded(st.dictionaries(keys, odd_values, max_size=4).map(lambda d: {"resourceType": "Patient", **d})),
        encoded(st.dictionaries(keys, odd_values, min_size=1, max_size=3).map(lambda d: {**valid_patient(), **d})),
        encoded(mutated_patients()),
        encoded(mutated_patients()),
        corrupted(encode(valid_patient())),
    )


# --- ids, versions and URL segments -----------------------------------------------------------------------

ids_text = st.one_of(
    st.from_regex(ID_PATTERN, fullmatch=True),
    st.text(st.sampled_from("Aa09-._"), min_size=60, max_size=70),
    st.text(min_size=1, max_size=80),
    st.sampled_from(["..", ".", "...", "_history", "_search", "$everything", "a b", "é", "a/b", "/", "a?b", "a#b",
                     "\x00", "a" * 65, "a" * 5000, "-", "1", "null", "%00", "\U0001f600"]),
)

# Raw segments go into the URL as they are, so invalid or overlong percent-escapes reach the server.
raw_segments = st.text(st.sampled_from("%0123456789abcdefABCDEFxz-._~"), min_size=1, max_size=12)


def url_segments(text: st.SearchStrategy[str] = ids_text) -> st.SearchStrategy[str]:
    """One path segment: percent-encoded text, or raw percent junk."""
    return st.one_of(text.map(lambda t: quote(t, safe="")), raw_segments)


version_text = st.one_of(
    st.integers(-5, 10).map(str), st.integers(0).map(str),
    st.sampled_from(["01", "1.0", "1e0", "²", "١", "٣", "0x1", "+1", " 1", "9" * 20, "9" * 5000, "", "a"]),
    st.text(max_size=10),
)


# --- headers ----------------------------------------------------------------------------------------------

# h11 only sends visible latin-1 characters with inner spaces and tabs in a header value.
header_text = st.text(st.characters(min_codepoint=0x20, max_codepoint=0xFF, exclude_characters="\x7f"),
                      min_size=1, max_size=40).map(str.strip).filter(bool)

# (template, version): the version (None: the resource's current one) goes into the template's {}.
etag_values = st.one_of(
    st.tuples(st.sampled_from(['W/"{}"', '"{}"', "{}", 'w/"{}"', 'W/"{}', 'W/ "{}"', 'W/"{}"x', "W/{}", 'W/"v{}"',
                               'W/"{}", W/"{}"', 'W/""{}""']),
              st.one_of(st.none(), st.integers(0, 10), st.integers(0, 2**70))),
    header_text.map(lambda t: (t, 0)),
    st.sampled_from(["*", 'W/"-1"', 'W/"1.0"', 'W/""', 'W/"١"', 'W/"²"', '""']).map(lambda t: (t, 0)),
)

http_dates = st.one_of(
    st.sampled_from(["Mon, 01 Jan 2000 00:00:00 GMT", "Fri, 31 Dec 9999 23:59:59 GMT", "Mon, 01 Jan 0001 00:00:00 GMT",
                     "Mon, 01 Jan 99999 00:00:00 GMT", "Mon, 01 Jan 2000 00:00:00 +9999", "Mon, 01 Jan 2000 25:61:61",
                     "Sun, 06 Nov 1994 08:49:37 GMT", "Sunday, 06-Nov-94 08:49:37 GMT", "Sun Nov  6 08:49:37 1994",
                     "0", "-1", "yesterday", "01 Jan 2000", "Mon, 32 Foo 2000 00:00:00 GMT"]),
    header_text,
)

media_types = st.one_of(
    st.sampled_from(["application/fhir+json", "application/json", "application/fhir+json; charset=utf-8",
                     "application/fhir+json; fhirVersion=4.0", "application/fhir+xml", "application/xml",
                     "text/plain", "application/json-patch+json", "application/x-www-form-urlencoded",
                     "multipart/form-data; boundary=x", "*/*", "application/*", "json", ";", "/", "APPLICATION/JSON",
                     "application/fhir+json, application/fhir+xml;q=0.9", "text/html;q=0"]),
    header_text,
)

prefer_values = st.one_of(
    st.sampled_from(["return=minimal", "return=representation", "return=OperationOutcome", "return=",
                     "handling=strict", "handling=lenient", "respond-async", 'return="minimal"', "return=foo",
                     "return=minimal, handling=strict"]),
    header_text,
)


# --- query strings ----------------------------------------------------------------------------------------

@st.composite
def fhir_dates(draw: st.DrawFn) -> str:
    """Dates and dateTimes of every precision, with years, offsets and fractions at and past the edges."""
    year = draw(st.sampled_from(["0000", "0001", "1970", "2024", "9999", "99999", "19", "٢٠٢٠"]))
    parts = [year, "-" + draw(st.sampled_from(["01", "02", "12", "13", "00"])),
             "-" + draw(st.sampled_from(["01", "29", "31", "32"])),
             "T" + draw(st.sampled_from(["00:00", "23:59", "24:00", "12:60"])),
             ":" + draw(st.sampled_from(["00", "59", "60"])),
             draw(st.sampled_from([".5", ".123456789", "."]))]
    text = "".join(parts[: draw(st.integers(1, len(parts)))])
    if "T" in text:
        text += draw(st.sampled_from(["", "Z", "+00:00", "+14:00", "-14:00", "-01:00", "+99:99", "+1", "z"]))
    return text


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


cursor_values = st.one_of(
    st.binary(max_size=12).map(_b64),
    st.tuples(st.sampled_from("ab"), st.integers(-(2**70), 2**70)).map(lambda p: _b64(f"{p[0]}{p[1]}".encode())),
    st.text(max_size=12).map(lambda t: _b64(t.encode("utf-8", "surrogatepass"))),
    st.sampled_from(["AA", "", "=", "!!", "YjE", "YQ", "Yg", "YjE_MA"]),
)

count_values = st.one_of(
    st.integers(-3, 2000).map(str),
    st.sampled_from(["", "abc", "1.5", "²", "¹", "١٢", "٣", " 1", "+1", "0x10", "1e3", "9" * 30, "9" * 5000]),
    st.text(st.characters(categories=["N"]), min_size=1, max_size=3),   # digits of any script, superscripts...
)

_PARAM_VALUES: dict[str, st.SearchStrategy[str]] = {
    "_count": count_values,
    "_since": st.one_of(fhir_dates(), st.sampled_from(BAD_DATES)),
    "_at": st.one_of(fhir_dates(), st.sampled_from(BAD_DATES)),
    "_summary": st.sampled_from(["true", "false", "text", "data", "count", "TRUE", "", "x"]),
    "_elements": st.one_of(st.sampled_from(["name", "name,gender", ",", "", "Patient.name", "meta.tag", "value",
                                            "_name", "identifier,,name"]), nasty_text),
    "_format": media_types,
    "_pretty": st.sampled_from(["true", "false", "1", "", "TRUE"]),
    "_cursor": cursor_values,
    "_id": st.one_of(ids_text, st.sampled_from(["a,b", ",", "\x00", "a\x00b"])),
    "identifier": st.one_of(st.sampled_from(["urn:fuzz|", "|x", "|", "||", "a|b|c", "urn:fuzz|\x00", "\x00", ",,"]),
                            nasty_text),
}
# Mostly the parameters the server reads (with their own edge values), then others it must ignore or refuse.
param_names = st.one_of(
    st.sampled_from(list(_PARAM_VALUES)), st.sampled_from(list(_PARAM_VALUES)), st.sampled_from(list(_PARAM_VALUES)),
    st.sampled_from(["name", "_sort", "_include", "_revinclude", "_total", "_contained", "identifier:missing",
                     "_id:exact", "_lastUpdated", "_type", "_has:Observation:subject:code"]),
    nasty_text,
)


def _quote(text: str) -> str:
    return quote(text.encode("utf-8", "surrogatepass"), safe="")


@st.composite
def query_parameter(draw: st.DrawFn) -> str:
    name = draw(param_names)
    return f"{_quote(name)}={_quote(draw(_PARAM_VALUES.get(name, nasty_text)))}"


# Raw fragments go into the query as they are: invalid percent-escapes, stray separators, bare names.
raw_query_fragments = st.text(st.sampled_from("%&=;+?/0123456789abcdefABCDEFxz_-.,|:~"), max_size=12)


def query_strings() -> st.SearchStrategy[bytes]:
    return st.lists(st.one_of(query_parameter(), query_parameter(), raw_query_fragments), max_size=6).map(
        lambda parts: "&".join(parts).encode("ascii"))


# --- JSON Patch -------------------------------------------------------------------------------------------

pointers = st.one_of(
    st.sampled_from(["", "/", "/name", "/name/0", "/name/0/family", "/name/0/given/0", "/name/-", "/name/1",
                     "/name/99", "/name/-1", "/name/01", "/gender", "/birthDate", "/active", "/identifier/0/value",
                     "/meta", "/meta/versionId", "/meta/lastUpdated", "/id", "/resourceType", "/text", "/extension/0",
                     "/extension/0/valueDecimal", "/~", "/~2", "/name~1x", "name", "/a/b/c", "/name/0/given/-",
                     "/\ud800", "/name/0/\udfff", "/name/\udc00"]),
    nasty_text.map(lambda t: "/" + t),
)
patch_values = st.one_of(odd_values, raw_tokens)


def _operation(op: str, *members: str) -> st.SearchStrategy[dict[str, Any]]:
    strategies = {"path": pointers, "from": pointers, "value": patch_values}
    return st.fixed_dictionaries({"op": st.just(op), **{m: strategies[m] for m in members}})


patch_operations = st.one_of(
    # well-formed operations, most of which apply to valid_patient()
    _operation("add", "path", "value"), _operation("replace", "path", "value"), _operation("test", "path", "value"),
    _operation("remove", "path"), _operation("move", "from", "path"), _operation("copy", "from", "path"),
    # members missing, unknown operations, garbage
    st.fixed_dictionaries({"op": st.sampled_from(["add", "remove", "replace", "move", "copy", "test"])},
                          optional={"path": pointers, "from": pointers, "value": patch_values}),
    st.fixed_dictionaries({"op": st.one_of(st.sampled_from(["ADD", "", "increment"]), odd_values), "path": pointers}),
    json_values,
)
# A passing `test` of the decimal in `valid_patient()`: a patch holding it is read by the precise JSON parser.
DECIMAL_TEST = {"op": "test", "path": "/extension/0/valueDecimal", "value": Raw("1.50")}
patch_bodies = st.one_of(
    encoded(st.lists(patch_operations, max_size=4)),
    encoded(st.lists(patch_operations, min_size=1, max_size=3).map(lambda ops: [*ops, DECIMAL_TEST])),
    encoded(json_values),
    st.binary(max_size=32),
)
