"""Search parameters -> AST (search/parse.py), rule by rule from R4 search.html, on the standard R4 registry."""
from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from resources.outcome import BadRequest, FHIRError
from search.parse import decimal_range, parse_search, split_escaped, unescape
from search.query import (
    AnyClause,
    Clause,
    CompositeQuery,
    DateQuery,
    HasClause,
    IdentifierQuery,
    MissingQuery,
    NumberQuery,
    OfTypeQuery,
    QuantityQuery,
    ReferenceQuery,
    SearchQuery,
    SpecialQuery,
    StringQuery,
    TextQuery,
    TokenQuery,
    UriQuery,
)
from search.registry import Registry, SearchParam, standard_registry

BASE = "http://fhir.example.org/r4"


def r4_registry() -> Registry:
    return standard_registry()


def param(res_type: str, code: str) -> SearchParam:
    found = standard_registry().get(res_type, code)
    assert found is not None, (res_type, code)
    return found


# --- helpers ----------------------------------------------------------------------------------------------

def pairs(query: str) -> list[tuple[str, str]]:
    """`a=1&b=2` -> [(a, 1), (b, 2)] with no URL decoding (parse_search takes decoded pairs)."""
    return [(p.split("=", 1)[0], p.split("=", 1)[1] if "=" in p else "") for p in query.split("&") if p]


def parse(query: str, res_type: str | None = "Observation", **options: Any) -> SearchQuery:
    options.setdefault("registry", r4_registry())
    return parse_search(pairs(query), res_type=res_type, base_url=BASE, **options)


def rejects(query: str, expression: str, res_type: str | None = "Observation", **options: Any) -> BadRequest:
    with pytest.raises(BadRequest) as info:
        parse(query, res_type, **options)
    assert info.value.status == 400
    assert info.value.issues[0].expression == (expression,), info.value.diagnostics
    return info.value


def clause(query: str, res_type: str | None = "Observation", **options: Any) -> Clause:
    parsed = parse(query, res_type, **options)
    assert len(parsed.clauses) == 1 and isinstance(parsed.clauses[0], Clause), parsed.clauses
    return parsed.clauses[0]


def values(query: str, res_type: str | None = "Observation") -> tuple[Any, ...]:
    return clause(query, res_type).values


# --- escaping and OR / AND --------------------------------------------------------------------------------

def test_split_and_unescape() -> None:
    assert split_escaped(r"a,b\,c,d", ",") == ["a", r"b\,c", "d"]
    assert split_escaped(r"a\\,b", ",") == [r"a\\", "b"]
    assert unescape(r"x\,y\$z\|w\\v", "p") == "x,y$z|w\\v"


def test_comma_separates_or_values_unless_escaped() -> None:
    assert values("code=a,b") == (TokenQuery(None, "a"), TokenQuery(None, "b"))
    assert values(r"code=a\,b") == (TokenQuery(None, "a,b"),)


def test_escaped_pipe_and_dollar_and_backslash_are_literal() -> None:
    assert values(r"code=http://x\|y|c") == (TokenQuery("http://x|y", "c"),)
    assert values(r"name=a\$b\\c", "Patient") == (StringQuery("a$b\\c"),)


def test_a_lone_backslash_is_illegal() -> None:
    rejects(r"name=xx\xx", "name", "Patient")
    rejects("name=xx\\", "name", "Patient")


def test_repeated_parameter_is_and() -> None:
    parsed = parse("code=a&code=b")
    assert [c.values for c in parsed.clauses if isinstance(c, Clause)] == [(TokenQuery(None, "a"),),
                                                                           (TokenQuery(None, "b"),)]


# --- token ------------------------------------------------------------------------------------------------

def test_token_forms() -> None:
    assert values("code=1234") == (TokenQuery(None, "1234"),)
    assert values("code=|1234") == (TokenQuery("", "1234"),)
    assert values("code=http://loinc.org|") == (TokenQuery("http://loinc.org", None),)
    assert values("code=http://loinc.org|1234") == (TokenQuery("http://loinc.org", "1234"),)


def test_token_with_extra_pipes_is_rejected() -> None:
    rejects("code=a|b|c", "code")
    rejects("code=|", "code")


def test_token_modifiers() -> None:
    text = clause("code:text=headache")
    assert (text.modifier, text.values) == ("text", (TextQuery("headache"),))
    negated = clause("gender:not=male", "Patient")
    assert (negated.modifier, negated.negate, negated.values) == ("not", True, (TokenQuery(None, "male"),))
    of_type = values("identifier:of-type=http://terminology.hl7.org/CodeSystem/v2-0203|MR|446053", "Patient")
    assert of_type == (OfTypeQuery("http://terminology.hl7.org/CodeSystem/v2-0203", "MR", "446053"),)


def test_of_type_needs_all_three_parts() -> None:
    rejects("identifier:of-type=http://sys|MR", "identifier:of-type", "Patient")
    rejects("identifier:of-type=|MR|123", "identifier:of-type", "Patient")


def test_unsupported_modifiers_are_rejected_even_when_lenient() -> None:
    # dropping code:in / code:not-in / code:below would widen or invert the match, so they are errors
    rejects("code:in=http://vs&status=final", "code:in")
    rejects("code:not-in=http://vs", "code:not-in")
    rejects("code:below=http://snomed.info/sct|123", "code:below", strict=True)
    parsed = parse("code:in=http://vs", unsupported_modifiers={})
    assert parsed.clauses[0] == Clause(param("Observation", "code"), "in", (UriQuery("http://vs"),))


def test_a_modifier_r4_does_not_define_for_the_type_is_always_400() -> None:
    rejects("code:exact=x", "code:exact")
    rejects("date:exact=2020", "date:exact")
    rejects("name:text=x", "name:text", "Patient")
    rejects("name:=x", "name:", "Patient")


# --- string, uri, special ---------------------------------------------------------------------------------

def test_string_modifiers() -> None:
    assert clause("name=eve", "Patient").modifier is None
    exact = clause("name:exact=Eve", "Patient")
    assert (exact.modifier, exact.values) == ("exact", (StringQuery("Eve"),))
    assert clause("name:contains=eve", "Patient").modifier == "contains"


def test_uri_values_and_modifiers() -> None:
    below = clause("url:below=http://acme.org/fhir/", "ValueSet")
    assert (below.modifier, below.values) == ("below", (UriQuery("http://acme.org/fhir/"),))
    assert values("url=urn:oid:1.2.3.4.5", "ValueSet") == (UriQuery("urn:oid:1.2.3.4.5"),)


def test_special_values_are_kept_as_written() -> None:
    assert values("near=42.2|-71.1|10|km", "Location") == (SpecialQuery("42.2|-71.1|10|km"),)
    rejects("near:missing=true", "near:missing", "Location")


# --- prefixes, dates, numbers, quantities -----------------------------------------------------------------

def test_date_is_a_range_by_precision_with_eq_by_default() -> None:
    day = datetime(2013, 1, 14, tzinfo=UTC), datetime(2013, 1, 15, tzinfo=UTC)
    assert values("date=2013-01-14") == (DateQuery("eq", *day),)
    assert values("date=2013") == (DateQuery("eq", datetime(2013, 1, 1, tzinfo=UTC), datetime(2014, 1, 1, tzinfo=UTC)),)


@pytest.mark.parametrize("prefix", ["eq", "ne", "gt", "lt", "ge", "le", "sa", "eb", "ap"])
def test_every_prefix_on_dates_and_numbers(prefix: str) -> None:
    date = values(f"date={prefix}2013-01-14T10:00:00Z")[0]
    assert isinstance(date, DateQuery) and date.prefix == prefix
    number = values(f"probability={prefix}0.8", "RiskAssessment")[0]
    assert isinstance(number, NumberQuery) and number.prefix == prefix and number.value == Decimal("0.8")


def test_bad_prefixes_and_dates_are_400() -> None:
    rejects("date=xx2013", "date")
    rejects("date=GT2013", "date")
    rejects("date=2013-13-01", "date")
    rejects("date=gt", "date")



def test_dates_at_the_ends_of_the_calendar_are_clamped_not_rejected() -> None:
    # Valid FHIR dates whose range reaches past year 9999 (or before year 1) are clamped to the
    # representable range instead of failing.
    assert values("_lastUpdated=9999")
    assert values("date=0001-01-01T00:00:00+14:00")


def test_prefixes_only_for_ordered_types() -> None:
    assert values("name=gteve", "Patient") == (StringQuery("gteve"),)
    assert values("code=ge123") == (TokenQuery(None, "ge123"),)


@pytest.mark.parametrize(("text", "low", "high"), [
    ("100", "99.5", "100.5"),
    ("100.00", "99.995", "100.005"),
    ("1e2", "50", "150"),          # one significant digit (search.html#number notes)
    ("1.00e2", "99.5", "100.5"),   # "100 and 1.00e2 both have the same number of significant digits"
    ("0.8", "0.75", "0.85"),
    ("8e-1", "0.75", "0.85"),
    ("2.0", "1.95", "2.05"),
    ("-3", "-3.5", "-2.5"),
    ("0", "-0.5", "0.5"),
    ("123456789012345678901234567890.5", "123456789012345678901234567890.45",
     "123456789012345678901234567890.55"),
])
def test_number_precision_ranges(text: str, low: str, high: str) -> None:
    value, got_low, got_high = decimal_range(text, "n")
    assert (value, got_low, got_high) == (Decimal(text), Decimal(low), Decimal(high))
    assert values(f"probability={text}", "RiskAssessment") == (
        NumberQuery("eq", Decimal(text), Decimal(low), Decimal(high)),)


@pytest.mark.parametrize("text", ["1.", ".5", "+1", "01", "NaN", "Infinity", "1e", "1e99999", "0x10", "1;5", "abc"])
def test_bad_numbers_are_400(text: str) -> None:
    rejects(f"probability={text}", "probability", "RiskAssessment")


def test_quantity_forms() -> None:
    ucum = "http://unitsofmeasure.org"
    assert values(f"value-quantity=5.4|{ucum}|mg") == (
        QuantityQuery("eq", Decimal("5.4"), Decimal("5.35"), Decimal("5.45"), ucum, "mg"),)
    assert values("value-quantity=5.4||mg") == (
        QuantityQuery("eq", Decimal("5.4"), Decimal("5.35"), Decimal("5.45"), None, "mg"),)
    assert values("value-quantity=5.4") == (
        QuantityQuery("eq", Decimal("5.4"), Decimal("5.35"), Decimal("5.45"), None, None),)
    small = values(f"value-quantity=5.40e-3|{ucum}|g")[0]
    assert isinstance(small, QuantityQuery)
    assert (small.low, small.high) == (Decimal("0.005395"), Decimal("0.005405"))
    le = values(f"value-quantity=le5.4|{ucum}|mg")[0]
    assert isinstance(le, QuantityQuery) and le.prefix == "le"


def test_bad_quantities_are_400() -> None:
    rejects("value-quantity=5.4|mg", "value-quantity")
    rejects("value-quantity=xx5.4", "value-quantity")
    rejects("value-quantity=5.4|a|b|c", "value-quantity")


# --- reference --------------------------------------------------------------------------------------------

def test_reference_forms() -> None:
    assert values("subject=123") == (ReferenceQuery(None, "123", None, None),)
    assert values("subject=Patient/123") == (ReferenceQuery("Patient", "123", None, None),)
    assert values(f"subject={BASE}/Patient/123") == (ReferenceQuery("Patient", "123", None, None),)
    assert values("subject=http://elsewhere.org/fhir/Patient/123") == (
        ReferenceQuery(None, None, "http://elsewhere.org/fhir/Patient/123", None),)
    assert values("subject=Patient/123/_history/2") == (ReferenceQuery("Patient", "123", None, "2"),)


def test_canonical_reference_with_version() -> None:
    assert values("questionnaire=http://example.org/fhir/questionnaire/intake|3.0", "QuestionnaireResponse") == (
        ReferenceQuery(None, None, "http://example.org/fhir/questionnaire/intake", "3.0"),)
    rejects("questionnaire=Questionnaire/1|3.0", "questionnaire", "QuestionnaireResponse")


def test_reference_type_modifier() -> None:
    typed = clause("subject:Patient=23")
    assert (typed.modifier, typed.target_type, typed.values) == (None, "Patient", (ReferenceQuery("Patient", "23",
                                                                                                  None, None),))
    rejects("subject:Patient=Group/23", "subject:Patient")
    rejects("subject:Practitioner=23", "subject:Practitioner")       # not a target of Observation.subject
    rejects("subject:Patient=http://elsewhere.org/Patient/1", "subject:Patient")


def test_bad_references_are_400() -> None:
    rejects("subject=Foo/123", "subject")
    rejects("subject=Patient/a b", "subject")
    rejects("patient=Device/1", "patient")                           # patient refers to Patient or Group
    rejects("subject=a/b/c", "subject")


def test_reference_identifier_modifier() -> None:
    found = clause("subject:identifier=http://acme.org/fhir/identifier/mrn|123456")
    assert (found.modifier, found.values) == ("identifier", (
        IdentifierQuery("http://acme.org/fhir/identifier/mrn", "123456"),))


# --- missing and composite --------------------------------------------------------------------------------

def test_missing() -> None:
    missing = clause("clinical-status:missing=true", "AllergyIntolerance")
    assert (missing.modifier, missing.values) == ("missing", (MissingQuery(True),))
    assert values("date:missing=false") == (MissingQuery(False),)
    rejects("date:missing=yes", "date:missing")


def test_composite() -> None:
    found = values("code-value-quantity=http://loinc.org|8480-6$lt60")
    assert found == (CompositeQuery((TokenQuery("http://loinc.org", "8480-6"),
                                     QuantityQuery("lt", Decimal(60), Decimal("59.5"), Decimal("60.5"), None, None))),)
    assert values(r"characteristic-value=gen\$der$mixed,owner$Eve", "Group") == (
        CompositeQuery((TokenQuery(None, "gen$der"), TokenQuery(None, "mixed"))),
        CompositeQuery((TokenQuery(None, "owner"), TokenQuery(None, "Eve"))))


def test_composite_errors() -> None:
    rejects("code-value-quantity=http://loinc.org|8480-6", "code-value-quantity")
    rejects("code-value-quantity=a$1$2", "code-value-quantity")
    rejects("code-value-quantity=a$xx1", "code-value-quantity")
    rejects("code-value-quantity:exact=a$1", "code-value-quantity:exact")


# --- chaining and reverse chaining ------------------------------------------------------------------------

def test_chain_with_explicit_type() -> None:
    chained = clause("subject:Patient.name=peter", "DiagnosticReport")
    assert chained == Clause(param("DiagnosticReport", "subject"), None, (), target_type="Patient",
                             chain=Clause(param("Patient", "name"), None, (StringQuery("peter"),)))


def test_chain_through_a_single_target_type() -> None:
    chained = clause("patient.name:exact=Peter")
    assert chained.target_type == "Patient" and chained.values == ()
    assert chained.chain == Clause(param("Patient", "name"), "exact", (StringQuery("Peter"),))


def test_chain_through_several_target_types_takes_those_with_the_parameter() -> None:
    parsed = parse("subject.name=peter")
    assert len(parsed.clauses) == 1 and isinstance(parsed.clauses[0], AnyClause)
    alternatives = parsed.clauses[0].alternatives
    assert all(isinstance(a, Clause) for a in alternatives)
    by_type = {a.target_type: a.chain for a in alternatives if isinstance(a, Clause)}
    assert set(by_type) == {"Patient", "Location"}     # Group and Device have no `name`
    assert by_type["Location"] == Clause(param("Location", "name"), None, (StringQuery("peter"),))


def test_multi_level_chain() -> None:
    chained = clause("subject:Patient.organization.name=Acme", "Encounter")
    assert chained.target_type == "Patient"
    assert isinstance(chained.chain, Clause) and chained.chain.target_type == "Organization"
    assert chained.chain.chain == Clause(param("Organization", "name"), None, (StringQuery("Acme"),))


def test_chain_errors() -> None:
    rejects("code.name=x", "code.name")                              # not a reference
    rejects("patient.nosuch=x", "patient.nosuch")                    # always 400, even lenient
    rejects("subject:identifier.name=x", "subject:identifier.name")
    rejects("subject.nosuch=x", "subject.nosuch")
    rejects("patient.name:nosuch=x", "patient.name:nosuch")
    assert parse("nosuch.name=x").ignored == ("nosuch.name",)        # an unknown first link is an unknown parameter


def test_has() -> None:
    parsed = parse("_has:Observation:patient:code=1234-5,6789", "Patient")
    assert parsed.clauses == (HasClause("Observation", param("Observation", "patient"),
                                        Clause(param("Observation", "code"), None,
                                               (TokenQuery(None, "1234-5"), TokenQuery(None, "6789")))),)


def test_nested_has() -> None:
    parsed = parse("_has:Observation:patient:_has:AuditEvent:entity:agent=MyUserId", "Patient")
    assert parsed.clauses == (HasClause("Observation", param("Observation", "patient"), HasClause(
        "AuditEvent", param("AuditEvent", "entity"),
        Clause(param("AuditEvent", "agent"), None, (ReferenceQuery(None, "MyUserId", None, None),)))),)


def test_has_errors() -> None:
    rejects("_has:Observation:patient=1", "_has:Observation:patient", "Patient")
    rejects("_has:Nope:patient:code=1", "_has:Nope:patient:code", "Patient")
    rejects("_has:Observation:code:code=1", "_has:Observation:code:code", "Patient")          # not a reference
    rejects("_has:Observation:encounter:code=1", "_has:Observation:encounter:code", "Patient")  # never a Patient
    rejects("_has:Observation:patient:nosuch=1", "_has:Observation:patient:nosuch", "Patient")


# --- unknown and unsupported parameters -------------------------------------------------------------------

def test_unknown_parameters_are_ignored_leniently_and_400_strictly() -> None:
    parsed = parse("nosuch=1&code=a&_filter=x eq y")
    assert parsed.ignored == ("nosuch", "_filter")
    assert parsed.self_params == (("code", "a"),)
    rejects("nosuch=1&code=a", "nosuch", strict=True)


def test_unsupported_parameters() -> None:
    assert parse("_contained=true&_containedType=contained").ignored == ("_contained", "_containedType")
    rejects("_contained=true", "_contained", strict=True)


def test_an_empty_value_drops_the_parameter() -> None:
    assert parse("code=&status=,").ignored == ("code", "status")
    rejects("code=", "code", strict=True)


def test_text_that_cannot_be_stored_is_400() -> None:
    with pytest.raises(BadRequest):
        parse_search([("code", "a\x00b")], res_type="Observation", registry=r4_registry(), base_url=BASE)
    with pytest.raises(BadRequest):
        parse_search([("co\ud800de", "a")], res_type="Observation", registry=r4_registry(), base_url=BASE)


# --- result parameters ------------------------------------------------------------------------------------

def test_count() -> None:
    assert parse("_count=10").count == 10
    assert parse("_count=0").count == 0
    assert parse("_count=5000", max_count=1000).count == 1000
    assert parse("_count=" + "9" * 5000).count == 1000
    assert parse("").count is None
    for bad in ("-1", "abc", "1.5", "", "١"):
        rejects(f"_count={bad}", "_count")


def test_result_parameters_may_appear_once() -> None:
    rejects("_count=1&_count=2", "_count")
    rejects("_sort=date&_sort=code", "_sort")


def test_sort() -> None:
    parsed = parse("_sort=status,-date,_lastUpdated")
    assert [(k.param, k.descending) for k in parsed.sort] == [
        (param("Observation", "status"), False), (param("Observation", "date"), True),
        (param("Observation", "_lastUpdated"), False)]
    rejects("_sort=nosuch", "_sort")
    rejects("_sort=status,", "_sort")
    rejects("_sort=code-value-quantity", "_sort")
    rejects("_sort=_text", "_sort")
    rejects("_sort:desc=date", "_sort:desc")


def test_include_and_revinclude() -> None:
    parsed = parse("_include=MedicationDispense:prescription&_include:iterate=MedicationRequest:requester"
                   "&_revinclude=Provenance:target&_include=MedicationDispense:subject:Patient", "MedicationDispense")
    first, iterated, typed = parsed.includes
    assert (first.source_type, first.param, first.target_type, first.iterate, first.reverse) == (
        "MedicationDispense", param("MedicationDispense", "prescription"), None, False, False)
    assert (iterated.source_type, iterated.iterate) == ("MedicationRequest", True)
    assert typed.target_type == "Patient"
    (rev,) = parsed.revincludes
    assert (rev.source_type, rev.param, rev.reverse) == ("Provenance", param("Provenance", "target"), True)


def test_include_wildcards() -> None:
    parsed = parse("_include=*&_include:iterate=Observation:*&_revinclude=*")
    assert [(i.source_type, i.param, i.iterate) for i in parsed.includes] == [("*", None, False),
                                                                              ("Observation", None, True)]
    assert parsed.revincludes[0].reverse


def test_include_errors() -> None:
    rejects("_include=Observation:code", "_include")                 # not a reference
    rejects("_include=Observation:nosuch", "_include")
    rejects("_include=Nope:subject", "_include")
    rejects("_include=Observation", "_include")
    rejects("_include=Observation:subject:Practitioner", "_include")  # not a target of subject
    rejects("_include=Observation:subject,Observation:patient", "_include")
    rejects("_include:deep=Observation:subject", "_include:deep")
    rejects("_revinclude:iterate=Provenance:nosuch", "_revinclude:iterate")


def test_total_summary_elements() -> None:
    parsed = parse("_total=accurate&_summary=count")
    assert (parsed.total, parsed.summary) == ("accurate", "count")
    assert parse("_elements=status, code,Observation.subject").elements == ("status", "code", "Observation.subject")
    rejects("_total=all", "_total")
    rejects("_summary=yes", "_summary")
    rejects("_elements=,", "_elements")
    rejects("_elements=a b", "_elements")
    rejects("_summary=true&_elements=code", "_elements")
    rejects("_summary=text&_include=Observation:subject", "_summary")


def test_cursor_format_and_pretty() -> None:
    parsed = parse("_cursor=abc&_format=json&_pretty=true&code=x")
    assert parsed.cursor == "abc"
    assert parsed.self_params == (("code", "x"), ("_cursor", "abc"))
    assert parsed.ignored == ()


def test_self_params_are_canonical_and_leave_out_what_was_not_used() -> None:
    parsed = parse("status=final&_count=5000&nosuch=1&code=b&_format=json&_include=Observation:subject&code=a"
                   "&_sort=-date")
    assert parsed.self_params == (("code", "b"), ("code", "a"), ("status", "final"), ("_sort", "-date"),
                                  ("_count", "1000"), ("_include", "Observation:subject"))
    same = parse("_sort=-date&_include=Observation:subject&code=b&code=a&_count=1000&status=final")
    assert same.self_params == parsed.self_params


# --- search contexts --------------------------------------------------------------------------------------

def test_system_level_type_and_common_parameters() -> None:
    parsed = parse("_type=Observation,Condition&patient=123", None)
    assert parsed.res_types == ("Observation", "Condition")
    assert isinstance(parsed.clauses[0], Clause)                      # one shared definition (clinical-patient)
    assert parsed.self_params == (("_type", "Observation,Condition"), ("patient", "123"))
    assert parse("_id=1", None).res_types == ()
    assert parse("name=x", None).ignored == ("name",)                 # not a parameter of every resource
    rejects("_type=Observation,Nope", "_type", None)


def test_system_level_parameter_defined_differently_per_type() -> None:
    parsed = parse("_type=Patient,Location&name=x", None)
    assert isinstance(parsed.clauses[0], AnyClause)
    assert {a.param.url for a in parsed.clauses[0].alternatives if isinstance(a, Clause)} == {
        "http://hl7.org/fhir/SearchParameter/Patient-name", "http://hl7.org/fhir/SearchParameter/Location-name"}


def test_type_level_type_parameter() -> None:
    assert parse("_type=Observation").self_params == ()
    rejects("_type=Patient", "_type")


def test_compartment_is_recorded() -> None:
    parsed = parse("code=x", "Observation", compartment=("Patient", "123"))
    assert parsed.compartment == ("Patient", "123") and parsed.res_types == ("Observation",)


# --- property: nothing but FHIR errors --------------------------------------------------------------------

NAMES = ["code", "subject", "patient", "date", "value-quantity", "code-value-quantity", "identifier", "_id",
         "_lastUpdated", "status", "focus", "_has", "_sort", "_count", "_include", "_revinclude", "_summary",
         "_elements", "_total", "_type", "_cursor", "_format", "nosuch", "name", "near", "probability", "url",
         "_has:Observation:patient", "_include:iterate", "component-value-quantity", "based-on", "_contained"]
PARTS = [":", ".", "$", "|", ",", "\\", "-", "*", "missing", "not", "text", "exact", "Patient", "Observation",
         "of-type", "identifier", "in", "iterate", "above", "gt", "eb", "1e2", "2013-01", "T10:00", "Z", "+14:00",
         "9999", "0", "-", "http://x/", BASE + "/", "_history", "true", "Group", "Location", "name", "\x00", "e"]
pieces = st.one_of(st.sampled_from(NAMES + PARTS), st.text(max_size=6))
texts = st.lists(pieces, max_size=6).map("".join)


@settings(max_examples=400, deadline=None)
@given(st.lists(st.tuples(texts, texts), max_size=6), st.sampled_from(["Observation", "Patient", None]),
       st.booleans())
def test_random_parameters_raise_only_fhir_errors(params: list[tuple[str, str]], res_type: str | None,
                                                  strict: bool) -> None:
    try:
        parsed = parse_search(params, res_type=res_type, registry=r4_registry(), base_url=BASE, strict=strict)
    except FHIRError as error:
        assert error.status == 400
    else:
        assert len(parsed.self_params) + len(parsed.ignored) <= len(params)
