"""Which tenant the current work belongs to, and how PostgreSQL learns it.

Isolation is enforced by PostgreSQL (migration 0007): every tenant-owned table has a `tenant_id` column that
defaults to the session setting `fhirserver.tenant`, and a row-level security policy that shows and accepts
only rows of that tenant. The server connects as a role subject to those policies, and every connection taken
from the pool is bound to the tenant of the task that takes it (`TenantPool`). A task that never chose a
tenant gets the empty one, which owns nothing: it reads no rows and cannot write any (fail closed).
"""
from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator
from contextvars import ContextVar

SETTING = "fhirserver.tenant"
DEFAULT = "default"                 # the tenant of single-tenant installs (URLs without /t/{tenant})
_NAME = re.compile(r"[a-z0-9][a-z0-9-]{0,62}")

_current: ContextVar[str] = ContextVar("fhirserver_tenant", default="")


def valid_name(name: str) -> bool:
    return bool(_NAME.fullmatch(name))


def current() -> str:
    """The tenant of the running task ('' when none was chosen: it sees nothing)."""
    return _current.get()


@contextlib.contextmanager
def use(tenant: str) -> Iterator[None]:
    """Run the enclosed code (and the tasks it starts) as `tenant`."""
    token = _current.set(tenant)
    try:
        yield
    finally:
        _current.reset(token)


def enter(tenant: str) -> None:
    """Make `tenant` the tenant of the rest of this task (its context ends with the task)."""
    _current.set(tenant)
