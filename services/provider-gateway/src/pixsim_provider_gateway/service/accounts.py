"""The operator's accounts: created, changed and disabled by admin RPCs. Credentials are
sealed before they are stored and never read back out."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from typing import Any

from sqlalchemy import Row
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from pixsim.provider.v1 import provider_gateway_service_pb2 as pb
from pixsim_common.db import UnitOfWork
from pixsim_common.errors import FailedPrecondition, FieldViolation, InvalidArgument, NotFound
from pixsim_provider_gateway import repository as repo
from pixsim_provider_gateway.crypto import CredentialCipher
from pixsim_provider_gateway.domain import (
    AccountNotEnableable,
    AccountState,
    account_drained,
    account_enabled,
    account_state_after_update,
)
from pixsim_provider_gateway.providers.registry import ProviderRegistry, UnknownProvider

UPDATABLE = frozenset({"label", "credentials", "credits", "max_concurrency", "priority"})
_NEEDS_API_KEY = FieldViolation("account.credentials", "needs an 'api_key'", "MISSING_API_KEY")


class Accounts:
    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        registry: ProviderRegistry,
        cipher: CredentialCipher,
    ) -> None:
        self._sessions, self._registry, self._cipher = sessions, registry, cipher

    async def create(self, account: pb.Account) -> Row[Any]:
        violations = []
        try:
            self._registry.get(account.provider_id)
        except UnknownProvider:
            violations.append(
                FieldViolation("account.provider_id", "unknown provider", "UNKNOWN_PROVIDER")
            )
        if not account.credentials.get("api_key"):
            violations.append(_NEEDS_API_KEY)
        if violations:
            raise InvalidArgument("the account cannot be created", violations)
        account_id = str(uuid.uuid4())
        key_id, sealed = self._cipher.encrypt(dict(account.credentials), account_id)
        async with UnitOfWork(self._sessions) as uow:
            row = await repo.Accounts(uow.session).create(
                id=account_id,
                provider_id=account.provider_id,
                label=account.label,
                credentials_key_id=key_id,
                credentials=sealed,
                credits=account.credits,
                max_concurrency=account.max_concurrency,
                priority=account.priority,
            )
            await uow.commit()
        return row

    async def get(self, account_id: str) -> Row[Any]:
        async with self._sessions() as session:
            return await _existing(repo.Accounts(session), account_id)

    async def update(self, account: pb.Account, paths: Sequence[str]) -> Row[Any]:
        unknown = [p for p in paths if p not in UPDATABLE]
        if unknown or not paths:
            raise InvalidArgument(
                "update_mask names fields that cannot be changed",
                [
                    FieldViolation("update_mask", f"cannot update {p!r}", "NOT_UPDATABLE")
                    for p in unknown or ["(empty)"]
                ],
            )
        if "max_concurrency" in paths and account.max_concurrency < 1:
            raise InvalidArgument(
                "max_concurrency must be at least 1",
                [FieldViolation("account.max_concurrency", "must be at least 1", "int32.gte")],
            )
        if "credentials" in paths and not account.credentials.get("api_key"):
            raise InvalidArgument("credentials need an 'api_key'", [_NEEDS_API_KEY])
        async with UnitOfWork(self._sessions) as uow:
            accounts = repo.Accounts(uow.session)
            row = await _existing(accounts, account.name.split("/", 1)[1], lock=True)
            values: dict[str, Any] = {
                path: getattr(account, path) for path in paths if path != "credentials"
            }
            if "credentials" in paths:
                key_id, sealed = self._cipher.encrypt(dict(account.credentials), row.id)
                values |= {"credentials_key_id": key_id, "credentials": sealed}
            state = account_state_after_update(
                AccountState(row.state),
                new_credentials="credentials" in paths,
                credits=account.credits if "credits" in paths else None,
            )
            try:
                updated = await accounts.update(row.id, **values, state=state.value)
            except IntegrityError as error:
                raise FailedPrecondition(
                    "max_concurrency cannot go below the tasks running on the account now",
                    reason="SLOTS_IN_USE",
                ) from error
            await uow.commit()
        return updated

    async def disable(self, account_id: str) -> Row[Any]:
        return await self._moved(account_id, lambda _state: AccountState.DISABLED)

    async def enable(self, account_id: str) -> Row[Any]:
        return await self._moved(account_id, account_enabled)

    async def drain(self, account_id: str) -> Row[Any]:
        return await self._moved(account_id, account_drained)

    async def _moved(
        self, account_id: str, rule: Callable[[AccountState], AccountState]
    ) -> Row[Any]:
        async with UnitOfWork(self._sessions) as uow:
            accounts = repo.Accounts(uow.session)
            row = await _existing(accounts, account_id, lock=True)
            try:
                state = rule(AccountState(row.state))
            except AccountNotEnableable:
                raise FailedPrecondition(
                    f"an {row.state} account comes back with new credentials or credits "
                    "(UpdateAccount), not by enabling it",
                    reason=f"ACCOUNT_{row.state}",
                ) from None
            updated = await accounts.update(row.id, state=state.value)
            if state is AccountState.ACTIVE:
                await repo.wake_dispatch(uow.session)  # its slots are free now
            await uow.commit()
        return updated


async def _existing(accounts: repo.Accounts, account_id: str, *, lock: bool = False) -> Row[Any]:
    row = await accounts.get(account_id, lock=lock)
    if row is None:
        raise NotFound(f"accounts/{account_id} does not exist", reason="ACCOUNT_NOT_FOUND")
    return row
