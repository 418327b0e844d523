"""GET [base]/metadata: the CapabilityStatement, generated from what the route table serves."""
from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

from conformance.capability import build_capability_statement
from fhirserver.rest import negotiation as neg
from fhirserver.rest.context import Context
from fhirserver.rest.http import Request, Response
from resources.elements import has_element
from resources.types import RESOURCE_TYPES

TYPE_INTERACTIONS = ("read", "vread", "update", "patch", "delete", "history-instance", "history-type", "create",
                     "search-type")
_ID = {"name": "_id", "type": "token", "definition": "http://hl7.org/fhir/SearchParameter/Resource-id"}
_IDENTIFIER = {"name": "identifier", "type": "token", "documentation": "system|value, |value, system| or value"}


def search_params() -> dict[str, list[dict[str, str]]]:
    """What the interim search supports: `_id` everywhere, `identifier` where the type has one."""
    return {t: [_ID, _IDENTIFIER] if has_element(t, "identifier") else [_ID] for t in RESOURCE_TYPES}
SYSTEM_INTERACTIONS = ("history-system",)


def software_version() -> str:
    try:
        return version("fhirserver")
    except PackageNotFoundError:
        return "0+unknown"


def statement(base_url: str) -> dict:
    return build_capability_statement(
        base_url=base_url,
        resource_types=sorted(RESOURCE_TYPES),
        type_interactions=TYPE_INTERACTIONS,
        system_interactions=SYSTEM_INTERACTIONS,
        formats=("json", neg.FHIR_JSON, "application/json"),
        software_name="fhirserver",
        software_version=software_version(),
        patch_formats=(neg.JSON_PATCH,),
        search_params=search_params(),
        conditional={"conditionalCreate": True, "conditionalUpdate": True, "conditionalDelete": "single",
                     "conditionalRead": "full-support"},
    )


async def metadata(ctx: Context, request: Request) -> Response:
    cached = ctx.capability_statements.get(ctx.base_url)
    if cached is None:
        cached = ctx.capability_statements[ctx.base_url] = statement(ctx.base_url)
    return Response(200, cached, {})
