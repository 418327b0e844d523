"""Property: a search returns exactly the resources a brute-force evaluation over their JSON selects.

A fixed corpus is loaded once (PUT by id): the Patient, Observation, Encounter, Condition, Immunization and
Procedure resources of four Synthea patients (urn:uuid references rewritten to `Type/id`) and the R4 spec examples
of those types (about 320 resources), all tagged with a tag unique to this run, which every search carries.

Hypothesis then draws searches, one property per kind so that one bug does not hide another: token, string,
date, quantity, reference and composite parameters (prefixes, modifiers, OR-ed values, all taken from the
corpus), chains (`subject:Patient.gender=...`), reverse chains (`_has:Observation:subject:code=...`), mixtures
of 1-3 AND-ed parameters, and system-level searches over several `_type`s. The ids the server returns,
following `next` links, must be exactly what the oracle in tests/search_oracle.py selects (official
SearchParameter expressions evaluated by fhirpathpy; R4 matching rules in plain Python). `:missing` is also
checked exhaustively, for every parameter.

The draws are derandomized (and the corpus ids fixed), so every run asks the same questions: a failure is
reproducible. To explore further, raise `max_examples` or drop `derandomize` locally.
"""
from __future__ import annotations

import copy
import gzip
import json
import re
import unicodedata
import uuid
from collections.abc import Iterator
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, assume, event, given, note, settings
from hypothesis import strategies as st

from tests import search_oracle as oracle
from tests.paths import FHIR_R4, TESTDATA

RUN = uuid.uuid4().hex
TAG_SYSTEM = "urn:test:search-oracle"
# Ids do not depend on RUN (each test session has a fresh database), so that with `derandomize` the same
# searches are drawn on every run: a failure here is reproducible, never flaky.
NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "urn:test:search-oracle")
SYNTHEA = ("Buster_Hoeger_ad2e3fc5-2b5d-4cb9-8d03-9ea0f4ac8423", "Luigi_Wiegand_e27d88b0-c5e5-4042-ad49-184f6a900ee3",
           "Liz_Conn_27c911c6-f045-4ffa-af5d-6eba57ac94b2", "Gustavo_Mejía_59a8543c-e24f-4a01-b28b-47ccde6bc11d")
PARAMS: dict[str, tuple[str, ...]] = {
    "Patient": ("gender", "birthdate", "name", "family", "given", "address-city", "address-state",
                "address-postalcode", "identifier", "phone", "telecom", "language", "deceased", "death-date",
                "_id"),
    "Observation": ("code", "category", "status", "date", "value-quantity", "value-concept", "subject", "encounter",
                    "code-value-quantity", "component-code", "component-value-quantity",
                    "component-code-value-quantity", "combo-code", "combo-value-quantity",
                    "combo-code-value-quantity"),
    "Encounter": ("date", "class", "type", "subject", "status", "reason-code", "service-provider", "length"),
    "Condition": ("code", "onset-date", "abatement-date", "clinical-status", "verification-status", "category",
                  "severity", "subject", "encounter"),
    "Immunization": ("vaccine-code", "date", "patient", "status", "lot-number", "location"),
    "Procedure": ("code", "date", "subject", "status", "encounter"),
}
HEADERS = {"Content-Type": "application/fhir+json"}


# ============================================================================================== the corpus

def _synthea_resources() -> list[dict[str, Any]]:
    out = []
    for name in SYNTHEA:
        with gzip.open(TESTDATA / "synthea" / f"{name}.json.gz") as handle:
            bundle = json.load(handle)
        kinds = {e["resource"]["id"]: e["resource"]["resourceType"] for e in bundle["entry"]}
        new_ids = {old: str(uuid.uuid5(NAMESPACE, old)) for old in kinds}

        def rewrite(node: Any, kinds: dict[str, str] = kinds, new_ids: dict[str, str] = new_ids) -> Any:
            if isinstance(node, dict):
                out_node = {k: rewrite(v) for k, v in node.items()}
                reference = node.get("reference")
                if isinstance(reference, str) and reference.startswith("urn:uuid:") and reference[9:] in kinds:
                    out_node["reference"] = f"{kinds[reference[9:]]}/{new_ids[reference[9:]]}"
                return out_node
            if isinstance(node, list):
                return [rewrite(v) for v in node]
            return node
        for entry in bundle["entry"]:
            resource = entry["resource"]
            if resource["resourceType"] in PARAMS:
                resource = rewrite(resource)
                resource["id"] = new_ids[entry["resource"]["id"]]
                out.append(resource)
    return out


def _example_resources() -> list[dict[str, Any]]:
    loaded = []
    for path in sorted((FHIR_R4 / "examples").glob("*.json")):
        kind = path.name.split("-", 1)[0]
        if kind in PARAMS:
            resource = json.loads(path.read_text("utf-8"))
            if resource.get("resourceType") == kind and isinstance(resource.get("id"), str):
                loaded.append(resource)
    new_ids = {(r["resourceType"], r["id"]): f"so-{r['id']}"[:64] for r in loaded}

    def rewrite(node: Any) -> Any:
        if isinstance(node, dict):
            out_node = {k: rewrite(v) for k, v in node.items()}
            match = re.fullmatch(r"([A-Za-z]+)/([A-Za-z0-9\-.]+)", str(node.get("reference", "")))
            if match and (match.group(1), match.group(2)) in new_ids:
                out_node["reference"] = f"{match.group(1)}/{new_ids[(match.group(1), match.group(2))]}"
            elif match and match.group(1) in PARAMS:   # not in the corpus: make sure it is nowhere in the database
                out_node["reference"] = f"{match.group(1)}/so-absent"
            return out_node
        if isinstance(node, list):
            return [rewrite(v) for v in node]
        return node
    out = []
    for resource in loaded:
        rewritten = rewrite(resource)
        rewritten["id"] = new_ids[(resource["resourceType"], resource["id"])]
        out.append(rewritten)
    return out


class Corpus:
    def __init__(self, client: httpx.Client, base_url: str) -> None:
        self.client = client
        self.base_url = base_url
        self.definitions = oracle.Definitions(FHIR_R4 / "search-parameters.json")
        self.params = {t: [self._param(t, c) for c in codes] for t, codes in PARAMS.items()}
        self.resources: dict[str, list[oracle.Indexed]] = {t: [] for t in PARAMS}
        self.bodies: dict[str, dict[str, Any]] = {}
        self.rejected: list[str] = []
        self._by_reference: dict[str, oracle.Indexed] = {}

    def _param(self, res_type: str, code: str) -> oracle.Param:
        """The official definition, with the union trimmed to the branches about `res_type` (speed only)."""
        param = self.definitions.param(res_type, code)
        if param.expression.startswith("Resource."):     # the parameters of every resource
            param = oracle.Param(param.code, param.type, res_type + param.expression[8:], param.components)
        branches = [b for b in _top_level_union(param.expression)
                    if b.lstrip("(").split(".", 1)[0].split(" ", 1)[0] == res_type]
        return oracle.Param(param.code, param.type, " | ".join(branches) or param.expression, param.components)

    def load(self, resources: list[dict[str, Any]], *, required: bool) -> None:
        for resource in resources:
            body = copy.deepcopy(resource)
            body.setdefault("meta", {}).setdefault("tag", []).append({"system": TAG_SYSTEM, "code": RUN})
            response = self.client.put(f"/{body['resourceType']}/{body['id']}", json=body, headers=HEADERS)
            if response.status_code not in (200, 201):
                assert not required, response.text
                self.rejected.append(f"{body['resourceType']}/{body['id']}: {response.status_code}")
                continue
            indexed = oracle.index(body, self.params[body["resourceType"]], self.base_url)
            self.resources[body["resourceType"]].append(indexed)
            self.bodies[indexed.res_id] = body

    def pool(self, res_type: str, code: str) -> list[Any]:
        values: dict[str, Any] = {}
        for resource in self.resources[res_type]:
            for value in resource.values[code]:
                values.setdefault(repr(value), value)
        return [values[k] for k in sorted(values)]

    def expected(self, res_type: str, clauses: list[Any]) -> set[str]:
        return {r.res_id for r in self.resources[res_type] if oracle.matches(r, clauses, self)}

    def resolve(self, reference: str) -> oracle.Indexed | None:
        if not self._by_reference:
            self._by_reference = {f"{r.res_type}/{r.res_id}": r for rs in self.resources.values() for r in rs}
        return self._by_reference.get(reference)

    def referring(self, source_type: str, ref_code: str, reference: str) -> list[oracle.Indexed]:
        return [r for r in self.resources[source_type] if reference in r.values[ref_code]]

    def search(self, res_type: str, clauses: list[Any], count: int) -> list[str]:
        """The ids found (`Type/id` at system level, where `res_type` is the `_type` list)."""
        params = [(c.name, c.text) for c in clauses] + [("_tag", f"{TAG_SYSTEM}|{RUN}"), ("_count", str(count))]
        system = "," in res_type
        if system:
            params.append(("_type", res_type))
        response = self.client.get("" if system else f"/{res_type}", params=params)
        assert response.status_code == 200, f"{response.request.url}: {response.text[:1000]}"
        bundle = response.json()
        key = (lambda r: f"{r['resourceType']}/{r['id']}") if system else (lambda r: r["id"])
        ids = [key(e["resource"]) for e in bundle.get("entry", [])]
        pages = 1
        while (link := next(iter(x["url"] for x in bundle.get("link", []) if x["relation"] == "next"), None)):
            pages += 1
            assert pages < 500
            response = self.client.get(link)
            assert response.status_code == 200, response.text[:1000]
            bundle = response.json()
            ids += [key(e["resource"]) for e in bundle.get("entry", [])]
        return ids


def _top_level_union(expression: str) -> list[str]:
    parts, depth, start = [], 0, 0
    for i, char in enumerate(expression):
        depth += char == "("
        depth -= char == ")"
        if char == "|" and depth == 0:
            parts.append(expression[start:i].strip())
            start = i + 1
    parts.append(expression[start:].strip())
    return parts


@pytest.fixture(scope="module")
def corpus(base_url: str) -> Iterator[Corpus]:
    with httpx.Client(base_url=base_url, timeout=60) as client:
        loaded = Corpus(client, base_url)
        loaded.load(_synthea_resources(), required=True)
        loaded.load(_example_resources(), required=False)
        for res_type, resources in loaded.resources.items():
            total = client.get(f"/{res_type}", params={"_tag": f"{TAG_SYSTEM}|{RUN}", "_summary": "count"})
            assert total.json()["total"] == len(resources), res_type
        yield loaded


# ============================================================================================== strategies

def _token_text(system: str | None, code: str, form: str) -> tuple[str, oracle.TokenQuery]:
    if form == "system|code" and system is not None:
        return f"{oracle.escape(system)}|{oracle.escape(code)}", oracle.TokenQuery(system, code)
    if form == "|code":
        return f"|{oracle.escape(code)}", oracle.TokenQuery("", code)
    if form == "system|" and system is not None:
        return f"{oracle.escape(system)}|", oracle.TokenQuery(system, None)
    return oracle.escape(code), oracle.TokenQuery(None, code)


def _token_clause(data: st.DataObject, code: str, pool: list[Any]) -> oracle.Clause:
    modifier = data.draw(st.sampled_from([None, None, None, None, "not", "missing"]), label="modifier")
    if modifier == "missing" or not pool:
        missing = data.draw(st.booleans(), label="missing")
        return oracle.Clause(code, "token", "missing", (missing,), (str(missing).lower(),))
    texts, values = [], []
    for _ in range(data.draw(st.integers(1, 2), label="or-values")):
        system, value = data.draw(st.sampled_from(pool), label="token")
        form = data.draw(st.sampled_from(["code", "system|code", "system|code", "|code", "system|"]), label="form")
        text, query = _token_text(system, value, form)
        texts.append(text)
        values.append(query)
    return oracle.Clause(code, "token", modifier, tuple(values), tuple(texts))


def _strip_accents(text: str) -> str:
    return "".join(c for c in unicodedata.normalize("NFKD", text) if not unicodedata.combining(c))


def _string_clause(data: st.DataObject, code: str, pool: list[str]) -> oracle.Clause:
    modifier = data.draw(st.sampled_from([None, None, None, "exact", "contains", "missing"]), label="modifier")
    pool = [s for s in pool if oracle.normalize(s)]
    if modifier == "missing" or not pool:
        missing = data.draw(st.booleans(), label="missing")
        return oracle.Clause(code, "string", "missing", (missing,), (str(missing).lower(),))
    texts = []
    for _ in range(data.draw(st.integers(1, 2), label="or-values")):
        source = data.draw(st.sampled_from(pool), label="string")
        if modifier == "exact":
            text = source
        else:
            start = 0 if modifier is None else data.draw(st.integers(0, len(source) - 1), label="start")
            end = data.draw(st.integers(start + 1, len(source)), label="end")
            text = source[start:end].strip()
            if not oracle.normalize(text):
                text = source.strip()
        change = data.draw(st.sampled_from(["same", "same", "upper", "lower", "no-accents"]), label="case")
        text = {"same": text, "upper": text.upper(), "lower": text.lower(), "no-accents": _strip_accents(text)}[change]
        texts.append(text)
    return oracle.Clause(code, "string", modifier, tuple(texts), tuple(oracle.escape(t) for t in texts))


_FORMATS = {"year": "%Y", "month": "%Y-%m", "day": "%Y-%m-%d", "minute": "%Y-%m-%dT%H:%MZ",
            "second": "%Y-%m-%dT%H:%M:%SZ"}


def _shift(moment: datetime, precision: str, step: int) -> datetime:
    if precision == "year":
        return moment.replace(year=moment.year + step, month=1, day=1)
    if precision == "month":
        months = moment.year * 12 + moment.month - 1 + step
        return moment.replace(year=months // 12, month=months % 12 + 1, day=1)
    return moment + {"day": timedelta(days=step), "minute": timedelta(minutes=step),
                     "second": timedelta(seconds=step)}[precision]


def _date_clause(data: st.DataObject, code: str, pool: list[tuple[datetime, datetime]]) -> oracle.Clause:
    modifier = data.draw(st.sampled_from([None] * 8 + ["missing"]), label="modifier")
    anchors = sorted({a for low, high in pool for a in (low, high - timedelta(microseconds=1))
                      if oracle.MIN < a < oracle.MAX and 2 <= a.year <= 9998})
    if modifier == "missing" or not anchors:
        missing = data.draw(st.booleans(), label="missing")
        return oracle.Clause(code, "date", "missing", (missing,), (str(missing).lower(),))
    texts, values = [], []
    for _ in range(data.draw(st.integers(1, 2), label="or-values")):
        anchor = data.draw(st.sampled_from(anchors), label="anchor")
        precision = data.draw(st.sampled_from(list(_FORMATS)), label="precision")
        step = data.draw(st.sampled_from([0, 0, 0, 1, -1]), label="shift")
        prefix = data.draw(st.sampled_from(["", *oracle.PREFIXES]), label="prefix")
        text = _shift(anchor, precision, step).strftime(_FORMATS[precision])
        low_high = oracle.date_range(text)
        assert low_high is not None, text
        texts.append(prefix + text)
        values.append(oracle.DateQuery(prefix or "eq", *low_high))
    return oracle.Clause(code, "date", None, tuple(values), tuple(texts))


def _number_text(data: st.DataObject, value: Decimal) -> Decimal:
    decimals = data.draw(st.integers(0, 3), label="decimals")
    rounded = value.quantize(Decimal(1).scaleb(-decimals))
    step = data.draw(st.sampled_from([0, 0, 0, 1, -1]), label="step")
    return rounded + step * Decimal(1).scaleb(-decimals)


def _quantity_query(data: st.DataObject, quantity: oracle.QuantityValue) -> tuple[str, oracle.NumberQuery]:
    number = _number_text(data, quantity.value)
    prefix = data.draw(st.sampled_from(["", *oracle.PREFIXES]), label="prefix")
    units = data.draw(st.sampled_from(["none", "none", "system", "code", "unit"]), label="units")
    text = prefix + format(number, "f")
    system = code = None
    if units == "system" and quantity.system and quantity.code:
        system, code = quantity.system, quantity.code
        text += f"|{oracle.escape(system)}|{oracle.escape(code)}"
    elif units == "code" and quantity.code:
        code = quantity.code
        text += f"||{oracle.escape(code)}"
    elif units == "unit" and quantity.unit:
        code = quantity.unit
        text += f"||{oracle.escape(code)}"
    return text, oracle.NumberQuery(prefix or "eq", number, system, code)


def _usable(quantity: oracle.QuantityValue) -> bool:
    return abs(quantity.value) < Decimal("1e12") and (quantity.value == 0 or abs(quantity.value) > Decimal("1e-12"))


def _quantity_clause(data: st.DataObject, code: str, pool: list[oracle.QuantityValue]) -> oracle.Clause:
    modifier = data.draw(st.sampled_from([None] * 8 + ["missing"]), label="modifier")
    pool = [q for q in pool if _usable(q)]
    if modifier == "missing" or not pool:
        missing = data.draw(st.booleans(), label="missing")
        return oracle.Clause(code, "quantity", "missing", (missing,), (str(missing).lower(),))
    texts, values = [], []
    for _ in range(data.draw(st.integers(1, 2), label="or-values")):
        text, query = _quantity_query(data, data.draw(st.sampled_from(pool), label="quantity"))
        texts.append(text)
        values.append(query)
    return oracle.Clause(code, "quantity", None, tuple(values), tuple(texts))


def _reference_clause(data: st.DataObject, code: str, pool: list[str], base_url: str = "") -> oracle.Clause:
    """`Type/id`, `id`, the absolute URL on this server, or `:Type` with `id` (search.html#reference)."""
    modifier = data.draw(st.sampled_from([None] * 8 + ["missing", "type"]), label="modifier")
    if modifier == "missing" or not pool:
        missing = data.draw(st.booleans(), label="missing")
        return oracle.Clause(code, "reference", "missing", (missing,), (str(missing).lower(),))
    references = [data.draw(st.sampled_from(pool), label="reference")]
    if modifier == "type":
        references += [r for r in [data.draw(st.sampled_from(pool), label="reference")] if r.split("/")[0] ==
                       references[0].split("/")[0]]
        return oracle.Clause(code, "reference", references[0].split("/")[0], tuple(references),
                             tuple(r.split("/", 1)[1] for r in references))
    references += data.draw(st.lists(st.sampled_from(pool), max_size=1), label="more")
    texts = []
    for reference in references:
        form = data.draw(st.sampled_from(["typed", "id", "absolute"]), label="form")
        texts.append({"typed": reference, "id": reference.split("/", 1)[1],
                      "absolute": f"{base_url}/{reference}"}[form])
    return oracle.Clause(code, "reference", None, tuple(references), tuple(texts))


def _composite_clause(data: st.DataObject, code: str, pool: list[Any]) -> oracle.Clause:
    pairs = [(t, q) for tokens, quantities in pool for t in tokens for q in quantities if _usable(q)]
    pairs = sorted(set(pairs), key=repr)
    assume(pairs)
    token, quantity = data.draw(st.sampled_from(pairs), label="pair")
    token_text, token_query = _token_text(*token, data.draw(st.sampled_from(["code", "system|code"]), label="form"))
    quantity_text, quantity_query = _quantity_query(data, quantity)
    return oracle.Clause(code, "composite", None, (oracle.CompositeQuery((token_query, quantity_query)),),
                         (f"{token_text}${quantity_text}",))


def _clause_for(data: st.DataObject, corpus: Corpus, res_types: list[str], param: oracle.Param) -> oracle.Clause:
    pool = sorted({repr(v): v for t in res_types for v in corpus.pool(t, param.code)}.items())
    values = [v for _, v in pool]
    if param.type == "reference":
        return _reference_clause(data, param.code, values, corpus.base_url)
    clause: oracle.Clause = CLAUSES[param.type](data, param.code, values)
    return clause


SIMPLE = ("token", "string", "date", "quantity")
REFERENCE_TO_PATIENT = {"Observation": "subject", "Encounter": "subject", "Condition": "subject",
                        "Procedure": "subject", "Immunization": "patient"}


def _simple_clause(data: st.DataObject, corpus: Corpus, res_type: str) -> oracle.Clause:
    param = data.draw(st.sampled_from([p for p in corpus.params[res_type] if p.type in SIMPLE and p.code != "_id"]),
                      label="param")
    return _clause_for(data, corpus, [res_type], param)


def _chain_clause(data: st.DataObject, corpus: Corpus, res_type: str) -> oracle.ChainClause:
    inner = _simple_clause(data, corpus, "Patient")
    return oracle.ChainClause(REFERENCE_TO_PATIENT[res_type], "Patient", data.draw(st.booleans(), label="typed"),
                              inner)


def _has_clause(data: st.DataObject, corpus: Corpus) -> oracle.HasClause:
    source = data.draw(st.sampled_from(sorted(REFERENCE_TO_PATIENT)), label="_has type")
    return oracle.HasClause(source, REFERENCE_TO_PATIENT[source], _simple_clause(data, corpus, source))


CLAUSES = {"token": _token_clause, "string": _string_clause, "date": _date_clause, "quantity": _quantity_clause,
           "reference": _reference_clause, "composite": _composite_clause}


# ============================================================================================== the property

# Each kind is its own property, so that a bug in one area does not hide the others behind it.
KINDS = ("token", "string", "date", "quantity", "reference", "composite", "chain", "_has", "mixed", "system")


def _draw_search(data: st.DataObject, corpus: Corpus, kind: str) -> tuple[str, list[Any]]:
    if kind == "_has":
        res_type = "Patient"
    elif kind == "chain":
        res_type = data.draw(st.sampled_from(sorted(REFERENCE_TO_PATIENT)), label="type")
    else:
        res_type = data.draw(st.sampled_from([t for t, params in corpus.params.items()
                                              if kind == "mixed" or any(p.type == kind for p in params)]),
                             label="type")
    clauses: list[Any] = []
    for _ in range(data.draw(st.integers(1, 3), label="clauses")):
        joined = kind in ("chain", "_has") or (kind == "mixed" and data.draw(st.integers(0, 5), label="join") == 0)
        if joined and res_type == "Patient":
            clauses.append(_has_clause(data, corpus))
        elif joined:
            clauses.append(_chain_clause(data, corpus, res_type))
        else:
            params = [p for p in corpus.params[res_type] if p.type == kind or (kind == "mixed" and p.code != "_id")]
            param = data.draw(st.sampled_from(params), label="param")
            clauses.append(_clause_for(data, corpus, [res_type], param))
    return res_type, clauses


# Parameters shared by several types: a system-level search `?_type=A,B&code=x` applies each type's own
# definition of the code ("any search parameters shared across the entire set of specified resources may be used").
SHARED = {"code": ("Observation", "Condition", "Procedure"), "date": ("Observation", "Encounter", "Procedure",
                                                                      "Immunization"),
          "subject": ("Observation", "Encounter", "Condition", "Procedure"),
          "encounter": ("Observation", "Condition", "Procedure"), "status": ("Observation", "Encounter",
                                                                            "Immunization", "Procedure")}


def _draw_system_search(data: st.DataObject, corpus: Corpus) -> tuple[list[str], list[Any]]:
    code = data.draw(st.sampled_from(sorted(SHARED)), label="shared param")
    types = data.draw(st.lists(st.sampled_from(SHARED[code]), min_size=2, max_size=3, unique=True), label="_type")
    param = next(p for p in corpus.params[types[0]] if p.code == code)
    return types, [_clause_for(data, corpus, types, param)]


@pytest.mark.parametrize("kind", KINDS)
@settings(max_examples=25, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
@given(data=st.data())
def test_search_equals_brute_force_evaluation(corpus: Corpus, kind: str, data: st.DataObject) -> None:
    if kind == "system":
        types, clauses = _draw_system_search(data, corpus)
        res_type = ",".join(types)
    else:
        res_type, clauses = _draw_search(data, corpus, kind)
    count = data.draw(st.sampled_from([17, 100]), label="count")
    query = "&".join(f"{c.name}={c.text}" for c in clauses)
    note(f"GET {res_type}?{query}" if kind != "system" else f"GET [base]?_type={res_type}&{query}")
    try:
        if kind == "system":
            expected = {f"{t}/{i}" for t in types for i in corpus.expected(t, clauses)}
        else:
            expected = corpus.expected(res_type, clauses)
    except oracle.Ambiguous:
        event("rejected: ambiguous")
        assume(False)
    universe = sum(len(corpus.resources[t]) for t in res_type.split(","))
    event("matches: " + ("none" if not expected else "all" if len(expected) == universe else
                         "few (1-5)" if len(expected) <= 5 else "many"))
    got = corpus.search(res_type, clauses, count)
    assert len(got) == len(set(got)), f"{res_type}?{query}: duplicates across pages"
    missing, extra = expected - set(got), set(got) - expected
    assert not missing and not extra, (
        f"{res_type}?{query}\n  expected {len(expected)}, got {len(got)}"
        f"\n  missing (first 3): {[_show(corpus, i, clauses) for i in sorted(missing)[:3]]}"
        f"\n  extra (first 3): {[_show(corpus, i, clauses) for i in sorted(extra)[:3]]}")


def _show(corpus: Corpus, res_id: str, clauses: list[Any]) -> str:
    for resources in corpus.resources.values():
        for resource in resources:
            if res_id in (resource.res_id, f"{resource.res_type}/{resource.res_id}"):
                return f"{resource.res_type}/{res_id} " + str({c.code: resource.values.get(c.code) for c in clauses})
    return res_id


@pytest.mark.parametrize("res_type", sorted(PARAMS))
def test_missing_on_every_parameter(corpus: Corpus, res_type: str) -> None:
    """`:missing=true` and `:missing=false` for every parameter of the corpus, exhaustively ("For all parameters
    (except combination)": composites are left out, as "Modifiers are not used on composite parameters")."""
    wrong = []
    for param in (p for p in corpus.params[res_type] if p.type != "composite"):
        for missing in (True, False):
            clause = oracle.Clause(param.code, param.type, "missing", (missing,), (str(missing).lower(),))
            expected = corpus.expected(res_type, [clause])
            got = set(corpus.search(res_type, [clause], 1000))
            if got != expected:
                wrong.append(f"{res_type}?{clause.name}={clause.text}: expected {len(expected)} matches, got "
                             f"{len(got)} (missing {sorted(expected - got)[:2]}, extra {sorted(got - expected)[:2]})")
    assert not wrong, "\n".join(wrong)


def test_corpus_loaded(corpus: Corpus) -> None:
    """The corpus the property runs on: every Synthea resource, and nearly all spec examples of those types."""
    sizes = {t: len(r) for t, r in corpus.resources.items()}
    assert sizes["Observation"] > 100 and sizes["Patient"] > 15, sizes
    assert len(corpus.rejected) < 10, corpus.rejected
