"""GET [base]/metadata: the CapabilityStatement, generated from what the route table serves."""
from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version
from typing import Any

from conformance.capability import build_capability_statement
from fhirserver.rest import audit_capability
from fhirserver.rest import negotiation as neg
from fhirserver.rest.context import Context
from fhirserver.rest.http import Request, Response
from resources.types import RESOURCE_TYPES
from search.registry import Registry

TYPE_INTERACTIONS = ("read", "vread", "update", "patch", "delete", "history-instance", "history-type", "create",
                     "search-type")
SYSTEM_INTERACTIONS = ("transaction", "batch", "history-system", "search-system")
SPECIAL = frozenset({"_text", "_content"})   # the special parameters the server implements
_BULK = "http://hl7.org/fhir/uv/bulkdata/OperationDefinition/"
OPERATIONS = (
    {"name": "export", "definition": _BULK + "export"},
    {"name": "export", "definition": _BULK + "patient-export", "resource": "Patient"},
    {"name": "export", "definition": _BULK + "group-export", "resource": "Group"},
    {"name": "reindex", "definition": "urn:fhirserver:OperationDefinition:reindex"},
)


def search_params(registry: Registry) -> dict[str, list[dict[str, str]]]:
    """Every search parameter the indexer serves, per type (R4 CapabilityStatement.rest.resource.searchParam)."""
    result: dict[str, list[dict[str, str]]] = {}
    for res_type in RESOURCE_TYPES:
        params = registry.for_type(res_type)
        result[res_type] = [{"name": code, "type": p.type, "definition": p.url}
                            for code, p in sorted(params.items()) if p.type != "special" or code in SPECIAL]
    return result


def software_version() -> str:
    try:
        return version("fhirserver")
    except PackageNotFoundError:
        return "0+unknown"


OAUTH_URIS = "http://fhir-registry.smarthealthit.org/StructureDefinition/oauth-uris"
SECURITY_SERVICE = "http://terminology.hl7.org/CodeSystem/restful-security-service"


def security(uris: dict[str, str]) -> dict[str, Any]:
    """rest.security for SMART on FHIR: the service code and the oauth-uris extension (some clients read only
    this, not .well-known/smart-configuration)."""
    return {"extension": [{"url": OAUTH_URIS, "extension": [{"url": k, "valueUri": v} for k, v in uris.items()]}],
            "cors": True,
            "service": [{"coding": [{"system": SECURITY_SERVICE, "code": "SMART-on-FHIR"}],
                         "text": "OAuth2 using SMART-on-FHIR profile (see .well-known/smart-configuration)"}],
            "description": "Every request except GET [base]/metadata needs a SMART access token (Bearer)."}


def statement(base_url: str, registry: Registry, uris: dict[str, str] | None = None) -> dict:
    built = build_capability_statement(
        base_url=base_url,
        resource_types=sorted(RESOURCE_TYPES),
        type_interactions=TYPE_INTERACTIONS,
        system_interactions=SYSTEM_INTERACTIONS,
        formats=("json", neg.FHIR_JSON, "application/json"),
        software_name="fhirserver",
        software_version=software_version(),
        patch_formats=(neg.JSON_PATCH, neg.FHIR_JSON),
        search_params=search_params(registry),
        operations=OPERATIONS,
        instantiates=("http://hl7.org/fhir/uv/bulkdata/CapabilityStatement/bulk-data",),
        conditional={"conditionalCreate": True, "conditionalUpdate": True, "conditionalDelete": "single",
                     "conditionalRead": "full-support"},
    )
    if uris is not None:
        built["rest"][0]["security"] = security(uris)
    return audit_capability.apply(built)   # the audit trail serves less than other types


async def metadata(ctx: Context, request: Request) -> Response:
    key = f"{ctx.base_url} {id(ctx.registry)}"   # a reloaded registry is a new object
    cached = ctx.capability_statements.get(key)
    if cached is None:
        uris = ctx.oauth_uris(ctx.base_url) if ctx.oauth_uris else None
        cached = ctx.capability_statements[key] = statement(ctx.base_url, ctx.registry, uris)
    return Response(200, cached, {})
