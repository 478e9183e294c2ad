"""The loops that drive `ProviderService` in every replica: dispatch (woken by NOTIFY when a
submission arrives), poll, recover, and the account metrics. Replicas need not know of each
other: every loop claims its rows under locks or leases."""

from __future__ import annotations

import asyncio

import structlog
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from pixsim_common.background import Loop
from pixsim_common.notify import Listener
from pixsim_provider_gateway import metrics
from pixsim_provider_gateway import repository as repo
from pixsim_provider_gateway.service import ProviderService
from pixsim_provider_gateway.service.health import AccountHealth

log = structlog.get_logger("pixsim.gateway.workers")


async def refresh_metrics(sessions: async_sessionmaker[AsyncSession]) -> int:
    async with sessions() as session:
        providers: set[str] = set()
        for account in await repo.account_loads(session):
            labels = (account.provider_id, account.id)
            providers.add(account.provider_id)
            metrics.ACCOUNT_IN_FLIGHT.labels(*labels).set(account.in_flight)
            metrics.ACCOUNT_SLOTS.labels(*labels).set(account.max_concurrency)
            metrics.ACCOUNT_SLOT_UTILISATION.labels(*labels).set(
                account.in_flight / max(account.max_concurrency, 1)
            )
        waiting = await repo.waiting_by_provider(session)
        # A provider whose queue has emptied reports 0, not the last depth it had.
        for provider_id in providers | set(waiting):
            count, wait = waiting.get(provider_id, (0, 0.0))
            metrics.QUEUE_DEPTH.labels(provider_id).set(count)
            metrics.QUEUE_WAIT.labels(provider_id).set(wait)
        # Every replica reports each gate, whichever replica changed it.
        for provider_id, gate in (await repo.ProviderGates(session).all()).items():
            metrics.CIRCUIT_STATE.labels(provider_id).set(metrics.CIRCUIT_LEVELS[gate.circuit])
            metrics.PROVIDER_PAUSED.labels(provider_id).set(int(gate.paused))
    return 0


def gateway_workers(
    service: ProviderService,
    health: AccountHealth,
    sessions: async_sessionmaker[AsyncSession],
    database_url: str,
    *,
    dispatch_batch: int,
    poll_batch: int,
) -> list[Listener | Loop]:
    wake = asyncio.Event()
    return [
        # A wake-up on every new submission, and after a reconnect (one may have been missed).
        Listener(database_url, repo.WORK_CHANNEL, lambda _payload: wake.set(), wake.set),
        Loop(
            "dispatch",
            lambda: service.dispatch_once(dispatch_batch),
            wake,
            idle=service.dispatch.idle,
        ),
        # Sleeps until the next check falls due; woken when this replica starts a task.
        Loop(
            "poll",
            lambda: service.poll_or_time_the_next(poll_batch),
            service.timing.accepted,
            idle=service.timing.pause,
        ),
        # How long each provider's tasks take, for the checks' timing.
        Loop("durations", service.timing.refresh, idle=service.timing.refresh_idle),
        Loop("recover", service.recover_once, idle=5.0),
        # A deadline is kept to within about this idle time.
        Loop("expire", service.expire_once, idle=0.5),
        # A job whose provider cannot take it goes on to its fallback within about this.
        Loop("fallback", service.fallback_once, idle=0.5),
        Loop("metrics", lambda: refresh_metrics(sessions), idle=5.0),
        # Keys and balances: each account about every ACCOUNT_CHECK_SECONDS.
        Loop("account-checks", health.once, idle=1.0),
    ]
