"""End to end in a real browser: headless Chromium runs a small SMART app (tests/browser/, npm `fhirclient`) served
from its own origin, through standalone launch and EHR launch against the live server: login, patient picker,
consent, then the app reads the patient and their Observations; the patient-scoped token must not read another
patient (a user-scoped run is the control: the same read answers 200 there).

Chromium is driven over the DevTools protocol through a pipe (--remote-debugging-pipe): no driver, no extra
Python package. Skips when Chromium or npm is missing (.ci/run installs Chromium)."""
from __future__ import annotations

import contextlib
import fcntl
import functools
import http.server
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import httpx
import pytest

from tests.conftest import LiveServer, free_port, start_server, throwaway_database
from tests.paths import REPO

APP_DIR = REPO / "tests" / "browser"
FHIRCLIENT_JS = APP_DIR / "node_modules" / "fhirclient" / "build" / "fhir-client.js"
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--disable-dev-shm-usage", "--remote-debugging-pipe"]

CLIENT_ID = "browser-test-app"
CLINICIAN, CLINICIAN_PASSWORD = "dr-browser", "correct horse battery staple"
PATIENT_SCOPES = "launch/patient patient/Patient.read patient/Observation.read"
EHR_SCOPES = "launch patient/Patient.read patient/Observation.read"
USER_SCOPES = "user/Patient.read user/Observation.read"
NO_CHROMIUM = "no Chromium: install it (apt-get install chromium) or set CHROMIUM=/path/to/chrome"


# ---------------------------------------------------------------------------------------------------------------
# Chromium over the DevTools protocol (CDP), messages are NUL-terminated JSON on fds 3 (in) and 4 (out)

class BrowserError(RuntimeError):
    pass


def find_chromium() -> str | None:
    for candidate in (os.environ.get("CHROMIUM"), "chromium", "chromium-browser", "google-chrome", "chrome"):
        if candidate and (path := shutil.which(candidate)):
            return path
    return None


class Chromium:
    def __init__(self, executable: str, log: Path) -> None:
        self.profile = tempfile.mkdtemp(prefix="fhirserver-chromium-")
        to_child_r, self._to_child = os.pipe()
        self._from_child, from_child_w = os.pipe()
        # above fd 10 so that moving them to 3 and 4 in the child cannot clobber one another
        child_in = fcntl.fcntl(to_child_r, fcntl.F_DUPFD_CLOEXEC, 10)
        child_out = fcntl.fcntl(from_child_w, fcntl.F_DUPFD_CLOEXEC, 10)
        os.close(to_child_r)
        os.close(from_child_w)
        trampoline = ("import os, sys; a, b = int(sys.argv[1]), int(sys.argv[2]); os.dup2(a, 3); os.dup2(b, 4); "
                      "os.close(a); os.close(b); os.execv(sys.argv[3], sys.argv[3:])")
        with log.open("ab") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-c", trampoline, str(child_in), str(child_out), executable, *CHROMIUM_FLAGS,
                 f"--user-data-dir={self.profile}", "about:blank"],
                pass_fds=(child_in, child_out), stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT)
        os.close(child_in)
        os.close(child_out)
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._next_id = 0
        self._responses: dict[int, dict[str, Any]] = {}
        self._listeners: dict[str, list[Callable[[dict[str, Any]], None]]] = {}
        self._closed = False
        self._reader = threading.Thread(target=self._read, name="cdp-reader", daemon=True)
        self._reader.start()
        self.version = self.call("Browser.getVersion", timeout=60)["product"]

    def _read(self) -> None:
        buffer = b""
        try:
            while chunk := os.read(self._from_child, 1 << 16):
                buffer += chunk
                *messages, buffer = buffer.split(b"\0")
                for raw in messages:
                    message = json.loads(raw)
                    if "id" in message:
                        with self._lock:
                            self._responses[message["id"]] = message
                            self._changed.notify_all()
                    else:
                        for listener in list(self._listeners.get(message.get("sessionId", ""), [])):
                            listener(message)
        finally:
            with self._lock:
                self._closed = True
                self._changed.notify_all()

    def listen(self, session: str, listener: Callable[[dict[str, Any]], None]) -> None:
        self._listeners.setdefault(session, []).append(listener)

    def call(self, method: str, params: dict[str, Any] | None = None, session: str | None = None,
             timeout: float = 30) -> dict[str, Any]:
        with self._lock:
            if self._closed:
                raise BrowserError(f"Chromium is gone (exit code {self.process.poll()})")
            self._next_id += 1
            message_id = self._next_id
        message: dict[str, Any] = {"id": message_id, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        os.write(self._to_child, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + timeout
        with self._lock:
            while message_id not in self._responses:
                remaining = deadline - time.monotonic()
                if self._closed or remaining <= 0:
                    raise BrowserError(f"no answer to {method} ({'Chromium exited' if self._closed else 'timeout'})")
                self._changed.wait(remaining)
            response = self._responses.pop(message_id)
        if "error" in response:
            raise BrowserError(f"{method}: {response['error']}")
        return dict(response.get("result", {}))

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.call("Browser.close", timeout=10)
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(10)
        for fd in (self._to_child, self._from_child):
            with contextlib.suppress(OSError):
                os.close(fd)
        shutil.rmtree(self.profile, ignore_errors=True)


@dataclass
class Tab:
    """A page in its own browser context (fresh cookies and storage, like a new incognito window)."""
    browser: Chromium
    context: str = ""
    target: str = ""
    session: str = ""
    navigations: list[str] = field(default_factory=list)
    console: list[str] = field(default_factory=list)

    def open(self) -> Tab:
        self.context = self.browser.call("Target.createBrowserContext")["browserContextId"]
        self.target = self.browser.call("Target.createTarget",
                                        {"url": "about:blank", "browserContextId": self.context})["targetId"]
        self.session = self.browser.call("Target.attachToTarget",
                                         {"targetId": self.target, "flatten": True})["sessionId"]
        self.browser.listen(self.session, self._event)
        for domain in ("Page", "Runtime", "Log"):
            self.browser.call(f"{domain}.enable", session=self.session)
        return self

    def _event(self, message: dict[str, Any]) -> None:
        method, params = message.get("method"), message.get("params", {})
        if method == "Page.frameNavigated" and not params["frame"].get("parentId"):
            self.navigations.append(params["frame"]["url"])
        elif method == "Runtime.consoleAPICalled":
            text = " ".join(str(arg.get("value", arg.get("description", ""))) for arg in params.get("args", []))
            self.console.append(f"console.{params.get('type')}: {text}")
        elif method == "Runtime.exceptionThrown":
            details = params.get("exceptionDetails", {})
            self.console.append(f"exception: {details.get('exception', {}).get('description') or details.get('text')}")
        elif method == "Log.entryAdded":
            entry = params.get("entry", {})
            self.console.append(f"log.{entry.get('level')}: {entry.get('text')} {entry.get('url', '')}".rstrip())

    def close(self) -> None:
        with contextlib.suppress(BrowserError):
            self.browser.call("Target.closeTarget", {"targetId": self.target})
        with contextlib.suppress(BrowserError):
            self.browser.call("Target.disposeBrowserContext", {"browserContextId": self.context})

    def goto(self, url: str) -> None:
        result = self.browser.call("Page.navigate", {"url": url}, session=self.session)
        if result.get("errorText"):
            raise BrowserError(f"cannot open {url}: {result['errorText']}")

    def evaluate(self, expression: str) -> Any:
        """The value of a JavaScript expression (promises awaited); raises BrowserError on a JavaScript error."""
        result = self.browser.call("Runtime.evaluate", {"expression": expression, "returnByValue": True,
                                                        "awaitPromise": True}, session=self.session)
        if "exceptionDetails" in result:
            details = result["exceptionDetails"]
            raise BrowserError(details.get("exception", {}).get("description") or details.get("text"))
        return result["result"].get("value")

    def poll(self, expression: str, timeout: float = 30, what: str = "") -> Any:
        """The first truthy value of `expression`, re-evaluated while pages load (a navigation in between
        destroys the execution context: that is just another try)."""
        deadline = time.monotonic() + timeout
        while True:
            with contextlib.suppress(BrowserError):
                if value := self.evaluate(expression):
                    return value
            if time.monotonic() > deadline:
                raise BrowserError(f"timed out waiting for {what or expression}\n{self.describe()}")
            time.sleep(0.1)

    def describe(self) -> str:
        """The current page, the pages visited and the console: what a failure message needs."""
        try:
            page = self.evaluate("location.href + '\\n' + (document.body ? document.body.innerText : '')")
        except BrowserError as error:
            page = f"(page not readable: {error})"
        return ("--- page ---\n" + str(page)[:3000] + "\n--- navigations ---\n" + "\n".join(self.navigations)
                + "\n--- console ---\n" + "\n".join(self.console[-40:]))


# ---------------------------------------------------------------------------------------------------------------
# The SMART app run: the browser follows the server's pages until the app at `app_origin` has a result

# What is on the current page (one of: login, patient, consent, app, other). Pages already acted on are marked,
# so the loop waits for the next document instead of submitting the same form twice.
PAGE_KIND = """(() => {
  if (location.href === "about:blank" || document.readyState !== "complete") return null;
  if (document.documentElement.dataset.testActed) return null;
  if (location.origin === %(app_origin)s) {
    const state = document.body && document.body.dataset.state;
    return (state === "done" || state === "error") ? "app" : null;
  }
  if (document.querySelector("input[name=password]")) return "login";
  if (document.querySelector("[name=patient]")) return "patient";
  if (document.querySelector("[name=approve]")) return "consent";
  return "other";
})()"""

LOGIN = """(() => {
  const form = document.querySelector("input[name=password]").form;
  form.querySelector("[name=username]").value = %(username)s;
  form.querySelector("[name=password]").value = %(password)s;
  document.documentElement.dataset.testActed = "1";
  const button = form.querySelector("button[type=submit], input[type=submit], button:not([type])");
  button ? button.click() : form.submit();
  return true;
})()"""

PICK_PATIENT = """(() => {
  const wanted = %(patient)s;
  const matches = (value) => value === wanted || value === "Patient/" + wanted;
  const fields = Array.from(document.querySelectorAll("[name=patient]"));
  let form = fields[0].form;
  if (fields[0].tagName === "SELECT") {
    const option = Array.from(fields[0].options).find((o) => matches(o.value));
    if (!option) return "no option for " + wanted + " among " + Array.from(fields[0].options).map((o) => o.value);
    fields[0].value = option.value;
  } else if (fields[0].type === "radio") {
    const radio = fields.find((f) => matches(f.value));
    if (!radio) return "no radio button for " + wanted + " among " + fields.map((f) => f.value);
    radio.checked = true;
    form = radio.form;
  } else {
    fields[0].value = wanted;
  }
  document.documentElement.dataset.testActed = "1";
  const button = form.querySelector("button[type=submit], input[type=submit], button:not([type])");
  button ? button.click() : form.submit();
  return "ok";
})()"""

CONSENT = """(() => {
  const boxes = Array.from(document.querySelectorAll("input[name=scope]"));
  boxes.forEach((box) => { box.checked = true; });
  document.documentElement.dataset.testActed = "1";
  document.querySelector("[name=approve]").click();
  return boxes.map((box) => box.value);
})()"""


@dataclass
class AppRun:
    steps: list[str]
    consented_scopes: list[str]
    result: dict[str, Any]
    navigations: list[str]
    state: str
    page: str   # the final page, the pages visited and the console (for failure messages)


def run_app(tab: Tab, launch_url: str, app_origin: str, *, username: str, password: str,
            patient: str | None = None, timeout: float = 60) -> AppRun:
    """Open the app's launch page and play the user: log in, pick `patient` if asked, approve every scope."""
    tab.goto(launch_url)
    steps: list[str] = []
    consented: list[str] = []
    deadline = time.monotonic() + timeout
    kind_expression = PAGE_KIND % {"app_origin": json.dumps(app_origin)}
    while True:
        kind = tab.poll(kind_expression, timeout=max(1.0, deadline - time.monotonic()), what="the next page")
        if kind == "app":
            break
        if kind == "other" or (steps and steps[-1] == kind) or len(steps) > 6:
            raise BrowserError(f"unexpected page after {steps}: {kind}\n{tab.describe()}")
        steps.append(kind)
        if kind == "login":
            tab.evaluate(LOGIN % {"username": json.dumps(username), "password": json.dumps(password)})
        elif kind == "patient":
            if patient is None:
                raise BrowserError(f"a patient picker, but this run picks no patient\n{tab.describe()}")
            outcome = tab.evaluate(PICK_PATIENT % {"patient": json.dumps(patient)})
            if outcome != "ok":
                raise BrowserError(f"patient picker: {outcome}\n{tab.describe()}")
        elif kind == "consent":
            consented = list(tab.evaluate(CONSENT))
    state = tab.evaluate("document.body.dataset.state")
    text = tab.evaluate("document.getElementById('result').textContent")
    return AppRun(steps, consented, json.loads(text or "{}"), list(tab.navigations), state, tab.describe())


# ---------------------------------------------------------------------------------------------------------------
# Fixtures: the app's files, an HTTP server for them, the browser, a SMART-enabled server with data

pytestmark = pytest.mark.skipif(find_chromium() is None, reason=NO_CHROMIUM)


@pytest.fixture(scope="module")
def chromium_executable() -> str:
    path = find_chromium()
    if path is None:
        pytest.skip(NO_CHROMIUM)
    return path


@pytest.fixture(scope="module")
def app_dir() -> Path:
    """tests/browser with node_modules (npm ci from the committed package-lock.json when absent)."""
    if not FHIRCLIENT_JS.is_file():
        npm = shutil.which("npm")
        if npm is None:
            pytest.skip("no npm: needed once to install fhirclient into tests/browser/node_modules")
        result = subprocess.run([npm, "ci", "--no-audit", "--no-fund", "--ignore-scripts"], cwd=APP_DIR,
                                capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, f"npm ci failed:\n{result.stdout}\n{result.stderr}"
        assert FHIRCLIENT_JS.is_file(), "npm ci did not install fhirclient's browser build"
    return APP_DIR


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        pass


@pytest.fixture(scope="module")
def app_origin(app_dir: Path) -> Iterator[str]:
    """The app's static files on their own port, so the app is another origin than the FHIR server (as a real
    SMART app is). Served as http://localhost:PORT, the server is http://127.0.0.1:PORT: another site as well."""
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", free_port()),
                                            functools.partial(_QuietHandler, directory=str(app_dir)))
    thread = threading.Thread(target=httpd.serve_forever, name="smart-app-http", daemon=True)
    thread.start()
    yield f"http://localhost:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture(scope="module")
def browser(chromium_executable: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Chromium]:
    log = tmp_path_factory.mktemp("chromium") / "chromium.log"
    chromium = Chromium(chromium_executable, log)
    yield chromium
    chromium.close()


@pytest.fixture()
def tab(browser: Chromium) -> Iterator[Tab]:
    page = Tab(browser).open()
    yield page
    page.close()


def cli(database_url: str, *args: str, stdin: str | None = None) -> str:
    """`fhirserver ARGS --database-url URL`: its standard output (fails the test on a non-zero exit)."""
    result = subprocess.run([sys.executable, "-m", "fhirserver.cli", *args, "--database-url", database_url],
                            input=stdin, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, f"fhirserver {' '.join(args)}: exit {result.returncode}\n{result.stdout}\n" \
                                   f"{result.stderr}"
    return result.stdout.strip()


@dataclass
class SmartServer:
    server: LiveServer
    database_url: str
    patient_a: str
    patient_b: str
    observations: dict[str, set[str]]

    @property
    def base_url(self) -> str:
        return self.server.base_url


@pytest.fixture(scope="module")
def smart_server(database_url: str, app_origin: str, tmp_path_factory: pytest.TempPathFactory
                 ) -> Iterator[SmartServer]:
    """The server with authorization on (the default), CORS for the app's origin, two patients with two
    Observations each, the app registered as a public client, and a clinician who can log in."""
    log = tmp_path_factory.mktemp("smart-server") / "server.log"
    with throwaway_database(database_url, "fhirsmart_") as url:
        live = start_server(["--database-url", url, "--log-level", "warning"], log,
                            env={"FHIRSERVER_CORS_ORIGINS": app_origin})
        try:
            operator = cli(url, "token", "--scope", "system/*.*", "--base-url", live.base_url).split()[-1]
            with httpx.Client(base_url=live.base_url, timeout=30,
                              headers={"Authorization": f"Bearer {operator}",
                                       "Accept": "application/fhir+json"}) as http_client:
                def create(resource: dict[str, Any]) -> str:
                    response = http_client.post(f"/{resource['resourceType']}", json=resource)
                    assert response.status_code == 201, response.text
                    return str(response.json()["id"])

                practitioner = create({"resourceType": "Practitioner", "name": [{"family": "Browser"}]})
                patients = [create({"resourceType": "Patient", "name": [{"family": family}]})
                            for family in ("Alpha", "Beta")]
                observations = {patient: {create({"resourceType": "Observation", "status": "final",
                                                  "code": {"text": f"{what} of {patient}"},
                                                  "subject": {"reference": f"Patient/{patient}"}})
                                          for what in ("weight", "height")}
                                for patient in patients}
            cli(url, "clients", "add", "Browser test app", "--client-id", CLIENT_ID, "--kind", "public",
                "--redirect-uri", f"{app_origin}/index.html", "--launch-url", f"{app_origin}/launch.html",
                "--scope", " ".join(sorted(set(f"{PATIENT_SCOPES} {EHR_SCOPES} {USER_SCOPES}".split()))))
            cli(url, "users", "add", CLINICIAN, "--role", "clinician", "--fhir-user", f"Practitioner/{practitioner}",
                "--password-stdin", stdin=CLINICIAN_PASSWORD + "\n")
            yield SmartServer(live, url, patients[0], patients[1], observations)
        finally:
            live.stop()


def standalone_url(app_origin: str, smart: SmartServer, scope: str, **extra: str) -> str:
    """Standalone launch: the user opens the app, which knows its FHIR server (iss)."""
    return f"{app_origin}/launch.html?" + urlencode({"iss": smart.base_url, "client_id": CLIENT_ID, "scope": scope,
                                                     **extra})


def assert_went_through_the_server(run: AppRun, smart: SmartServer, app_origin: str) -> None:
    assert run.state == "done", run.page
    auth_pages = [url for url in run.navigations if url.startswith(smart.base_url + "/auth/")]
    assert auth_pages, f"the browser never saw the authorization server's pages:\n{run.page}"
    assert run.navigations[-1].startswith(f"{app_origin}/index.html"), run.page
    assert run.result["token"]["has_access_token"], run.result
    assert run.result["serverUrl"] == smart.base_url


def assert_other_patient_refused(result: dict[str, Any]) -> None:
    """The patient-scoped token reads nothing of the other patient: neither the Patient nor their Observations."""
    assert result["other"]["status"] in (403, 404), result["other"]
    refused = result["otherObservations"]
    assert refused["status"] in (403, 404) or (refused["status"] == 200 and refused["ids"] == []), refused


# ---------------------------------------------------------------------------------------------------------------
# The test that needs no server part: the harness itself

def test_app_page_loads_fhirclient(tab: Tab, app_origin: str) -> None:
    tab.goto(f"{app_origin}/launch.html")   # no iss: authorize() must fail, in the page
    tab.poll("document.body.dataset.state === 'error'", what="launch.html to report the missing iss")
    assert tab.evaluate("typeof FHIR.oauth2.authorize") == "function"
    assert "No server url found" in tab.evaluate("document.getElementById('status').textContent")


# ---------------------------------------------------------------------------------------------------------------
# SMART launches

def test_standalone_launch_picks_a_patient_and_reads_only_that_patient(
        tab: Tab, app_origin: str, smart_server: SmartServer) -> None:
    smart = smart_server
    run = run_app(tab, standalone_url(app_origin, smart, PATIENT_SCOPES, other=smart.patient_b), app_origin,
                  username=CLINICIAN, password=CLINICIAN_PASSWORD, patient=smart.patient_a)
    assert_went_through_the_server(run, smart, app_origin)
    assert run.steps == ["login", "patient", "consent"], run.steps
    assert set(PATIENT_SCOPES.split()) <= set(run.consented_scopes), run.consented_scopes
    result = run.result
    assert result["token"]["patient"] == smart.patient_a
    assert result["patient"]["resourceType"] == "Patient" and result["patient"]["id"] == smart.patient_a
    assert {o["id"] for o in result["observations"]} == smart.observations[smart.patient_a], result["observations"]
    assert {o["subject"] for o in result["observations"]} == {f"Patient/{smart.patient_a}"}
    assert_other_patient_refused(result)


def test_ehr_launch_reads_the_launch_patient_and_not_another(
        tab: Tab, app_origin: str, smart_server: SmartServer) -> None:
    smart = smart_server
    # the EHR's side: `fhirserver launch` prints the app's launch URL (its --launch-url with iss and launch)
    url = cli(smart.database_url, "launch", "--client", CLIENT_ID, "--patient", smart.patient_b,
              "--user", CLINICIAN, "--base-url", smart.base_url).splitlines()[0]
    query = parse_qs(urlsplit(url).query)
    assert url.startswith(f"{app_origin}/launch.html?") and query["iss"] == [smart.base_url], url
    run = run_app(tab, f"{url}&{urlencode({'other': smart.patient_a})}", app_origin,
                  username=CLINICIAN, password=CLINICIAN_PASSWORD)
    assert_went_through_the_server(run, smart, app_origin)
    assert run.steps == ["login", "consent"], run.steps   # the EHR chose the patient: no picker
    assert set(EHR_SCOPES.split()) <= set(run.consented_scopes), run.consented_scopes
    result = run.result
    assert result["token"]["patient"] == smart.patient_b
    assert result["patient"]["id"] == smart.patient_b
    assert {o["id"] for o in result["observations"]} == smart.observations[smart.patient_b], result["observations"]
    assert_other_patient_refused(result)


def test_user_scoped_token_reads_the_other_patient(tab: Tab, app_origin: str, smart_server: SmartServer) -> None:
    """The control for the two tests above: the same read with user/ scopes succeeds, so their 403/404 comes
    from the patient/ scope (and not, say, from a missing patient or a CORS failure)."""
    smart = smart_server
    run = run_app(tab, standalone_url(app_origin, smart, USER_SCOPES, other=smart.patient_b), app_origin,
                  username=CLINICIAN, password=CLINICIAN_PASSWORD)
    assert_went_through_the_server(run, smart, app_origin)
    assert run.steps == ["login", "consent"], run.steps
    assert run.result["token"]["patient"] is None
    assert run.result["other"] == {"status": 200, "resourceType": "Patient", "id": smart.patient_b}, run.result
    assert run.result["otherObservations"]["status"] == 200, run.result
    assert set(run.result["otherObservations"]["ids"]) == smart.observations[smart.patient_b], run.result
