"""Workers with no work of their own to start: one task for life, a loop of steps, or a
close on stop."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable

import structlog

log = structlog.get_logger("pixsim.background")


class Background:
    """A worker whose whole life is one task: started with the service, cancelled on stop."""

    name = "background"
    _task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=self.name)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        raise NotImplementedError


class CloseOnStop:
    """Closes a client (an HTTP pool, a gRPC channel) when the service stops."""

    def __init__(self, close: Callable[[], Awaitable[None]]) -> None:
        self._close = close

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        await self._close()


class Loop(Background):
    """Runs `step` again and again; sleeps when it found nothing to do (`idle` seconds, or
    as long as `idle()` says at the time: a loop that knows when its next work falls due);
    never dies of an error (the database or a provider may be away) but logs it and backs off.

    Stopping lets the step under way finish, for up to `grace` seconds, before it is
    cancelled: a step cut short mid-call (a submit the provider may have taken) leaves work
    for recovery to find only when its lease runs out, so a rolling update would strand it.
    """

    def __init__(
        self,
        name: str,
        step: Callable[[], Awaitable[int]],
        wake: asyncio.Event | None = None,
        idle: float | Callable[[], float] = 0.2,
        grace: float = 10.0,
    ) -> None:
        self.name = name
        self._step = step
        self._wake = wake or asyncio.Event()
        self._idle = idle
        self._grace = grace
        self._stopping = False

    async def stop(self) -> None:
        self._stopping = True
        self._wake.set()
        if self._task is not None and not self._task.done():
            with contextlib.suppress(TimeoutError, asyncio.CancelledError):
                await asyncio.wait_for(asyncio.shield(self._task), self._grace)
        await super().stop()

    async def _run(self) -> None:
        backoff = 0.1
        while not self._stopping:
            # Cleared before the step, so a wake-up while it runs (work it could not see
            # yet) brings the next step at once instead of being lost to the idle sleep.
            self._wake.clear()
            try:
                done = await self._step()
                backoff = 0.1
            except Exception as error:
                log.exception("loop step failed", loop=self.name, error=repr(error))
                self._wake.clear()
                await self._pause(backoff)
                backoff = min(backoff * 2, 5.0)
                continue
            if not done and not self._stopping:
                await self._pause(self._idle() if callable(self._idle) else self._idle)

    async def _pause(self, seconds: float) -> None:
        """Sleep, woken early by new work or by the stop."""
        if self._stopping:
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), timeout=seconds)
