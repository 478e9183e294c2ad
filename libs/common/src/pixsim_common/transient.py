"""Which failures go away by themselves (the database restarting, a dependency away): a
consumer retries them with backoff, and an RPC answers them UNAVAILABLE so its caller
retries, instead of calling them bugs."""

from __future__ import annotations

import asyncpg
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError

from pixsim_common.errors import Unavailable

# SQLSTATE classes and codes that mean "the database is away or busy", not "this is wrong":
# connection exceptions, transaction rollbacks (serialization, deadlock), insufficient
# resources, operator intervention (shutdown, starting up), system errors, lock not
# available, and a database refusing connections (ALLOW_CONNECTIONS false).
TRANSIENT_SQLSTATE_CLASSES = ("08", "40", "53", "57", "58")
TRANSIENT_SQLSTATES = ("55P03", "55000")


def _sqlstate(error: BaseException) -> str | None:
    for candidate in (error, getattr(error, "orig", None), error.__cause__):
        code = getattr(candidate, "sqlstate", None) or getattr(candidate, "pgcode", None)
        if isinstance(code, str):
            return code
    return None


def is_transient(error: BaseException) -> bool:
    """Failures that go away by themselves; retried forever with backoff."""
    if isinstance(error, Unavailable | OSError | TimeoutError | ConnectionError):
        return True
    if isinstance(error, DBAPIError) and error.connection_invalidated:
        return True
    sqlstate = _sqlstate(error)
    if sqlstate is not None:
        return sqlstate.startswith(TRANSIENT_SQLSTATE_CLASSES) or sqlstate in TRANSIENT_SQLSTATES
    # Without a SQLSTATE, a driver-level failure (the connection is gone) is transient.
    return isinstance(
        error,
        OperationalError
        | InterfaceError
        | asyncpg.InterfaceError
        | asyncpg.PostgresConnectionError,
    )
