"""A chaos run over the whole stack: jobs with scripted provider faults flow through it while
a driver SIGKILLs a random service every few seconds (and starts it again), and crashes the
Kafka broker and the PostgreSQL cluster once each. When everything has drained, what must
hold is counted from the services' own databases, the simulator's record and the broker.

The run has the provider gateway as two replicas, and takes one provider down for a while
(the simulator failing every call made with its key): that provider's jobs carry a
fallback, and each must end as scripted all the same.

`make chaos` runs 1,000 jobs; the test suite runs a short version (tests/test_chaos.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import random
import shutil
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import asyncpg
import grpc
import httpx
from aiokafka import AIOKafkaConsumer
from aiokafka.admin import AIOKafkaAdminClient

from pixsim.job.v1 import job_service_pb2 as job_pb
from pixsim.provider.v1 import provider_gateway_service_pb2 as gw_pb
from pixsim.types.v1 import types_pb2 as t
from pixsim_common.topics import ALL_TOPICS, GENERATION_COMPLETED
from pixsim_local.kafka import partitions_of, read_topic
from pixsim_local.processes import free_port
from pixsim_local.s3 import S3Server
from pixsim_local.stack import SERVICE_NAMES
from pixsim_local.whole_stack import WholeStack, whole_stack_of_its_own
from pixsim_provider_gateway.providers import http
from pixsim_provider_gateway.service import REPLICA_STOPPED

PROVIDERS = ("pixverse", "runway", "pika")
TERMINAL = ("COMPLETED", "FAILED", "CANCELLED", "EXPIRED")
# What a client retries with the same request_id: the service was down or went down.
RETRYABLE = {
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.CANCELLED,
    grpc.StatusCode.DEADLINE_EXCEEDED,
}
USER = "chaos"


@dataclass(frozen=True)
class Script:
    """A fault a job meets at the provider, and what follows when nothing else goes wrong."""

    label: str
    knob: str  # the simulator's prompt knob
    weight: int
    sends: int  # submit requests the provider receives
    attempts: int  # the gateway's submissions (a 429 sends the same attempt again)
    state: str
    error_code: str = ""


SCRIPTS = (
    Script("no fault", "", 40, 1, 1, "COMPLETED"),
    Script("429 once", "[sim:rate_limit=1]", 12, 2, 1, "COMPLETED"),
    Script("5xx once", "[sim:server_error=1]", 12, 2, 2, "COMPLETED"),
    Script("task failed once", "[sim:fail=1]", 12, 2, 2, "COMPLETED"),
    Script("slow (2 s)", "[sim:finish_ms=2000]", 12, 1, 1, "COMPLETED"),
    Script("moderated", "[sim:moderation]", 12, 1, 1, "FAILED", "CONTENT_REJECTED"),
)

# Settings for the run: a provider call that hangs gives up soon, so an attempt whose
# replica died is recovered (after twice this plus 5 s) within the run; a circuit opened by
# the outage is tried again soon after it ends.
CHAOS_SETTINGS = {"PROVIDER_TIMEOUT": "3", "CIRCUIT_OPEN_SECONDS": "3"}
# The provider taken down, and the one its jobs fall back to.
OUTAGE, FALLBACK = "runway", "pika"


@dataclass(frozen=True)
class PlannedJob:
    provider: str
    script: Script
    prompt: str
    request_id: str
    fallback: str = ""


@dataclass(frozen=True)
class ChaosPlan:
    jobs: int
    rate: float = 10.0  # jobs submitted per second
    every: float = 3.0  # seconds between chaos actions
    seed: int = 7
    drain_timeout: float = 240.0
    # The outage begins with the run and lasts until the provider's circuit opens (its first
    # jobs meet it, and the jobs after them fall back while it stays open), or for
    # `outage_longest` seconds. A window fixed in time could pass unnoticed while the
    # gateways' consumers are still joining their group, or the broker is down: the bound
    # outlasts a broker's slowest return on a loaded machine (58 s was seen), and is reached
    # only when no job met the outage in all that time.
    outage_longest: float = 90.0

    def planned_jobs(self, rng: random.Random, run_id: str) -> list[PlannedJob]:
        weights = [script.weight for script in SCRIPTS]
        jobs = []
        for index in range(self.jobs):
            script = rng.choices(SCRIPTS, weights)[0]
            provider = PROVIDERS[index % len(PROVIDERS)]
            jobs.append(
                PlannedJob(
                    provider=provider,
                    script=script,
                    prompt=f"chaos {run_id} job {index} {script.knob}".strip(),
                    request_id=f"chaos-{run_id}-{index}",
                    fallback=FALLBACK if provider == OUTAGE else "",
                )
            )
        return jobs

    def actions(self, rng: random.Random, targets: list[str]) -> list[tuple[float, str]]:
        """(seconds from the start, what): a kill of one of `targets` (service processes,
        replicas each on their own) every `every` seconds while jobs are submitted (each in
        turn, in a shuffled order), with the broker crash a third of the way and the
        database crash two thirds."""
        count = max(len(targets) + 2, int(self.jobs / self.rate / self.every))
        order = list(targets)
        kills: list[str] = []
        while len(kills) < count - 2:
            rng.shuffle(order)
            kills += order
        kills = kills[: count - 2]  # whole cycles first, so each target is hit at least once
        kills.insert(count // 3, "kafka")
        kills.insert(2 * count // 3, "postgres")
        return [(self.every * (k + 1), what) for k, what in enumerate(kills)]


@dataclass
class Check:
    what: str
    expected: str
    actual: str
    holds: bool


@dataclass
class ChaosReport:
    plan: ChaosPlan
    actions: list[tuple[float, str, float]] = field(default_factory=list)  # at, what, seconds
    client_retries: Counter[str] = field(default_factory=Counter)  # status code -> count
    outage: tuple[float, float] = (0.0, 0.0)  # seconds from the start: the provider down
    made_by_fallback: tuple[int, int] = (0, 0)  # jobs with a fallback: made by it, in all
    outage_attempts: list[str] = field(default_factory=list)  # their attempts, by outcome
    by_script: list[tuple[str, int, int, int, int, int]] = field(default_factory=list)
    checks: list[Check] = field(default_factory=list)
    seconds: float = 0.0
    problems: list[str] = field(default_factory=list)  # one line per job that broke a rule
    diagnosis: list[str] = field(default_factory=list)  # where unfinished jobs wait

    def check(self, what: str, expected: object, actual: object, holds: bool) -> None:
        self.checks.append(Check(what, str(expected), str(actual), holds))

    @property
    def holds(self) -> bool:
        return all(check.holds for check in self.checks)

    def table(self) -> str:
        lines = [
            f"chaos run: {self.plan.jobs} jobs at {self.plan.rate:g}/s, a fault every "
            f"{self.plan.every:g}s, seed {self.plan.seed}, {self.seconds:.0f}s in all",
            "",
            "chaos: "
            + ", ".join(f"{what} x{n}" for what, n in Counter(a[1] for a in self.actions).items()),
            "back within: "
            + ", ".join(
                f"{what} {max(s for _, w, s in self.actions if w == what):.1f}s"
                for what in dict.fromkeys(a[1] for a in self.actions)
            ),
            "client retries (same request_id): "
            + (", ".join(f"{code} x{n}" for code, n in self.client_retries.items()) or "none"),
            f"outage: {OUTAGE} down from {self.outage[0]:.1f}s to {self.outage[1]:.1f}s; of its "
            f"{self.made_by_fallback[1]} jobs (fallback {FALLBACK}), {self.made_by_fallback[0]}"
            f" were made by {FALLBACK}; their attempts:",
            *(f"  {line}" for line in self.outage_attempts),
            "",
            f"{'script':<18} {'jobs':>5} {'completed':>9} {'failed':>6} "
            f"{'calls':>6} {'scripted':>8}",
        ]
        lines += [
            f"{label:<18} {jobs:>5} {completed:>9} {failed:>6} {sends:>6} {scripted:>8}"
            for label, jobs, completed, failed, sends, scripted in self.by_script
        ]
        width = max(len(check.what) for check in self.checks)
        lines += ["", f"{'invariant':<{width}}  {'expected':>14}  {'actual':>14}  holds"]
        lines += [
            f"{c.what:<{width}}  {c.expected:>14}  {c.actual:>14}  {'yes' if c.holds else 'NO'}"
            for c in self.checks
        ]
        lines += [f"  ! {problem}" for problem in self.problems[:20]]
        lines += [f"  ? {line}" for line in self.diagnosis]
        return "\n".join(lines)


@contextlib.asynccontextmanager
async def chaos_stack() -> AsyncIterator[WholeStack]:
    """The whole stack over a PostgreSQL cluster and a broker of its own, which the run may
    crash without disturbing anything else; the asset service as two replicas sharing an S3
    bucket (on a real S3 server of the run's own), and the gateway as two replicas, as they
    run on Kubernetes."""
    run_dir = Path(tempfile.mkdtemp(prefix="pixsim-chaos-s3-"))
    s3 = await S3Server.start(run_dir, free_port())
    try:
        await s3.create_bucket("chaos")
        settings = {**CHAOS_SETTINGS, **s3.settings("chaos")}
        replicas = {"asset": 2, "provider-gateway": 2}
        async with whole_stack_of_its_own(settings, replicas=replicas) as stack:
            for provider in PROVIDERS:
                # A 429 cools the account down this long (the simulator's Retry-After).
                await stack.sim_key(provider, retry_after_s=0.3)
            yield stack
    finally:
        s3.stop()
        shutil.rmtree(run_dir, ignore_errors=True)


class ChaosRun:
    def __init__(self, stack: WholeStack, plan: ChaosPlan) -> None:
        self.stack, self.plan = stack, plan
        self.postgres, self.kafka = stack.services.infra.postgres, stack.services.infra.kafka
        self.rng = random.Random(plan.seed)  # noqa: S311 (a reproducible schedule)
        self.jobs = plan.planned_jobs(self.rng, uuid.uuid4().hex[:6])
        self.report = ChaosReport(plan)
        self.caller = stack.auth(USER)

    async def run(self) -> ChaosReport:
        started = time.monotonic()
        submitting = asyncio.create_task(self._submit_all(started))
        outage = asyncio.create_task(self._outage(started))
        await self._make_chaos(started)
        await submitting
        await outage
        await self._drain()
        await self._count()
        self.report.seconds = time.monotonic() - started
        return self.report

    # ---- load and chaos ----------------------------------------------------------------

    async def _submit_all(self, started: float) -> None:
        limit = asyncio.Semaphore(32)

        async def submit(job: PlannedJob) -> None:
            async with limit:
                await self._create(job)

        tasks = []
        for index, job in enumerate(self.jobs):
            await _sleep_until(started + index / self.plan.rate)
            tasks.append(asyncio.create_task(submit(job)))
        await asyncio.gather(*tasks)

    async def _outage(self, started: float) -> None:
        """The outage provider's key fails every call from the start, until the gateway has
        opened its circuit, or for `outage_longest` seconds. Counting refusals at the
        simulator instead let the outage end unseen: a submit refused while its replica was
        being killed never reached the circuit's count."""
        admin = self.stack.auth("chaos", admin=True)
        await self.stack.sim_key(OUTAGE, outage=True)
        began = time.monotonic()
        while time.monotonic() - began < self.plan.outage_longest:
            with contextlib.suppress(grpc.aio.AioRpcError):  # the gateway may be down
                provider = await self.stack.gateway.GetProvider(
                    gw_pb.GetProviderRequest(name=f"providers/{OUTAGE}"), metadata=admin
                )
                if provider.circuit == gw_pb.Provider.CIRCUIT_OPEN:
                    break
            await asyncio.sleep(0.2)
        await self.stack.sim_key(OUTAGE, outage=False)
        self.report.outage = (began - started, time.monotonic() - started)

    async def _sim_stats(self) -> dict[str, Any]:
        async with httpx.AsyncClient() as client:
            answer = await client.get(f"{self.stack.services.simulator_url}/_sim/stats")
        stats: dict[str, Any] = answer.raise_for_status().json()
        return stats

    async def _create(self, job: PlannedJob) -> None:
        """CreateJob until it answers, with the same request_id each time."""
        deadline = time.monotonic() + 120
        request = job_pb.CreateJobRequest(
            job=job_pb.Job(
                provider_id=job.provider,
                operation_type=t.OPERATION_TYPE_TEXT_TO_VIDEO,
                prompt=job.prompt,
                fallbacks=[job_pb.Fallback(provider_id=job.fallback)] if job.fallback else [],
            ),
            request_id=job.request_id,
        )
        while True:
            try:
                await self.stack.jobs.CreateJob(request, metadata=self.caller, timeout=10)
                return
            except grpc.aio.AioRpcError as error:
                if error.code() not in RETRYABLE or time.monotonic() > deadline:
                    raise
                self.report.client_retries[error.code().name] += 1
                await asyncio.sleep(0.2 + self.rng.random() * 0.3)

    async def _make_chaos(self, started: float) -> None:
        for at, what in self.plan.actions(self.rng, self.stack.services.service_processes):
            await _sleep_until(started + at)
            began = time.monotonic()
            if what == "kafka":
                await self.kafka.crash_and_restart()
            elif what == "postgres":
                await self.postgres.crash_and_restart()
            else:
                await self.stack.services.restart(what, crash=True)
            self.report.actions.append((began - started, what, time.monotonic() - began))

    async def _drain(self) -> None:
        """Until every job is terminal and every outbox sent; a service dying by itself
        meanwhile ends the run."""

        async def all_terminal() -> bool:
            done = await self._fetchval(
                "job",
                "SELECT count(*) FROM jobs WHERE user_id = $1 AND state = ANY($2)",
                USER,
                list(TERMINAL),
            )
            return bool(done == len(self.jobs))

        async def outboxes_sent() -> bool:
            unsent = [
                await self._fetchval(name, "SELECT count(*) FROM outbox WHERE sent_at IS NULL")
                for name in SERVICE_NAMES
            ]
            return not any(unsent)

        async def costs_final() -> bool:
            # Each run's last settlement travels on its own topic, after the job's end.
            open_costs = await self._fetchval(
                "job", "SELECT count(*) FROM jobs WHERE user_id = $1 AND NOT cost_final", USER
            )
            return not open_costs

        deadline = time.monotonic() + self.plan.drain_timeout
        for condition in (all_terminal, outboxes_sent, costs_final):
            while not await condition():
                self.stack.services.check_alive()
                if time.monotonic() > deadline:
                    return  # the counts below say what is missing
                await asyncio.sleep(0.5)

    # ---- what must hold ----------------------------------------------------------------

    async def _count(self) -> None:
        report, planned = self.report, {job.request_id: job for job in self.jobs}
        jobs = await self._fetch(
            "job",
            "SELECT request_id, id::text AS id, state, error_code, asset_id, asset_provider_id"
            " FROM jobs WHERE user_id = $1",
            USER,
        )
        by_request = {row["request_id"]: row for row in jobs}
        report.check(
            "jobs, one per request",
            len(self.jobs),
            len(jobs),
            len(jobs) == len(by_request) == len(self.jobs),
        )
        terminal = [row for row in jobs if row["state"] in TERMINAL]
        report.check(
            "jobs terminal", len(self.jobs), len(terminal), len(terminal) == len(self.jobs)
        )
        wrong_state = [
            f"{row['request_id']} ({planned[row['request_id']].script.label}): "
            f"{row['state']} {row['error_code']}"
            for row in jobs
            if (row["state"], row["error_code"])
            != (
                planned[row["request_id"]].script.state,
                planned[row["request_id"]].script.error_code,
            )
        ]
        report.problems += wrong_state
        unfinished = [row["id"] for row in jobs if row["state"] not in TERMINAL]
        if unfinished:
            try:
                report.diagnosis += await self._where_they_wait(unfinished)
            except Exception as error:  # a diagnosis must not hide the report
                report.diagnosis.append(f"the diagnosis failed: {error!r}")
        report.check(
            "jobs in their scripted state",
            len(self.jobs),
            len(jobs) - len(wrong_state),
            not wrong_state,
        )

        completed = {row["id"]: row for row in jobs if row["state"] == "COMPLETED"}
        assets = await self._fetch(
            "asset",
            "SELECT id::text AS id, source_job_id::text AS job_id, sha256 FROM assets"
            " WHERE deleted_at IS NULL",
        )
        per_job = Counter(row["job_id"] for row in assets)
        report.check(
            "assets = completed jobs", len(completed), len(assets), len(assets) == len(completed)
        )
        duplicated = sum(1 for count in per_job.values() if count > 1)
        report.check("jobs with more than one asset", 0, duplicated, duplicated == 0)
        asset_names = {f"assets/{row['id']}" for row in assets} | {row["id"] for row in assets}
        unmatched = [
            job_id for job_id, row in completed.items() if row["asset_id"] not in asset_names
        ]
        report.check(
            "completed jobs whose asset exists",
            len(completed),
            len(completed) - len(unmatched),
            not unmatched,
        )
        # Every asset's bytes are in the bucket, as stored, whichever replica wrote them.
        intact = 0
        for row in assets:
            body = await self.stack.content(f"assets/{row['id']}", who=self.caller)
            intact += hashlib.sha256(body).hexdigest() == row["sha256"]
        report.check(
            "assets whose file reads back intact", len(assets), intact, intact == len(assets)
        )

        # Every attempt settled once, whatever crashed: each job's cost is the sum of its
        # attempts' settlements at the gateway, and final.
        settled = {
            row["job_id"]: (row["credits"], row["unsettled"])
            for row in await self._fetch(
                "provider-gateway",
                "SELECT job_id::text AS job_id, coalesce(sum(settled_credits), 0) AS credits,"
                " count(*) FILTER (WHERE settle_time IS NULL) AS unsettled"
                " FROM provider_submissions GROUP BY job_id",
            )
        }
        costs = await self._fetch(
            "job",
            "SELECT id::text AS id, settled_credits, cost_final FROM jobs WHERE user_id = $1",
            USER,
        )
        agreeing = [
            row
            for row in costs
            if settled.get(row["id"], (0, 0)) == (row["settled_credits"], 0) and row["cost_final"]
        ]
        report.check(
            "jobs whose cost is their attempts' settlements, final",
            len(costs),
            len(agreeing),
            len(agreeing) == len(costs),
        )
        used = await self._fetchval(
            "job", "SELECT coalesce(sum(credits), 0) FROM usage_daily WHERE user_id = $1", USER
        )
        spent = sum(row["settled_credits"] for row in costs)
        report.check("credits in usage = credits of the jobs", spent, used, used == spent)

        attempts = {
            row["job_id"]: (row["attempts"], row["interrupted"])
            for row in await self._fetch(
                "provider-gateway",
                "SELECT job_id::text AS job_id, count(*) AS attempts,"
                " count(*) FILTER (WHERE error_message = $1 OR error_message LIKE $2"
                " OR error_message LIKE $3) AS interrupted"
                " FROM provider_submissions GROUP BY job_id",
                REPLICA_STOPPED,
                f"%{http.TIMED_OUT}",
                f"%{http.TRANSPORT_FAILED}%",
            )
        }
        async with httpx.AsyncClient() as client:
            sends = (await client.get(f"{self.stack.services.simulator_url}/_sim/submits")).json()
            stats = (await client.get(f"{self.stack.services.simulator_url}/_sim/stats")).json()
        # (jobs, of which as scripted) without and with an attempt cut short, by a crash or
        # by a call that timed out under the run's load: either may have reached the provider.
        plain, cut, fell_back = [0, 0], [0, 0], [0, 0]
        mismatched: list[str] = []
        for row in jobs:
            job = planned[row["request_id"]]
            calls, (tries, interrupted) = sends.get(job.prompt, 0), attempts.get(row["id"], (0, 0))
            scripted = (job.script.sends, job.script.attempts)
            if job.fallback:
                # Calls the outage refused never reached the provider; the attempts they
                # failed (and a crash's, and a timed-out call's) come on top of the script.
                tally, ok = (
                    fell_back,
                    scripted[0] <= calls <= scripted[0] + interrupted and tries >= scripted[1],
                )
            elif interrupted == 0:
                tally, ok = plain, (calls, tries) == scripted
            else:
                # An attempt whose replica died may or may not have reached the provider.
                tally, ok = (
                    cut,
                    (
                        scripted[0] <= calls <= scripted[0] + interrupted
                        and scripted[1] <= tries <= scripted[1] + interrupted
                    ),
                )
            tally[0] += 1
            tally[1] += ok
            if not ok:
                report.problems.append(
                    f"{job.request_id} ({job.script.label}): {calls} provider calls and "
                    f"{tries} attempts, {interrupted} cut short; scripted {scripted}"
                )
                mismatched.append(row["id"])
        if mismatched:
            try:
                report.diagnosis += await self._attempts_of(mismatched)
            except Exception as error:  # a diagnosis must not hide the report
                report.diagnosis.append(f"the diagnosis failed: {error!r}")
        report.check("calls = 1 + scripted retries", plain[0], plain[1], plain[0] == plain[1])
        report.check("  jobs with an attempt cut: +0..1 each", cut[0], cut[1], cut[0] == cut[1])
        report.check(
            f"  {OUTAGE} jobs, fallback {FALLBACK}: calls as scripted",
            fell_back[0],
            fell_back[1],
            fell_back[0] == fell_back[1],
        )
        with_fallback = [row for row in jobs if planned[row["request_id"]].fallback]
        as_scripted = [
            row
            for row in with_fallback
            if (row["state"], row["error_code"])
            == (
                planned[row["request_id"]].script.state,
                planned[row["request_id"]].script.error_code,
            )
        ]
        report.made_by_fallback = (
            sum(1 for row in with_fallback if row["asset_provider_id"] == FALLBACK),
            len(with_fallback),
        )
        met = await self._fetch(
            "provider-gateway",
            "SELECT provider_id, state, error_code, left(error_message, 60) AS message,"
            " passed_over <> '[]'::jsonb AS passed, count(*) AS n FROM provider_submissions"
            " WHERE job_id = ANY($1::uuid[]) GROUP BY 1, 2, 3, 4, 5 ORDER BY n DESC",
            [row["id"] for row in with_fallback],
        )
        report.outage_attempts = [
            f"{r['provider_id']} {r['state']} {r['error_code']} {r['message']!r}"
            f"{' (passed over)' if r['passed'] else ''}: {r['n']}"
            for r in met
        ]
        report.check(
            f"  of them made by {FALLBACK} (the outage met)",
            "> 0",
            report.made_by_fallback[0],
            report.made_by_fallback[0] > 0,
        )
        report.check(
            "jobs with a fallback ended as scripted",
            len(with_fallback),
            len(as_scripted),
            len(as_scripted) == len(with_fallback),
        )

        limits = {
            row["provider_id"]: row["max_concurrency"]
            for row in await self._fetch(
                "provider-gateway", "SELECT provider_id, max_concurrency FROM provider_accounts"
            )
        }
        for provider in PROVIDERS:
            peak = stats["keys"].get(f"local-{provider}-key", {}).get("in_flight_max", 0)
            report.check(
                f"{provider} peak concurrency <= limit",
                f"<= {limits[provider]}",
                peak,
                peak <= limits[provider],
            )

        for name in SERVICE_NAMES:
            unsent = await self._fetchval(name, "SELECT count(*) FROM outbox WHERE sent_at IS NULL")
            report.check(f"{name} outbox rows unsent", 0, unsent, unsent == 0)
        dead_letters = await _message_counts(self.kafka.bootstrap, [t.dlq for t in ALL_TOPICS])
        total = sum(dead_letters.values())
        report.check("messages in .dlq topics (none poison)", 0, total, total == 0)

        for script in SCRIPTS:
            mine = [row for row in jobs if planned[row["request_id"]].script is script]
            report.by_script.append(
                (
                    script.label,
                    len(mine),
                    sum(1 for row in mine if row["state"] == "COMPLETED"),
                    sum(1 for row in mine if row["state"] == "FAILED"),
                    sum(sends.get(planned[row["request_id"]].prompt, 0) for row in mine),
                    script.sends * len(mine),
                )
            )

    async def _attempts_of(self, job_ids: list[str]) -> list[str]:
        """Each attempt of jobs whose calls and attempts were not as scripted, in order: how
        it ended and why, so a failure says which path made the extra one."""
        rows = await self._fetch(
            "provider-gateway",
            "SELECT job_id::text AS job_id, job_retry_count, retry_attempt, state, error_code,"
            " error_message, provider_job_id, lease_owner, create_time, submit_time,"
            " complete_time FROM provider_submissions WHERE job_id = ANY($1::uuid[])"
            " ORDER BY job_id, job_retry_count, retry_attempt",
            job_ids,
        )
        return [
            f"{row['job_id']} try {row['job_retry_count']}.{row['retry_attempt']}: "
            f"{row['state']} {row['error_code'] or ''} {(row['error_message'] or '')[:160]!r}"
            f" task={row['provider_job_id']} created={_clock(row['create_time'])}"
            f" sent={_clock(row['submit_time'])} ended={_clock(row['complete_time'])}"
            for row in rows
        ]

    async def _where_they_wait(self, job_ids: list[str]) -> list[str]:
        """For a run that did not drain: which stage holds the unfinished jobs (their latest
        submission's state at the gateway, whether the asset service has their file) and what
        each consumer group has left to read, so a failure says where to look."""
        latest = {
            row["job_id"]: row["state"]
            for row in await self._fetch(
                "provider-gateway",
                "SELECT DISTINCT ON (job_id) job_id::text AS job_id, state"
                " FROM provider_submissions WHERE job_id = ANY($1::uuid[])"
                " ORDER BY job_id, create_time DESC",
                job_ids,
            )
        }
        stored = {
            row["job_id"]
            for row in await self._fetch(
                "asset",
                "SELECT source_job_id::text AS job_id FROM assets"
                " WHERE source_job_id = ANY($1::uuid[])",
                job_ids,
            )
        }
        stages = Counter(
            f"submission {latest.get(job_id, 'none')}, "
            f"asset {'stored' if job_id in stored else 'none'}"
            for job_id in job_ids
        )
        lines = [f"unfinished jobs: {n} with {stage}" for stage, n in stages.most_common()]
        # Whether their results ever reached the broker: lost there, or consumed to no effect.
        total = (await _message_counts(self.kafka.bootstrap, [GENERATION_COMPLETED.name]))[
            GENERATION_COMPLETED.name
        ]
        on_topic = await read_topic(
            self.kafka.bootstrap, GENERATION_COMPLETED.name, until=total, timeout=30
        )
        keys = Counter(record.key.decode() for record in on_topic if record.key)
        event_ids = [
            dict(record.headers).get("ce_id", b"").decode()
            for record in on_topic
            if record.key and record.key.decode() in job_ids
        ]
        seen = await self._fetchval(
            "asset", "SELECT count(*) FROM inbox WHERE event_id = ANY($1::text[])", event_ids
        )
        lines.append(
            f"of those, with a generation.completed on the topic: "
            f"{sum(1 for job_id in job_ids if keys[job_id])}"
            f" (the topic holds {total} records); in the asset service's inbox: {seen}"
        )
        lines += [
            f"consumer lag: {group} on {topic}: {lag}"
            for (group, topic), lag in sorted((await _consumer_lag(self.kafka.bootstrap)).items())
            if lag
        ] or ["consumer lag: none"]
        return lines

    # ---- reading the services' databases -----------------------------------------------

    async def _with(self, service: str, use: Callable[[asyncpg.Connection], Awaitable[Any]]) -> Any:
        connection = await asyncpg.connect(self.stack.services.databases[service].url)
        try:
            return await use(connection)
        finally:
            await connection.close()

    async def _fetch(self, service: str, query: str, *args: Any) -> list[asyncpg.Record]:
        return await self._with(service, lambda c: c.fetch(query, *args))  # type: ignore[no-any-return]

    async def _fetchval(self, service: str, query: str, *args: Any) -> Any:
        return await self._with(service, lambda c: c.fetchval(query, *args))


async def _sleep_until(moment: float) -> None:
    await asyncio.sleep(max(0.0, moment - time.monotonic()))


async def _message_counts(bootstrap: str, topics: list[str]) -> dict[str, int]:
    """How many messages each topic holds (end minus beginning offsets, all partitions)."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        partitions = await partitions_of(consumer, topics)
        ends = await consumer.end_offsets(partitions)
        beginnings = await consumer.beginning_offsets(partitions)
        counts = Counter[str]()
        for partition in partitions:
            counts[partition.topic] += ends[partition] - beginnings[partition]
        return dict(counts)
    finally:
        await consumer.stop()


async def _consumer_lag(bootstrap: str) -> dict[tuple[str, str], int]:
    """(group, topic) -> messages not yet committed by that consumer group."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await admin.start()
    await consumer.start()
    try:
        lag = Counter[tuple[str, str]]()
        for group, _ in await admin.list_consumer_groups():
            committed = await admin.list_consumer_group_offsets(group)
            ends = await consumer.end_offsets(list(committed))
            for partition, meta in committed.items():
                lag[group, partition.topic] += max(0, ends[partition] - meta.offset)
        return dict(lag)
    finally:
        await consumer.stop()
        await admin.close()


def _clock(moment: datetime | None) -> str:
    return "-" if moment is None else f"{moment:%H:%M:%S.%f}"
