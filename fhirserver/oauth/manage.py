"""GET/POST [base]/auth/manage: a signed-in user sees the apps holding refresh grants and can revoke them.

No server-side session: after the login a short-lived signed `session` token travels in the page's forms."""
from __future__ import annotations

import time
from html import escape

from starlette.requests import Request
from starlette.responses import Response

from fhirserver.oauth import pages
from fhirserver.oauth.http import Params, form_params, request_base_url
from fhirserver.oauth.login import check_login
from fhirserver.oauth.service import AuthServer
from fhirserver.security.jose import SIGNING_ALG, JoseError, sign, unverified_header, verify

SESSION_TYPE = "manage+jwt"
SESSION_SECONDS = 600


async def manage(server: AuthServer, request: Request) -> Response:
    action = f"{server.auth_path(request)}/manage"
    if request.method == "GET":
        return _login(action)
    form = await form_params(request)
    audience = request_base_url(request, server.settings) + "/auth/manage"
    if form.one("session"):
        username = _session_user(server, form, audience)
        if username is None:
            return _login(action, "Your session has expired; sign in again.")
        if form.one("revoke"):
            await server.store.revoke_family_of(form.one("revoke") or "", username)
    else:
        result = await check_login(server.store, server.settings, form.one("username") or "",
                                   form.one("password") or "", form.one("otp"))
        if result.locked_minutes:
            return pages.locked_page(result.locked_minutes)
        if result.user is None:
            return _login(action, result.error)
        username = result.user.username
    return await _grants_page(server, action, username, _new_session(server, username, audience))


def _login(action: str, error: str = "") -> Response:
    err = f"<p class=error>{escape(error)}</p>" if error else ""
    return pages.page("Your authorized apps", f"{err}<form method=post action=\"{escape(action)}\">"
                      "<label>User name <input type=text name=username autocomplete=username required></label>"
                      "<label>Password <input type=password name=password autocomplete=current-password required>"
                      "</label><label>One-time code (if your account has one) <input type=text name=otp "
                      "autocomplete=one-time-code></label><button type=submit>Sign in</button></form>")


def _new_session(server: AuthServer, username: str, audience: str) -> str:
    key = server.verifier.keys.signing_key()
    now = int(time.time())
    return sign({"sub": username, "aud": audience, "iat": now, "exp": now + SESSION_SECONDS}, key.private_pem,
                key.kid, typ=SESSION_TYPE)


def _session_user(server: AuthServer, form: Params, audience: str) -> str | None:
    token = form.one("session") or ""
    try:
        header = unverified_header(token)
        jwk = server.verifier.keys.public.get(str(header.get("kid")))
        if jwk is None or header.get("typ") != SESSION_TYPE:
            return None
        claims = verify(token, jwk, [SIGNING_ALG])
    except JoseError:
        return None
    if claims.get("aud") != audience or not isinstance(claims.get("exp"), int) or claims["exp"] < time.time():
        return None
    return str(claims.get("sub"))


async def _grants_page(server: AuthServer, action: str, username: str, session: str) -> Response:
    grants = await server.store.grants_of(username)
    rows = "".join(
        f"<tr><td>{escape(g['client_name'])}</td><td><code>{escape(' '.join(g['grant_data']['scope']))}</code></td>"
        f"<td>until {escape(g['expires_at'].date().isoformat())}</td><td><form method=post action=\"{escape(action)}\">"
        f"<input type=hidden name=session value=\"{escape(session)}\">"
        f"<button type=submit name=revoke value=\"{escape(g['family'])}\">Revoke</button></form></td></tr>"
        for g in grants)
    body = (f"<p>Signed in as <strong>{escape(username)}</strong>.</p>"
            + (f"<table>{rows}</table>" if rows else "<p class=muted>No app holds a long-lived grant.</p>"))
    return pages.page("Your authorized apps", body)
