"""Map PostgreSQL failures (SQLSTATE) to FHIR errors; nothing internal reaches the client."""
from __future__ import annotations

import logging

import psycopg
from psycopg import errors as pg

from fhirserver.storage import fulltext
from resources.outcome import BadRequest, Conflict, FHIRError, ServerError, Unavailable

log = logging.getLogger("fhirserver.storage")


RETRYABLE = (pg.SerializationFailure, pg.DeadlockDetected, pg.UniqueViolation)


def to_fhir_error(exc: psycopg.Error) -> FHIRError:
    if exc.diag.table_name == "audit_event":   # the audit record of the access could not be written: fail closed
        log.error("audit event not written: %s", exc)
        return Unavailable("The access could not be audited, so it was refused; retry later")
    if isinstance(exc, pg.SerializationFailure | pg.DeadlockDetected | pg.UniqueViolation):
        return Conflict("The resource was changed concurrently by another request; retry the request")
    if isinstance(exc, pg.ProgramLimitExceeded):
        return BadRequest("A value is too large for the database to index; shorten it")
    if isinstance(exc, pg.DataException | psycopg.DataError):
        return BadRequest("The request holds data the database cannot accept (e.g. a NUL character)")
    if isinstance(exc, pg.UndefinedColumn) and any(column in str(exc) for column in fulltext.COLUMNS.values()):
        # full-text search was switched off a moment ago and this process has not heard yet (NOTIFY)
        return Unavailable("Full-text search is being switched on or off on this server; retry in a moment")
    if isinstance(exc, psycopg.OperationalError):
        log.error("database unavailable: %s", exc)
        return Unavailable("The database is unavailable; retry later")
    log.exception("unexpected database error", exc_info=exc)
    return ServerError("Internal error while accessing the database")
