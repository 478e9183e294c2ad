"""Account health: every account's key is checked with its provider now and then, by a cheap
call, so a revoked key is found before a user's job meets it, and the provider's own credit
balance is read where it has one (the ledger follows it; the drift between them is a
metric)."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import structlog
from sqlalchemy import Row
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from pixsim_common.db import UnitOfWork
from pixsim_provider_gateway import metrics
from pixsim_provider_gateway import repository as repo
from pixsim_provider_gateway.crypto import CredentialCipher
from pixsim_provider_gateway.domain import AccountState, ErrorKind
from pixsim_provider_gateway.providers.base import Credentials, ProviderError
from pixsim_provider_gateway.providers.registry import ProviderRegistry, UnknownProvider

log = structlog.get_logger("pixsim.gateway")


class AccountHealth:
    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        registry: ProviderRegistry,
        cipher: CredentialCipher,
        every: timedelta,
    ) -> None:
        self._sessions, self._registry, self._cipher, self._every = (
            sessions,
            registry,
            cipher,
            every,
        )

    async def once(self, limit: int = 20) -> int:
        """Check the accounts due; how many were checked."""
        async with UnitOfWork(self._sessions) as uow:
            due = await repo.Accounts(uow.session).due_for_check(self._every, limit)
            await uow.commit()
        for account in due:
            await self._check(account)
        return len(due)

    async def _check(self, account: Row[Any]) -> None:
        provider_id: str = account.provider_id
        account_id: str = account.id
        try:
            provider = self._registry.get(provider_id)
        except UnknownProvider:
            return
        try:
            balance = await provider.check_account(Credentials(self._cipher.api_key_of(account)))
        except ProviderError as error:
            metrics.ACCOUNT_CHECKS.labels(provider_id, error.kind.value).inc()
            if error.kind is ErrorKind.ACCOUNT_INVALID:
                log.warning("account key refused by its provider", account=account_id)
                async with UnitOfWork(self._sessions) as uow:
                    await repo.Accounts(uow.session).mark(account_id, state=AccountState.INVALID)
                    await uow.commit()
            return
        except Exception:  # a bug in an adapter's check must not stop the others'
            log.exception("account check failed", account=account_id)
            metrics.ACCOUNT_CHECKS.labels(provider_id, "BUG").inc()
            return
        metrics.ACCOUNT_CHECKS.labels(provider_id, "OK").inc()
        if balance is None:
            return
        async with UnitOfWork(self._sessions) as uow:
            ledger = await repo.Accounts(uow.session).record_balance(account_id, balance)
            await uow.commit()
        if ledger is not None:
            metrics.ACCOUNT_CREDIT_DRIFT.labels(provider_id, account_id).set(ledger - balance)
