"""The options every command shares (set once by the top-level callback)."""

from __future__ import annotations

from dataclasses import dataclass

from pixsim_cli.connection import Connection
from pixsim_cli.output import Output


@dataclass
class Options:
    json: bool = False
    token: str | None = None
    user: str | None = None


OPTIONS = Options()
_OPEN: list[Connection] = []


def session(*, admin: bool = False) -> tuple[Connection, Output]:
    """A connection with the caller's token (an admin one when signing locally and asked)."""
    connection = Connection.from_environment(token=OPTIONS.token, user=OPTIONS.user, admin=admin)
    _OPEN.append(connection)
    return connection, Output(OPTIONS.json)


def close_all() -> None:
    while _OPEN:
        _OPEN.pop().close()
