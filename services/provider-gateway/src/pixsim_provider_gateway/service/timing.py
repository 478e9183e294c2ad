"""When to look at running tasks: how long each provider's tasks have been taking (read
from the attempts' own record, so every replica learns the same without talking to the
others), and how long the poll loop may sleep before the next check falls due."""

from __future__ import annotations

import asyncio

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from pixsim_provider_gateway import repository as repo
from pixsim_provider_gateway.domain import Expected, Submission

# With nothing running anywhere, the poll loop sleeps this long: a task this replica starts
# wakes it at once (`accepted`), and one another replica starts is that replica's to check.
IDLE_NOTHING_RUNNING = 1.0
# The expected durations are read again this often; sooner while a task of a kind with no
# estimate yet was checked, so a fresh gateway times its checks from its first few results
# rather than polling by plain backoff for the first ten seconds of work.
REFRESH_SECONDS = 10.0
REFRESH_SECONDS_WHILE_UNKNOWN = 1.0


class Timing:
    def __init__(
        self, sessions: async_sessionmaker[AsyncSession], idle: float = 0.2, step: float = 0.1
    ) -> None:
        self._sessions = sessions
        # The checks' smallest step (`poll_min_seconds`), which the estimates assume.
        self._step = step
        self._durations: dict[tuple[str, int], Expected] = {}
        self._idle = idle
        self._pause = idle
        # Kinds (provider, operation) asked for with no estimate since the last refresh, and
        # those of them the last refresh still had none for.
        self._asked_unknown: set[tuple[str, int]] = set()
        self._still_unknown: set[tuple[str, int]] = set()
        # Set when this replica records a task's acceptance: its first check may be sooner
        # than the poll loop's sleep.
        self.accepted = asyncio.Event()

    def expected(self, attempt: Submission) -> Expected | None:
        """How long a task of the attempt's provider and operation is expected to take (None,
        not known yet: the estimates are then read again soon)."""
        kind = (attempt.provider_id, attempt.operation_type)
        expected = self._durations.get(kind)
        if expected is None:
            self._asked_unknown.add(kind)
        return expected

    async def refresh(self) -> int:
        async with self._sessions() as session:
            self._durations = await repo.expected_durations(session, step=self._step)
        self._still_unknown = self._asked_unknown - self._durations.keys()
        self._asked_unknown = set()
        return 0

    def refresh_idle(self) -> float:
        """Seconds until the estimates are read again: soon while a kind being checked has
        none (until it has, or nothing of it is checked any more)."""
        unknown = self._still_unknown or self._asked_unknown
        return REFRESH_SECONDS_WHILE_UNKNOWN if unknown else REFRESH_SECONDS

    async def until_next_poll(self) -> None:
        """After a poll round found nothing due: how long until something is, at most the
        idle time while tasks run (another replica's may fall due sooner)."""
        async with self._sessions() as session:
            due_in = await repo.next_poll_in(session)
        self._pause = pause_after(due_in, self._idle)

    def pause(self) -> float:
        return self._pause


def pause_after(due_in: float | None, idle: float) -> float:
    """The poll loop's sleep, given when the soonest running task's check is due (None:
    nothing runs). A floor, so a check another replica is just claiming does not spin it."""
    if due_in is None:
        return IDLE_NOTHING_RUNNING
    return min(max(due_in, 0.005), idle)
