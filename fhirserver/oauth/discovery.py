"""Discovery documents: SMART configuration, OpenID configuration, and the CapabilityStatement oauth-uris."""
from __future__ import annotations

from typing import Any

SCOPES_SUPPORTED = ["openid", "fhirUser", "profile", "launch", "launch/patient", "launch/encounter",
                    "offline_access", "online_access", "patient/*.rs", "patient/*.cruds", "user/*.rs", "user/*.cruds",
                    "system/*.rs", "system/*.cruds", "patient/*.read", "patient/*.*", "user/*.read", "user/*.*",
                    "system/*.read", "system/*.*"]
CAPABILITIES = ["launch-ehr", "launch-standalone", "client-public", "client-confidential-symmetric",
                "client-confidential-asymmetric", "sso-openid-connect", "context-ehr-patient",
                "context-ehr-encounter", "context-standalone-patient", "permission-offline", "permission-online",
                "permission-patient", "permission-user", "permission-v1", "permission-v2", "authorize-post"]
GRANT_TYPES = ["authorization_code", "refresh_token", "client_credentials"]
AUTH_METHODS = ["client_secret_basic", "client_secret_post", "private_key_jwt"]
ASSERTION_ALGS = ["RS384", "ES384"]


def oauth_uris(base_url: str) -> dict[str, str]:
    """The endpoints named by the CapabilityStatement extension
    http://fhir-registry.smarthealthit.org/StructureDefinition/oauth-uris."""
    auth = base_url.rstrip("/") + "/auth"
    return {"authorize": f"{auth}/authorize", "token": f"{auth}/token", "register": f"{auth}/register",
            "manage": f"{auth}/manage", "introspect": f"{auth}/introspect", "revoke": f"{auth}/revoke"}


def smart_configuration(base_url: str) -> dict[str, Any]:
    uris = oauth_uris(base_url)
    return {
        "issuer": base_url,
        "jwks_uri": f"{base_url}/auth/jwks",
        "authorization_endpoint": uris["authorize"],
        "token_endpoint": uris["token"],
        "token_endpoint_auth_methods_supported": AUTH_METHODS,
        "token_endpoint_auth_signing_alg_values_supported": ASSERTION_ALGS,
        "grant_types_supported": GRANT_TYPES,
        "registration_endpoint": uris["register"],
        "management_endpoint": uris["manage"],
        "introspection_endpoint": uris["introspect"],
        "revocation_endpoint": uris["revoke"],
        "scopes_supported": SCOPES_SUPPORTED,
        "response_types_supported": ["code"],
        "code_challenge_methods_supported": ["S256"],
        "capabilities": CAPABILITIES,
    }


def openid_configuration(base_url: str) -> dict[str, Any]:
    uris = oauth_uris(base_url)
    return {
        "issuer": base_url,
        "authorization_endpoint": uris["authorize"],
        "token_endpoint": uris["token"],
        "jwks_uri": f"{base_url}/auth/jwks",
        "registration_endpoint": uris["register"],
        "introspection_endpoint": uris["introspect"],
        "revocation_endpoint": uris["revoke"],
        "response_types_supported": ["code"],
        "grant_types_supported": GRANT_TYPES,
        "subject_types_supported": ["public"],
        "id_token_signing_alg_values_supported": ["RS256"],
        "token_endpoint_auth_methods_supported": AUTH_METHODS,
        "token_endpoint_auth_signing_alg_values_supported": ASSERTION_ALGS,
        "code_challenge_methods_supported": ["S256"],
        "scopes_supported": SCOPES_SUPPORTED,
        "claims_supported": ["iss", "sub", "aud", "exp", "iat", "nonce", "fhirUser"],
    }


SMART_STYLE = {
    "color_background": "#f7f7f7", "color_error": "#b00020", "color_highlight": "#1a5fb4",
    "color_modal_backdrop": "", "color_success": "#2e7d32", "color_text": "#1f1f1f", "dim_border_radius": "4px",
    "dim_font_size": "14px", "dim_spacing_size": "16px", "font_family_body": "system-ui, sans-serif",
    "font_family_heading": "system-ui, sans-serif",
}
