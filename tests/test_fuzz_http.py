"""Property-based fuzzing over real HTTP: bad input gets a clear 4xx, never a 5xx, never a partial write.

Every request here is generated (tests/strategies.py) and sent to the live server, and every response must
- not be a 5xx;
- have a status the input calls for; every error must be an OperationOutcome (`application/fhir+json`) whose
  first issue has severity `error`;
- have written exactly what it reports: one new version for a successful create/update/patch/delete, nothing
  at all for anything else (the count and the highest txid of `resource_history` are compared around every
  request).
Where an outcome is decidable, an oracle decides it: the R4 validator (`resources.validate`) says whether a body
is a valid resource, the R4 id pattern whether an id is, the `jsonpatch` library whether a patch applies.

A failing assertion shows the request, the response and what the server logged while handling it.

The tests use their own HTTP client rather than the `client` fixture: it keeps no connection alive, because
uvicorn drops the connection after an unhandled exception and the next request on it would then fail with a
transport error that hides the real failure.
"""
from __future__ import annotations

import re
from collections.abc import Collection, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit
from uuid import uuid4

import httpx
import jsonpatch
import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fhirserver.settings import Settings
from resources import jsonio
from resources.outcome import InvalidResource
from resources.validate import validate_resource
from tests import strategies as gen
from tests.conftest import LiveServer

FHIR_JSON = "application/fhir+json"
JSON_PATCH = "application/json-patch+json"
MAX_BODY_BYTES = Settings().max_body_bytes   # the test server runs with the default settings
ETAG = re.compile(r'(?:W/)?"([0-9]+)"|([0-9]+)')

fuzz_settings = settings(
    max_examples=150, deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large,
                           HealthCheck.large_base_example, HealthCheck.filter_too_much],
)


# --- the harness ------------------------------------------------------------------------------------------

class Fuzz:
    """Sends requests and checks each response against the status it should have and the writes it made."""

    def __init__(self, http: httpx.Client, base_url: str, log: Path, db: psycopg.Connection) -> None:
        self.http, self.base_url, self.log, self.db = http, base_url, log, db
        self.base_path = urlsplit(base_url).path
        self._log_mark = 0
        self._writes_before = (0, 0)

    def send(self, method: str, path: str, *, query: bytes = b"", body: Any = None,
             headers: dict[str, str | bytes] | None = None) -> httpx.Response:
        url = httpx.URL(f"{self.base_url}/{path}", query=query) if query else f"{self.base_url}/{path}"
        self._writes_before = self.writes()
        self._log_mark = self.log.stat().st_size
        return self.http.request(method, url, content=body, headers=headers)

    def writes(self) -> tuple[int, int]:
        row = self.db.execute("SELECT count(*), coalesce(max(txid), 0) FROM resource_history").fetchone()
        assert row is not None
        return int(row[0]), int(row[1])

    def check(self, response: httpx.Response, statuses: Collection[int]) -> Any:
        """Assert the response is no 5xx, has one of `statuses`, is an OperationOutcome if an error, and wrote
        what it reports. Return the parsed body (None when empty)."""
        status = response.status_code
        assert status < 500, f"server error\n{self.describe(response)}"
        assert status in statuses, f"expected a status in {sorted(statuses)}\n{self.describe(response)}"
        body = None
        if response.content:
            assert media_type(response.headers.get("content-type")) == FHIR_JSON, self.describe(response)
            body = jsonio.loads(response.content)
        if status >= 400:
            assert is_error_outcome(body), f"not an error OperationOutcome\n{self.describe(response)}"
        written = self.writes()[0] - self._writes_before[0]
        expected = versions_written(response)
        assert written == expected, f"wrote {written} version(s), expected {expected}\n{self.describe(response)}"
        if expected == 0:
            assert self.writes()[1] == self._writes_before[1], f"txid moved\n{self.describe(response)}"
        return body

    def segments(self, response: httpx.Response) -> list[str]:
        """The path segments below the FHIR base as the server sees them (percent-decoded like uvicorn does)."""
        raw = response.request.url.raw_path.split(b"?", 1)[0].decode("ascii")
        path = unquote(raw)[len(self.base_path):]
        return [s for s in path.split("/") if s]

    def describe(self, response: httpx.Response) -> str:
        request = response.request
        try:
            body = request.content
            shown = f"{len(body)} bytes: {body[:300]!r}"
        except httpx.RequestNotRead:
            shown = "(streamed)"
        log = self.log.read_bytes()[self._log_mark:].decode("utf-8", "replace")
        return (f"{request.method} {str(request.url)[:400]}\n"
                f"request headers: {dict(request.headers)}\n"
                f"request body: {shown}\n"
                f"response: {response.status_code} {response.headers.get('content-type')} {response.text[:600]}\n"
                f"server log:\n{log[-6000:] or '(nothing)'}")


def media_type(value: str | None) -> str:
    return (value or "").split(";", 1)[0].strip().lower()


def is_error_outcome(body: Any) -> bool:
    if not isinstance(body, dict) or body.get("resourceType") != "OperationOutcome":
        return False
    issues = body.get("issue")
    return (isinstance(issues, list) and bool(issues) and issues[0].get("severity") in ("error", "fatal")
            and all(isinstance(issue.get("code"), str) for issue in issues))


def versions_written(response: httpx.Response) -> int:
    """How many versions a response says its request wrote."""
    method, status = response.request.method, response.status_code
    if status >= 300:
        return 0
    if method == "DELETE":           # a delete that wrote a version reports it in the ETag
        return int("etag" in response.headers)
    if method in ("PUT", "PATCH"):
        return 1
    if method == "POST" and not response.request.url.path.endswith("/_search"):
        return int(status == 201)    # 200: If-None-Exist matched, nothing was created
    return 0


@pytest.fixture()
def fuzz(base_url: str, server: LiveServer, db: psycopg.Connection) -> Iterator[Fuzz]:
    limits = httpx.Limits(max_keepalive_connections=0)
    with httpx.Client(timeout=60, limits=limits, headers={"Accept": FHIR_JSON}) as http:
        yield Fuzz(http, base_url, server.log, db)


@pytest.fixture()
def patient(fuzz: Fuzz) -> str:
    """A fresh valid Patient for one test to work on (shared by all its examples); its id."""
    response = fuzz.send("POST", "Patient", body=gen.encode(gen.valid_patient(uuid4().hex)),
                         headers={"Content-Type": FHIR_JSON})
    return str(fuzz.check(response, {201})["id"])


# --- oracles ----------------------------------------------------------------------------------------------

def parse(body: bytes) -> tuple[bool, Any]:
    """(True, value) when `body` is JSON the server reads (the same reader), else (False, None)."""
    try:
        return True, jsonio.loads(body)
    except (ValueError, RecursionError):
        return False, None


def is_valid_patient(value: Any) -> bool:
    if not isinstance(value, dict) or value.get("resourceType") != "Patient":
        return False
    try:
        validate_resource(value)
    except InvalidResource:
        return False
    return True


def patch_applies(current: dict[str, Any], body: bytes) -> bool:
    """Whether the server must accept this JSON Patch body: an array of operations (each with string `op` and
    `path`) that applies to `current` and leaves a valid Patient with the same id."""
    ok, operations = parse(body)
    if not ok or not isinstance(operations, list):
        return False
    if not all(isinstance(op, dict) and isinstance(op.get("op"), str) and isinstance(op.get("path"), str)
               for op in operations):
        return False
    try:
        patched = jsonpatch.JsonPatch(operations).apply(current, in_place=False)
    except Exception:  # noqa: BLE001 - whatever stops the library from applying it, the server must refuse it
        return False
    return is_valid_patient(patched) and patched.get("id") == current["id"]


def sent_header(value: str) -> bytes:
    """Header bytes for `value`: latin-1 when it fits (what the server decodes with), UTF-8 otherwise."""
    try:
        return value.encode("latin-1")
    except UnicodeEncodeError:
        return value.encode("utf-8")


# --- bodies -----------------------------------------------------------------------------------------------

@fuzz_settings
@given(body=gen.patient_bodies(),
       content_type=st.sampled_from([FHIR_JSON, "application/json", f"{FHIR_JSON}; charset=utf-8", None]))
def test_create_with_malformed_bodies(fuzz: Fuzz, body: bytes, content_type: str | None) -> None:
    ok, value = parse(body)
    if ok and isinstance(value, dict):   # a create ignores the id in the body
        value = {k: v for k, v in value.items() if k not in ("id", "_id")}
    expected = {413} if len(body) > MAX_BODY_BYTES else {201} if ok and is_valid_patient(value) else {400}
    headers: dict[str, str | bytes] = {"Content-Type": content_type} if content_type else {}
    created = fuzz.check(fuzz.send("POST", "Patient", body=body, headers=headers), expected)
    if expected == {201}:
        assert created["resourceType"] == "Patient" and created["meta"]["versionId"] == "1"


@fuzz_settings
@given(data=st.data())
def test_update_with_malformed_bodies(fuzz: Fuzz, patient: str, data: st.DataObject) -> None:
    res_id = data.draw(st.one_of(st.just(patient), st.from_regex(gen.ID_PATTERN, fullmatch=True)
                                 .filter(lambda i: i not in (".", ".."))), label="id")
    value = data.draw(st.one_of(gen.mutated_patients(), gen.json_values), label="body")
    if isinstance(value, dict) and data.draw(st.booleans(), label="with the URL id"):
        value["id"] = res_id
    body = gen.encode(value, ascii_only=data.draw(st.booleans(), label="ascii only"))
    ok, parsed = parse(body)
    valid = ok and is_valid_patient(parsed) and parsed.get("id") == res_id
    expected = {413} if len(body) > MAX_BODY_BYTES else {200, 201} if valid else {400}
    updated = fuzz.check(fuzz.send("PUT", f"Patient/{res_id}", body=body, headers={"Content-Type": FHIR_JSON}),
                         expected)
    if valid:
        assert updated["id"] == res_id


def test_oversized_bodies_are_413(fuzz: Fuzz) -> None:
    body = b" " * (MAX_BODY_BYTES + 1)
    fuzz.check(fuzz.send("POST", "Patient", body=body, headers={"Content-Type": FHIR_JSON}), {413})

    def chunks() -> Iterator[bytes]:      # no Content-Length: the server must count while it reads
        for _ in range(17):
            yield b" " * (1024 * 1024)

    fuzz.check(fuzz.send("POST", "Patient", body=chunks(), headers={"Content-Type": FHIR_JSON}), {413})


# --- ids and versions in the URL --------------------------------------------------------------------------

# interaction: (method, path after the id, statuses for a valid id)
ID_INTERACTIONS: dict[str, tuple[str, str, set[int]]] = {
    "read": ("GET", "", {200, 404, 410}),
    "vread": ("GET", "/_history/1", {200, 404, 410}),
    "history": ("GET", "/_history", {200}),
    "update": ("PUT", "", {200, 201}),
    "patch": ("PATCH", "", {200, 404, 410}),
    "delete": ("DELETE", "", {200, 204}),
}
NOT_5XX = range(200, 500)   # any status but a server error (which check() reports first anyway)


@fuzz_settings
@given(segment=gen.url_segments(), interaction=st.sampled_from(sorted(ID_INTERACTIONS)))
def test_random_ids_in_the_url(fuzz: Fuzz, segment: str, interaction: str) -> None:
    method, suffix, valid_statuses = ID_INTERACTIONS[interaction]
    meant_id = unquote(segment)
    body: bytes | None = None
    headers: dict[str, str | bytes] = {}
    if method == "PUT":
        body, headers = gen.encode({"resourceType": "Patient", "id": meant_id}), {"Content-Type": FHIR_JSON}
    elif method == "PATCH":
        body, headers = b"[]", {"Content-Type": JSON_PATCH}
    response = fuzz.send(method, f"Patient/{segment}{suffix}", body=body, headers=headers)
    seen = fuzz.segments(response)
    expected_shape = ["Patient", "?", *suffix.split("/")[1:]]
    if len(seen) != len(expected_shape) or seen[0] != "Patient" or seen[2:] != expected_shape[2:] \
            or seen[1] in ("_history", "_search") or (seen[1].startswith("$") and not suffix):
        # the id held a '/' or a dot segment, or named an operation ([type]/$name): another endpoint was reached
        fuzz.check(response, NOT_5XX)
        return
    valid = bool(gen.ID_PATTERN.fullmatch(seen[1])) and (method != "PUT" or seen[1] == meant_id)
    fuzz.check(response, valid_statuses if valid else {400})


@fuzz_settings
@given(segment=gen.url_segments(gen.version_text))
def test_random_version_ids(fuzz: Fuzz, patient: str, segment: str) -> None:
    response = fuzz.send("GET", f"Patient/{patient}/_history/{segment}")
    seen = fuzz.segments(response)
    if len(seen) != 4:
        fuzz.check(response, NOT_5XX)
        return
    vid = seen[3]
    if vid.isascii() and vid.isdigit():
        fuzz.check(response, {200} if vid.lstrip("0") == "1" else {404})
    elif vid.isdecimal():      # other Unicode decimal digits: a lenient server may read them as numbers
        fuzz.check(response, {200, 400, 404})
    else:
        fuzz.check(response, {400, 404})


# --- headers ----------------------------------------------------------------------------------------------

def current_version(fuzz: Fuzz, res_id: str) -> int:
    return int(fuzz.check(fuzz.send("GET", f"Patient/{res_id}"), {200})["meta"]["versionId"])


@fuzz_settings
@given(etag=gen.etag_values, method=st.sampled_from(["PUT", "PATCH", "DELETE"]))
def test_if_match(fuzz: Fuzz, patient: str, etag: tuple[str, int | None], method: str) -> None:
    """A malformed If-Match is a 400; a well-formed one is a 412 unless it names the current version.
    DELETE goes to a resource that does not exist, so every well-formed ETag fails there."""
    template, version = etag
    current = current_version(fuzz, patient)
    value = template.replace("{}", str(current if version is None else version))
    header = sent_header(value)
    target, body, content_type = patient, gen.encode({**gen.valid_patient(), "id": patient}), FHIR_JSON
    if method == "PATCH":
        body, content_type = b"[]", JSON_PATCH
    elif method == "DELETE":
        target, body = f"missing-{uuid4().hex}", None
    response = fuzz.send(method, f"Patient/{target}", body=body,
                         headers={"If-Match": header, "Content-Type": content_type})
    seen = header.decode("latin-1").strip()
    match = ETAG.fullmatch(seen)
    if seen == "*" or "," in seen:          # "any version" and ETag lists: HTTP allows them, FHIR is silent
        fuzz.check(response, {200, 204, 400, 412})
    elif not match:
        fuzz.check(response, {400})
    elif method != "DELETE" and int(match.group(1) or match.group(2)) == current:
        fuzz.check(response, {200})
    else:
        fuzz.check(response, {412})


read_headers = st.fixed_dictionaries({}, optional={
    "If-None-Match": gen.etag_values.map(lambda e: e[0].replace("{}", str(1 if e[1] is None else e[1]))),
    "If-Modified-Since": gen.http_dates,
    "Accept": gen.media_types,
    "Prefer": gen.prefer_values,
})


@fuzz_settings
@given(headers=read_headers, path=st.sampled_from(["Patient/{}", "Patient/{}/_history/1", "Patient/{}/_history",
                                                  "Patient"]))
def test_random_read_headers(fuzz: Fuzz, patient: str, headers: dict[str, str], path: str) -> None:
    sent = {name: sent_header(value) for name, value in headers.items()}
    response = fuzz.send("GET", path.format(patient), headers=sent)
    fuzz.check(response, {200, 304, 400, 406})


create_headers = st.fixed_dictionaries({}, optional={
    "Content-Type": gen.media_types,
    "Accept": gen.media_types,
    "Prefer": gen.prefer_values,
    "If-None-Exist": st.one_of(gen.query_strings().map(bytes.decode).filter(bool), gen.header_text),
})


@fuzz_settings
@given(headers=create_headers)
def test_create_with_random_headers(fuzz: Fuzz, headers: dict[str, str]) -> None:
    sent = {name: sent_header(value) for name, value in headers.items()}
    body = gen.encode(gen.valid_patient(uuid4().hex))
    response = fuzz.send("POST", "Patient", body=body, headers=sent)
    if media_type(headers.get("Content-Type")) not in ("", FHIR_JSON, "application/json"):
        fuzz.check(response, {406, 415})
    else:
        fuzz.check(response, {200, 201, 400, 406, 412})


# --- query strings ----------------------------------------------------------------------------------------

READ_PATHS = ["Patient/{}", "Patient/{}/_history", "Patient/{}/_history/1", "Patient/_history", "_history",
              "Patient", "metadata"]


@fuzz_settings
@given(path=st.sampled_from(READ_PATHS), query=gen.query_strings(), strict=st.booleans())
def test_random_query_strings(fuzz: Fuzz, patient: str, path: str, query: bytes, strict: bool) -> None:
    headers: dict[str, str | bytes] = {"Prefer": "handling=strict"} if strict else {}
    response = fuzz.send("GET", path.format(patient), query=query, headers=headers)
    body = fuzz.check(response, {200, 400, 406})
    if response.status_code == 200:
        assert body["resourceType"] in ("Patient", "Bundle", "CapabilityStatement"), fuzz.describe(response)


@fuzz_settings
@given(method=st.sampled_from(["PUT", "DELETE"]), query=gen.query_strings())
def test_conditional_writes_with_random_criteria(fuzz: Fuzz, method: str, query: bytes) -> None:
    if method == "PUT":
        body = gen.encode(gen.valid_patient(uuid4().hex))
        response = fuzz.send("PUT", "Patient", query=query, body=body, headers={"Content-Type": FHIR_JSON})
        fuzz.check(response, {200, 201, 400, 406, 412})
    else:
        fuzz.check(fuzz.send("DELETE", "Patient", query=query), {200, 204, 400, 406, 412})


@fuzz_settings
@given(body=st.one_of(gen.query_strings(), st.binary(max_size=64)),
       content_type=st.sampled_from(["application/x-www-form-urlencoded", None, FHIR_JSON, "text/plain"]))
def test_search_with_random_form_bodies(fuzz: Fuzz, body: bytes, content_type: str | None) -> None:
    headers: dict[str, str | bytes] = {"Content-Type": content_type} if content_type else {}
    response = fuzz.send("POST", "Patient/_search", body=body, headers=headers)
    fuzz.check(response, {200, 400, 415})


# --- JSON Patch -------------------------------------------------------------------------------------------

@fuzz_settings
@given(body=gen.patch_bodies,
       content_type=st.sampled_from([JSON_PATCH, JSON_PATCH, f"{JSON_PATCH}; charset=utf-8", FHIR_JSON]))
def test_random_json_patches(fuzz: Fuzz, patient: str, body: bytes, content_type: str) -> None:
    current = fuzz.check(fuzz.send("GET", f"Patient/{patient}"), {200})
    if media_type(content_type) != JSON_PATCH:
        expected = {400}   # FHIR JSON is a FHIRPath Patch: a JSON Patch array is not the Parameters it needs
    else:
        expected = {200} if patch_applies(current, body) else {400, 422}
    response = fuzz.send("PATCH", f"Patient/{patient}", body=body, headers={"Content-Type": content_type})
    patched = fuzz.check(response, expected)
    version = int(current["meta"]["versionId"])
    if response.status_code == 200:
        assert patched["id"] == patient and patched["meta"]["versionId"] == str(version + 1)
    else:
        assert current_version(fuzz, patient) == version


# --- methods ----------------------------------------------------------------------------------------------

@fuzz_settings
@given(method=st.sampled_from(["OPTIONS", "TRACE", "PROPFIND", "MKCOL", "LINK", "PATCH", "POST", "PUT",
                               "DELETE"]),
       path=st.sampled_from(["", "metadata", "_history", "Patient/_history", "Patient/{}/_history",
                             "Patient/{}/_history/1", "Patient/_search", "$export", "_foo", "Foo", "patient"]))
def test_unsupported_methods_and_endpoints(fuzz: Fuzz, patient: str, method: str, path: str) -> None:
    """Methods an endpoint does not take are a 405 and unknown endpoints a 404, as OperationOutcomes."""
    response = fuzz.send(method, path.format(patient), body=b"{}", headers={"Content-Type": FHIR_JSON})
    fuzz.check(response, {400, 404, 405, 415})


# --- regressions: inputs the properties above found failing -----------------------------------------------

DEEP = b"[" * 1000 + b"]" * 1000
FORM = {"Content-Type": "application/x-www-form-urlencoded"}
PATCH = {"Content-Type": JSON_PATCH}
VALID = gen.encode(gen.valid_patient("regression"))


def case(name: str, method: str, path: str, statuses: set[int], *, query: bytes = b"", body: bytes | None = None,
         headers: dict[str, str] | None = None) -> Any:
    return pytest.param(method, path, query, body, headers or {}, statuses, id=name)


# `{}` in a path is the id of a fresh Patient.
REGRESSIONS = [
    # A lone surrogate read by the precise parser (taken for numbers like 1.50) ends up in an error message,
    # which orjson then cannot write.
    case("create-lone-surrogate-key-raw", "POST", "Patient", {400},
         body=b'{"resourceType":"Patient","\xed\xa0\x80":1.50}', headers={"Content-Type": FHIR_JSON}),
    case("create-lone-surrogate-key-escaped", "POST", "Patient", {400},
         body=b'{"resourceType":"Patient","\\ud800":1.50}', headers={"Content-Type": FHIR_JSON}),
    case("patch-lone-surrogate-in-test-value", "PATCH", "Patient/{}", {400, 422}, headers=PATCH,
         body=b'[{"op":"test","path":"/gender","value":"\\ud800"},{"op":"test","path":"/x","value":1.50}]'),
    case("patch-lone-surrogate-in-path", "PATCH", "Patient/{}", {400, 422}, headers=PATCH,
         body=b'[{"op":"replace","path":"/\\ud800/a","value":1.50}]'),
    # jsonpatch recurses over a deeply nested value: copying it (add) or printing it (a failed test).
    case("patch-deep-add-value", "PATCH", "Patient/{}", {400, 422}, headers=PATCH,
         body=b'[{"op":"add","path":"/gender","value":' + DEEP + b"}]"),
    case("patch-deep-test-value", "PATCH", "Patient/{}", {400, 422}, headers=PATCH,
         body=b'[{"op":"test","path":"/gender","value":' + DEEP + b"}]"),
    # str.isdigit() accepts what int() refuses: superscripts, and more than 4300 digits.
    case("vread-superscript-two", "GET", "Patient/{}/_history/%C2%B2", {400, 404}),
    case("vread-5000-digits", "GET", "Patient/{}/_history/" + "9" * 5000, {400, 404}),
    case("history-count-superscript-two", "GET", "Patient/{}/_history", {400}, query=b"_count=%C2%B2"),
    case("history-count-5000-digits", "GET", "Patient/{}/_history", {200, 400}, query=b"_count=" + b"9" * 5000),
    case("search-count-superscript-one", "GET", "Patient", {400}, query=b"_count=%C2%B9"),
    case("search-count-5000-digits", "GET", "Patient", {200, 400}, query=b"_count=" + b"9" * 5000),
    # Dates at the ends of the datetime range overflow when shifted to UTC or widened to a range.
    case("history-since-year-10000-in-utc", "GET", "_history", {200, 400}, query=b"_since=9999-12-31T23:59:59-01:00"),
    case("history-since-year-0-in-utc", "GET", "_history", {200, 400}, query=b"_since=0001-01-01T00:00:00%2B01:00"),
    case("history-at-year-9999", "GET", "Patient/{}/_history", {200, 400}, query=b"_at=9999"),
    case("history-at-9999-12-31", "GET", "_history", {200, 400}, query=b"_at=9999-12-31"),
    # NUL characters reach PostgreSQL as text parameters.
    case("search-cursor-nul", "GET", "Patient", {400}, query=b"_cursor=AA"),
    case("search-post-cursor-nul", "POST", "Patient/_search", {400}, body=b"_cursor=AA", headers=FORM),
    case("search-id-nul", "GET", "Patient", {200, 400}, query=b"_id=%00"),
    case("search-identifier-nul", "GET", "Patient", {200, 400}, query=b"identifier=%00"),
    case("create-if-none-exist-nul", "POST", "Patient", {201, 400}, body=VALID,
         headers={"Content-Type": FHIR_JSON, "If-None-Exist": "identifier=a%00"}),
    case("conditional-update-nul", "PUT", "Patient", {201, 400}, query=b"identifier=urn%3Afuzz%7C%00", body=VALID,
         headers={"Content-Type": FHIR_JSON}),
    case("conditional-delete-nul", "DELETE", "Patient", {200, 204, 400}, query=b"_id=%00"),
    # The route pattern's `$` matches before a final newline, so `Patient/x%0A` acts on Patient/x.
    case("read-id-trailing-newline", "GET", "Patient/{}%0A", {400}),
    case("delete-id-trailing-newline", "DELETE", "Patient/{}%0A", {400}),
]


@pytest.mark.parametrize(("method", "path", "query", "body", "headers", "statuses"), REGRESSIONS)
def test_regressions(fuzz: Fuzz, patient: str, method: str, path: str, query: bytes, body: bytes | None,
                     headers: dict[str, str], statuses: set[int]) -> None:
    response = fuzz.send(method, path.format(patient), query=query, body=body, headers=dict(headers))
    fuzz.check(response, statuses)
