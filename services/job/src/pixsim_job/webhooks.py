"""Webhooks after the Standard Webhooks specification: which changes a job's webhook wants,
how a delivery is signed, and the deliverer that sends the webhook outbox.

A delivery row is written in the transaction of the change it announces (so none is lost
or invented), and sent afterwards by any replica: claimed under a lease, POSTed to the one
checked address of its URL (the kit's SSRF guard, redirects never followed), and retried
with doubling, jittered delays until the receiver answers 2xx or the retry window closes.
Every attempt is recorded. The `webhook-id` is the delivery's id, the same on every retry,
so a receiver counts each event once; each attempt is signed anew with the owner's secrets
of the moment (two signatures while a rotation overlaps).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import random
import secrets
import time
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import structlog
from sqlalchemy import Row, func, insert, select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from pixsim_common.db import UnitOfWork, any_of
from pixsim_common.outbound import AddressPolicy, UrlRefused, UrlUnreachable, pinned_request
from pixsim_job import repository as repo
from pixsim_job.domain import JobState

log = structlog.get_logger("pixsim.job.webhooks")

EVENT_OF_STATE = {
    JobState.QUEUED: "EVENT_PROGRESS",
    JobState.PROCESSING: "EVENT_STARTED",
    JobState.COMPLETED: "EVENT_COMPLETED",
    JobState.FAILED: "EVENT_FAILED",
    JobState.CANCELLED: "EVENT_CANCELLED",
    JobState.EXPIRED: "EVENT_EXPIRED",
}
# What a webhook that names no events gets: the ends.
DEFAULT_EVENTS = ("EVENT_COMPLETED", "EVENT_FAILED", "EVENT_CANCELLED", "EVENT_EXPIRED")
SECRET_PREFIX = "whsec_"  # noqa: S105 - the prefix Standard Webhooks gives secrets
MAX_RETRY_DELAY = 3600.0


def wanted_event(webhook: dict[str, Any] | None, state: JobState) -> str | None:
    """The event a move to `state` is for this webhook, or None when it wants none."""
    event = EVENT_OF_STATE.get(state)
    if webhook is None or event is None:
        return None
    return event if event in (webhook.get("events") or DEFAULT_EVENTS) else None


def new_secret() -> str:
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(32)).decode()


def signature(signing_secrets: Sequence[str], msg_id: str, timestamp: int, body: bytes) -> str:
    """The `webhook-signature` header: `v1,<base64 HMAC-SHA256>` of `id.timestamp.body` per
    secret, space-separated."""
    signed = f"{msg_id}.{timestamp}.".encode() + body
    return " ".join(
        "v1,"
        + base64.b64encode(
            hmac.new(
                base64.b64decode(secret.removeprefix(SECRET_PREFIX)), signed, hashlib.sha256
            ).digest()
        ).decode()
        for secret in signing_secrets
    )


def retry_delay(attempt: int, base: float, rng: random.Random | None = None) -> float:
    """After the `attempt`-th failure: base, 2 base, 4 base, ... up to an hour, each within
    ±20 % so receivers that failed together are not retried together."""
    delay = min(base * 2 ** (attempt - 1), MAX_RETRY_DELAY)
    return float(delay * (rng or random).uniform(0.8, 1.2))


async def enqueue_delivery(
    session: AsyncSession, *, job_id: str, user_id: str, url: str, event: str, body: bytes
) -> None:
    await session.execute(
        insert(repo.webhook_deliveries).values(
            id=str(uuid.uuid4()), job_id=job_id, user_id=user_id, event=event, url=url, body=body
        )
    )


class WebhookSender:
    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        policy: AddressPolicy,
        *,
        timeout: float,
        retry_base: float,
        retry_for: float,
    ) -> None:
        self._sessions = sessions
        self._policy = policy
        self._timeout = timeout
        self._retry_base = retry_base
        self._retry_for = timedelta(seconds=retry_for)
        self._client = httpx.AsyncClient(timeout=timeout, follow_redirects=False)

    async def aclose(self) -> None:
        await self._client.aclose()

    async def deliver_once(self, limit: int = 32) -> int:
        """Send the deliveries that are due; how many were tried."""
        d = repo.webhook_deliveries
        async with UnitOfWork(self._sessions) as uow:
            due = (
                await uow.session.execute(
                    select(d)
                    .where(d.c.state == "PENDING", d.c.next_attempt_at <= func.now())
                    .order_by(d.c.next_attempt_at)
                    .limit(limit)
                    .with_for_update(skip_locked=True)
                )
            ).all()
            if due:
                # A lease: a replica that dies mid-send leaves them to be tried again.
                lease = timedelta(seconds=2 * self._timeout + 5)
                await uow.session.execute(
                    update(d)
                    .where(any_of(d.c.id, [row.id for row in due]))
                    .values(next_attempt_at=func.now() + lease)
                )
            await uow.commit()
        await asyncio.gather(*(self._send(row) for row in due))
        return len(due)

    async def _send(self, row: Row[Any]) -> None:
        async with self._sessions() as session:
            signing = await repo.webhook_secrets_of(session, row.user_id)
            attempt = 1 + int(
                await session.scalar(
                    select(func.count()).where(repo.webhook_attempts.c.delivery_id == row.id)
                )
                or 0
            )
        started = time.monotonic()
        status, error, final = 0, "", False
        if not signing:
            error, final = "the owner has no webhook secret", True
        else:
            timestamp = int(time.time())
            headers = {
                "content-type": "application/json",
                "user-agent": "PixSim7-Webhooks/1",
                "webhook-id": row.id,
                "webhook-timestamp": str(timestamp),
                "webhook-signature": signature(signing, row.id, timestamp, row.body),
            }
            try:
                request = await pinned_request(
                    self._client, "POST", row.url, self._policy, content=row.body, headers=headers
                )
                response = await self._client.send(request)
                await response.aclose()
                status = response.status_code
            except UrlRefused as refused:
                error, final = f"refused: {refused}", True  # the URL leads somewhere private
            except (UrlUnreachable, httpx.HTTPError) as failure:
                error = repr(failure)[:500]
        delivered = 200 <= status < 300
        if not delivered and not error:
            error = f"answered {status}"  # a redirect too: never followed
        await self._record(row, attempt, status, error, started, delivered, final)

    async def _record(
        self,
        row: Row[Any],
        attempt: int,
        status: int,
        error: str,
        started: float,
        delivered: bool,
        final: bool,
    ) -> None:
        async with UnitOfWork(self._sessions) as uow:
            await uow.session.execute(
                insert(repo.webhook_attempts).values(
                    delivery_id=row.id,
                    attempt=attempt,
                    attempt_time=func.now(),
                    status_code=status,
                    error=error,
                    duration_ms=int((time.monotonic() - started) * 1000),
                )
            )
            expired = datetime.now(UTC) - row.create_time > self._retry_for
            d = repo.webhook_deliveries
            if delivered or final or expired:
                state = "DELIVERED" if delivered else "FAILED"
                await uow.session.execute(update(d).where(d.c.id == row.id).values(state=state))
                if not delivered:
                    log.warning("webhook given up", delivery=row.id, job=row.job_id, error=error)
            else:
                delay = retry_delay(attempt, self._retry_base)
                await uow.session.execute(
                    update(d)
                    .where(d.c.id == row.id)
                    .values(next_attempt_at=func.now() + timedelta(seconds=delay))
                )
            await uow.commit()
