"""Which failures go away by themselves (the database restarting, a dependency away): a
consumer retries them with backoff, and an RPC answers them UNAVAILABLE so its caller
retries, instead of calling them bugs.

The rule is narrow on purpose. A failure that a retry cannot fix (a query with too many
parameters, a missing file, a value PostgreSQL refuses) reported as UNAVAILABLE makes every
caller retry forever, and a consumer that retries it forever stalls its partition.
"""

from __future__ import annotations

import errno
import socket

import asyncpg
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout

from pixsim_common.errors import Unavailable

# SQLSTATE classes and codes that mean "the database is away or busy", not "this is wrong":
# connection exceptions, transaction rollbacks (serialization, deadlock), insufficient
# resources, operator intervention (shutdown, starting up), system errors, lock not
# available, and a database refusing connections (ALLOW_CONNECTIONS false).
TRANSIENT_SQLSTATE_CLASSES = ("08", "40", "53", "57", "58")
TRANSIENT_SQLSTATES = ("55P03", "55000")
# Operating-system errors of the network, never of files: a missing or unreadable file
# stays missing however often it is asked for.
TRANSIENT_ERRNOS = frozenset(
    {
        errno.ECONNREFUSED,
        errno.ECONNRESET,
        errno.ECONNABORTED,
        errno.EHOSTUNREACH,
        errno.ENETUNREACH,
        errno.ENETDOWN,
        errno.ETIMEDOUT,
        errno.EPIPE,
        errno.EAGAIN,
    }
)
# What asyncpg says when the connection it was asked to use is gone.
_CLOSED_CONNECTION_WORDS = ("connection is closed", "connection was closed", "closed in the middle")


def sqlstate_of(error: BaseException) -> str | None:
    for candidate in (error, getattr(error, "orig", None), error.__cause__):
        code = getattr(candidate, "sqlstate", None) or getattr(candidate, "pgcode", None)
        if isinstance(code, str):
            return code
    return None


def _connection_gone(error: BaseException) -> bool:
    text = str(getattr(error, "orig", None) or error).lower()
    return any(words in text for words in _CLOSED_CONNECTION_WORDS)


def is_transient(error: BaseException) -> bool:
    """Failures that go away by themselves; retried with backoff."""
    if isinstance(error, Unavailable | TimeoutError | ConnectionError | socket.gaierror):
        return True
    if isinstance(error, PoolTimeout):  # every pooled connection busy: wait for one
        return True
    if isinstance(error, DBAPIError) and error.connection_invalidated:
        return True
    sqlstate = sqlstate_of(error)
    if sqlstate is not None:
        return sqlstate.startswith(TRANSIENT_SQLSTATE_CLASSES) or sqlstate in TRANSIENT_SQLSTATES
    if isinstance(error, OSError):
        return error.errno in TRANSIENT_ERRNOS
    if isinstance(error, asyncpg.PostgresConnectionError):
        return True
    if isinstance(error, OperationalError):
        # Without a SQLSTATE, the driver could not reach the server at all.
        return True
    if isinstance(error, InterfaceError | asyncpg.InterfaceError):
        # "connection is closed" passes; "more than 32767 arguments" never will.
        return _connection_gone(error)
    return False


def is_data_error(error: BaseException) -> bool:
    """PostgreSQL refused a value (SQLSTATE class 22: out of range, bad encoding, ...)."""
    sqlstate = sqlstate_of(error)
    return sqlstate is not None and sqlstate.startswith("22")
