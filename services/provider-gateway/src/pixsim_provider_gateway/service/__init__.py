"""The gateway's use cases, the only code that calls a provider, split by what drives them:
`dispatch` (send waiting attempts), `poll` (follow running ones), `recover` (attempts whose
replica died, deadlines, events that could never leave) and `accounts` (the admin's).

Each step is a short transaction, and no transaction is open while a provider is called:
1. dispatch: claim waiting submissions fairly, reserve an account's slot and credits, move
   to SUBMITTING under a lease; commit; call `execute`; record the answer (RUNNING, or what
   `domain.judge` says for an error);
2. poll: lease due RUNNING submissions; commit; call `check_status`; record the answer
   (next poll, success, or failure/retry), settling the account;
3. recover: a SUBMITTING row whose lease ran out belonged to a replica that died during the
   call; its outcome is unknown, so it is treated as a transient failure (a new attempt);
4. callbacks: a provider's verified word that a task ended, recorded as a poll's would be.
Every state change goes through the `Submission` aggregate, and is saved compare-and-set on
the state it was loaded in, under the row lock: an attempt's account slot comes back exactly
once. The events an attempt raises are written to the outbox by the unit of work at commit.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from pixsim_common.outbox import SetAside
from pixsim_provider_gateway.crypto import CredentialCipher
from pixsim_provider_gateway.domain import CircuitPolicy, RetryPolicy
from pixsim_provider_gateway.inputs import InputFiles
from pixsim_provider_gateway.providers.registry import ProviderRegistry
from pixsim_provider_gateway.service.callbacks import Callbacks
from pixsim_provider_gateway.service.dispatch import Dispatch
from pixsim_provider_gateway.service.poll import Poll
from pixsim_provider_gateway.service.recover import (
    FALLBACK_DEADLINE_MARGIN,
    REPLICA_STOPPED,
    Recover,
)
from pixsim_provider_gateway.service.timing import Timing
from pixsim_provider_gateway.service.units import GatewayUnit, Unit

__all__ = ["REPLICA_STOPPED", "GatewayUnit", "ProviderService", "Unit"]


class ProviderService:
    """Every use case a replica's loops drive, over one set of parts."""

    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        registry: ProviderRegistry,
        cipher: CredentialCipher,
        policy: RetryPolicy,
        *,
        replica_id: str,
        submit_lease: timedelta,
        poll_lease: timedelta,
        inputs: InputFiles | None = None,
        units: Callable[[], Unit] | None = None,
        circuits: CircuitPolicy | None = None,
        fallback_margin: timedelta = FALLBACK_DEADLINE_MARGIN,
        reads: async_sessionmaker[AsyncSession] | None = None,
    ) -> None:
        units = units or (lambda: GatewayUnit(sessions))
        # Its reads are lone statements: autocommit sessions where given (kit.reads).
        self.timing = Timing(reads or sessions, step=policy.poll_min_seconds)
        self.dispatch = Dispatch(
            units,
            registry,
            cipher,
            policy,
            replica_id,
            submit_lease,
            inputs or InputFiles(None, None),
            circuits or CircuitPolicy(),
            self.timing,
        )
        self.poll = Poll(units, registry, cipher, policy, replica_id, poll_lease, self.timing)
        self.recover = Recover(units, policy, fallback_margin)
        self.callbacks = Callbacks(units, registry, policy, self.timing)

    async def dispatch_once(self, limit: int) -> int:
        return await self.dispatch.once(limit)

    async def poll_once(self, limit: int) -> int:
        return await self.poll.once(limit)

    async def poll_or_time_the_next(self, limit: int) -> int:
        """The poll loop's step: when nothing was due, how long until something is."""
        polled = await self.poll.once(limit)
        if not polled:
            await self.timing.until_next_poll()
        return polled

    async def recover_once(self, limit: int = 50) -> int:
        return await self.recover.stranded(limit)

    async def expire_once(self, limit: int = 100) -> int:
        return await self.recover.expired(limit)

    async def fallback_once(self, limit: int = 100) -> int:
        return await self.recover.passed_over(limit)

    async def event_set_aside(self, session: AsyncSession, row: SetAside) -> None:
        await self.recover.event_set_aside(session, row)
