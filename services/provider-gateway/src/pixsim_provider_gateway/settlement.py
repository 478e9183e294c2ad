"""Settling an attempt's cost: its account's slot and reservation back, and the attempt's
cost recorded, together (docs/costs.md)."""

from __future__ import annotations

from typing import Protocol

from pixsim_provider_gateway import metrics
from pixsim_provider_gateway.domain import Charge, Submission


class Saves(Protocol):
    async def save(self, attempt: Submission) -> None: ...


class Releases(Protocol):
    async def release(self, account_id: str, reserved: int, spent: int | None = None) -> None: ...


async def settle(attempts: Saves, ledger: Releases, attempt: Submission, charge: Charge) -> None:
    """The attempt's cost is settled, and its account gets its slot back and keeps `charge`
    of the reservation. The settlement is saved first, compare-and-set (a replica that
    lost the race fails there, before it touches the account), and both are in the
    caller's transaction: once, whichever replica gets there first."""
    attempt.settle(charge)
    await attempts.save(attempt)
    await ledger.release(attempt.account_id, attempt.reserved_credits, charge.credits)
    metrics.SPEND_CREDITS.labels(attempt.provider_id, charge.billing.value).inc(
        attempt.settled_credits
    )
    metrics.SPEND_MONEY.labels(attempt.provider_id).inc(attempt.settled_micros / 1_000_000)
