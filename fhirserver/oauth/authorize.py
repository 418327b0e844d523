"""The authorization code flow in the browser: authorize -> login -> (patient picker) -> consent -> redirect.

The request in progress lives in the database (any worker process can continue it), named by a random id in a
hidden form field and bound to the browser by a cookie, so a flow started by someone else cannot be finished
in a victim's browser (login CSRF)."""
from __future__ import annotations

import re
from datetime import timedelta
from typing import Any

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from fhirserver.oauth import auditing, pages
from fhirserver.oauth.errors import OAuthError, PageError, RedirectError
from fhirserver.oauth.http import Params, accepted_bases, form_params, origin, query_params, with_query
from fhirserver.oauth.login import check_login
from fhirserver.oauth.scopepolicy import LAUNCH_SCOPES, grantable
from fhirserver.oauth.service import AuthServer
from fhirserver.security import opaque
from fhirserver.storage.auth import Client, PendingRequest

COOKIE = "fhir_auth_flow"
REQUEST_LIFETIME = timedelta(minutes=15)
CODE_LIFETIME = timedelta(seconds=60)
_PKCE = re.compile(r"[A-Za-z0-9\-._~]{43,128}")


async def authorize(server: AuthServer, request: Request) -> Response:
    """GET or form POST (authorize-post) of the authorization request."""
    params = await form_params(request) if request.method == "POST" else query_params(request)
    client, redirect_uri = await _trusted_redirect(server, params)
    state = params.one("state")

    def fail(error: str, description: str) -> RedirectError:
        return RedirectError(error, description, redirect_uri, state)

    if params.one("response_type") != "code":
        raise fail("unsupported_response_type", "response_type must be 'code'")
    challenge, method = params.one("code_challenge"), params.one("code_challenge_method")
    if method != "S256" or not challenge or not _PKCE.fullmatch(challenge):
        raise fail("invalid_request", "PKCE is required: code_challenge with code_challenge_method=S256")
    aud = (params.one("aud") or "").rstrip("/")
    if aud not in accepted_bases(request, server.settings):
        raise fail("invalid_request", "aud must be this FHIR server's base URL")
    requested = (params.one("scope") or "").split()
    launch_ctx = None
    if params.one("launch"):
        launch = await server.store.launch(params.one("launch") or "")
        if launch is None or launch.client_id != client.client_id:
            raise fail("invalid_request", "The launch id is unknown, expired or for another app")
        launch_ctx = {"patient": launch.patient, "encounter": launch.encounter, "username": launch.username}
    scopes = grantable(requested, client.scope)
    if not scopes:
        raise fail("invalid_scope", "None of the requested scopes is allowed for this app")
    flow_id, browser = opaque.new_secret(), opaque.new_secret()
    await server.store.add_request(opaque.digest(flow_id), opaque.digest(browser), client.client_id, {
        "redirect_uri": redirect_uri, "state": state, "code_challenge": challenge, "nonce": params.one("nonce"),
        "aud": aud, "scopes": scopes, "launch": launch_ctx}, REQUEST_LIFETIME)
    username = (launch_ctx or {}).get("username") or ""
    response = pages.login_page(f"{server.auth_path(request)}/login", flow_id, client.name, username=username)
    response.set_cookie(COOKIE, browser, max_age=int(REQUEST_LIFETIME.total_seconds()), path=server.auth_path(request),
                        httponly=True, samesite="lax", secure=request.url.scheme == "https")
    return response


async def _trusted_redirect(server: AuthServer, params: Params) -> tuple[Client, str]:
    """The client and its redirect URI; until both check out, errors are pages, never redirects."""
    try:
        client_id, redirect_uri = params.one("client_id"), params.one("redirect_uri")
    except OAuthError as exc:
        raise PageError(exc.description) from exc
    client = await server.store.client(client_id) if client_id else None
    if client is None:
        raise PageError("Unknown or missing client_id: this app is not registered with the server")
    if not redirect_uri or redirect_uri not in client.redirect_uris:
        raise PageError("The redirect_uri is missing or not registered for this app")
    return client, redirect_uri


async def _pending(server: AuthServer, request: Request, form: Params) -> tuple[str, PendingRequest, Client]:
    flow_id = form.one("request") or ""
    pending = await server.store.request(opaque.digest(flow_id)) if flow_id else None
    if pending is None:
        raise PageError("This sign-in has expired or is unknown. Start again from the app.")
    if not opaque.matches(request.cookies.get(COOKIE, ""), pending.browser_hash):
        raise PageError("This sign-in was started in another browser. Start again from the app.")
    client = await server.store.client(pending.client_id)
    if client is None:
        raise PageError("The app has been removed.")
    return flow_id, pending, client


async def login(server: AuthServer, request: Request) -> Response:
    form = await form_params(request)
    flow_id, pending, client = await _pending(server, request, form)
    username = form.one("username") or ""
    result = await check_login(server.store, server.settings, username, form.one("password") or "", form.one("otp"))
    if result.locked_minutes:
        await auditing.record(server, request, "lockout", 423, client_id=client.client_id, user=username,
                              description=f"the account is locked for {result.locked_minutes} minute(s)")
        return pages.locked_page(result.locked_minutes)
    if result.user is None:
        await auditing.record(server, request, "login-failure", 401, client_id=client.client_id, user=username,
                              description=result.error)
        return pages.login_page(f"{server.auth_path(request)}/login", flow_id, client.name, username=username,
                                error=result.error)
    user = result.user
    await auditing.record(server, request, "login", 200, client_id=client.client_id, user=user.username,
                          fhir_user=user.fhir_user)
    launch = pending.params.get("launch") or {}
    if launch.get("username") and launch["username"] != user.username:
        raise PageError("This launch was created for another user.")
    patient = launch.get("patient")
    own = user.fhir_user.split("/", 1)[1] if user.role == "patient" and user.fhir_user else None
    if user.role == "patient":
        if own is None or (patient and patient != own):
            raise PageError("A patient may only open their own record.")
        patient = own
    await server.store.update_request(opaque.digest(flow_id), username=user.username, patient=patient)
    if patient is None and "launch/patient" in pending.params["scopes"]:
        return await _picker(server, request, flow_id, "")
    return _consent(server, request, flow_id, client, user.username, patient, pending.params)


async def _picker(server: AuthServer, request: Request, flow_id: str, query: str) -> Response:
    patients = await server.store.find_patients(query)
    return pages.patient_page(f"{server.auth_path(request)}/patient", flow_id, patients, query)


async def choose_patient(server: AuthServer, request: Request) -> Response:
    form = await form_params(request)
    flow_id, pending, client = await _pending(server, request, form)
    if pending.username is None:
        raise PageError("Sign in first.")
    patient = form.one("patient")
    if form.one("search") or not patient:
        return await _picker(server, request, flow_id, form.one("q") or "")
    if pending.patient is not None:
        raise PageError("The patient has been chosen already.")
    if not await server.store.patient_exists(patient):
        return await _picker(server, request, flow_id, form.one("q") or "")
    await server.store.update_request(opaque.digest(flow_id), patient=patient)
    return _consent(server, request, flow_id, client, pending.username, patient, pending.params)


def _consent(server: AuthServer, request: Request, flow_id: str, client: Client, username: str, patient: str | None,
             params: dict[str, Any]) -> Response:
    return pages.consent_page(f"{server.auth_path(request)}/consent", flow_id, client.name, username, patient,
                              params["scopes"], origin(params["redirect_uri"]))


async def consent(server: AuthServer, request: Request) -> Response:
    form = await form_params(request)
    flow_id, pending, client = await _pending(server, request, form)
    params = pending.params
    if pending.username is None:
        raise PageError("Sign in first.")
    if pending.patient is None and "launch/patient" in params["scopes"] and form.one("deny") is None:
        return await _picker(server, request, flow_id, "")
    if not await server.store.finish_request(opaque.digest(flow_id)):
        raise PageError("This authorization has been completed already.")
    redirect_uri, state = params["redirect_uri"], params.get("state")
    checked = set(form.all("scope"))
    granted = [s for s in params["scopes"] if s in checked]
    if form.one("approve") is None or not granted:
        raise RedirectError("access_denied", "The user did not authorize the app", redirect_uri, state)
    user = await server.store.user(pending.username)
    if user is None:
        raise PageError("The user has been removed.")
    launch = params.get("launch") or {}
    wants_context = bool(LAUNCH_SCOPES & set(granted)) or any(s.startswith("patient/") for s in granted)
    grant = {"scope": granted, "username": user.username, "role": user.role, "fhir_user": user.fhir_user,
             "patient": pending.patient if wants_context else None,
             "encounter": launch.get("encounter") if wants_context else None,
             "aud": params["aud"], "nonce": params.get("nonce")}
    code = opaque.new_secret()
    await server.store.add_code(opaque.digest(code), client.client_id, redirect_uri, params["code_challenge"], grant,
                                CODE_LIFETIME)
    response = RedirectResponse(with_query(redirect_uri, {"code": code, "state": state}), status_code=303)
    response.delete_cookie(COOKIE, path=server.auth_path(request))
    return response


def redirect_error(error: RedirectError) -> Response:
    return RedirectResponse(with_query(error.redirect_uri, {"error": error.error,
                                                            "error_description": error.description,
                                                            "state": error.state}), status_code=303)
