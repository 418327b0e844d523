"""Black-box checks of the FHIR R4 RESTful API (http.html) over plain HTTP.

Each check is a function of a `Client` that raises AssertionError with a readable message when the server
departs from the specification. Checks are independent: each creates its own resources with unique
identifiers and never relies on data left by another check, so they can run in any order and against a
server that already holds data. Checks for optional features the server does not advertise in its
CapabilityStatement raise `CheckSkipped`.

Where R4 allows several answers (delete: 200, 202 or 204; a failed patch: 400, 409 or 422; Location absolute
or relative) every allowed answer passes. A few checks also assert choices this project has made where R4
leaves room, and say so in their docstrings: version ids are "1", "2", ... (R4: opaque ids); history
entries carry fullUrl, response.etag and response.lastModified (R4: SHOULD); `_elements` returns nothing
beyond what was asked plus mandatory/modifier elements (R4: servers may return more).

The checks use `assert`, so they must not run under `python -O`; `run_all` refuses to.
"""
from __future__ import annotations

import email.utils
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlencode, urlsplit

from conformance.client import FHIR_JSON, JSON_PATCH, Client, Response

Resource = dict[str, Any]
Check = Callable[[Client], None]

IDENTIFIER_SYSTEM = "urn:fhirserver:conformance"
SUBSETTED = ("http://terminology.hl7.org/CodeSystem/v3-ObservationValue", "SUBSETTED")
REPRESENTATION = {"Prefer": "return=representation"}
HISTORY_METHODS = {"POST", "PUT", "PATCH", "DELETE"}
DELETED = (200, 202, 204)  # http.html delete: 200 with a body, 204 without, 202 if non-committal

CHECKS: list[Check] = []


@dataclass
class CheckResult:
    name: str
    passed: bool
    detail: str
    skipped: bool = False


class CheckSkipped(Exception):
    """Raised by a check whose feature the server does not claim to support."""


def check(func: Check) -> Check:
    CHECKS.append(func)
    return func


def run_all(base_url: str, *, token: str | None = None, only: Iterable[Check] | None = None) -> list[CheckResult]:
    """Run every check (or those in `only`) against `base_url`; a crash in a check is its failure, not raised."""
    if not __debug__:
        raise RuntimeError("the conformance checks are assertions: run them without python -O")
    client = Client(base_url, token=token)
    results = []
    for func in CHECKS if only is None else only:
        try:
            func(client)
        except CheckSkipped as exc:
            results.append(CheckResult(func.__name__, True, f"skipped: {exc}", skipped=True))
        except AssertionError as exc:
            results.append(CheckResult(func.__name__, False, str(exc) or "assertion failed"))
        except Exception as exc:  # connection refused, timeouts, ...: still a failure of this check only
            results.append(CheckResult(func.__name__, False, f"{type(exc).__name__}: {exc}"))
        else:
            results.append(CheckResult(func.__name__, True, "ok"))
    return results


# --- assertion helpers -------------------------------------------------------------------------------

def expect_status(resp: Response, *statuses: int) -> None:
    if resp.status not in statuses:
        wanted = " or ".join(str(s) for s in statuses)
        raise AssertionError(f"{resp.describe()}, expected {wanted}; body: {resp.text[:400]!r}")


def expect_fhir_json(resp: Response) -> None:
    assert resp.media_type == FHIR_JSON, (
        f"{resp.describe()}: Content-Type is {resp.header('content-type')!r}, expected {FHIR_JSON}")


def expect_resource(resp: Response, rtype: str, *statuses: int) -> Resource:
    """Status in `statuses` (default 200), FHIR JSON body of type `rtype`; returns the body."""
    expect_status(resp, *(statuses or (200,)))
    expect_fhir_json(resp)
    body = resp.json()
    assert isinstance(body, dict) and body.get("resourceType") == rtype, (
        f"{resp.describe()}: expected a {rtype}, got {str(body)[:200]}")
    return body


def expect_outcome(resp: Response, *statuses: int) -> Resource:
    """An error answer: one of `statuses` with an OperationOutcome body carrying at least one error issue."""
    outcome = expect_resource(resp, "OperationOutcome", *statuses)
    issues = outcome.get("issue") or []
    assert issues, f"{resp.describe()}: OperationOutcome without issues"
    for issue in issues:
        assert issue.get("severity") and issue.get("code"), f"{resp.describe()}: issue lacks severity/code: {issue}"
    assert any(i["severity"] in ("error", "fatal") for i in issues), (
        f"{resp.describe()}: no issue with severity error/fatal in {issues}")
    return outcome


def etag_version(resp: Response) -> str:
    """The version in a weak ETag W/"n" (http.html: the version id is a weak ETag)."""
    etag = resp.header("etag")
    assert etag, f"{resp.describe()}: no ETag header"
    assert etag.startswith('W/"') and etag.endswith('"') and len(etag) > 4, (
        f'{resp.describe()}: ETag {etag!r} is not of the form W/"versionId"')
    return etag[3:-1]


def expect_etag(resp: Response, version: str) -> None:
    got = etag_version(resp)
    assert got == version, f'{resp.describe()}: ETag W/"{got}", expected W/"{version}"'


def parse_instant(value: Any, what: str) -> datetime:
    assert isinstance(value, str) and "T" in value, f"{what}: {value!r} is not a FHIR instant"
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError as exc:
        raise AssertionError(f"{what}: {value!r} is not a FHIR instant") from exc
    assert parsed.tzinfo is not None, f"{what}: {value!r} has no time zone"
    return parsed


def format_instant(moment: datetime) -> str:
    """A FHIR instant with millisecond precision in UTC."""
    moment = moment.astimezone(UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def last_modified(resp: Response) -> datetime:
    value = resp.header("last-modified")
    assert value, f"{resp.describe()}: no Last-Modified header"
    return http_date(value, f"{resp.describe()}: Last-Modified")


def http_date(value: str, what: str) -> datetime:
    """Parse an HTTP-date (always GMT) into an aware UTC datetime."""
    try:
        parsed = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError) as exc:
        raise AssertionError(f"{what}: {value!r} is not an HTTP-date") from exc
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)


def expect_meta(resource: Resource, version: str, where: str) -> datetime:
    """meta.versionId == version and meta.lastUpdated is an instant; returns lastUpdated."""
    meta = resource.get("meta") or {}
    got = meta.get("versionId")
    assert got == version, f"{where}: meta.versionId is {got!r}, expected {version!r}"
    return parse_instant(meta.get("lastUpdated"), f"{where}: meta.lastUpdated")


def expect_headers_match(resp: Response, resource: Resource) -> None:
    """ETag carries meta.versionId and Last-Modified is meta.lastUpdated to the second."""
    meta = resource.get("meta") or {}
    expect_etag(resp, str(meta.get("versionId")))
    updated = parse_instant(meta.get("lastUpdated"), f"{resp.describe()}: meta.lastUpdated")
    modified = last_modified(resp)
    assert abs((updated - modified).total_seconds()) < 1, (
        f"{resp.describe()}: Last-Modified {resp.header('last-modified')} does not match lastUpdated {updated}")


def expect_subsetted(resource: Resource, where: str) -> None:
    meta = resource.get("meta") or {}
    assert any((c.get("system"), c.get("code")) == SUBSETTED for c in meta.get("tag") or []), (
        f"{where}: resource is not marked SUBSETTED in meta.tag: {meta}")


def location_of(resp: Response, rtype: str) -> tuple[str, str]:
    """Parse Location [base]/[type]/[id]/_history/[vid] (absolute, or relative to [base]) into (id, vid)."""
    location = resp.header("location")
    assert location, f"{resp.describe()}: no Location header"
    parts = urlsplit(location).path.rstrip("/").split("/")
    assert len(parts) >= 4 and parts[-4] == rtype and parts[-2] == "_history", (
        f"{resp.describe()}: Location {location!r} is not [base]/{rtype}/[id]/_history/[vid]")
    return parts[-3], parts[-1]


def absolute(client: Client, ref: str) -> str:
    """Resolve a URL the server returned: absolute as is, '/path' against the origin, otherwise against [base]."""
    if ref.startswith(("http://", "https://")):
        return ref
    if ref.startswith("/"):
        base = urlsplit(client.base_url)
        return f"{base.scheme}://{base.netloc}{ref}"
    return client.url(ref)


def type_and_id(location: str) -> tuple[str, str]:
    """'[base/]Type/id[/_history/vid]' (absolute or relative) -> (Type, id)."""
    parts = urlsplit(location).path.split("/_history")[0].rstrip("/").split("/")
    assert len(parts) >= 2, f"location {location!r} is not [type]/[id]"
    return parts[-2], parts[-1]


def identifier_param(value: str) -> str:
    return f"{IDENTIFIER_SYSTEM}|{value}"


def unique() -> str:
    return uuid.uuid4().hex


def new_patient(value: str | None = None, **elements: Any) -> Resource:
    """A Patient with a unique identifier (system IDENTIFIER_SYSTEM) and family name."""
    value = value or unique()
    patient: Resource = {
        "resourceType": "Patient",
        "identifier": [{"system": IDENTIFIER_SYSTEM, "value": value}],
        "name": [{"family": f"Conformance{value[:8]}", "given": ["Test"]}],
    }
    patient.update(elements)
    return patient


def create(client: Client, resource: Resource) -> Resource:
    """POST a resource (201 expected) and return it as stored, read back when the body is not returned."""
    rtype = resource["resourceType"]
    resp = client.post(rtype, json_body=resource, headers=REPRESENTATION)
    expect_status(resp, 201)
    rid, _ = location_of(resp, rtype)
    # Prefer is a request the server SHOULD honour; fall back to a read when no body came back.
    stored = expect_resource(resp, rtype, 201) if resp.body else expect_resource(client.get(f"{rtype}/{rid}"), rtype)
    assert stored.get("id") == rid, f"{resp.describe()}: body id {stored.get('id')!r} differs from Location id {rid!r}"
    return stored


def update(client: Client, resource: Resource, *statuses: int) -> Response:
    resp = client.put(f"{resource['resourceType']}/{resource['id']}", json_body=resource, headers=REPRESENTATION)
    expect_status(resp, *(statuses or (200,)))
    return resp


def search(client: Client, rtype: str, params: list[tuple[str, str]]) -> list[Resource]:
    """GET search; returns the resources of the `match` entries on the first page."""
    bundle = expect_resource(client.get(rtype, params=params), "Bundle")
    assert bundle.get("type") == "searchset", f"search {rtype}?{urlencode(params)}: Bundle.type {bundle.get('type')!r}"
    return [e["resource"] for e in bundle.get("entry") or []
            if (e.get("search") or {}).get("mode", "match") == "match" and "resource" in e]


def server_now(client: Client) -> str:
    """The server's clock (its Date header) less a second, as an instant: a `_since` that precedes our next write."""
    resp = client.get("metadata")
    date = resp.header("date")
    moment = http_date(date, f"{resp.describe()}: Date") if date else datetime.now(UTC) - timedelta(seconds=60)
    return format_instant(moment - timedelta(seconds=1))


def written_with_identifier(client: Client, value: str, since: str,
                            history: str = "Patient/_history") -> list[Resource]:
    """Entries of a history (type Patient by default) since `since` carrying our identifier `value`, newest first.

    Checks use this instead of search to see what was (not) written, so they test only their own interaction.
    """
    entries = history_pages(client, history, [("_since", since)])
    return [e for e in entries
            if any(i.get("system") == IDENTIFIER_SYSTEM and i.get("value") == value
                   for i in (e.get("resource") or {}).get("identifier") or [])]


def written_id(resp: Response, rtype: str) -> str:
    """The id a create answered with: from Location, else from a returned resource."""
    if resp.header("location"):
        return location_of(resp, rtype)[0]
    body = resp.json() if resp.body else {}
    assert body.get("resourceType") == rtype and body.get("id"), f"{resp.describe()}: neither Location nor a {rtype}"
    return str(body["id"])


def history_pages(client: Client, path: str, params: list[tuple[str, str]], max_pages: int = 50) -> list[Resource]:
    """Fetch a history and follow `next` links; returns every entry, each checked against R4's rules."""
    resp = client.get(path, params=params)
    entries: list[Resource] = []
    for _ in range(max_pages):
        bundle = expect_resource(resp, "Bundle")
        kind = bundle.get("type")
        assert kind == "history", f"{resp.describe()}: Bundle.type {kind!r}, expected history"
        page = bundle.get("entry") or []
        for entry in page:
            expect_history_entry(entry, resp)
        entries.extend(page)
        next_url = link(bundle, "next")
        if not next_url:
            return entries
        resp = client.get(absolute(client, next_url))
    raise AssertionError(f"GET {path}: more than {max_pages} pages of history")


def expect_history_entry(entry: Resource, resp: Response) -> None:
    """bdl-3/bdl-4: request and response are mandatory in a history bundle; http.html: PUT/POST carry a resource."""
    where = f"{resp.describe()}: history entry {entry.get('fullUrl')!r}"
    assert entry.get("fullUrl"), f"{where}: no fullUrl"
    assert "/_history/" not in entry["fullUrl"], f"{where}: fullUrl is version specific (bdl-8)"
    request, response = entry.get("request") or {}, entry.get("response") or {}
    assert request.get("method") in HISTORY_METHODS, f"{where}: request.method {request.get('method')!r}"
    assert request.get("url"), f"{where}: no request.url"
    assert response.get("status"), f"{where}: no response.status"
    assert response.get("etag", "").startswith('W/"'), f"{where}: response.etag {response.get('etag')!r}"
    parse_instant(response.get("lastModified"), f"{where}: response.lastModified")
    if request["method"] == "DELETE":
        assert "resource" not in entry, f"{where}: a DELETE entry carries a resource"
    elif request["method"] in ("POST", "PUT"):
        assert "resource" in entry, f"{where}: a {request['method']} entry has no resource"


def entry_version(entry: Resource) -> str:
    return str(entry["response"]["etag"])[3:-1]


def entry_time(entry: Resource) -> datetime:
    return datetime.fromisoformat(entry["response"]["lastModified"])


def expect_newest_first(entries: list[Resource], where: str) -> None:
    times = [entry_time(e) for e in entries]
    assert times == sorted(times, reverse=True), f"{where}: history is not sorted newest first: {times}"


def link(bundle: Resource, relation: str) -> str | None:
    for item in bundle.get("link") or []:
        if item.get("relation") == relation:
            return str(item.get("url"))
    return None


def capability(client: Client) -> Resource:
    return expect_resource(client.get("metadata"), "CapabilityStatement")


def require_system_interaction(client: Client, code: str) -> None:
    rest = (capability(client).get("rest") or [{}])[0]
    if code not in {i.get("code") for i in rest.get("interaction") or []}:
        raise CheckSkipped(f"the CapabilityStatement does not list the {code!r} system interaction")


def sleep_past(moment: datetime, margin: float = 0.05) -> None:
    """Sleep until the local clock is past `moment` (the server is assumed to share it within a few ms)."""
    delay = (moment - datetime.now(UTC)).total_seconds() + margin
    if delay > 0:
        time.sleep(delay)


def issue_expressions(outcome: Resource) -> list[str]:
    return [expr for issue in outcome.get("issue") or [] for expr in issue.get("expression") or []]


# --- capabilities --------------------------------------------------------------------------------------

@check
def check_metadata(client: Client) -> None:
    """GET [base]/metadata: 200 CapabilityStatement, fhirVersion 4.0.1, rest[0].mode server, JSON format."""
    cs = capability(client)
    assert cs.get("fhirVersion") == "4.0.1", f"fhirVersion is {cs.get('fhirVersion')!r}"
    assert cs.get("status") and cs.get("date") and cs.get("kind"), "status, date and kind are mandatory"
    assert cs.get("format"), "format is mandatory"
    assert any("json" in f for f in cs["format"]), f"format {cs['format']} lists no JSON"
    rest = cs.get("rest") or []
    assert rest and rest[0].get("mode") == "server", f"rest[0].mode is {rest[0].get('mode') if rest else None!r}"
    types = [r.get("type") for r in rest[0].get("resource") or []]
    assert "Patient" in types, "the CapabilityStatement does not list Patient (every other check needs it)"
    assert len(types) == len(set(types)), "a resource type is listed twice (cpb-9)"


@check
def check_capability_types_routable(client: Client) -> None:
    """Every type the CapabilityStatement lists with `read` answers an unknown id with 404, not 405/5xx."""
    rest = (capability(client).get("rest") or [{}])[0]
    missing = "x" + unique()
    wrong = []
    for res in rest.get("resource") or []:
        if "read" in {i.get("code") for i in res.get("interaction") or []}:
            resp = client.get(f"{res['type']}/{missing}")
            if resp.status != 404 or resp.media_type != FHIR_JSON:
                wrong.append(f"{res['type']}: {resp.status} {resp.media_type}")
    assert not wrong, f"advertised types whose read of an unknown id is not a FHIR 404: {wrong[:20]}"


# --- create --------------------------------------------------------------------------------------------

@check
def check_create(client: Client) -> None:
    """POST [type]: 201, Location [base]/[type]/[id]/_history/1, ETag W/"1", Last-Modified; return=representation."""
    resp = client.post("Patient", json_body=new_patient(), headers=REPRESENTATION)
    body = expect_resource(resp, "Patient", 201)
    rid, vid = location_of(resp, "Patient")
    location = resp.header("location") or ""
    expected = f"{urlsplit(client.base_url).path}/Patient/{rid}/_history/{vid}"
    got = urlsplit(absolute(client, location)).path  # R4: the Location MAY be relative
    assert got == expected, f"Location {location!r} is not {expected!r} under [base]"
    assert vid == "1", f"Location version is {vid!r}, expected 1"
    expect_etag(resp, "1")
    assert body.get("id") == rid, f"returned id {body.get('id')!r} differs from the Location id {rid!r}"
    expect_meta(body, "1", resp.describe())
    expect_headers_match(resp, body)


@check
def check_create_prefer_minimal(client: Client) -> None:
    """POST with Prefer: return=minimal: 201 with Location and an empty body."""
    resp = client.post("Patient", json_body=new_patient(), headers={"Prefer": "return=minimal"})
    expect_status(resp, 201)
    location_of(resp, "Patient")
    expect_etag(resp, "1")
    assert resp.body.strip() == b"", f"{resp.describe()}: return=minimal but the body is {resp.text[:200]!r}"


@check
def check_create_prefer_outcome(client: Client) -> None:
    """POST with Prefer: return=OperationOutcome: 201 with an OperationOutcome body."""
    resp = client.post("Patient", json_body=new_patient(), headers={"Prefer": "return=OperationOutcome"})
    expect_resource(resp, "OperationOutcome", 201)
    location_of(resp, "Patient")


@check
def check_create_ignores_client_id_and_meta(client: Client) -> None:
    """create SHALL ignore a client id and the client's meta.versionId/lastUpdated."""
    sent = new_patient(id="client" + unique()[:20], meta={"versionId": "99", "lastUpdated": "2001-01-01T00:00:00Z"})
    stored = create(client, sent)
    assert stored["id"] != sent["id"], "the server kept the id the client sent on create"
    updated = expect_meta(stored, "1", "created Patient")
    assert updated.year > 2001, f"the server kept the client's lastUpdated {stored['meta']['lastUpdated']}"
    read = expect_resource(client.get(f"Patient/{stored['id']}"), "Patient")
    expect_meta(read, "1", "read after create")


# --- read / vread ----------------------------------------------------------------------------------------

@check
def check_read(client: Client) -> None:
    """GET [type]/[id]: 200, the same content, id, ETag W/"1" and Last-Modified matching meta."""
    sent = new_patient(gender="female", birthDate="1970-03-04")
    stored = create(client, sent)
    resp = client.get(f"Patient/{stored['id']}")
    read = expect_resource(resp, "Patient")
    assert read.get("id") == stored["id"], f"read returned id {read.get('id')!r}"
    for key in ("identifier", "name", "gender", "birthDate"):
        assert read.get(key) == sent[key], f"read {key} is {read.get(key)!r}, sent {sent[key]!r}"
    expect_meta(read, "1", resp.describe())
    expect_headers_match(resp, read)


@check
def check_vread(client: Client) -> None:
    """GET [type]/[id]/_history/[vid] returns that version; an unknown version is 404."""
    stored = create(client, new_patient(gender="male"))
    changed = dict(stored, gender="female")
    update(client, changed)
    v1 = client.get(f"Patient/{stored['id']}/_history/1")
    old = expect_resource(v1, "Patient")
    expect_meta(old, "1", v1.describe())
    assert old.get("gender") == "male", f"{v1.describe()}: version 1 has gender {old.get('gender')!r}"
    expect_etag(v1, "1")
    v2 = client.get(f"Patient/{stored['id']}/_history/2")
    new = expect_resource(v2, "Patient")
    expect_meta(new, "2", v2.describe())
    assert new.get("gender") == "female", f"{v2.describe()}: version 2 has gender {new.get('gender')!r}"
    expect_outcome(client.get(f"Patient/{stored['id']}/_history/999999"), 404)


@check
def check_read_unknown_id(client: Client) -> None:
    """read of an id that never existed: 404 with an OperationOutcome."""
    expect_outcome(client.get(f"Patient/never{unique()}"), 404)


@check
def check_unknown_resource_type(client: Client) -> None:
    """An unknown resource type (names are case sensitive) is 404 with an OperationOutcome."""
    expect_outcome(client.get("NotAResourceType/1"), 404)
    expect_outcome(client.get("NotAResourceType"), 404)
    expect_outcome(client.get("patient/1"), 404)
    expect_outcome(client.post("NotAResourceType", json_body={"resourceType": "NotAResourceType"}), 404)


# --- update ----------------------------------------------------------------------------------------------

@check
def check_update(client: Client) -> None:
    """PUT [type]/[id]: 200, versionId 2 and ETag W/"2"; the client's meta.versionId/lastUpdated are ignored."""
    stored = create(client, new_patient(gender="male"))
    changed = dict(stored, gender="female", meta={"versionId": "41", "lastUpdated": "2001-01-01T00:00:00Z"})
    resp = update(client, changed)
    expect_etag(resp, "2")
    last_modified(resp)
    if resp.body:
        expect_meta(expect_resource(resp, "Patient"), "2", resp.describe())
    read_resp = client.get(f"Patient/{stored['id']}")
    read = expect_resource(read_resp, "Patient")
    updated = expect_meta(read, "2", read_resp.describe())
    assert updated.year > 2001, "the server kept the client's meta.lastUpdated"
    assert read.get("gender") == "female", f"the update was not stored: gender {read.get('gender')!r}"
    expect_headers_match(read_resp, read)


@check
def check_update_as_create(client: Client) -> None:
    """PUT to a new client-chosen id creates the resource: 201, ETag W/"1", then readable."""
    rid = "conf-" + unique()
    resp = client.put(f"Patient/{rid}", json_body=new_patient(id=rid), headers=REPRESENTATION)
    expect_status(resp, 201)
    expect_etag(resp, "1")
    last_modified(resp)
    if resp.header("location"):
        assert location_of(resp, "Patient") == (rid, "1"), f"Location {resp.header('location')!r}"
    read = expect_resource(client.get(f"Patient/{rid}"), "Patient")
    assert read.get("id") == rid, f"read returned id {read.get('id')!r}"
    expect_meta(read, "1", "read after update-as-create")


@check
def check_update_id_mismatch(client: Client) -> None:
    """PUT whose body id differs from the URL id: 400 and nothing written."""
    stored = create(client, new_patient())
    resp = client.put(f"Patient/{stored['id']}", json_body=dict(stored, id="other" + unique()[:20]))
    expect_outcome(resp, 400)
    expect_meta(expect_resource(client.get(f"Patient/{stored['id']}"), "Patient"), "1", "read after rejected PUT")


@check
def check_update_missing_id(client: Client) -> None:
    """PUT whose body has no id: 400 (http.html: the body SHALL have an id equal to the URL id)."""
    stored = create(client, new_patient())
    body = {k: v for k, v in stored.items() if k != "id"}
    expect_outcome(client.put(f"Patient/{stored['id']}", json_body=body), 400)
    expect_meta(expect_resource(client.get(f"Patient/{stored['id']}"), "Patient"), "1", "read after rejected PUT")


@check
def check_update_if_match(client: Client) -> None:
    """Version-aware update: If-Match with the current ETag is 200; a stale one is 412 and writes nothing."""
    stored = create(client, new_patient(gender="male"))
    path = f"Patient/{stored['id']}"
    resp = client.put(path, json_body=dict(stored, gender="female"), headers={"If-Match": 'W/"1"'})
    expect_status(resp, 200)
    expect_etag(resp, "2")
    stale = client.put(path, json_body=dict(stored, gender="other"), headers={"If-Match": 'W/"1"'})
    expect_outcome(stale, 412)
    read = expect_resource(client.get(path), "Patient")
    expect_meta(read, "2", "read after a stale If-Match")
    assert read.get("gender") == "female", f"a stale If-Match update was written: gender {read.get('gender')!r}"


# --- conditional read ------------------------------------------------------------------------------------

@check
def check_conditional_read_if_none_match(client: Client) -> None:
    """If-None-Match with the current ETag is 304 Not Modified; with another version it is 200."""
    stored = create(client, new_patient())
    path = f"Patient/{stored['id']}"
    resp = client.get(path, headers={"If-None-Match": 'W/"1"'})
    expect_status(resp, 304)
    assert not resp.body, f"{resp.describe()}: a 304 must not have a body"
    expect_resource(client.get(path, headers={"If-None-Match": 'W/"999"'}), "Patient")


@check
def check_conditional_read_if_modified_since(client: Client) -> None:
    """If-Modified-Since after lastUpdated is 304; one before lastUpdated gives the resource (200)."""
    stored = create(client, new_patient())
    path = f"Patient/{stored['id']}"
    modified = last_modified(client.get(path))
    since = modified + timedelta(seconds=1)
    sleep_past(since)  # a date in the server's future may be ignored (RFC 9110 13.1.3)
    resp = client.get(path, headers={"If-Modified-Since": email.utils.format_datetime(since, usegmt=True)})
    expect_status(resp, 304)
    before = email.utils.format_datetime(modified - timedelta(days=1), usegmt=True)
    expect_resource(client.get(path, headers={"If-Modified-Since": before}), "Patient")


# --- delete ------------------------------------------------------------------------------------------------

@check
def check_delete(client: Client) -> None:
    """DELETE: 200/202/204, read 410, delete again has no effect, history shows the delete, vread of it 410."""
    stored = create(client, new_patient())
    path = f"Patient/{stored['id']}"
    expect_status(client.delete(path), *DELETED)
    expect_outcome(client.get(path), 410)
    expect_status(client.delete(path), *DELETED)
    entries = history_pages(client, f"{path}/_history", [])
    methods = [e["request"]["method"] for e in entries]
    assert methods == ["DELETE", "POST"], f"instance history after create+delete has methods {methods}"
    deleted = entry_version(entries[0])
    expect_status(client.get(f"{path}/_history/{deleted}"), 410)
    expect_meta(expect_resource(client.get(f"{path}/_history/1"), "Patient"), "1", "vread of v1 after delete")


@check
def check_update_after_delete(client: Client) -> None:
    """A deleted resource is brought back to life by PUT: 201 (R4 update), a new version, all three in history."""
    stored = create(client, new_patient())
    path = f"Patient/{stored['id']}"
    expect_status(client.delete(path), *DELETED)
    resp = update(client, stored, 201)
    version = etag_version(resp)
    assert version != "1", f"the revived resource reuses version {version}"
    expect_resource(client.get(path), "Patient")
    methods = [e["request"]["method"] for e in history_pages(client, f"{path}/_history", [])]
    assert methods == ["PUT", "DELETE", "POST"], f"history after create/delete/update has methods {methods}"


@check
def check_delete_unknown(client: Client) -> None:
    """DELETE of an id that never existed: 200/202/204 (R4 delete text) or 404 (R4 summary table)."""
    expect_status(client.delete(f"Patient/never{unique()}"), *DELETED, 404)


# --- patch -------------------------------------------------------------------------------------------------

@check
def check_patch(client: Client) -> None:
    """PATCH with a JSON Patch: 200, version increments, the change is stored; unknown id is 404."""
    stored = create(client, new_patient(gender="male"))
    path = f"Patient/{stored['id']}"
    ops = [{"op": "replace", "path": "/gender", "value": "female"},
           {"op": "add", "path": "/birthDate", "value": "1980-02-03"}]
    resp = client.patch(path, json_body=ops, content_type=JSON_PATCH, headers=REPRESENTATION)
    expect_status(resp, 200)
    expect_etag(resp, "2")
    read = expect_resource(client.get(path), "Patient")
    expect_meta(read, "2", "read after patch")
    assert (read.get("gender"), read.get("birthDate")) == ("female", "1980-02-03"), f"patch not applied: {read}"
    assert read.get("name") == stored["name"], "patch changed an element it did not touch"
    missing = client.patch(f"Patient/never{unique()}", json_body=ops, content_type=JSON_PATCH)
    expect_outcome(missing, 404)


@check
def check_patch_failures_write_nothing(client: Client) -> None:
    """A patch whose `test` op fails, or whose result is invalid, is a 4xx with nothing written."""
    stored = create(client, new_patient(gender="male"))
    path = f"Patient/{stored['id']}"
    failing_test = [{"op": "test", "path": "/gender", "value": "female"},
                    {"op": "replace", "path": "/gender", "value": "other"}]
    expect_outcome(client.patch(path, json_body=failing_test, content_type=JSON_PATCH), 400, 409, 422)
    invalid_result = [{"op": "replace", "path": "/gender", "value": 42}]
    expect_outcome(client.patch(path, json_body=invalid_result, content_type=JSON_PATCH), 400, 422)
    stale = [{"op": "replace", "path": "/gender", "value": "other"}]
    resp = client.patch(path, json_body=stale, content_type=JSON_PATCH, headers={"If-Match": 'W/"999"'})
    expect_outcome(resp, 412)
    read = expect_resource(client.get(path), "Patient")
    expect_meta(read, "1", "read after rejected patches")
    assert read.get("gender") == "male", f"a rejected patch was written: gender {read.get('gender')!r}"


@check
def check_fhirpath_patch(client: Client) -> None:
    """PATCH with a FHIRPath Patch (Parameters, application/fhir+json): 200 and applied. Skipped unless advertised."""
    if "application/fhir+json" not in (capability(client).get("patchFormat") or []):
        raise CheckSkipped("the CapabilityStatement's patchFormat does not list application/fhir+json (FHIRPath Patch)")
    stored = create(client, new_patient(gender="male"))
    path = f"Patient/{stored['id']}"

    def operation(*parts: tuple[str, str, str]) -> Resource:
        return {"name": "operation", "part": [{"name": name, key: value} for name, key, value in parts]}

    patch = {"resourceType": "Parameters", "parameter": [
        operation(("type", "valueCode", "replace"), ("path", "valueString", "Patient.gender"),
                  ("value", "valueCode", "female")),
        operation(("type", "valueCode", "add"), ("path", "valueString", "Patient"),
                  ("name", "valueString", "birthDate"), ("value", "valueDate", "1980-02-03")),
    ]}
    resp = client.patch(path, json_body=patch)
    expect_status(resp, 200)
    expect_etag(resp, "2")
    read = expect_resource(client.get(path), "Patient")
    assert (read.get("gender"), read.get("birthDate")) == ("female", "1980-02-03"), f"patch not applied: {read}"


# --- conditional create / update / delete ------------------------------------------------------------------

@check
def check_conditional_create(client: Client) -> None:
    """If-None-Exist: first POST 201, the second 200 with the same resource and nothing new created."""
    value, since = unique(), server_now(client)
    criteria = urlencode({"identifier": identifier_param(value)}, safe=":|")
    first = client.post("Patient", json_body=new_patient(value, gender="male"), headers={"If-None-Exist": criteria})
    expect_status(first, 201)
    rid, _ = location_of(first, "Patient")
    second = client.post("Patient", json_body=new_patient(value, gender="female"),
                         headers={"If-None-Exist": criteria, **REPRESENTATION})
    expect_status(second, 200)
    if second.header("location"):
        assert location_of(second, "Patient")[0] == rid, f"{second.describe()}: Location names another resource"
    if second.body and second.json().get("resourceType") == "Patient":
        assert second.json().get("id") == rid, f"{second.describe()}: returned another resource"
    written = [(e["fullUrl"].rsplit("/", 1)[-1], e["request"]["method"]) for e in written_with_identifier(
        client, value, since)]
    assert written == [(rid, "POST")], f"two conditional creates wrote {written}, expected one POST of {rid}"
    read = expect_resource(client.get(f"Patient/{rid}"), "Patient")
    expect_meta(read, "1", "read after ignored conditional create")
    assert read.get("gender") == "male", "the ignored conditional create changed the resource"


@check
def check_conditional_update(client: Client) -> None:
    """PUT [type]?identifier=..: creates (201) when nothing matches, updates that one (200) when one matches."""
    value, since = unique(), server_now(client)
    params = [("identifier", identifier_param(value))]
    first = client.put("Patient", params=params, json_body=new_patient(value, gender="male"), headers=REPRESENTATION)
    expect_status(first, 201)
    rid = written_id(first, "Patient")
    second = client.put("Patient", params=params, json_body=new_patient(value, gender="female"),
                        headers=REPRESENTATION)
    expect_status(second, 200)
    expect_etag(second, "2")
    written = [e["fullUrl"].rsplit("/", 1)[-1] + "/" + entry_version(e)
               for e in written_with_identifier(client, value, since)]
    assert written == [f"{rid}/2", f"{rid}/1"], f"two conditional updates wrote {written}, expected {rid} v1 and v2"
    read = expect_resource(client.get(f"Patient/{rid}"), "Patient")
    expect_meta(read, "2", "read after conditional update")
    assert read.get("gender") == "female", f"conditional update not applied: gender {read.get('gender')!r}"


@check
def check_conditional_delete(client: Client) -> None:
    """DELETE [type]?identifier=..: the one match is deleted (200/202/204, then read 410); no match is not 5xx."""
    value = unique()
    stored = create(client, new_patient(value))
    params = [("identifier", identifier_param(value))]
    expect_status(client.delete("Patient", params=params), *DELETED)
    expect_outcome(client.get(f"Patient/{stored['id']}"), 410)
    expect_status(client.delete("Patient", params=[("identifier", identifier_param(unique()))]), *DELETED, 404)


@check
def check_conditional_multiple_matches(client: Client) -> None:
    """Criteria matching two resources: conditional create and update are 412; conditional delete follows
    the CapabilityStatement (conditionalDelete single: 412, nothing deleted; multiple: both deleted)."""
    value = unique()
    first, second = create(client, new_patient(value)), create(client, new_patient(value))
    params = [("identifier", identifier_param(value))]
    criteria = urlencode(params, safe=":|")
    expect_outcome(client.post("Patient", json_body=new_patient(value), headers={"If-None-Exist": criteria}), 412)
    expect_outcome(client.put("Patient", params=params, json_body=new_patient(value)), 412)
    rest = (capability(client).get("rest") or [{}])[0]
    patient: Resource = next((r for r in rest.get("resource") or [] if r.get("type") == "Patient"), {})
    mode = patient.get("conditionalDelete")
    if mode == "single":
        expect_outcome(client.delete("Patient", params=params), 412)
        expected = 200
    elif mode == "multiple":
        expect_status(client.delete("Patient", params=params), *DELETED)
        expected = 410
    else:
        return
    for stored in (first, second):
        expect_status(client.get(f"Patient/{stored['id']}"), expected)


# --- history -----------------------------------------------------------------------------------------------

def three_versions(client: Client, pause: float = 0.0) -> tuple[Resource, list[Resource]]:
    """Create a Patient and update it twice (with `pause` seconds between writes); returns (v1, [v1, v2, v3])."""
    v1 = create(client, new_patient(gender="male"))
    versions = [v1]
    for gender in ("female", "other"):
        time.sleep(pause)
        resp = update(client, dict(v1, gender=gender))
        if resp.body:
            versions.append(expect_resource(resp, "Patient"))
        else:
            versions.append(expect_resource(client.get(f"Patient/{v1['id']}"), "Patient"))
    return v1, versions


@check
def check_history_instance(client: Client) -> None:
    """[type]/[id]/_history: Bundle type history, newest first, fullUrl, request and response on each entry."""
    v1, _ = three_versions(client)
    path = f"Patient/{v1['id']}/_history"
    entries = history_pages(client, path, [])
    versions = [entry_version(e) for e in entries]
    assert versions == ["3", "2", "1"], f"{path}: versions {versions}, expected 3, 2, 1"
    assert [e["request"]["method"] for e in entries] == ["PUT", "PUT", "POST"], f"{path}: wrong request.method"
    expect_newest_first(entries, path)
    for entry in entries:
        assert entry["fullUrl"].endswith(f"/Patient/{v1['id']}"), f"{path}: fullUrl {entry['fullUrl']!r}"
        assert entry["resource"]["meta"]["versionId"] == entry_version(entry), f"{path}: etag/versionId differ"
        assert entry["response"]["status"].startswith(("200", "201")), f"{path}: response.status {entry['response']}"


@check
def check_history_type(client: Client) -> None:
    """[type]/_history?_since=..: includes the new versions of our resource, only of that type, newest first."""
    v1, _ = three_versions(client)
    entries = history_pages(client, "Patient/_history", [("_since", v1["meta"]["lastUpdated"])])
    ours = [entry_version(e) for e in entries if e["fullUrl"].endswith(f"/Patient/{v1['id']}")]
    assert ours == ["3", "2", "1"], f"Patient/_history shows versions {ours} of our Patient"
    others = {e["fullUrl"] for e in entries if "/Patient/" not in e["fullUrl"]}
    assert not others, f"type history contains other types: {sorted(others)[:5]}"
    expect_newest_first(entries, "Patient/_history")


@check
def check_history_system(client: Client) -> None:
    """[base]/_history?_since=..: includes our versions, newest first, each entry well formed."""
    v1, _ = three_versions(client)
    entries = history_pages(client, "_history", [("_since", v1["meta"]["lastUpdated"])])
    ours = [entry_version(e) for e in entries if e["fullUrl"].endswith(f"/Patient/{v1['id']}")]
    assert ours == ["3", "2", "1"], f"_history shows versions {ours} of our Patient"
    expect_newest_first(entries, "_history")


@check
def check_history_count_paging(client: Client) -> None:
    """_count=1 on a 3-version history: one entry a page, working `next` links, all versions exactly once."""
    v1, _ = three_versions(client)
    path = f"Patient/{v1['id']}/_history"
    resp = client.get(path, params=[("_count", "1")])
    versions: list[str] = []
    for page_number in range(1, 6):
        page = expect_resource(resp, "Bundle")
        entries = page.get("entry") or []
        if page_number == 1:
            assert len(entries) == 1, f"{resp.describe()}: {len(entries)} entries on the first page, expected 1"
            assert link(page, "next"), f"{resp.describe()}: no next link although 3 versions exist"
        assert len(entries) <= 1, f"{resp.describe()}: {len(entries)} entries on page {page_number} (_count not kept)"
        for entry in entries:
            expect_history_entry(entry, resp)
        versions += [entry_version(e) for e in entries]
        next_url = link(page, "next")
        if not next_url:
            break
        resp = client.get(absolute(client, next_url))
    assert versions == ["3", "2", "1"], f"paging through {path}?_count=1 gave versions {versions}"


@check
def check_history_since(client: Client) -> None:
    """_since=[instant]: only versions created at or after that instant."""
    v1, versions = three_versions(client, pause=1.1)  # a second apart: servers may keep seconds only
    since = versions[1]["meta"]["lastUpdated"]
    entries = history_pages(client, f"Patient/{v1['id']}/_history", [("_since", since)])
    got = [entry_version(e) for e in entries]
    assert got == ["3", "2"], f"_history?_since={since} (the lastUpdated of v2) gave versions {got}"


@check
def check_history_at(client: Client) -> None:
    """_at=[instant]: only the version current at that instant."""
    v1 = create(client, new_patient(gender="male"))
    path = f"Patient/{v1['id']}"
    update(client, dict(v1, gender="female"))
    v2 = expect_resource(client.get(path), "Patient")
    time.sleep(2.2)  # >= 1 s either side of the midpoint even at second precision
    update(client, dict(v1, gender="other"))
    v3 = expect_resource(client.get(path), "Patient")
    t2 = parse_instant(v2["meta"]["lastUpdated"], "v2")
    t3 = parse_instant(v3["meta"]["lastUpdated"], "v3")
    at = format_instant(t2 + (t3 - t2) / 2)
    got = [entry_version(e) for e in history_pages(client, f"{path}/_history", [("_at", at)])]
    assert got == ["2"], f"_history?_at={at} (between v2 {t2} and v3 {t3}) gave versions {got}"


# --- base URL, formats, subsetting -------------------------------------------------------------------------

@check
def check_base_url_forms(client: Client) -> None:
    """[base]/metadata works; [base] and [base]/ are the same endpoint and neither answers 5xx."""
    capability(client)
    plain = client.get(client.base_url)
    slash = client.get(client.base_url + "/")
    for resp in (plain, slash):
        assert resp.status < 500, f"{resp.describe()}: server error"
    if 300 <= slash.status < 400:  # a redirect from [base]/ to [base] is the same endpoint too
        target = (slash.header("location") or "").rstrip("/")
        same = (client.base_url, urlsplit(client.base_url).path)
        assert target in same, f"{slash.describe()}: redirects to {target!r}, not to [base]"
    else:
        assert plain.status == slash.status, f"[base] gives {plain.status} but [base]/ gives {slash.status}"


@check
def check_format_parameter(client: Client) -> None:
    """_format=json / application/fhir+json / application/json are accepted and override Accept."""
    stored = create(client, new_patient())
    path = f"Patient/{stored['id']}"
    for fmt in ("json", "application/fhir+json"):
        resp = client.get(path, params=[("_format", fmt)], headers={"Accept": "*/*"})
        expect_resource(resp, "Patient")
    resp = client.get(path, params=[("_format", "application/json")])
    expect_status(resp, 200)
    assert resp.media_type in (FHIR_JSON, "application/json"), f"{resp.describe()}: Content-Type {resp.media_type}"
    assert resp.json().get("id") == stored["id"], f"{resp.describe()}: wrong resource"
    resp = client.get(path, params=[("_format", "json")], headers={"Accept": "application/fhir+xml"})
    expect_resource(resp, "Patient")


@check
def check_accept_header(client: Client) -> None:
    """Accept: application/fhir+json (and application/json) gives JSON; FHIR responses are application/fhir+json."""
    stored = create(client, new_patient())
    path = f"Patient/{stored['id']}"
    expect_resource(client.get(path, headers={"Accept": "application/fhir+json;q=1.0"}), "Patient")
    resp = client.get(path, headers={"Accept": "application/json"})
    expect_status(resp, 200)
    assert resp.media_type in (FHIR_JSON, "application/json"), f"{resp.describe()}: Content-Type {resp.media_type}"
    for resp in (client.get("metadata"), client.get(f"{path}/_history"), client.get(f"Patient/never{unique()}"),
                 client.get("Patient", params=[("_id", stored["id"])])):
        expect_fhir_json(resp)


@check
def check_accept_unsupported_format(client: Client) -> None:
    """Accept naming only a format the server cannot produce is 406 (unless it does produce it, e.g. XML)."""
    stored = create(client, new_patient())
    resp = client.get(f"Patient/{stored['id']}", headers={"Accept": "application/fhir+xml"})
    if resp.status == 200:
        assert resp.media_type == "application/fhir+xml", (
            f"{resp.describe()}: asked for application/fhir+xml only, got {resp.media_type!r} (expected XML or 406)")
    else:
        expect_status(resp, 406)


@check
def check_head(client: Client) -> None:
    """HEAD where GET is allowed: the GET's status and headers without a body, or 405/501 if unsupported."""
    stored = create(client, new_patient())
    resp = client.request("HEAD", f"Patient/{stored['id']}")
    if resp.status in (405, 501):
        return
    expect_status(resp, 200)
    assert not resp.body, f"{resp.describe()}: HEAD response has a body"
    expect_etag(resp, "1")
    expect_status(client.request("HEAD", f"Patient/never{unique()}"), 404)


@check
def check_pretty(client: Client) -> None:
    """_pretty=true returns indented JSON."""
    stored = create(client, new_patient())
    resp = client.get(f"Patient/{stored['id']}", params=[("_pretty", "true")])
    expect_resource(resp, "Patient")
    lines = resp.text.strip().splitlines()
    assert len(lines) > 3 and any(line.startswith((" ", "\t")) for line in lines), (
        f"{resp.describe()}: body is not indented: {resp.text[:120]!r}")


@check
def check_summary_true(client: Client) -> None:
    """read with _summary=true returns only summary elements and is tagged SUBSETTED."""
    sent = new_patient(gender="female", maritalStatus={"text": "married"}, communication=[{"language": {"text": "en"}}],
                       text={"status": "generated", "div": '<div xmlns="http://www.w3.org/1999/xhtml">Test</div>'})
    stored = create(client, sent)
    resp = client.get(f"Patient/{stored['id']}", params=[("_summary", "true")])
    body = expect_resource(resp, "Patient")
    for kept in ("id", "identifier", "name", "gender"):
        assert kept in body, f"{resp.describe()}: summary element {kept} is missing"
    for dropped in ("maritalStatus", "communication", "text"):
        assert dropped not in body, f"{resp.describe()}: non-summary element {dropped} was returned"
    expect_subsetted(body, resp.describe())


@check
def check_elements(client: Client) -> None:
    """read with _elements=id,name returns those (plus mandatory/modifier elements) and is tagged SUBSETTED."""
    stored = create(client, new_patient(gender="female", birthDate="1990-01-01",
                                        telecom=[{"system": "phone", "value": "555-0100"}]))
    resp = client.get(f"Patient/{stored['id']}", params=[("_elements", "id,name")])
    body = expect_resource(resp, "Patient")
    assert body.get("id") == stored["id"] and body.get("name") == stored["name"], f"{resp.describe()}: id/name missing"
    allowed = {"resourceType", "id", "meta", "name", "implicitRules", "modifierExtension", "active", "link",
               "deceasedBoolean", "deceasedDateTime"}  # Patient's modifier elements may be added by the server
    extra = set(body) - allowed
    assert not extra, f"{resp.describe()}: elements not asked for were returned: {sorted(extra)}"
    expect_subsetted(body, resp.describe())


# --- search (used by the conditional interactions) ---------------------------------------------------------

@check
def check_search_identifier(client: Client) -> None:
    """GET [type]?identifier=system|value: a searchset with exactly the matching resource and a self link."""
    target = create(client, new_patient())
    create(client, new_patient())
    value = target["identifier"][0]["value"]
    resp = client.get("Patient", params=[("identifier", identifier_param(value))])
    bundle = expect_resource(resp, "Bundle")
    assert bundle.get("type") == "searchset", f"{resp.describe()}: Bundle.type {bundle.get('type')!r}"
    assert link(bundle, "self"), f"{resp.describe()}: no self link"
    entries = bundle.get("entry") or []
    assert len(entries) == 1, f"{resp.describe()}: {len(entries)} entries, expected 1"
    entry = entries[0]
    assert entry.get("resource", {}).get("id") == target["id"], f"{resp.describe()}: wrong resource"
    assert (entry.get("fullUrl") or "").endswith(f"/Patient/{target['id']}"), f"fullUrl {entry.get('fullUrl')!r}"
    assert (entry.get("search") or {}).get("mode") == "match", f"entry.search.mode {entry.get('search')}"
    if "total" in bundle:
        assert bundle["total"] == 1, f"{resp.describe()}: total {bundle['total']}"


@check
def check_search_post(client: Client) -> None:
    """POST [type]/_search with a form body has the same results as GET."""
    target = create(client, new_patient())
    form = urlencode({"identifier": identifier_param(target["identifier"][0]["value"])})
    resp = client.post("Patient/_search", body=form, content_type="application/x-www-form-urlencoded")
    bundle = expect_resource(resp, "Bundle")
    ids = [e.get("resource", {}).get("id") for e in bundle.get("entry") or []]
    assert ids == [target["id"]], f"{resp.describe()}: found {ids}"


@check
def check_search_excludes_deleted(client: Client) -> None:
    """A deleted resource is no longer found by search (by _id or identifier)."""
    stored = create(client, new_patient())
    assert [r["id"] for r in search(client, "Patient", [("_id", stored["id"])])] == [stored["id"]], "_id search"
    expect_status(client.delete(f"Patient/{stored['id']}"), *DELETED)
    assert search(client, "Patient", [("_id", stored["id"])]) == [], "deleted resource found by _id"
    value = stored["identifier"][0]["value"]
    assert search(client, "Patient", [("identifier", identifier_param(value))]) == [], "deleted found by identifier"


# --- bad input ---------------------------------------------------------------------------------------------

@check
def check_malformed_json(client: Client) -> None:
    """Malformed JSON, a non-object body and an empty body are 400 with an OperationOutcome, never 5xx."""
    for body in ('{"resourceType": "Patient", ', "[]", "", '"Patient"'):
        expect_outcome(client.post("Patient", body=body, content_type=FHIR_JSON), 400)
    stored = create(client, new_patient())
    expect_outcome(client.put(f"Patient/{stored['id']}", body="{not json", content_type=FHIR_JSON), 400)


@check
def check_resource_type_mismatch(client: Client) -> None:
    """A body whose resourceType is not the URL's type (or missing) is rejected (400/422) and nothing written."""
    value, since = unique(), server_now(client)
    observation = {"resourceType": "Observation", "status": "final", "code": {"text": "x"},
                   "identifier": [{"system": IDENTIFIER_SYSTEM, "value": value}]}
    expect_outcome(client.post("Patient", json_body=observation), 400, 422)
    no_type = {k: v for k, v in new_patient(value).items() if k != "resourceType"}
    expect_outcome(client.post("Patient", json_body=no_type), 400, 422)
    stored = create(client, new_patient())
    expect_outcome(client.put(f"Patient/{stored['id']}", json_body=dict(observation, id=stored["id"])), 400, 422)
    assert written_with_identifier(client, value, since, "_history") == [], "a rejected body was stored"


@check
def check_invalid_id(client: Client) -> None:
    """Ids outside [A-Za-z0-9-.]{1,64}: PUT is 400; GET is 400 or 404; both with an OperationOutcome."""
    for bad in ("bad_id", "x" * 65):
        expect_outcome(client.put(f"Patient/{bad}", json_body=new_patient(id=bad)), 400)
        expect_outcome(client.get(f"Patient/{bad}"), 400, 404)


@check
def check_unsupported_content_type(client: Client) -> None:
    """A body in a media type the server does not accept is 415 Unsupported Media Type."""
    resp = client.post("Patient", body='{"resourceType": "Patient"}', content_type="text/plain")
    expect_outcome(resp, 415)


@check
def check_unsupported_method(client: Client) -> None:
    """Methods an endpoint does not define are 405 with an Allow header (RFC 9110) and an OperationOutcome."""
    stored = create(client, new_patient())
    for resp in (client.delete("metadata"),
                 client.patch("Patient", json_body=[], content_type=JSON_PATCH),
                 client.post(f"Patient/{stored['id']}", json_body=stored)):
        expect_outcome(resp, 405)
        assert resp.header("allow") is not None, f"{resp.describe()}: 405 without an Allow header"


@check
def check_unknown_element(client: Client) -> None:
    """An unknown element is 400 with an issue whose expression names the element; nothing is written."""
    value, since = unique(), server_now(client)
    resp = client.post("Patient", json_body=new_patient(value, notAnElement="x"))
    outcome = expect_outcome(resp, 400)
    exprs = issue_expressions(outcome)
    assert any("notAnElement" in e for e in exprs), f"{resp.describe()}: no issue.expression names it: {exprs}"
    assert written_with_identifier(client, value, since) == [], "an invalid body was stored"


@check
def check_wrong_value_type(client: Client) -> None:
    """A value of the wrong JSON type is 400 with an issue whose expression names the element."""
    resp = client.post("Patient", json_body=new_patient(active="yes"))
    outcome = expect_outcome(resp, 400)
    exprs = issue_expressions(outcome)
    assert any("active" in e for e in exprs), f"{resp.describe()}: no issue.expression names 'active': {exprs}"


# --- batch / transaction (only when advertised) -------------------------------------------------------------

@check
def check_batch(client: Client) -> None:
    """POST [base] batch: 200 batch-response, one entry per request in order, each with its own status."""
    require_system_interaction(client, "batch")
    stored = create(client, new_patient())
    bundle = {"resourceType": "Bundle", "type": "batch", "entry": [
        {"request": {"method": "GET", "url": f"Patient/{stored['id']}"}},
        {"request": {"method": "GET", "url": f"Patient/never{unique()}"}},
        {"resource": new_patient(), "request": {"method": "POST", "url": "Patient"}},
    ]}
    resp = client.post("", json_body=bundle)
    result = expect_resource(resp, "Bundle")
    assert result.get("type") == "batch-response", f"{resp.describe()}: Bundle.type {result.get('type')!r}"
    statuses = [(e.get("response") or {}).get("status", "") for e in result.get("entry") or []]
    assert len(statuses) == 3, f"{resp.describe()}: {len(statuses)} response entries for 3 requests"
    assert [s[:3] for s in statuses] == ["200", "404", "201"], f"{resp.describe()}: entry statuses {statuses}"
    assert result["entry"][0].get("resource", {}).get("id") == stored["id"], "batch read returned the wrong resource"


@check
def check_transaction(client: Client) -> None:
    """POST [base] transaction: 200 transaction-response; urn:uuid references are rewritten to the new ids."""
    require_system_interaction(client, "transaction")
    patient_urn, obs_urn = f"urn:uuid:{uuid.uuid4()}", f"urn:uuid:{uuid.uuid4()}"
    observation = {"resourceType": "Observation", "status": "final", "code": {"text": "conformance"},
                   "subject": {"reference": patient_urn}}
    bundle = {"resourceType": "Bundle", "type": "transaction", "entry": [
        {"fullUrl": obs_urn, "resource": observation, "request": {"method": "POST", "url": "Observation"}},
        {"fullUrl": patient_urn, "resource": new_patient(), "request": {"method": "POST", "url": "Patient"}},
    ]}
    resp = client.post("", json_body=bundle)
    result = expect_resource(resp, "Bundle")
    assert result.get("type") == "transaction-response", f"{resp.describe()}: Bundle.type {result.get('type')!r}"
    responses = [e.get("response") or {} for e in result.get("entry") or []]
    assert len(responses) == 2, f"{resp.describe()}: {len(responses)} response entries for 2 requests"
    for item in responses:
        assert item.get("status", "").startswith("201"), f"{resp.describe()}: entry response {item}"
        assert item.get("location"), f"{resp.describe()}: entry response without location: {item}"
    obs_type, obs_id = type_and_id(responses[0]["location"])
    patient_type, patient_id = type_and_id(responses[1]["location"])
    assert (obs_type, patient_type) == ("Observation", "Patient"), f"{resp.describe()}: locations {responses}"
    obs = expect_resource(client.get(f"Observation/{obs_id}"), "Observation")
    ref = obs.get("subject", {}).get("reference")
    assert ref == f"Patient/{patient_id}", f"urn:uuid reference became {ref!r}, expected Patient/{patient_id}"


@check
def check_transaction_atomic(client: Client) -> None:
    """A transaction with one failing entry is rejected as a whole (4xx OperationOutcome), nothing written."""
    require_system_interaction(client, "transaction")
    value, since = unique(), server_now(client)
    target = create(client, new_patient())
    bundle = {"resourceType": "Bundle", "type": "transaction", "entry": [
        {"fullUrl": f"urn:uuid:{uuid.uuid4()}", "resource": new_patient(value),
         "request": {"method": "POST", "url": "Patient"}},
        {"resource": dict(target, id="other" + unique()[:20]),  # body id differs from the URL id: 400
         "request": {"method": "PUT", "url": f"Patient/{target['id']}"}},
    ]}
    resp = client.post("", json_body=bundle)
    assert 400 <= resp.status < 500, f"{resp.describe()}: a transaction with an invalid entry must fail with 4xx"
    expect_outcome(resp, resp.status)
    assert written_with_identifier(client, value, since) == [], "the failed transaction's create was written"
    expect_meta(expect_resource(client.get(f"Patient/{target['id']}"), "Patient"), "1", "read after failed transaction")
