"""Server-rendered HTML pages of the authorization flow: everything escaped, no JavaScript, framing refused."""
from __future__ import annotations

from html import escape

from starlette.responses import HTMLResponse

_STYLE = ("body{font-family:system-ui,sans-serif;max-width:32rem;margin:3rem auto;padding:0 1rem;color:#1f1f1f}"
          "label{display:block;margin:.6rem 0}input[type=text],input[type=password]{width:100%;padding:.4rem}"
          "button{margin:.8rem .5rem 0 0;padding:.5rem 1rem}.error{color:#b00020}.muted{color:#666}"
          "table{border-collapse:collapse}td{padding:.2rem .6rem}")


def page(title: str, body: str, status: int = 200, form_targets: tuple[str, ...] = ()) -> HTMLResponse:
    """`form_targets`: origins a form on this page may end up at (the client's redirect URI after consent)."""
    csp = (f"default-src 'none'; style-src 'unsafe-inline'; form-action 'self' {' '.join(form_targets)}".rstrip()
           + "; frame-ancestors 'none'; base-uri 'none'")
    html = (f"<!doctype html><html lang=en><head><meta charset=utf-8><meta name=viewport "
            f"content='width=device-width,initial-scale=1'><title>{escape(title)}</title><style>{_STYLE}</style>"
            f"</head><body><h1>{escape(title)}</h1>{body}</body></html>")
    return HTMLResponse(html, status_code=status, headers={
        "Content-Security-Policy": csp, "X-Frame-Options": "DENY", "Cache-Control": "no-store",
        "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer"})


def _hidden(name: str, value: str) -> str:
    return f"<input type=hidden name={name} value=\"{escape(value)}\">"


def error_page(message: str, status: int = 400) -> HTMLResponse:
    return page("Authorization failed", f"<p class=error>{escape(message)}</p>", status)


def login_page(action: str, request_id: str, client_name: str, *, username: str = "", error: str = "",
               status: int = 200) -> HTMLResponse:
    err = f"<p class=error>{escape(error)}</p>" if error else ""
    body = (f"<p><strong>{escape(client_name)}</strong> asks to access FHIR data. Sign in to continue.</p>{err}"
            f"<form method=post action=\"{escape(action)}\">{_hidden('request', request_id)}"
            f"<label>User name <input type=text name=username value=\"{escape(username)}\" "
            f"autocomplete=username required></label>"
            f"<label>Password <input type=password name=password autocomplete=current-password required></label>"
            f"<label>One-time code (if your account has one) <input type=text name=otp inputmode=numeric "
            f"autocomplete=one-time-code></label><button type=submit>Sign in</button></form>")
    return page("Sign in", body, status)


def locked_page(minutes: int) -> HTMLResponse:
    return page("Account locked", f"<p class=error>Too many failed sign-ins: this account is locked for about "
                f"{minutes} minute(s). Try again later or ask an administrator to unlock it.</p>", 423)


def patient_page(action: str, request_id: str, patients: list[tuple[str, str]], query: str) -> HTMLResponse:
    rows = "".join(f"<label><input type=radio name=patient value=\"{escape(pid)}\" required> "
                   f"{escape(name or '(no name)')} <span class=muted>Patient/{escape(pid)}</span></label>"
                   for pid, name in patients) or "<p class=muted>No matching patients.</p>"
    body = (f"<form method=post action=\"{escape(action)}\">{_hidden('request', request_id)}"
            f"<label>Search <input type=text name=q value=\"{escape(query)}\"></label>"
            f"<button type=submit name=search value=1 formnovalidate>Search</button></form>"
            f"<form method=post action=\"{escape(action)}\">{_hidden('request', request_id)}{rows}"
            f"<button type=submit>Continue</button></form>")
    return page("Choose a patient", body)


def consent_page(action: str, request_id: str, client_name: str, username: str, patient: str | None,
                 scopes: list[str], redirect_origin: str) -> HTMLResponse:
    boxes = "".join(f"<label><input type=checkbox name=scope value=\"{escape(s)}\" checked> <code>{escape(s)}</code>"
                    f"</label>" for s in scopes)
    context = f" for <strong>Patient/{escape(patient)}</strong>" if patient else ""
    body = (f"<p>Signed in as <strong>{escape(username)}</strong>. <strong>{escape(client_name)}</strong> "
            f"asks for the following access{context}. Uncheck what you do not want to allow.</p>"
            f"<form method=post action=\"{escape(action)}\">{_hidden('request', request_id)}{boxes}"
            f"<button type=submit name=approve value=1>Allow</button>"
            f"<button type=submit name=deny value=1>Deny</button></form>")
    return page("Authorize access", body, form_targets=(redirect_origin,))
