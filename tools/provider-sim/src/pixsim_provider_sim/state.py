"""What the simulator remembers: per-key knobs, credits and concurrency records, and tasks.

A task's progress is a function of time: it is queued until `start_at`, running until
`finish_at`, then terminal with its scripted outcome. A task is in flight from its creation
until it finishes or is cancelled; the highest number of a key's tasks in flight at once is
recorded at every creation (the only moment the number can grow).
"""

from __future__ import annotations

import hashlib
import random
import re
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from pixsim_provider_sim.inputs import Received, Uploads


class Fault(StrEnum):
    """What a key or a request can be scripted to do instead of succeeding."""

    RATE_LIMIT = "rate_limit"  # 429 with Retry-After at submit
    SERVER_ERROR = "server_error"  # 5xx at submit
    HANG = "hang"  # submit never answers
    MODERATION = "moderation"  # the task fails moderation
    INVALID = "invalid"  # the provider refuses the parameters
    NO_CREDIT = "no_credit"  # out-of-credit answer at submit
    BAD_KEY = "bad_key"  # credentials refused
    FAIL = "fail"  # the task fails for an internal reason (retryable)


class Outcome(StrEnum):
    SUCCEED = "succeed"
    MODERATION = "moderation"
    FAIL = "fail"


@dataclass
class KeyConfig:
    """Knobs of one API key, set over the control API (`PUT /_sim/keys/{key}`)."""

    latency_ms: int = 0
    finish_ms: int = 1000
    fault: Fault | None = None
    # How many of the next submits the fault applies to (None: all of them).
    fault_count: int | None = None
    retry_after_s: float = 1.0
    credits: int = 1_000_000
    # How long this key's output URLs work (None: the simulator's `--url-ttl`).
    url_ttl_s: float | None = None
    # Revoked by the provider: every call with it is refused (401), balance checks too.
    revoked: bool = False
    # The provider is down for this key: every call answers a 5xx, status checks too.
    outage: bool = False
    # fal's webhooks for this key's requests: sent this long after the request ends, and
    # this many times (0: never, 2: a duplicate).
    webhook_delay_ms: int = 0
    webhook_copies: int = 1


@dataclass
class KeyStats:
    calls: int = 0
    submits: int = 0
    in_flight_max: int = 0
    # Submits (POSTs) refused whatever they asked: the key revoked, or the provider down.
    refused_submits: int = 0


@dataclass
class Task:
    id: str
    provider: str
    key: str
    kind: str  # "video" or "image"
    width: int
    height: int
    seconds: float
    seed: int
    cost: int
    created_at: float
    start_at: float
    finish_at: float
    outcome: Outcome
    request: dict[str, Any]
    cancelled_at: float | None = None
    # What the provider received of the task's inputs, in the order of the request.
    inputs: list[Received] = field(default_factory=list)
    # When the task's output URL stops working (Runway's expire in 24-48 hours).
    url_expires_at: float = float("inf")
    # Status and result reads of it: what a client spent on polling it.
    polls: int = 0

    def ended_at(self) -> float:
        return self.cancelled_at if self.cancelled_at is not None else self.finish_at

    def phase(self, now: float) -> str:
        """queued | running | succeeded | moderated | failed | cancelled"""
        if self.cancelled_at is not None and self.cancelled_at <= now:
            return "cancelled"
        if now < self.start_at:
            return "queued"
        if now < self.finish_at:
            return "running"
        return {"succeed": "succeeded", "moderation": "moderated", "fail": "failed"}[self.outcome]

    def progress(self, now: float) -> float:
        span = max(self.finish_at - self.start_at, 1e-6)
        return min(max((now - self.start_at) / span, 0.0), 1.0)

    @property
    def media_name(self) -> str:
        return f"{self.id}.{'mp4' if self.kind == 'video' else 'png'}"


PROMPT_KNOB = re.compile(r"\[sim:([a-z_]+)(?:=(\d+))?\]")


def request_knobs(prompt: str) -> dict[str, int | None]:
    """Per-request knobs written into the prompt, e.g. `a cat [sim:moderation]`,
    `[sim:finish_ms=3000]` or `[sim:seed=7]` (the same media for every request with it), so a
    test scripts one request without touching the adapter. A fault with a count,
    `[sim:server_error=1]`, meets only the first that many submits of that prompt."""
    return {name: int(value) if value else None for name, value in PROMPT_KNOB.findall(prompt)}


@dataclass
class SimState:
    seed: int = 0
    keys: dict[str, KeyConfig] = field(default_factory=dict)
    stats: dict[str, KeyStats] = field(default_factory=dict)
    tasks: dict[str, Task] = field(default_factory=dict)
    # Submit requests received per prompt, refused ones included: the provider's own record
    # of how often a request was sent, which tests compare with the gateway's attempts.
    prompt_submits: Counter[str] = field(default_factory=Counter)
    clock: Any = time.monotonic
    # Output URLs work this long after the task finishes, unless its key says otherwise.
    url_ttl_s: float = 86400.0
    uploads: Uploads = field(default_factory=Uploads)

    def __post_init__(self) -> None:
        self._rng = random.Random(self.seed)

    def reset(self, seed: int | None = None) -> None:
        if seed is not None:
            self.seed = seed
        self.keys.clear()
        self.stats.clear()
        self.tasks.clear()
        self.prompt_submits.clear()
        self.uploads.clear()
        self._rng = random.Random(self.seed)

    def config(self, key: str) -> KeyConfig:
        return self.keys.setdefault(key, KeyConfig())

    def stats_of(self, key: str) -> KeyStats:
        return self.stats.setdefault(key, KeyStats())

    def new_id(self) -> str:
        return str(uuid.UUID(int=self._rng.getrandbits(128), version=4))

    def new_int_id(self) -> int:
        return self._rng.randrange(100_000, 2_147_483_647)

    def fault_for(self, key: str, prompt: str) -> Fault | None:
        """The fault this submit meets: a prompt knob wins over the key's setting. Counts
        the submit, so call it once per submit request."""
        self.prompt_submits[prompt] += 1
        for name, count in request_knobs(prompt).items():
            if name in Fault.__members__.values():
                if count is not None and self.prompt_submits[prompt] > count:
                    return None
                return Fault(name)
        config = self.config(key)
        if config.fault is None:
            return None
        if config.fault_count is not None:
            if config.fault_count <= 0:
                return None
            config.fault_count -= 1
        return config.fault

    def in_flight(self, key: str, now: float) -> int:
        return sum(
            1 for t in self.tasks.values() if t.key == key and t.created_at <= now < t.ended_at()
        )

    def create_task(
        self,
        *,
        provider: str,
        key: str,
        kind: str,
        width: int,
        height: int,
        seconds: float,
        cost: int,
        prompt: str,
        request: dict[str, Any],
        fault: Fault | None,
        task_id: str | None = None,
        inputs: list[Received] | None = None,
    ) -> Task:
        now = self.clock()
        config = self.config(key)
        knobs = request_knobs(prompt)
        finish_ms = knobs.get("finish_ms") or config.finish_ms
        outcome = {Fault.MODERATION: Outcome.MODERATION, Fault.FAIL: Outcome.FAIL}.get(
            fault or Fault.HANG, Outcome.SUCCEED
        )
        identifier = task_id or self.new_id()
        task = Task(
            id=identifier,
            provider=provider,
            key=key,
            kind=kind,
            width=width,
            height=height,
            seconds=seconds,
            # `[sim:seed=N]` makes equal requests render equal bytes (a duplicate result).
            seed=int.from_bytes(
                hashlib.sha256(
                    f"{self.seed}:{knobs['seed'] if knobs.get('seed') else identifier}".encode()
                ).digest()[:8]
            ),
            cost=cost,
            created_at=now,
            start_at=now + finish_ms / 1000 * 0.2,
            finish_at=now + finish_ms / 1000,
            outcome=outcome,
            request=request,
            inputs=list(inputs or []),
        )
        ttl = config.url_ttl_s if config.url_ttl_s is not None else self.url_ttl_s
        task.url_expires_at = task.finish_at + ttl
        self.tasks[identifier] = task
        config.credits -= cost
        stats = self.stats_of(key)
        stats.submits += 1
        stats.in_flight_max = max(stats.in_flight_max, self.in_flight(key, now))
        return task

    def cancel(self, task: Task) -> bool:
        now = self.clock()
        if task.phase(now) in ("queued", "running"):
            task.cancelled_at = now
            return True
        return False

    def snapshot(self) -> dict[str, Any]:
        now = self.clock()
        return {
            "seed": self.seed,
            "keys": {
                key: {
                    "calls": stats.calls,
                    "submits": stats.submits,
                    "in_flight": self.in_flight(key, now),
                    "in_flight_max": stats.in_flight_max,
                    "refused_submits": stats.refused_submits,
                    "credits": self.config(key).credits,
                }
                for key, stats in self.stats.items()
            },
            "tasks": len(self.tasks),
        }
