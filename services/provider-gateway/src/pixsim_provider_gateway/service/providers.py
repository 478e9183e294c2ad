"""The operator's providers: paused and resumed (their jobs wait meanwhile), and each one's
gate as the admin RPCs show it."""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from pixsim_common.db import UnitOfWork
from pixsim_common.errors import FailedPrecondition, FieldViolation, InvalidArgument, NotFound
from pixsim_common.money import MAX_CREDITS
from pixsim_provider_gateway import metrics
from pixsim_provider_gateway import repository as repo
from pixsim_provider_gateway.domain import ProviderGate, price_micros
from pixsim_provider_gateway.providers.base import (
    GenerationRequest,
    Provider,
    ProviderError,
    UnsupportedOperation,
)
from pixsim_provider_gateway.providers.registry import ProviderRegistry, UnknownProvider


class Providers:
    def __init__(
        self, sessions: async_sessionmaker[AsyncSession], registry: ProviderRegistry
    ) -> None:
        self._sessions, self._registry = sessions, registry

    def _known(self, provider_id: str) -> Provider:
        try:
            return self._registry.get(provider_id)
        except UnknownProvider:
            raise NotFound(
                f"providers/{provider_id} does not exist", reason="PROVIDER_NOT_FOUND"
            ) from None

    def estimate(self, provider_id: str, request: GenerationRequest) -> tuple[int, int]:
        """What the adapter would reserve for `request`, in its credits and in millionths
        of a dollar at the price table's price: the same figure dispatch reserves."""
        provider = self._known(provider_id)
        try:
            payload = provider.map_parameters(request.operation, request)
        except UnsupportedOperation as error:
            raise FailedPrecondition(
                str(error),
                reason="UNSUPPORTED_OPERATION",
                metadata={"provider": provider_id},
            ) from None
        except ProviderError as error:
            raise InvalidArgument(
                error.message,
                [FieldViolation("params", error.message, "INVALID_FOR_PROVIDER")],
                reason="INVALID_FOR_PROVIDER",
            ) from None
        credits = min(max(provider.estimate_cost(payload), 0), MAX_CREDITS)
        return credits, price_micros(credits, self._registry.credit_price_micros(provider_id))

    async def get(self, provider_id: str) -> tuple[Provider, ProviderGate]:
        provider = self._known(provider_id)
        async with self._sessions() as session:
            return provider, await repo.ProviderGates(session).get(provider_id)

    async def all(self) -> list[tuple[Provider, ProviderGate]]:
        async with self._sessions() as session:
            gates = await repo.ProviderGates(session).all()
        return [
            (p, gates.get(p.provider_id) or ProviderGate(p.provider_id)) for p in self._registry
        ]

    async def pause(self, provider_id: str, reason: str) -> tuple[Provider, ProviderGate]:
        return await self._changed(provider_id, pause=True, reason=reason)

    async def resume(self, provider_id: str) -> tuple[Provider, ProviderGate]:
        return await self._changed(provider_id, pause=False)

    async def _changed(
        self, provider_id: str, *, pause: bool, reason: str = ""
    ) -> tuple[Provider, ProviderGate]:
        provider = self._known(provider_id)
        async with UnitOfWork(self._sessions) as uow:
            gates = repo.ProviderGates(uow.session)
            gate, now = await gates.lock(provider_id)
            if pause:
                gate.pause(now, reason)
            else:
                gate.resume()
            await gates.save(gate)
            if not pause:
                await repo.wake_dispatch(uow.session)  # its jobs go now, not at the next round
            await uow.commit()
        metrics.PROVIDER_PAUSED.labels(provider_id).set(int(gate.paused))
        return provider, gate
