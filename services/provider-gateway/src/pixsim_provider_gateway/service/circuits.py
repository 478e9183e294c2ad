"""The circuit breaker's side of dispatch: which call may go out as a provider's probe, and
what a call's outcome does to its provider's circuit and its account's."""

from __future__ import annotations

from datetime import timedelta

from pixsim_provider_gateway import metrics
from pixsim_provider_gateway.domain import CircuitPolicy, ProviderGate, counts_against_circuit
from pixsim_provider_gateway.providers.base import ProviderError
from pixsim_provider_gateway.service.units import Unit


async def admit_probe(unit: Unit, provider_id: str, lease: timedelta) -> bool:
    """Whether a call may go to a provider whose circuit is not closed, as its one probe
    (taken now, under the gate's lock, so two replicas never both probe)."""
    gate, now = await unit.gates.lock(provider_id)
    if not gate.may_probe(now):
        return False
    gate.begin_probe(now, lease)
    await _saved(unit, gate)
    return True


async def withdraw_probe(unit: Unit, provider_id: str) -> None:
    """The probe admitted in this transaction will not go out (no account could take it)."""
    gate, _ = await unit.gates.lock(provider_id)
    gate.probe_until = None
    await _saved(unit, gate)


async def record_call(
    unit: Unit,
    provider_id: str,
    account_id: str,
    error: ProviderError | None,
    policy: CircuitPolicy,
) -> None:
    """A submit call ended: accepted (`error` None) or refused with `error`."""
    if error is not None and counts_against_circuit(error.kind):
        gate, now = await unit.gates.lock(provider_id)
        gate.call_failed(now, policy)
        await _saved(unit, gate)
        failures = await unit.accounts.record_call(account_id, failed=True)
        if failures >= policy.account_failures_to_open:
            opened_before = failures - policy.account_failures_to_open
            await unit.accounts.mark(account_id, cooldown=policy.open_for(opened_before))
        return
    troubled = await unit.gates.troubled(provider_id)
    if troubled is not None:
        troubled.call_succeeded()
        await _saved(unit, troubled)
    await unit.accounts.record_call(account_id, failed=False)


async def _saved(unit: Unit, gate: ProviderGate) -> None:
    await unit.gates.save(gate)
    for to in gate.moves:
        metrics.circuit_moved(gate.provider_id, to.value)
    gate.moves.clear()
