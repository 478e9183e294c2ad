"""A PostgreSQL LISTEN that survives reconnects: `on_notify(payload)` for every NOTIFY on
the channel, and `on_connect()` after every (re)connection, when a notification may have
been missed."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

import asyncpg
import structlog

from pixsim_common.background import Background
from pixsim_common.db import libpq_url

log = structlog.get_logger("pixsim.notify")


class Listener(Background):
    def __init__(
        self,
        database_url: str,
        channel: str,
        on_notify: Callable[[str], None],
        on_connect: Callable[[], None] | None = None,
    ) -> None:
        self._url = libpq_url(database_url)
        self._channel = channel
        self._on_notify = on_notify
        self._on_connect = on_connect
        self.name = f"listen-{channel}"

    async def _run(self) -> None:
        while True:
            connection: asyncpg.Connection | None = None
            try:
                connection = await asyncpg.connect(self._url)
                closed = asyncio.Event()
                connection.add_termination_listener(lambda _c, closed=closed: closed.set())
                await connection.add_listener(
                    self._channel, lambda _c, _pid, _channel, payload: self._on_notify(payload)
                )
                if self._on_connect is not None:
                    self._on_connect()
                await closed.wait()
            except asyncio.CancelledError:
                raise
            except Exception as error:
                log.warning("listener reconnecting", channel=self._channel, error=repr(error))
                await asyncio.sleep(1)
            finally:
                if connection is not None:
                    with contextlib.suppress(Exception):
                        await connection.close()
