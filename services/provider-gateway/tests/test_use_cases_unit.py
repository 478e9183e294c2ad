"""The gateway's use cases (dispatch, poll, recover) against repositories and a unit of work
held in memory, without a database, a broker or HTTP: what each provider answer does to the
attempt, its account and the events that leave, in milliseconds. The same paths run over
PostgreSQL in test_gateway_flows."""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from types import SimpleNamespace, TracebackType
from typing import Any, Self

import pytest

from pixsim.types.v1 import types_pb2 as t
from pixsim_provider_gateway import repository as repo
from pixsim_provider_gateway.crypto import CredentialCipher, new_key
from pixsim_provider_gateway.domain import (
    LEGAL,
    NOT_BILLED,
    AccountState,
    AlreadySettled,
    Billing,
    Charge,
    Circuit,
    CircuitPolicy,
    Completed,
    ErrorKind,
    Expected,
    Failed,
    FromNow,
    IllegalTransition,
    MediaOutput,
    ProviderGate,
    Queued,
    RetryPolicy,
    Settled,
    Started,
    Submission,
    SubmissionEvent,
    SubmissionState,
    Unsettled,
    charged,
    check_transition,
    price_micros,
)
from pixsim_provider_gateway.providers.base import (
    Capabilities,
    Credentials,
    GenerationRequest,
    GenerationResult,
    InputFile,
    OperationSpec,
    ProviderError,
    ProviderStatusResult,
    TaskState,
    TaskUnknown,
)
from pixsim_provider_gateway.providers.callbacks import Notice
from pixsim_provider_gateway.providers.registry import ProviderRegistry
from pixsim_provider_gateway.service import REPLICA_STOPPED, ProviderService
from pixsim_provider_gateway.service.callbacks import Heard
from pixsim_provider_gateway.service.dispatch import IDLE_NOTHING_WAITING, NO_ACCOUNT_DELAY

# ---- fakes: the repositories and unit of work held in memory (cosmicpython's
# FakeUnitOfWork), a virtual clock, and a provider that answers as a test scripts it. What the
# SQL decides (fair order, locks, leases across replicas) is the integration tests' job.

# What the table's server defaults give a new submission row.
_ROW_DEFAULTS: dict[str, Any] = {c.name: None for c in repo.submissions.c} | {
    "reserved_credits": 0,
    "credit_price_micros": 0,
    "billing": "",
    "unknown_polls": 0,
    "error_code": "",
    "error_message": "",
    "poll_count": 0,
    "provider_state": "",
    "provider_cancel_pending": False,
    "trace_headers": {},
    "priority": "NORMAL",
    "fallbacks": [],
    "provider_first_attempt": 0,
    "passed_over": [],
}


@dataclass
class Clock:
    now: datetime = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)

    def resolve(self, value: Any) -> Any:
        if not isinstance(value, FromNow):
            return value
        moment = self.now + value.after
        return moment if value.not_after is None else min(moment, value.not_after)


@dataclass
class Store:
    """What the database would hold, shared by every unit of work."""

    clock: Clock = field(default_factory=Clock)
    rows: dict[str, dict[str, Any]] = field(default_factory=dict)
    accounts: dict[str, dict[str, Any]] = field(default_factory=dict)
    gates: dict[str, ProviderGate] = field(default_factory=dict)
    published: list[SubmissionEvent] = field(default_factory=list)
    commits: int = 0

    def attempts_of(self, job_id: str) -> list[dict[str, Any]]:
        return sorted(
            (r for r in self.rows.values() if r["job_id"] == job_id),
            key=lambda r: (r["job_retry_count"], r["retry_attempt"]),
        )


class FakeSubmissions:
    def __init__(self, store: Store, raised: list[SubmissionEvent]) -> None:
        self._store, self._raised = store, raised

    def _now(self) -> datetime:
        return self._store.clock.now

    def _loaded(self, rows: Iterable[dict[str, Any]]) -> list[Submission]:
        return [Submission(dict(row)) for row in rows]

    async def get(self, submission_id: str, *, lock: bool = False) -> Submission | None:
        row = self._store.rows.get(submission_id)
        return None if row is None else Submission(dict(row))

    async def of_task(self, provider_id: str, provider_job_id: str) -> Submission | None:
        for row in self._store.rows.values():
            if (row["provider_id"], row.get("provider_job_id")) == (provider_id, provider_job_id):
                return Submission(dict(row))
        return None

    def _past_start_deadline(self, row: Mapping[str, Any]) -> bool:
        deadline = row["start_deadline_at"]
        unsent = row["retry_attempt"] == 0 and row["submit_time"] is None
        return unsent and deadline is not None and deadline <= self._now()

    def _past_run_deadline(self, row: Mapping[str, Any]) -> bool:
        return row["run_deadline_at"] is not None and row["run_deadline_at"] <= self._now()

    async def claim_waiting(self, limit: int) -> list[Submission]:
        due = [
            row
            for row in self._store.rows.values()
            if row["state"] == SubmissionState.WAITING
            and row["available_at"] <= self._now()
            and not self._past_start_deadline(row)
            and not self._past_run_deadline(row)
        ]
        due.sort(key=lambda r: (r["turn_at"], r["create_time"]))
        claimed: list[dict[str, Any]] = []
        for row in due:
            gate = self._store.gates.get(row["provider_id"]) or ProviderGate(row["provider_id"])
            cap = None if gate.circuit is Circuit.CLOSED else int(gate.may_probe(self._now()))
            cap = 0 if gate.paused else cap
            mine = sum(1 for c in claimed if c["provider_id"] == row["provider_id"])
            if cap is None or mine < cap:
                claimed.append(row | {"probe": gate.circuit is not Circuit.CLOSED})
        return self._loaded(claimed[:limit])

    async def next_waiting_in(self) -> float | None:
        turns = [
            row["available_at"]
            for row in self._store.rows.values()
            if row["state"] == SubmissionState.WAITING
        ]
        return (min(turns) - self._now()).total_seconds() if turns else None

    async def claim_for_polling(self, owner: str, lease: timedelta, limit: int) -> list[Submission]:
        now = self._now()
        due = [
            row
            for row in self._store.rows.values()
            if (
                (row["state"] == SubmissionState.RUNNING and row["next_poll_at"] <= now)
                or row["provider_cancel_pending"]
            )
            and (row["lease_until"] is None or row["lease_until"] < now)
        ][:limit]
        for row in due:
            row |= {"lease_owner": owner, "lease_until": now + lease}
        return self._loaded(due)

    async def passed_deadline(self, limit: int) -> list[Submission]:
        rows = [
            row | {"why": "START" if self._past_start_deadline(row) else "RUN"}
            for row in self._store.rows.values()
            if row["state"] == SubmissionState.WAITING
            and (self._past_start_deadline(row) or self._past_run_deadline(row))
        ]
        return self._loaded(rows[:limit])

    async def expired_submitting(self, limit: int) -> list[Submission]:
        rows = [
            row
            for row in self._store.rows.values()
            if row["state"] == SubmissionState.SUBMITTING and row["lease_until"] < self._now()
        ]
        return self._loaded(rows[:limit])

    async def to_pass_over(self, limit: int, margin: timedelta) -> list[Submission]:
        rows = []
        for row in self._store.rows.values():
            if row["state"] != S.WAITING or row["submit_time"] or not row["fallbacks"]:
                continue
            gate = self._store.gates.get(row["provider_id"]) or ProviderGate(row["provider_id"])
            usable = any(
                a["provider_id"] == row["provider_id"]
                and a["state"] == AccountState.ACTIVE
                and a["credits"] > 0
                for a in self._store.accounts.values()
            )
            if gate.circuit is not Circuit.CLOSED:
                rows.append(row | {"why": "CIRCUIT_OPEN"})
            elif not usable:
                rows.append(row | {"why": "NO_USABLE_ACCOUNT"})
        return self._loaded(rows[:limit])

    async def now(self) -> datetime:
        return self._now()

    async def add(self, attempt: Submission) -> bool:
        key = ("job_id", "user_id", "job_retry_count", "retry_attempt")
        wanted = tuple(attempt.record[k] for k in key)
        if any(tuple(row[k] for k in key) == wanted for row in self._store.rows.values()):
            return False
        now = self._now()
        row = _ROW_DEFAULTS | {"create_time": now, "available_at": now, "turn_at": now}
        row |= {name: self._store.clock.resolve(v) for name, v in attempt.record.items()}
        self._store.rows[row["id"]] = row
        attempt.stored(dict(row))
        self._raised += attempt.take_events()
        return True

    async def save(self, attempt: Submission) -> None:
        if not attempt.changes:
            return
        row = self._store.rows[attempt.id]
        if row["state"] != attempt.loaded_state:
            raise repo.StaleSubmission(attempt.id)
        if "settle_time" in attempt.changes and row["settle_time"] is not None:
            raise repo.StaleSubmission(attempt.id)
        row |= {name: self._store.clock.resolve(v) for name, v in attempt.changes.items()}
        attempt.stored(dict(row))
        self._raised += attempt.take_events()


class FakeAccounts:
    def __init__(self, store: Store) -> None:
        self._store = store

    async def reserve(self, provider_id: str, cost: int) -> Any | None:
        now = self._store.clock.now
        free = [
            a
            for a in self._store.accounts.values()
            if a["provider_id"] == provider_id
            and a["state"] == AccountState.ACTIVE
            and (a["cooldown_until"] is None or a["cooldown_until"] <= now)
            and a["in_flight"] < a["max_concurrency"]
            and a["credits"] >= cost
        ]
        if not free:
            return None
        account = max(free, key=lambda a: a["priority"])
        account["in_flight"] += 1
        account["credits"] -= cost
        return SimpleNamespace(**account)

    async def release(self, account_id: str, reserved: int, spent: int | None = None) -> None:
        account = self._store.accounts[account_id]
        actual = reserved if spent is None else spent
        account["in_flight"] -= 1
        account["credits"] = max(account["credits"] + reserved - actual, 0)

    async def mark(
        self,
        account_id: str,
        *,
        state: AccountState | None = None,
        cooldown: timedelta | None = None,
    ) -> None:
        account = self._store.accounts[account_id]
        if state is not None:
            account["state"] = state
        if cooldown is not None:
            account["cooldown_until"] = self._store.clock.now + cooldown

    async def record_call(self, account_id: str, *, failed: bool) -> int:
        account = self._store.accounts[account_id]
        account["consecutive_failures"] = account["consecutive_failures"] + 1 if failed else 0
        return int(account["consecutive_failures"])

    async def sealed_credentials(self, account_ids: Iterable[str]) -> list[Any]:
        return [SimpleNamespace(**self._store.accounts[i]) for i in set(account_ids)]


class FakeGates:
    def __init__(self, store: Store) -> None:
        self._store = store

    async def lock(self, provider_id: str) -> tuple[ProviderGate, datetime]:
        gate = self._store.gates.setdefault(provider_id, ProviderGate(provider_id))
        return dataclasses.replace(gate, moves=[]), self._store.clock.now

    async def troubled(self, provider_id: str) -> ProviderGate | None:
        gate = self._store.gates.get(provider_id)
        if gate is None or (gate.circuit is Circuit.CLOSED and not gate.consecutive_failures):
            return None
        return dataclasses.replace(gate, moves=[])

    async def save(self, gate: ProviderGate) -> None:
        self._store.gates[gate.provider_id] = dataclasses.replace(gate, moves=[])


class FakeUnit:
    """A unit of work over the store: the events its attempts raise are published only
    when it commits."""

    def __init__(self, store: Store) -> None:
        self._store = store
        self._raised: list[SubmissionEvent] = []
        self.submissions = FakeSubmissions(store, self._raised)
        self.accounts = FakeAccounts(store)
        self.gates = FakeGates(store)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._raised.clear()

    async def commit(self) -> None:
        self._store.published += self._raised
        self._raised.clear()
        self._store.commits += 1


class ScriptedProvider:
    """A provider whose every answer the test lists in advance: for each submit a result or
    an error, for each status check a status."""

    def __init__(self, provider_id: str = "pika") -> None:
        self.provider_id = provider_id
        self.can_cancel = True
        self.bills_failures = True
        self.submits: list[GenerationResult | ProviderError] = []
        self.statuses: list[ProviderStatusResult | ProviderError] = []
        self.calls: list[str] = []

    def capabilities(self) -> Capabilities:
        spec = OperationSpec(t.OPERATION_TYPE_TEXT_TO_VIDEO)
        return Capabilities(self.provider_id, "Scripted", (spec,), supports_cancel=self.can_cancel)

    def map_parameters(self, operation: int, request: GenerationRequest) -> dict[str, Any]:
        return {"prompt": request.prompt}

    def estimate_cost(self, payload: Mapping[str, Any]) -> int:
        return 10

    def charge(self, status: ProviderStatusResult, reserved: int) -> Charge:
        # Like Runway (what it reports, else the estimate), or like fal (`bills_failures`
        # off: a task that ends without a result is not billed).
        if status.state is TaskState.SUCCEEDED or self.bills_failures:
            return charged(status.cost, reserved)
        return NOT_BILLED

    async def execute(
        self,
        operation: int,
        credentials: Credentials,
        payload: Mapping[str, Any],
        inputs: Sequence[InputFile] = (),
    ) -> GenerationResult:
        self.calls.append(f"submit {credentials.api_key}")
        answer = self.submits.pop(0)
        if isinstance(answer, ProviderError):
            raise answer
        return answer

    async def check_status(
        self, credentials: Credentials, provider_job_id: str
    ) -> ProviderStatusResult:
        self.calls.append(f"status {provider_job_id}")
        answer = self.statuses.pop(0)
        if isinstance(answer, ProviderError):
            raise answer
        return answer

    async def cancel(self, credentials: Credentials, provider_job_id: str) -> None:
        self.calls.append(f"cancel {provider_job_id}")

    async def check_account(self, credentials: Credentials) -> int | None:
        self.calls.append(f"check {credentials.api_key}")
        return None


# ---- the use cases

POLICY = RetryPolicy(max_retries=2, retry_base_seconds=1, poll_first_seconds=1)
VIDEO = MediaOutput("https://cdn.example/clip.mp4", t.MEDIA_TYPE_VIDEO)
S = SubmissionState


class Gateway:
    def __init__(self, policy: RetryPolicy = POLICY, circuits: CircuitPolicy | None = None) -> None:
        self.store = Store()
        self.provider = ScriptedProvider()
        self.fallback = ScriptedProvider("runway")
        self.cipher = CredentialCipher(f"k1:{new_key()}")
        self.service = ProviderService(
            None,  # type: ignore[arg-type]  # every unit of work is a fake one
            ProviderRegistry(
                {"pika": self.provider, "runway": self.fallback},
                credit_prices={"pika": Decimal("0.25"), "runway": Decimal("0.01")},
            ),
            self.cipher,
            policy,
            replica_id="replica-1",
            submit_lease=timedelta(seconds=30),
            poll_lease=timedelta(seconds=30),
            units=lambda: FakeUnit(self.store),
            circuits=circuits,
        )

    def account(
        self, *, credits: int = 1000, slots: int = 2, priority: int = 0, provider: str = "pika"
    ) -> str:
        account_id = str(uuid.uuid4())
        key_id, sealed = self.cipher.encrypt({"api_key": f"key-{priority}"}, account_id)
        self.store.accounts[account_id] = {
            "id": account_id,
            "provider_id": provider,
            "credits": credits,
            "max_concurrency": slots,
            "in_flight": 0,
            "priority": priority,
            "state": AccountState.ACTIVE,
            "cooldown_until": None,
            "consecutive_failures": 0,
            "credentials_key_id": key_id,
            "credentials": sealed,
        }
        return account_id

    async def submitted(self, **deadlines: object) -> str:
        job_id = str(uuid.uuid4())
        first = Submission.first(
            {
                "id": repo.new_id(),
                "job_id": job_id,
                "user_id": "alice",
                "provider_id": "pika",
                "operation_type": 1,
                "request": {"prompt": "a cat", "inputs": [], "params": {}},
                "job_retry_count": 0,
                "retry_attempt": 0,
                "turn_at": FromNow(),
                **deadlines,
            }
        )
        unit = FakeUnit(self.store)
        async with unit:
            assert await unit.submissions.add(first)
            await unit.commit()
        return job_id

    def attempts(self, job_id: str) -> list[tuple[str, str, str]]:
        return [
            (row["state"], row["error_code"], row["error_message"])
            for row in self.store.attempts_of(job_id)
        ]

    def ledger(self, account_id: str) -> tuple[int, int]:
        """The account's slots in use and credits."""
        account = self.store.accounts[account_id]
        return account["in_flight"], account["credits"]

    def published(self, kind: type) -> list[object]:
        return [e for e in self.store.published if isinstance(e, kind)]


@pytest.fixture
def gateway() -> Gateway:
    return Gateway()


async def test_an_attempt_is_sent_followed_and_completed_with_its_events_at_commit(
    gateway: Gateway,
) -> None:
    account = gateway.account()
    job_id = await gateway.submitted()
    gateway.provider.submits = [GenerationResult("task-1")]
    assert await gateway.service.dispatch_once(10) == 1
    assert gateway.attempts(job_id) == [(S.RUNNING, "", "")]
    assert (
        gateway.store.accounts[account]["in_flight"],
        gateway.store.accounts[account]["credits"],
    ) == (1, 990)

    gateway.provider.statuses = [
        ProviderStatusResult(TaskState.RUNNING, progress=0.5, provider_state="RUNNING"),
        ProviderStatusResult(TaskState.SUCCEEDED, outputs=(VIDEO,), cost=7),
    ]
    gateway.store.clock.advance(2)
    assert await gateway.service.poll_once(10) == 1
    (row,) = gateway.store.attempts_of(job_id)
    assert (row["state"], row["progress"], row["poll_count"]) == (S.RUNNING, 0.5, 1)
    gateway.store.clock.advance(5)
    assert await gateway.service.poll_once(10) == 1

    assert gateway.attempts(job_id) == [(S.SUCCEEDED, "", "")]
    assert (
        gateway.store.accounts[account]["in_flight"],
        gateway.store.accounts[account]["credits"],
    ) == (0, 993)
    kinds = [type(e) for e in gateway.store.published]
    assert kinds == [Queued, Started, Settled, Completed]
    (completed,) = gateway.published(Completed)
    assert completed.output == VIDEO  # type: ignore[attr-defined]
    assert gateway.provider.calls == ["submit key-0", "status task-1", "status task-1"]


async def test_a_transient_refusal_is_a_new_linked_attempt_after_a_backoff(
    gateway: Gateway,
) -> None:
    account = gateway.account()
    job_id = await gateway.submitted()
    gateway.provider.submits = [ProviderError(ErrorKind.TRANSIENT, "502"), GenerationResult("t")]
    await gateway.service.dispatch_once(10)
    first, second = gateway.store.attempts_of(job_id)
    assert (first["state"], first["error_code"]) == (S.FAILED, "TRANSIENT")
    assert (second["state"], second["previous_submission_id"]) == (S.WAITING, first["id"])
    assert second["turn_at"] == first["turn_at"]  # keeps its place in line
    assert (
        gateway.store.accounts[account]["in_flight"],
        gateway.store.accounts[account]["credits"],
    ) == (0, 1000)
    assert gateway.published(Failed) == []

    gateway.store.clock.advance(POLICY.retry_base_seconds + 0.01)
    assert await gateway.service.dispatch_once(10) == 1
    assert [row["state"] for row in gateway.store.attempts_of(job_id)] == [S.FAILED, S.RUNNING]


async def test_the_last_transient_failure_fails_the_job_once(gateway: Gateway) -> None:
    gateway.account()
    job_id = await gateway.submitted()
    gateway.provider.submits = [ProviderError(ErrorKind.TRANSIENT, "502")] * 3
    for _ in range(3):
        await gateway.service.dispatch_once(10)
        gateway.store.clock.advance(60)
    assert [row["state"] for row in gateway.store.attempts_of(job_id)] == [S.FAILED] * 3
    (failed,) = gateway.published(Failed)
    assert failed.code == "RETRIES_EXHAUSTED"  # type: ignore[attr-defined]


async def test_dispatch_sleeps_long_with_nothing_waiting_and_briefly_for_a_slot(
    gateway: Gateway,
) -> None:
    assert await gateway.service.dispatch_once(10) == 0
    assert gateway.service.dispatch.idle() == IDLE_NOTHING_WAITING
    job_id = await gateway.submitted()  # no account yet: put back for NO_ACCOUNT_DELAY
    assert await gateway.service.dispatch_once(10) == 0
    assert gateway.service.dispatch.idle() == pytest.approx(NO_ACCOUNT_DELAY.total_seconds())
    gateway.account()
    gateway.provider.submits = [GenerationResult("task-1")]
    gateway.store.clock.advance(1)
    assert await gateway.service.dispatch_once(10) == 1
    assert gateway.attempts(job_id) == [(S.RUNNING, "", "")]
    assert await gateway.service.dispatch_once(10) == 0
    assert gateway.service.dispatch.idle() == IDLE_NOTHING_WAITING


async def test_a_rate_limit_cools_the_account_and_the_same_attempt_waits(
    gateway: Gateway,
) -> None:
    account = gateway.account()
    job_id = await gateway.submitted()
    gateway.provider.submits = [ProviderError(ErrorKind.RATE_LIMITED, "429", retry_after=12)]
    await gateway.service.dispatch_once(10)
    assert gateway.attempts(job_id) == [(S.WAITING, "", "")]
    state = gateway.store.accounts[account]
    assert state["cooldown_until"] == gateway.store.clock.now + timedelta(seconds=12)
    assert (state["in_flight"], state["credits"]) == (0, 1000)
    assert await gateway.service.dispatch_once(10) == 0  # no account can take it meanwhile


async def test_a_revoked_key_marks_the_account_and_another_takes_the_attempt(
    gateway: Gateway,
) -> None:
    revoked = gateway.account(priority=5)
    spare = gateway.account(priority=1)
    job_id = await gateway.submitted()
    gateway.provider.submits = [
        ProviderError(ErrorKind.ACCOUNT_INVALID, "401"),
        GenerationResult("t"),
    ]
    await gateway.service.dispatch_once(10)
    assert gateway.store.accounts[revoked]["state"] == AccountState.INVALID
    await gateway.service.dispatch_once(10)
    (row,) = gateway.store.attempts_of(job_id)
    assert (row["state"], row["account_id"]) == (S.RUNNING, spare)
    assert gateway.provider.calls == ["submit key-5", "submit key-1"]


async def test_moderation_after_acceptance_fails_the_job_and_settles_what_was_spent(
    gateway: Gateway,
) -> None:
    account = gateway.account()
    job_id = await gateway.submitted()
    gateway.provider.submits = [GenerationResult("t")]
    await gateway.service.dispatch_once(10)
    gateway.provider.statuses = [
        ProviderStatusResult(
            TaskState.FAILED, error=ProviderError(ErrorKind.CONTENT_REJECTED, "nsfw"), cost=4
        )
    ]
    gateway.store.clock.advance(2)
    await gateway.service.poll_once(10)
    assert gateway.attempts(job_id) == [(S.FAILED, "CONTENT_REJECTED", "nsfw")]
    assert gateway.store.accounts[account]["credits"] == 996
    (failed,) = gateway.published(Failed)
    assert failed.code == "CONTENT_REJECTED"  # type: ignore[attr-defined]


async def test_an_attempt_whose_replica_died_mid_call_is_settled_and_followed(
    gateway: Gateway,
) -> None:
    account = gateway.account()
    job_id = await gateway.submitted()
    (row,) = gateway.store.attempts_of(job_id)
    row |= {"state": S.SUBMITTING, "account_id": account, "reserved_credits": 10}
    row["lease_until"] = gateway.store.clock.now - timedelta(seconds=1)
    gateway.store.accounts[account] |= {"in_flight": 1, "credits": 990}
    assert await gateway.service.recover_once() == 1
    assert gateway.attempts(job_id) == [
        (S.FAILED, "TRANSIENT", REPLICA_STOPPED),
        (S.WAITING, "", ""),
    ]
    # The provider may have charged: the reservation is spent, the slot comes back.
    assert (
        gateway.store.accounts[account]["in_flight"],
        gateway.store.accounts[account]["credits"],
    ) == (0, 990)


async def test_an_unsent_job_past_its_start_deadline_expires_without_a_call(
    gateway: Gateway,
) -> None:
    job_id = await gateway.submitted(
        start_deadline_at=gateway.store.clock.now + timedelta(seconds=5)
    )
    assert await gateway.service.dispatch_once(10) == 0  # no account yet: it waits
    gateway.store.clock.advance(6)
    gateway.account()
    assert await gateway.service.dispatch_once(10) == 0  # past the deadline: never claimed
    assert await gateway.service.expire_once() == 1
    assert gateway.attempts(job_id) == [
        (S.FAILED, "START_DEADLINE_EXCEEDED", "not sent by its start deadline")
    ]
    assert gateway.provider.calls == []


async def test_events_leave_only_when_the_unit_of_work_commits(gateway: Gateway) -> None:
    job_id = str(uuid.uuid4())
    attempt = Submission.first(
        {"id": repo.new_id(), "job_id": job_id, "user_id": "u", "provider_id": "pika",
         "operation_type": 1, "request": {}, "job_retry_count": 0, "retry_attempt": 0}
    )  # fmt: skip
    async with FakeUnit(gateway.store) as unit:
        await unit.submissions.add(attempt)  # and no commit
    assert gateway.store.published == []


@pytest.mark.parametrize("current", list(S))
def test_every_state_change_follows_the_transition_table(current: SubmissionState) -> None:
    for wanted in S:
        if wanted in LEGAL[current]:
            check_transition(current, wanted)
        else:
            with pytest.raises(IllegalTransition):
                check_transition(current, wanted)
    # A cancellation reaches any attempt not ended yet, and no ended one.
    assert (S.CANCELLED in LEGAL[current]) is (not current.terminal)


# ---- the circuit breaker


def broken_gateway(failures_to_open: int = 3) -> Gateway:
    return Gateway(
        RetryPolicy(max_retries=10, retry_base_seconds=0.001),
        CircuitPolicy(
            failures_to_open=failures_to_open, account_failures_to_open=100, open_seconds=10
        ),
    )


async def test_failures_in_a_row_open_the_circuit_and_its_jobs_wait_unsent() -> None:
    gateway = broken_gateway()
    gateway.account(slots=10)
    jobs = [await gateway.submitted() for _ in range(3)]
    gateway.provider.submits = [ProviderError(ErrorKind.TRANSIENT, "503")] * 3
    assert await gateway.service.dispatch_once(10) == 3  # each refused: a retry waits
    gate = gateway.store.gates["pika"]
    assert (gate.circuit, gate.consecutive_failures) == (Circuit.OPEN, 3)
    assert gate.open_until == gateway.store.clock.now + timedelta(seconds=10)

    gateway.store.clock.advance(5)  # the retries' backoff is long over
    assert await gateway.service.dispatch_once(10) == 0  # open: nothing is sent
    assert len(gateway.provider.calls) == 3
    assert gateway.published(Failed) == []  # and nothing failed: they wait
    assert all(gateway.store.attempts_of(j)[-1]["state"] == S.WAITING for j in jobs)


async def test_one_probe_after_the_open_period_closes_the_circuit_again() -> None:
    gateway = broken_gateway()
    gateway.account(slots=10)
    for _ in range(4):
        await gateway.submitted()
    gateway.provider.submits = [ProviderError(ErrorKind.TRANSIENT, "503")] * 3
    await gateway.service.dispatch_once(10)
    gateway.store.clock.advance(11)
    gateway.provider.submits = [GenerationResult("probe")]
    assert await gateway.service.dispatch_once(10) == 1  # the probe alone
    assert gateway.store.gates["pika"].circuit is Circuit.CLOSED
    gateway.provider.submits = [GenerationResult(f"t{n}") for n in range(3)]
    assert await gateway.service.dispatch_once(10) == 3  # closed: everyone goes


async def test_a_failed_probe_opens_it_again_for_twice_as_long() -> None:
    gateway = broken_gateway()
    gateway.account(slots=10)
    for _ in range(4):
        await gateway.submitted()
    gateway.provider.submits = [ProviderError(ErrorKind.TRANSIENT, "503")] * 4
    await gateway.service.dispatch_once(10)
    gateway.store.clock.advance(11)
    assert await gateway.service.dispatch_once(10) == 1
    gate = gateway.store.gates["pika"]
    assert gate.circuit is Circuit.OPEN
    assert gate.open_until == gateway.store.clock.now + timedelta(seconds=20)


async def test_a_provider_that_answers_with_a_refusal_is_up() -> None:
    gateway = broken_gateway()
    gateway.account(slots=10)
    for _ in range(4):
        await gateway.submitted()
    gateway.provider.submits = [
        ProviderError(ErrorKind.TRANSIENT, "503"),
        ProviderError(ErrorKind.TRANSIENT, "503"),
        ProviderError(ErrorKind.INVALID_PARAMETERS, "bad ratio"),
        ProviderError(ErrorKind.TRANSIENT, "503"),
    ]
    await gateway.service.dispatch_once(10)
    gate = gateway.store.gates["pika"]
    assert (gate.circuit, gate.consecutive_failures) == (Circuit.CLOSED, 1)


async def test_an_account_failing_in_a_row_rests_while_the_others_serve() -> None:
    gateway = broken_gateway(failures_to_open=100)
    gateway.service.dispatch._circuits = CircuitPolicy(account_failures_to_open=2, open_seconds=10)
    flaky = gateway.account(priority=9, slots=1)
    steady = gateway.account(priority=1, slots=1)
    for _ in range(3):
        await gateway.submitted()
    gateway.provider.submits = [ProviderError(ErrorKind.TRANSIENT, "503")] * 2
    await gateway.service.dispatch_once(1)
    await gateway.service.dispatch_once(1)
    assert gateway.store.accounts[flaky]["cooldown_until"] == gateway.store.clock.now + timedelta(
        seconds=10
    )
    gateway.provider.submits = [GenerationResult("t")]
    await gateway.service.dispatch_once(1)
    assert gateway.provider.calls[-1] == "submit key-1"  # the steady account's
    assert gateway.ledger(steady) == (1, 990)


async def test_inputs_that_cannot_be_read_now_cost_no_attempt_and_no_circuit() -> None:
    gateway = broken_gateway(failures_to_open=1)
    account = gateway.account()
    job_id = await gateway.submitted()

    class AssetsAway:
        async def of(self, user_id: str, inputs: Sequence[Any]) -> list[InputFile]:
            raise ProviderError(ErrorKind.TRANSIENT, "assets/x cannot be read now: UNAVAILABLE")

    gateway.service.dispatch._inputs = AssetsAway()  # type: ignore[assignment]
    await gateway.service.dispatch_once(10)
    assert gateway.attempts(job_id) == [(S.WAITING, "", "")]  # the same attempt, waiting
    assert gateway.ledger(account) == (0, 1000)
    assert (
        "pika" not in gateway.store.gates or gateway.store.gates["pika"].circuit is Circuit.CLOSED
    )
    assert gateway.provider.calls == []


# ---- fallback across providers

RUNWAY_FALLBACK = [{"provider_id": "runway", "params": {"duration": 10}}]


async def test_retries_exhausted_on_one_provider_go_on_with_the_next_fallback(
    gateway: Gateway,
) -> None:
    gateway.account()
    runway = gateway.account(provider="runway")
    job_id = await gateway.submitted(fallbacks=RUNWAY_FALLBACK)
    gateway.provider.submits = [ProviderError(ErrorKind.TRANSIENT, "503")] * 3
    gateway.fallback.submits = [ProviderError(ErrorKind.TRANSIENT, "503"), GenerationResult("r")]
    for _ in range(6):
        await gateway.service.dispatch_once(10)
        gateway.store.clock.advance(60)
    attempts = gateway.store.attempts_of(job_id)
    assert [(a["provider_id"], a["state"]) for a in attempts] == [
        ("pika", S.FAILED),
        ("pika", S.FAILED),
        ("pika", S.FAILED),
        ("runway", S.FAILED),  # its own retries, counted anew
        ("runway", S.RUNNING),
    ]
    assert [a["previous_submission_id"] for a in attempts[1:]] == [a["id"] for a in attempts[:-1]]
    assert attempts[3]["request"]["params"] == {"duration": 10}
    assert (attempts[3]["provider_first_attempt"], attempts[3]["fallbacks"]) == (3, [])
    assert gateway.published(Failed) == []  # the job never failed
    assert gateway.ledger(runway) == (1, 990)


@pytest.mark.parametrize(
    "error",
    [
        ProviderError(ErrorKind.CONTENT_REJECTED, "nsfw"),
        ProviderError(ErrorKind.INVALID_PARAMETERS, "bad ratio"),
    ],
)
async def test_moderation_and_invalid_input_never_fall_back(
    gateway: Gateway, error: ProviderError
) -> None:
    gateway.account()
    gateway.account(provider="runway")
    job_id = await gateway.submitted(fallbacks=RUNWAY_FALLBACK)
    gateway.provider.submits = [error]
    await gateway.service.dispatch_once(10)
    assert [a["provider_id"] for a in gateway.store.attempts_of(job_id)] == ["pika"]
    (failed,) = gateway.published(Failed)
    assert failed.code == error.kind.value  # type: ignore[attr-defined]
    assert gateway.fallback.calls == []


async def test_an_attempt_whose_outcome_is_unknown_never_falls_back(gateway: Gateway) -> None:
    account = gateway.account()
    gateway.account(provider="runway")
    job_id = await gateway.submitted(fallbacks=RUNWAY_FALLBACK)
    (row,) = gateway.store.attempts_of(job_id)
    row |= {"retry_attempt": POLICY.max_retries, "state": S.SUBMITTING, "account_id": account}
    row |= {"lease_until": gateway.store.clock.now - timedelta(seconds=1), "reserved_credits": 10}
    gateway.store.accounts[account] |= {"in_flight": 1}
    await gateway.service.recover_once()
    # Its task may still run at pika: the job fails rather than run on runway as well.
    assert [a["provider_id"] for a in gateway.store.attempts_of(job_id)] == ["pika"]
    (failed,) = gateway.published(Failed)
    assert failed.code == "RETRIES_EXHAUSTED"  # type: ignore[attr-defined]


async def test_an_unsent_job_passes_over_a_provider_without_a_usable_account(
    gateway: Gateway,
) -> None:
    gateway.account(credits=0)  # pika: exhausted
    gateway.account(provider="runway")
    job_id = await gateway.submitted(fallbacks=RUNWAY_FALLBACK)
    assert await gateway.service.fallback_once() == 1
    (row,) = gateway.store.attempts_of(job_id)
    assert (row["provider_id"], row["state"], row["retry_attempt"]) == ("runway", S.WAITING, 0)
    assert row["passed_over"] == [{"provider_id": "pika", "why": "NO_USABLE_ACCOUNT"}]
    gateway.fallback.submits = [GenerationResult("r")]
    assert await gateway.service.dispatch_once(10) == 1
    assert gateway.provider.calls == []
    assert await gateway.service.fallback_once() == 0  # no fallback left to go on with


async def test_a_callback_ends_the_attempt_at_once_and_its_duplicate_changes_nothing(
    gateway: Gateway,
) -> None:
    account = gateway.account()
    job_id = await gateway.submitted()
    gateway.provider.submits = [GenerationResult("task-1")]
    await gateway.service.dispatch_once(10)
    done = Notice("task-1", ProviderStatusResult(TaskState.SUCCEEDED, outputs=(VIDEO,), cost=7))

    assert await gateway.service.callbacks.heard("pika", done) is Heard.RECORDED
    assert await gateway.service.callbacks.heard("pika", done) is Heard.ALREADY_ENDED
    assert gateway.attempts(job_id) == [(S.SUCCEEDED, "", "")]
    assert gateway.ledger(account) == (0, 993)  # settled once
    assert len(gateway.published(Completed)) == 1
    # Nothing is left to poll, and no status call was made.
    gateway.store.clock.advance(60)
    assert await gateway.service.poll_once(10) == 0
    assert gateway.provider.calls == ["submit key-0"]


async def test_a_callback_for_a_task_no_attempt_has_is_unknown(gateway: Gateway) -> None:
    notice = Notice("no-such-task", ProviderStatusResult(TaskState.SUCCEEDED, outputs=(VIDEO,)))
    assert await gateway.service.callbacks.heard("pika", notice) is Heard.UNKNOWN
    assert gateway.store.published == []


async def test_a_failure_a_callback_reports_is_judged_as_a_polls_would_be(
    gateway: Gateway,
) -> None:
    gateway.account()
    job_id = await gateway.submitted()
    gateway.provider.submits = [GenerationResult("task-1")]
    await gateway.service.dispatch_once(10)
    error = ProviderError(ErrorKind.TRANSIENT, "runner died")
    notice = Notice("task-1", ProviderStatusResult(TaskState.FAILED, error=error))
    assert await gateway.service.callbacks.heard("pika", notice) is Heard.RECORDED
    assert [state for state, _, _ in gateway.attempts(job_id)] == [S.FAILED, S.WAITING]


RUNNING_STILL = ProviderStatusResult(TaskState.RUNNING, progress=0.9)
BOUNDED = RetryPolicy(
    poll_first_seconds=1, poll_cap_seconds=5, deadline_seconds=10, reconcile_seconds=60
)


async def running_past_the_bound(gateway: Gateway, **deadlines: object) -> tuple[str, str]:
    account = gateway.account()
    job_id = await gateway.submitted(**deadlines)
    gateway.provider.submits = [GenerationResult("task-1")]
    await gateway.service.dispatch_once(10)
    gateway.provider.statuses = [RUNNING_STILL]
    gateway.store.clock.advance(11)
    assert await gateway.service.poll_once(10) == 1
    return account, job_id


async def test_a_task_past_the_bound_that_cannot_be_stopped_is_followed_and_adopted() -> None:
    gateway = Gateway(BOUNDED)
    gateway.provider.can_cancel = False
    account, job_id = await running_past_the_bound(gateway)
    (row,) = gateway.store.attempts_of(job_id)
    assert (row["state"], row["reconcile_from"] is not None) == (S.RUNNING, True)
    assert gateway.published(Failed) == []

    gateway.provider.statuses = [
        ProviderStatusResult(TaskState.SUCCEEDED, outputs=(VIDEO,), cost=7)
    ]
    gateway.store.clock.advance(6)
    assert await gateway.service.poll_once(10) == 1
    assert gateway.attempts(job_id) == [(S.SUCCEEDED, "", "")]
    assert gateway.ledger(account) == (0, 993)  # the real cost, once
    assert len(gateway.published(Completed)) == 1


async def test_a_followed_task_that_never_ends_fails_at_the_end_of_its_reconciling() -> None:
    gateway = Gateway(BOUNDED)
    gateway.provider.can_cancel = False
    account, job_id = await running_past_the_bound(gateway)
    gateway.provider.statuses = [RUNNING_STILL]
    gateway.store.clock.advance(61)
    assert await gateway.service.poll_once(10) == 1
    assert gateway.attempts(job_id) == [
        (S.FAILED, "DEADLINE_EXCEEDED", "the provider did not finish in time")
    ]
    assert gateway.ledger(account) == (0, 990)  # the reservation stays spent


async def test_a_task_that_can_be_stopped_is_stopped_at_the_bound() -> None:
    gateway = Gateway(BOUNDED)
    _, job_id = await running_past_the_bound(gateway)
    (row,) = gateway.store.attempts_of(job_id)
    assert (row["state"], row["error_code"], row["provider_cancel_pending"]) == (
        S.FAILED,
        "DEADLINE_EXCEEDED",
        True,
    )


async def test_the_jobs_own_run_deadline_is_never_reconciled_past() -> None:
    gateway = Gateway(BOUNDED)
    gateway.provider.can_cancel = False
    run_deadline = gateway.store.clock.now + timedelta(seconds=10)
    _, job_id = await running_past_the_bound(gateway, run_deadline_at=run_deadline)
    assert gateway.attempts(job_id)[0][:2] == (S.FAILED, "DEADLINE_EXCEEDED")


async def test_a_passed_over_attempt_has_its_new_providers_whole_retry_budget(
    gateway: Gateway,
) -> None:
    pika = gateway.account()
    gateway.account(provider="runway")
    job_id = await gateway.submitted(fallbacks=RUNWAY_FALLBACK)
    gateway.provider.submits = [ProviderError(ErrorKind.TRANSIENT, "down")] * 2
    for _ in range(2):  # two of pika's retries spent (the policy allows two)
        assert await gateway.service.dispatch_once(10) == 1
        gateway.store.clock.advance(10)
    gateway.store.accounts[pika]["credits"] = 0  # pika can take it no more
    assert await gateway.service.fallback_once() == 1
    gateway.fallback.submits = [ProviderError(ErrorKind.TRANSIENT, "blip")]
    assert await gateway.service.dispatch_once(10) == 1
    rows = gateway.store.attempts_of(job_id)
    assert [(r["provider_id"], r["state"]) for r in rows] == [
        ("pika", S.FAILED),
        ("pika", S.FAILED),
        ("runway", S.FAILED),
        ("runway", S.WAITING),  # a retry on runway, not RETRIES_EXHAUSTED
    ]
    assert gateway.published(Failed) == []


# ---- what attempts cost: settled once, by the provider's rule (docs/costs.md)


def settlements(gateway: Gateway, job_id: str) -> list[tuple[int | None, int | None, str, bool]]:
    """Each attempt's (credits, micros, billing), with whether its Settled was final."""
    finals = {e.attempt.id: e.final for e in gateway.published(Settled)}  # type: ignore[attr-defined]
    return [
        (row["settled_credits"], row["settled_micros"], row["billing"], finals[row["id"]])
        for row in gateway.store.attempts_of(job_id)
    ]


async def sent_and_ended(gateway: Gateway, end: ProviderStatusResult) -> str:
    """A job sent to the scripted provider, whose task then ends as `end`: the job's id."""
    job_id = await gateway.submitted()
    gateway.provider.submits = [GenerationResult("task-1")]
    await gateway.service.dispatch_once(10)
    gateway.provider.statuses = [end]
    gateway.store.clock.advance(2)
    await gateway.service.poll_once(10)
    return job_id


async def test_a_completed_attempt_costs_what_the_provider_reported_at_the_reserved_price(
    gateway: Gateway,
) -> None:
    gateway.account()
    ended = ProviderStatusResult(TaskState.SUCCEEDED, outputs=(VIDEO,), cost=7)
    job_id = await sent_and_ended(gateway, ended)
    # 7 credits at $0.25: $1.75, in millionths; the only attempt, so the run's last.
    assert settlements(gateway, job_id) == [(7, 1_750_000, "REPORTED", True)]
    (row,) = gateway.store.attempts_of(job_id)
    assert row["reserved_credits"] == 10


async def test_a_completed_attempt_whose_provider_reports_no_cost_costs_the_estimate(
    gateway: Gateway,
) -> None:
    gateway.account()
    ended = ProviderStatusResult(TaskState.SUCCEEDED, outputs=(VIDEO,))
    job_id = await sent_and_ended(gateway, ended)
    assert settlements(gateway, job_id) == [(10, 2_500_000, "ESTIMATED", True)]


async def test_a_refused_submit_costs_nothing_and_its_retry_settles_on_its_own(
    gateway: Gateway,
) -> None:
    account = gateway.account()
    job_id = await gateway.submitted()
    gateway.provider.submits = [ProviderError(ErrorKind.TRANSIENT, "502"), GenerationResult("t")]
    await gateway.service.dispatch_once(10)
    gateway.store.clock.advance(POLICY.retry_base_seconds + 0.01)
    await gateway.service.dispatch_once(10)
    gateway.provider.statuses = [
        ProviderStatusResult(TaskState.SUCCEEDED, outputs=(VIDEO,), cost=9)
    ]
    gateway.store.clock.advance(2)
    await gateway.service.poll_once(10)
    assert settlements(gateway, job_id) == [
        (0, 0, "NOT_BILLED", False),  # a retry follows it: not the run's last
        (9, 2_250_000, "REPORTED", True),
    ]
    assert gateway.ledger(account) == (0, 991)


async def test_a_failure_the_provider_does_not_bill_gives_the_reservation_back(
    gateway: Gateway,
) -> None:
    account = gateway.account()
    gateway.provider.bills_failures = False
    rejected = ProviderError(ErrorKind.CONTENT_REJECTED, "content_policy_violation")
    job_id = await sent_and_ended(gateway, ProviderStatusResult(TaskState.FAILED, error=rejected))
    assert settlements(gateway, job_id) == [(0, 0, "NOT_BILLED", True)]
    assert gateway.ledger(account) == (0, 1000)


async def test_moderation_a_provider_bills_is_settled_as_spent(gateway: Gateway) -> None:
    account = gateway.account()
    rejected = ProviderError(ErrorKind.CONTENT_REJECTED, "SAFETY.OUTPUT.VIDEO")
    job_id = await sent_and_ended(gateway, ProviderStatusResult(TaskState.FAILED, error=rejected))
    assert settlements(gateway, job_id) == [(10, 2_500_000, "ESTIMATED", True)]
    assert gateway.ledger(account) == (0, 990)


async def test_an_attempt_whose_outcome_is_unknown_is_assumed_spent_and_its_retry_follows(
    gateway: Gateway,
) -> None:
    account = gateway.account()
    job_id = await gateway.submitted()
    (row,) = gateway.store.attempts_of(job_id)
    row |= {"state": S.SUBMITTING, "account_id": account, "reserved_credits": 10}
    row |= {"credit_price_micros": 250_000}
    row["lease_until"] = gateway.store.clock.now - timedelta(seconds=1)
    gateway.store.accounts[account] |= {"in_flight": 1, "credits": 990}
    await gateway.service.recover_once()
    first, _ = gateway.store.attempts_of(job_id)
    assert (first["settled_credits"], first["billing"]) == (10, "ASSUMED")
    (settled,) = gateway.published(Settled)
    assert settled.final is False  # type: ignore[attr-defined]


async def test_an_attempt_never_sent_settles_at_nothing_when_it_ends(gateway: Gateway) -> None:
    job_id = await gateway.submitted(start_deadline_at=gateway.store.clock.now)
    gateway.store.clock.advance(1)
    assert await gateway.service.expire_once() == 1
    assert settlements(gateway, job_id) == [(0, 0, "NOT_BILLED", True)]


def test_an_attempt_is_settled_once_and_never_ends_unsettled() -> None:
    attempt = Submission(
        {
            "id": "s1",
            "state": "RUNNING",
            "credit_price_micros": 10,
            "reserved_credits": 5,
            "provider_job_id": "t",
        }
    )
    with pytest.raises(Unsettled):
        attempt.cancel()
    attempt.settle(Charge(5, Billing.ASSUMED))
    with pytest.raises(AlreadySettled):
        attempt.settle(NOT_BILLED)
    attempt.cancel()
    assert (attempt.settled_credits, attempt.settled_micros) == (5, 50)
    # A crafted provider answer cannot make a cost negative or past an int64 of micros.
    assert price_micros(-3, 10) == 0
    assert price_micros(2**80, 2**80) < 2**63


async def test_a_task_its_provider_keeps_not_knowing_ends_unbilled_and_is_retried(
    gateway: Gateway,
) -> None:
    account = gateway.account()
    job_id = await gateway.submitted()
    gateway.provider.submits = [GenerationResult("task-1")]
    await gateway.service.dispatch_once(10)
    gone = TaskUnknown("no task task-1")
    # Once unknown, then known (a provider slow to know what it accepted): it goes on.
    gateway.provider.statuses = [gone, ProviderStatusResult(TaskState.RUNNING), gone, gone, gone]
    for _ in range(4):
        gateway.store.clock.advance(30)
        await gateway.service.poll_once(10)
    (row,) = gateway.store.attempts_of(job_id)
    assert (row["state"], row["unknown_polls"]) == (S.RUNNING, 2)
    gateway.store.clock.advance(30)
    await gateway.service.poll_once(10)
    first, retry = gateway.store.attempts_of(job_id)
    assert (first["state"], first["error_code"], first["billing"]) == (
        S.FAILED,
        "TRANSIENT",
        "NOT_BILLED",
    )
    assert retry["state"] == S.WAITING
    assert gateway.ledger(account) == (0, 1000)  # nothing ran there: the reservation is back


async def test_estimates_are_read_again_soon_while_a_checked_kind_has_none(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from contextlib import asynccontextmanager

    from pixsim_provider_gateway.service import timing as timing_module

    known: dict[tuple[str, int], Expected] = {}

    steps: list[float] = []

    async def durations(session: Any, *, step: float) -> dict[tuple[str, int], Expected]:
        steps.append(step)
        return dict(known)

    @asynccontextmanager
    async def no_session() -> Any:
        yield None

    monkeypatch.setattr(repo, "expected_durations", durations)
    timing = timing_module.Timing(no_session, step=0.05)  # type: ignore[arg-type]
    attempt = SimpleNamespace(provider_id="pixverse", operation_type=1)
    assert timing.refresh_idle() == timing_module.REFRESH_SECONDS  # nothing asked yet
    assert timing.expected(attempt) is None  # type: ignore[arg-type]
    assert timing.refresh_idle() == timing_module.REFRESH_SECONDS_WHILE_UNKNOWN
    await timing.refresh()  # still none for it
    assert timing.refresh_idle() == timing_module.REFRESH_SECONDS_WHILE_UNKNOWN
    known[("pixverse", 1)] = Expected(2.0, 1.9)
    await timing.refresh()
    assert timing.expected(attempt) == Expected(2.0, 1.9)  # type: ignore[arg-type]
    assert timing.refresh_idle() == timing_module.REFRESH_SECONDS
    # A kind asked once and then no more is not refreshed for forever.
    assert timing.expected(SimpleNamespace(provider_id="pika", operation_type=1)) is None  # type: ignore[arg-type]
    await timing.refresh()
    await timing.refresh()
    assert timing.refresh_idle() == timing_module.REFRESH_SECONDS
    assert set(steps) == {0.05}  # the estimates assume the checks' own smallest step
