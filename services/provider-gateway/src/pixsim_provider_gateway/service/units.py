"""The unit of work the use cases run in: one transaction, with the gateway's repositories
over it. The protocols say what the use cases need of them, so a test can give them ones
held in memory (`tests/fakes.py`) and exercise the use cases without a database."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime, timedelta
from types import TracebackType
from typing import Any, Protocol, Self

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from pixsim_common.db import UnitOfWork
from pixsim_provider_gateway import repository as repo
from pixsim_provider_gateway.domain import AccountState, ProviderGate, Submission
from pixsim_provider_gateway.events import outgoing


class SubmissionStore(Protocol):
    async def get(self, submission_id: str, *, lock: bool = False) -> Submission | None: ...

    async def of_task(self, provider_id: str, provider_job_id: str) -> Submission | None: ...

    async def claim_waiting(self, limit: int) -> list[Submission]: ...

    async def next_waiting_in(self) -> float | None: ...

    async def claim_for_polling(
        self, owner: str, lease: timedelta, limit: int
    ) -> list[Submission]: ...

    async def passed_deadline(self, limit: int) -> list[Submission]: ...

    async def expired_submitting(self, limit: int) -> list[Submission]: ...

    async def to_pass_over(self, limit: int, margin: timedelta) -> list[Submission]: ...

    async def now(self) -> datetime: ...

    async def add(self, attempt: Submission) -> bool: ...

    async def save(self, attempt: Submission) -> None: ...


class AccountLedger(Protocol):
    async def reserve(self, provider_id: str, cost: int) -> Any | None:
        """The account reserved (id, credentials_key_id, credentials), or None."""
        ...

    async def release(self, account_id: str, reserved: int, spent: int | None = None) -> None: ...

    async def mark(
        self,
        account_id: str,
        *,
        state: AccountState | None = None,
        cooldown: timedelta | None = None,
    ) -> None: ...

    async def record_call(self, account_id: str, *, failed: bool) -> int: ...

    async def sealed_credentials(self, account_ids: Iterable[str]) -> list[Any]: ...


class GateStore(Protocol):
    async def lock(self, provider_id: str) -> tuple[ProviderGate, datetime]: ...

    async def troubled(self, provider_id: str) -> ProviderGate | None: ...

    async def save(self, gate: ProviderGate) -> None: ...


class Unit(Protocol):
    @property
    def submissions(self) -> SubmissionStore: ...

    @property
    def accounts(self) -> AccountLedger: ...

    @property
    def gates(self) -> GateStore: ...

    async def __aenter__(self) -> Self: ...

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...

    async def commit(self) -> None: ...


class GatewayUnit(UnitOfWork):
    """The kit's unit of work (events collected, written at commit) with the gateway's
    submissions and accounts over its session."""

    submissions: SubmissionStore
    accounts: AccountLedger
    gates: GateStore

    def __init__(self, sessions: async_sessionmaker[AsyncSession]) -> None:
        super().__init__(sessions)

    async def __aenter__(self) -> Self:
        await super().__aenter__()
        self.submissions = repo.Submissions(self.session, outgoing)
        self.accounts = repo.Accounts(self.session)
        self.gates = repo.ProviderGates(self.session)
        return self
