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
    data_dir: Path = field(default_factory=default_data_dir)
    workers: int = 1
    pool_min: int = 2
    pool_max: int = 20
    max_body_bytes: int = 16 * 1024 * 1024
    default_page_size: int = 50      # _count when the client gives none (search and history)
    max_page_size: int = 1000        # the largest _count honoured
    log_level: str = "info"

    @property
    def base_url(self) -> str:
        """The public base URL that Location headers, fullUrls and links are built from."""
        if self.public_base_url:
            return self.public_base_url.rstrip("/")
        return f"http://{self.host}:{self.port}{self.base_path}"

    @property
    def pgdata(self) -> Path:
        return self.data_dir / "pgdata"

    def with_overrides(self, **overrides: object) -> Settings:
        """Apply command-line flags: only the ones the user actually gave (not None)."""
        given = {k: v for k, v in overrides.items() if v is not None}
        if "data_dir" in given:
            given["data_dir"] = Path(str(given["data_dir"])).expanduser()
        return replace(self, **given)  # type: ignore[arg-type]


def from_environment(env: dict[str, str] | None = None) -> Settings:
    """Read DATABASE_URL and FHIRSERVER_* variables."""
    env = dict(os.environ if env is None else env)

    def get(name: str) -> str | None:
        return env.get(ENV_PREFIX + name) or None

    values: dict[str, object] = {}
    for name, convert in (("HOST", str), ("PORT", int), ("BASE_PATH", str), ("PUBLIC_BASE_URL", str),
                          ("WORKERS", int), ("POOL_MIN", int), ("POOL_MAX", int), ("MAX_BODY_BYTES", int),
                          ("DEFAULT_PAGE_SIZE", int), ("MAX_PAGE_SIZE", int), ("LOG_LEVEL", str)):
        raw = get(name)
        if raw is not None:
            try:
                values[name.lower()] = convert(raw)
            except ValueError as exc:
                raise SystemExit(f"error: {ENV_PREFIX}{name}={raw!r} is not a valid value ({exc})") from exc
    if get("DATA_DIR"):
        values["data_dir"] = Path(str(get("DATA_DIR"))).expanduser()
    database_url = env.get("DATABASE_URL") or get("DATABASE_URL")
    if database_url:
        values["database_url"] = database_url
    settings = Settings(**values)  # type: ignore[arg-type]
    if not settings.base_path.startswith("/"):
        settings = replace(settings, base_path="/" + settings.base_path)
    return replace(settings, base_path=settings.base_path.rstrip("/") or "/fhir")
