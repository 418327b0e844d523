"""`fhirserver` command line: serve, migrate, load, reindex, export, worker, and the authorization server's
token, clients, users, launch, keys. Every subcommand reads the same settings."""
from __future__ import annotations

import argparse
import contextlib
import logging
import signal
import sys
from collections.abc import Iterator
from dataclasses import replace

from fhirserver.settings import Settings, from_environment

log = logging.getLogger("fhirserver")
AUTH_COMMANDS = ("token", "clients", "users", "launch", "keys")   # fhirserver.oauth.commands

DESCRIPTION = """A FHIR R4 (4.0.1) server on PostgreSQL.

With no DATABASE_URL the server runs an embedded PostgreSQL whose data lives in --data-dir
(or FHIRSERVER_DATA_DIR). With DATABASE_URL it uses that PostgreSQL (14 or newer)."""


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data-dir", help="directory of the embedded PostgreSQL data and server state "
                        "(env FHIRSERVER_DATA_DIR; default: a per-user data directory)")
    parser.add_argument("--database-url", help="PostgreSQL URL to use instead of the embedded one (env DATABASE_URL)")
    parser.add_argument("--host", help="address to listen on (env FHIRSERVER_HOST; default 127.0.0.1)")
    parser.add_argument("--port", type=int, help="port to listen on (env FHIRSERVER_PORT; default 8080)")
    parser.add_argument("--base-url", dest="public_base_url",
                        help="public base URL used in links and Location headers, e.g. https://fhir.example.org/fhir "
                             "(env FHIRSERVER_PUBLIC_BASE_URL; default http://HOST:PORT/fhir)")
    parser.add_argument("--log-level", choices=["debug", "info", "warning", "error"],
                        help="log verbosity (env FHIRSERVER_LOG_LEVEL; default info)")
    parser.add_argument("--tenant", help="the tenant to act in (env FHIRSERVER_TENANT; default 'default'); "
                                         "`serve` serves every tenant")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fhirserver", description=DESCRIPTION,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    serve = sub.add_parser("serve", help="run the FHIR server (applies pending migrations first)",
                           description="Run the FHIR server at http://HOST:PORT/fhir until Ctrl-C or SIGTERM. "
                                       "Pending database migrations are applied first.")
    _common(serve)
    serve.add_argument("--workers", type=int, help="number of server processes (env FHIRSERVER_WORKERS; default 1)")
    serve.add_argument("--open", action="store_const", const=True, default=None,
                       help="turn authorization OFF: anyone reaching the port may read and write everything. "
                            "Local development only; refused on a non-loopback --host (env FHIRSERVER_OPEN)")
    serve.add_argument("--open-on-network", action="store_const", const=True, default=None,
                       help="allow --open on a non-loopback --host anyway (env FHIRSERVER_OPEN_ON_NETWORK)")
    migrate = sub.add_parser("migrate", help="apply pending database migrations and exit",
                             description="Apply the numbered SQL migrations that the database does not have yet. "
                                         "Safe to run while the server is running.")
    _common(migrate)
    migrate.add_argument("--check", action="store_true", help="only list pending migrations; exit 1 if any")
    reindex = sub.add_parser("reindex", help="rebuild the search index of stored resources (with progress)",
                             description="Re-extract the search-index rows of every stored resource (or of the "
                                         "given types) with the search parameters in force, e.g. after adding a "
                                         "custom SearchParameter. An interrupted run resumes where it stopped. "
                                         "Safe while the server is running.")
    _common(reindex)
    reindex.add_argument("--type", dest="types", action="append", metavar="TYPE",
                         help="only this resource type (repeatable)")
    reindex.add_argument("--verify", action="store_true",
                         help="afterwards, compare the stored index with a fresh extraction and report differences")
    load = sub.add_parser("load", help="load Bundles and NDJSON files (gzip too, directories recursively)",
                          description="Load FHIR data: Bundle files (transaction, batch or collection), NDJSON "
                                      "(one resource per line), gzip of either, and directories recursively. Each "
                                      "Bundle (and each 500-line NDJSON chunk) is one transaction. Resources keep "
                                      "their ids, so loading the same data twice adds nothing. Errors are reported "
                                      "per file and line; the rest goes on.")
    _common(load)
    load.add_argument("paths", nargs="+", metavar="PATH", help="files or directories to load")
    load.add_argument("--workers", type=int, help="parallel worker processes (default: number of cores)")
    export = sub.add_parser("export", help="Bulk Data export of the whole server to NDJSON files (with progress)",
                            description="Export every resource (or the given types) as of now into OUT_DIR: one "
                                        "or more NDJSON files per type, a manifest.json, and the transactionTime "
                                        "to pass as --since next time for an incremental export. Uses the same "
                                        "machinery as GET [base]/$export; safe while the server is running.")
    _common(export)
    export.add_argument("out_dir", metavar="OUT_DIR", help="directory for the files (created; must be empty)")
    export.add_argument("--type", dest="types", action="append", metavar="TYPE",
                        help="only this resource type (repeatable, or comma-separated)")
    export.add_argument("--since", help="only resources changed after this FHIR instant (e.g. an earlier "
                                        "export's transactionTime)")
    export.add_argument("--type-filter", dest="type_filters", action="append", metavar="QUERY",
                        help="a search that resources of its type must match, e.g. 'Observation?code=1234-5' "
                             "(repeatable; several for one type are OR-ed)")
    export.add_argument("--gzip", action="store_true", help="write .ndjson.gz files")
    export.add_argument("--workers", type=int, default=2, help="parts exported at once (default 2)")
    worker = sub.add_parser("worker", help="run a Bulk Data export worker (next to the server, or on more hosts)",
                            description="Take parts of $export jobs from the database and write their files, until "
                                        "Ctrl-C or SIGTERM. Any number of workers (and servers) share the jobs of a "
                                        "queue; a worker that dies has its part taken over by another. Workers "
                                        "write where the job says (the server's export directory): run them where "
                                        "that directory is reachable.")
    _common(worker)
    worker.add_argument("--concurrency", type=int, default=2, help="parts processed at once (default 2)")
    worker.add_argument("--queue", help="job queue to serve (env FHIRSERVER_EXPORT_QUEUE; default 'default')")
    tenants = sub.add_parser("tenants", help="add or list tenants (each served at [server]/t/{tenant}/fhir)",
                             description="Tenants share the server and the database but see nothing of each other: "
                                         "PostgreSQL row-level security keeps their rows apart. The tenant "
                                         "'default' is the one served without /t/{tenant} in the URL.")
    tsub = tenants.add_subparsers(dest="action", metavar="ACTION", required=True)
    tadd = tsub.add_parser("add", help="add a tenant")
    _common(tadd)
    tadd.add_argument("name", help="1-63 lower-case letters, digits and '-'")
    tadd.add_argument("--hostname", dest="hosts", action="append", metavar="HOST",
                      help="a host name that reaches this tenant without /t/{tenant} (repeatable)")
    _common(tsub.add_parser("list", help="list tenants"))
    audit = sub.add_parser("audit", help="the audit trail: verify its hash chain",
                           description="AuditEvents are chained by hashes (docs/audit.md). `audit verify` walks a "
                                       "tenant's chain and reports the first broken or missing link (exit 1).")
    asub = audit.add_subparsers(dest="action", metavar="ACTION", required=True)
    _common(asub.add_parser("verify", help="verify the hash chain of the tenant's audit trail"))
    text = sub.add_parser("fulltext", help="turn full-text search (_content, _text) on or off, or show it",
                          description="Full-text search is on by default and costs about 20% of a bulk load's CPU "
                                      "(bench/README.md). `off` drops its columns and indexes; `on` adds them back "
                                      "and computes them for every stored resource (the table is locked meanwhile). "
                                      "Running servers follow within a moment. Applies to every tenant.")
    _common(text)
    text.add_argument("state", choices=("on", "off", "status"))
    dburl = sub.add_parser("database-url", help="print the PostgreSQL URL the server uses (for psql and tools)",
                           description="Print the connection URL of the database (starting the embedded PostgreSQL "
                                       "only for as long as the command runs, unless a server is using it).")
    _common(dburl)
    from fhirserver.oauth.commands import register

    register(sub, _common)
    return parser


def settings_from(args: argparse.Namespace) -> Settings:
    flags = {k: getattr(args, k, None) for k in ("host", "port", "public_base_url", "log_level", "data_dir",
                                                 "database_url", "tenant")}
    if args.command == "serve":
        flags.update(workers=args.workers, open=args.open, open_on_network=args.open_on_network)
    if args.command == "worker":
        flags["export_queue"] = args.queue
    return from_environment().with_overrides(**flags)


@contextlib.contextmanager
def database(settings: Settings, *, exclusive: bool = False) -> Iterator[Settings]:
    """Yield settings with `database_url` resolved: the configured one, or the embedded PostgreSQL's."""
    if settings.database_url:
        yield settings
        return
    from fhirserver.storage.embedded import embedded_postgres, exclusive_server_lock

    lock = exclusive_server_lock(settings.data_dir) if exclusive else contextlib.nullcontext()
    with lock:
        log.info("starting embedded PostgreSQL in %s", settings.pgdata)
        with embedded_postgres(settings.data_dir) as uri:
            yield replace(settings, database_url=uri)


@contextlib.contextmanager
def migrated(settings: Settings, *, exclusive: bool = False) -> Iterator[Settings]:
    """`database`, migrated (as the owner), with the URL of the server's own role resolved."""
    from fhirserver.storage.migrate import migrate
    from fhirserver.storage.roles import resolve_app_url

    with database(settings, exclusive=exclusive) as resolved:
        assert resolved.database_url
        for migration in migrate(resolved.database_url):
            log.info("applied migration %s", migration.name)
        yield replace(resolved, app_database_url=resolve_app_url(resolved.database_url, resolved.app_database_url))


def _terminate_like_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def cmd_serve(settings: Settings) -> int:
    import uvicorn

    # uvicorn shuts down gracefully on SIGTERM, then re-raises the signal with the previous handler.
    # With the default handler that kills the process before the embedded PostgreSQL is stopped;
    # as an interrupt it unwinds normally through the `with database(...)` below.
    signal.signal(signal.SIGTERM, _terminate_like_interrupt)

    if settings.open:
        if not settings.is_loopback and not settings.open_on_network:
            log.error("refusing --open on %s: without authorization anyone on the network could read and change "
                      "every record. Listen on 127.0.0.1, or add --open-on-network if you really mean it.",
                      settings.host)
            return 2
        log.warning("AUTHORIZATION IS OFF (--open): every request is served without a token. "
                    "Never run like this with real patient data.")
    with migrated(settings, exclusive=True) as resolved:
        log.info("FHIR server at %s (FHIR R4 4.0.1)", resolved.base_url)
        uv = dict(host=resolved.host, port=resolved.port, log_level=resolved.log_level, access_log=False,
                  lifespan="on", server_header=False, proxy_headers=True)
        if resolved.workers > 1:
            from fhirserver.serving import run_workers

            run_workers(resolved, uv)
        else:
            from fhirserver.app import build_app

            uvicorn.run(build_app(resolved), **uv)  # type: ignore[arg-type]
    log.info("stopped")
    return 0


def cmd_migrate(settings: Settings, check: bool) -> int:
    from fhirserver.storage.migrate import migrate, pending

    with database(settings) as resolved:
        assert resolved.database_url
        if check:
            todo = pending(resolved.database_url)
            for migration in todo:
                print(f"pending: {migration.name}")
            print("up to date" if not todo else f"{len(todo)} pending migration(s)")
            return 1 if todo else 0
        applied = migrate(resolved.database_url)
        for migration in applied:
            print(f"applied: {migration.name}")
        print("database is up to date" + (f" ({len(applied)} applied)" if applied else ""))
    return 0


def cmd_reindex(settings: Settings, types: list[str] | None, check: bool) -> int:
    import asyncio

    from fhirserver.progress import ProgressLine
    from fhirserver.storage.database import open_pool
    from fhirserver.storage.parameters import SearchParameters
    from fhirserver.storage.reindex import reindex, verify
    from resources.types import is_resource_type
    from search.registry import standard_registry

    unknown = [t for t in types or [] if not is_resource_type(t)]
    if unknown:
        print(f"error: unknown resource type(s): {', '.join(unknown)}", file=sys.stderr)
        return 2

    async def run(database_url: str) -> int:
        pool = await open_pool(database_url, min_size=1, max_size=2)
        try:
            parameters = SearchParameters(standard_registry())
            await parameters.reload(pool)
            report = await reindex(pool, parameters.current, types, progress=ProgressLine("reindex"),
                                   local_base=settings.tenant_base_url)
            resumed = " (resumed an interrupted job)" if report.resumed else ""
            print(f"reindexed {report.resources:,} resources in {report.seconds:.1f}s{resumed}")
            if check:
                wrong = await verify(pool, parameters.current, types, local_base=settings.tenant_base_url)
                if wrong:
                    print(f"verify: {len(wrong)} resources differ from a fresh extraction, e.g. {wrong[:5]}")
                    return 1
                print("verify: the index matches a fresh extraction of every resource")
            return 0
        finally:
            await pool.close()

    with migrated(settings) as resolved:
        assert resolved.server_database_url
        return asyncio.run(run(resolved.server_database_url))


def cmd_load(settings: Settings, paths: list[str], workers: int | None) -> int:
    from fhirserver.loader import load

    with migrated(settings) as resolved:
        assert resolved.server_database_url
        summary = load(resolved.server_database_url, paths, workers=workers)
    rate = summary.resources / summary.seconds if summary.seconds else 0
    print(f"loaded {summary.resources:,} resources from {summary.files:,} files in {summary.seconds:.1f}s "
          f"({rate:,.0f} resources/s); {len(summary.errors)} error(s)")
    for error in summary.errors[:50]:
        print(f"  {error}", file=sys.stderr)
    if len(summary.errors) > 50:
        print(f"  ... and {len(summary.errors) - 50} more", file=sys.stderr)
    return 1 if summary.errors else 0


def cmd_export(settings: Settings, args: argparse.Namespace) -> int:
    from pathlib import Path

    from fhirserver.bulk.export_command import run_export

    out_dir = Path(args.out_dir).expanduser().resolve()
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        print(f"error: {out_dir} must be an empty or new directory", file=sys.stderr)
        return 2
    query = [("_type", t) for t in args.types or []] + [("_typeFilter", q) for q in args.type_filters or []]
    if args.since:
        query.append(("_since", args.since))
    with migrated(settings) as resolved:
        return run_export(resolved, out_dir, query, workers=max(1, args.workers), gzip=args.gzip)


def cmd_worker(settings: Settings, concurrency: int) -> int:
    signal.signal(signal.SIGTERM, _terminate_like_interrupt)
    from fhirserver.bulk.export_command import run_worker

    with migrated(settings) as resolved:
        return run_worker(resolved, max(1, concurrency))


def cmd_tenants(settings: Settings, args: argparse.Namespace) -> int:
    from fhirserver.storage.tenants import add_tenant, list_tenants

    with migrated(settings) as resolved:
        assert resolved.database_url
        if args.action == "add":
            try:
                add_tenant(resolved.database_url, args.name, args.hosts or [])
            except ValueError as exc:
                print(f"error: {exc}", file=sys.stderr)
                return 2
            print(f"added tenant {args.name}: {replace(resolved, tenant=args.name).tenant_base_url}")
            return 0
        for tenant in list_tenants(resolved.database_url):
            hosts = f"  (hosts: {', '.join(tenant.hosts)})" if tenant.hosts else ""
            print(f"{tenant.name}\t{replace(resolved, tenant=tenant.name).tenant_base_url}{hosts}")
    return 0


def cmd_audit_verify(settings: Settings) -> int:
    import asyncio

    from fhirserver.progress import ProgressLine
    from fhirserver.storage.audit_chain import check

    with migrated(settings) as resolved:
        assert resolved.database_url
        verdict = asyncio.run(check(resolved.database_url, settings.tenant, ProgressLine("verify", unit="events")))
    if verdict.intact:
        print(f"audit chain of tenant {settings.tenant!r} verified: {verdict.linked:,} events, "
              f"head {verdict.head.hex() or '(empty)'}")
        return 0
    print(f"audit chain of tenant {settings.tenant!r} is BROKEN after {verdict.linked:,} good links: "
          f"{verdict.problem}", file=sys.stderr)
    return 1


def cmd_fulltext(settings: Settings, state: str) -> int:
    from fhirserver.storage import fulltext
    from fhirserver.storage.parameters import CHANNEL

    with migrated(settings) as resolved:
        assert resolved.database_url
        served = fulltext.command(resolved.database_url, state, CHANNEL, lambda line: print(line, file=sys.stderr))
    print(f"full-text search: {'on' if served else 'off'}" + (f" ({', '.join(sorted(served))})" if served else ""))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.command:
        parser.print_help()
        return 2
    settings = settings_from(args)
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("embedded_postgres").setLevel(logging.WARNING)
    from fhirserver.storage import tenancy

    if not tenancy.valid_name(settings.tenant):
        print(f"error: {settings.tenant!r} is not a tenant name", file=sys.stderr)
        return 2
    tenancy.enter(settings.tenant)   # every command acts in one tenant (`serve` chooses per request)
    try:
        if args.command == "serve":
            return cmd_serve(settings)
        if args.command == "migrate":
            return cmd_migrate(settings, args.check)
        if args.command == "load":
            return cmd_load(settings, args.paths, args.workers)
        if args.command == "reindex":
            return cmd_reindex(settings, args.types, args.verify)
        if args.command == "export":
            return cmd_export(settings, args)
        if args.command == "worker":
            return cmd_worker(settings, args.concurrency)
        if args.command in AUTH_COMMANDS:
            from fhirserver.oauth.commands import run

            return run(args, settings, migrated)
        if args.command == "tenants":
            return cmd_tenants(settings, args)
        if args.command == "audit":
            return cmd_audit_verify(settings)
        if args.command == "fulltext":
            return cmd_fulltext(settings, args.state)
        if args.command == "database-url":
            with database(settings) as resolved:
                print(resolved.database_url)
            return 0
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # a clear one-line message instead of a traceback for operator errors
        from fhirserver.storage.embedded import DataDirBusy

        if isinstance(exc, DataDirBusy | RuntimeError | OSError):
            print(f"error: {exc}", file=sys.stderr)
            return 1
        raise
    parser.error(f"unknown command {args.command}")
    return 2


if __name__ == "__main__":
    sys.exit(main())
