"""Connecting to what a service needs from outside (the broker, the database) when it may be
away: restarting, or not up yet when the pod is scheduled. A service retries with backoff and
says so in its log, instead of exiting and crash-looping through the outage; its RPCs serve
meanwhile wherever they need only the database, and the outbox holds what it publishes.
"""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable
from typing import Protocol, TypeVar

import structlog
from aiokafka.errors import KafkaError
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception,
    retry_if_exception_type,
    stop_after_delay,
    stop_never,
    wait_exponential_jitter,
)

from pixsim_common.transient import is_transient

log = structlog.get_logger("pixsim.dependencies")
# How long a starting service waits for its database before it gives up (and exits).
DATABASE_WAIT_SECONDS = 120.0
# How long a starting relay or consumer waits for the broker before the service serves
# without it (and goes on connecting in the background).
CONNECT_WAIT_SECONDS = 5.0


class KafkaClient(Protocol):
    async def start(self) -> None: ...

    async def stop(self) -> None: ...


Client = TypeVar("Client", bound=KafkaClient)
Result = TypeVar("Result")


def _logged(what: str) -> Callable[[RetryCallState], None]:
    def before_sleep(state: RetryCallState) -> None:
        error = state.outcome.exception() if state.outcome else None
        log.warning(
            f"{what} away; trying again",
            attempt=state.attempt_number,
            backoff_s=round(state.upcoming_sleep, 2),
            error=repr(error),
        )

    return before_sleep


async def started_kafka_client(make: Callable[[], Client], *, what: str) -> Client:
    """A new client from `make`, started; while the broker is away, a fresh one is tried
    again with backoff, for as long as it takes (a failed client is closed: aiokafka's
    cannot start twice)."""
    async for attempt in AsyncRetrying(
        retry=retry_if_exception_type(KafkaError),
        wait=wait_exponential_jitter(multiplier=0.2, max=5.0, jitter=0.2),
        stop=stop_never,
        before_sleep=_logged(f"kafka ({what})"),
        reraise=True,
    ):
        with attempt:
            client = make()
            try:
                await client.start()
            except BaseException:
                with contextlib.suppress(Exception):
                    await client.stop()
                raise
            return client
    raise AssertionError("unreachable: tenacity retries until the client starts")


async def with_database(
    call: Callable[[], Awaitable[Result]], *, wait_seconds: float = DATABASE_WAIT_SECONDS
) -> Result:
    """`call()`, tried again while the database is away (`transient.is_transient`), for up
    to `wait_seconds`; then its last failure."""
    async for attempt in AsyncRetrying(
        retry=retry_if_exception(is_transient),
        wait=wait_exponential_jitter(multiplier=0.2, max=5.0, jitter=0.2),
        stop=stop_after_delay(wait_seconds),
        before_sleep=_logged("database"),
        reraise=True,
    ):
        with attempt:
            return await call()
    raise AssertionError("unreachable: tenacity reraises the last failure")
