"""Server settings: the only module that reads the environment.

Every subcommand builds one `Settings` from command-line flags layered over environment
variables layered over defaults, so `serve`, `migrate` and the rest always agree.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from pathlib import Path

import platformdirs

ENV_PREFIX = "FHIRSERVER_"


def default_data_dir() -> Path:
    return Path(platformdirs.user_data_dir("fhirserver"))


@dataclass(frozen=True)
class Settings:
    host: str = "127.0.0.1"
    port: int = 8080
    base_path: str = "/fhir"
    public_base_url: str | None = None       # e.g. https://fhir.example.org/fhir behind a proxy
    database_url: str | None = None          # None: run the embedded PostgreSQL in data_dir
    # the server's own connections: a role subject to row-level security (None: the CLI derives it, see
    # storage/roles.py); `database_url` (the owner) only runs migrations and administers tenants
    app_database_url: str | None = None
    tenant: str = "default"                  # the tenant that commands other than `serve` act in
    data_dir: Path = field(default_factory=default_data_dir)
    workers: int = 1
    pool_min: int = 2
    pool_max: int = 20
    pool_wait_seconds: float = 5.0            # longest wait for a database connection before 503
    max_body_bytes: int = 16 * 1024 * 1024
    statement_timeout_ms: int = 60_000        # a database statement running longer is cancelled
    rate_limit_per_minute: int = 0            # requests per client address per minute; 0: unlimited
    client_rate_limit_per_minute: int = 0     # requests per SMART client (token client_id) per minute; 0: unlimited
    max_query_bytes: int = 8192               # longest query string accepted (400 beyond)
    max_json_depth: int = 64                  # deepest JSON nesting accepted in a body (400 beyond)
    max_bundle_entries: int = 10_000          # most entries in a batch/transaction Bundle (413 beyond)
    request_timeout_seconds: float = 120.0    # a FHIR request still running after this answers 503 (0: none)
    cors_origins: str = ""                    # comma-separated origins allowed by CORS ("*" for any); "": off
    default_page_size: int = 50      # _count when the client gives none (search and history)
    max_page_size: int = 1000        # the largest _count honoured
    log_level: str = "info"
    audit_link_seconds: float = 1.0          # how often new AuditEvents are linked into the hash chain
    # Authorization (docs/smart.md): on unless `open` is set
    open: bool = False                       # no authorization at all: local development only
    open_on_network: bool = False            # allow `open` on a non-loopback address (loudly)
    access_token_seconds: int = 3600         # lifetime of access tokens (and of `fhirserver token` output)
    refresh_token_seconds: int = 30 * 24 * 3600   # offline_access refresh tokens (rotated on use)
    online_refresh_seconds: int = 12 * 3600  # online_access refresh tokens
    login_max_failures: int = 5              # failed logins in a row before the account is locked
    lockout_seconds: int = 900               # how long a locked account stays locked
    # Bulk Data $export (docs/bulk-export.md)
    export_dir: Path | None = None           # where job files go; None: DATA_DIR/exports
    export_file_bytes: int = 128 * 1024 * 1024   # an output file is split when it would grow past this
    export_gzip: bool = False                # store output files gzipped (served as-is to gzip clients)
    export_expiry_seconds: int = 24 * 3600   # files and job disappear this long after completion
    export_workers: int = 1                  # export parts processed at once inside each server process (0: none)
    export_queue: str = "default"            # workers take only jobs kicked off with the same queue name
    export_lease_seconds: float = 30.0       # a part whose worker stops renewing this long is taken over
    export_retry_after: int = 2              # Retry-After (s) sent to clients polling an unfinished job
    export_min_poll_seconds: float = 1.0     # polls of one job closer together than this get 429
    export_part_rows: int = 250_000          # larger types are split into parts that workers share
    export_throttle: int = 0                 # max resources/s per part (0: unlimited), to spare clinical load

    @property
    def base_url(self) -> str:
        """The public base URL that Location headers, fullUrls and links are built from."""
        if self.public_base_url:
            return self.public_base_url.rstrip("/")
        return f"http://{self.host}:{self.port}{self.base_path}"

    @property
    def tenant_base_url(self) -> str:
        """The base URL of `tenant`: [server]/t/{tenant}/fhir (the default tenant's is the base URL)."""
        if self.tenant == "default":
            return self.base_url
        root = self.base_url[: -len(self.base_path)] if self.base_url.endswith(self.base_path) else self.base_url
        return f"{root}/t/{self.tenant}{self.base_path}"

    @property
    def server_database_url(self) -> str | None:
        """What the server's pools connect with."""
        return self.app_database_url or self.database_url

    @property
    def is_loopback(self) -> bool:
        return self.host in ("127.0.0.1", "::1", "localhost") or self.host.startswith("127.")

    @property
    def pgdata(self) -> Path:
        return self.data_dir / "pgdata"

    @property
    def export_directory(self) -> Path:
        return self.export_dir if self.export_dir is not None else self.data_dir / "exports"

    def with_overrides(self, **overrides: object) -> Settings:
        """Apply command-line flags: only the ones the user actually gave (not None)."""
        given = {k: v for k, v in overrides.items() if v is not None}
        for key in ("data_dir", "export_dir"):
            if key in given:
                given[key] = Path(str(given[key])).expanduser()
        return replace(self, **given)  # type: ignore[arg-type]


def _boolean(raw: str) -> bool:
    value = raw.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise ValueError("expected true or false")


def from_environment(env: dict[str, str] | None = None) -> Settings:
    """Read DATABASE_URL and FHIRSERVER_* variables."""
    env = dict(os.environ if env is None else env)

    def get(name: str) -> str | None:
        return env.get(ENV_PREFIX + name) or None

    values: dict[str, object] = {}
    for name, convert in (("HOST", str), ("PORT", int), ("BASE_PATH", str), ("TENANT", str), ("PUBLIC_BASE_URL", str),
                          ("WORKERS", int), ("POOL_MIN", int), ("POOL_MAX", int),
                          ("POOL_WAIT_SECONDS", float), ("MAX_BODY_BYTES", int),
                          ("STATEMENT_TIMEOUT_MS", int), ("RATE_LIMIT_PER_MINUTE", int), ("CORS_ORIGINS", str),
                          ("CLIENT_RATE_LIMIT_PER_MINUTE", int), ("MAX_QUERY_BYTES", int), ("MAX_JSON_DEPTH", int),
                          ("MAX_BUNDLE_ENTRIES", int), ("REQUEST_TIMEOUT_SECONDS", float),
                          ("OPEN", _boolean), ("OPEN_ON_NETWORK", _boolean), ("ACCESS_TOKEN_SECONDS", int),
                          ("REFRESH_TOKEN_SECONDS", int), ("ONLINE_REFRESH_SECONDS", int),
                          ("LOGIN_MAX_FAILURES", int), ("LOCKOUT_SECONDS", int),
                          ("DEFAULT_PAGE_SIZE", int), ("MAX_PAGE_SIZE", int), ("LOG_LEVEL", str),
                          ("AUDIT_LINK_SECONDS", float),
                          ("EXPORT_FILE_BYTES", int), ("EXPORT_GZIP", _boolean), ("EXPORT_EXPIRY_SECONDS", int),
                          ("EXPORT_WORKERS", int), ("EXPORT_QUEUE", str), ("EXPORT_LEASE_SECONDS", float),
                          ("EXPORT_RETRY_AFTER", int), ("EXPORT_MIN_POLL_SECONDS", float),
                          ("EXPORT_PART_ROWS", int), ("EXPORT_THROTTLE", int)):
        raw = get(name)
        if raw is not None:
            try:
                values[name.lower()] = convert(raw)
            except ValueError as exc:
                raise SystemExit(f"error: {ENV_PREFIX}{name}={raw!r} is not a valid value ({exc})") from exc
    if get("APP_DATABASE_URL"):
        values["app_database_url"] = get("APP_DATABASE_URL")
    for name in ("DATA_DIR", "EXPORT_DIR"):
        if get(name):
            values[name.lower()] = Path(str(get(name))).expanduser()
    database_url = env.get("DATABASE_URL") or get("DATABASE_URL")
    if database_url:
        values["database_url"] = database_url
    settings = Settings(**values)  # type: ignore[arg-type]
    if not settings.base_path.startswith("/"):
        settings = replace(settings, base_path="/" + settings.base_path)
    return replace(settings, base_path=settings.base_path.rstrip("/") or "/fhir")
