"""Completion callbacks on the real stack: the simulator sends fal's webhooks signed as fal
signs them, to the gateway's listener, which verifies each against the keys the simulator
serves. A task then ends by its callback, before its first poll is due (five seconds after
acceptance here); a duplicate or late one changes nothing more; a lost one is covered by
the poll; forged ones are refused and change nothing."""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
import uuid
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from pixsim.job.v1 import job_service_pb2 as pb
from pixsim_common import topics
from pixsim_local.whole_stack import WholeStack

pytestmark = pytest.mark.e2e


def callback_url(stack: WholeStack, provider: str = "pika") -> str:
    return f"http://127.0.0.1:{stack.services.callback_port}/callbacks/{provider}"


async def task_of(stack: WholeStack, prompt: str) -> dict[str, Any]:
    for _ in range(200):
        tasks = await stack.sim_tasks(prompt)
        if tasks:
            (task,) = tasks
            return task
        await asyncio.sleep(0.05)
    raise AssertionError(f"no task for {prompt!r} reached the simulator")


@pytest.mark.parametrize(
    ("knob", "state", "code"),
    [
        ("", pb.Job.STATE_COMPLETED, ""),
        ("[sim:moderation]", pb.Job.STATE_FAILED, "CONTENT_REJECTED"),
    ],
)
async def test_a_fal_task_ends_by_its_webhook_without_a_poll(
    whole_stack: WholeStack, knob: str, state: int, code: str
) -> None:
    prompt = f"called back {uuid.uuid4()} {knob}"
    job = await whole_stack.until_done(await whole_stack.create("pika", prompt=prompt))
    assert (job.state, job.error_code) == (state, code), job
    assert (await task_of(whole_stack, prompt))["polls"] == 0


async def test_duplicated_and_late_webhooks_settle_the_job_once(whole_stack: WholeStack) -> None:
    stack = whole_stack
    await stack.sim_key("pika", webhook_copies=2, webhook_delay_ms=800)
    try:
        prompt = f"called back twice {uuid.uuid4()}"
        job = await stack.until_done(await stack.create("pika", prompt=prompt))
    finally:
        await stack.sim_key("pika", webhook_copies=1, webhook_delay_ms=0)
    assert job.state == pb.Job.STATE_COMPLETED, job
    await asyncio.sleep(1.0)  # the second copy has come by now
    job_id = job.name.removeprefix("jobs/")
    assert len(stack.tap.of(topics.GENERATION_COMPLETED.name, job_id)) == 1
    assert (await task_of(stack, prompt))["polls"] == 0


async def test_a_webhook_that_never_comes_is_covered_by_the_poll(whole_stack: WholeStack) -> None:
    stack = whole_stack
    await stack.sim_key("pika", webhook_copies=0)
    try:
        prompt = f"never called back {uuid.uuid4()}"
        job = await stack.until_done(await stack.create("pika", prompt=prompt), timeout=60)
    finally:
        await stack.sim_key("pika", webhook_copies=1)
    assert job.state == pb.Job.STATE_COMPLETED, job
    assert (await task_of(stack, prompt))["polls"] >= 1


def forged(request_id: str, body: bytes, *, age: float = 0.0) -> dict[str, str]:
    """fal's headers, signed by a key that is not fal's (the simulator's)."""
    timestamp = str(int(time.time() - age))
    message = f"{request_id}\nuser\n{timestamp}\n{hashlib.sha256(body).hexdigest()}"
    return {
        "content-type": "application/json",
        "x-fal-webhook-request-id": request_id,
        "x-fal-webhook-user-id": "user",
        "x-fal-webhook-timestamp": timestamp,
        "x-fal-webhook-signature": Ed25519PrivateKey.generate().sign(message.encode()).hex(),
    }


async def test_forged_webhooks_are_refused_and_the_job_gets_its_real_result(
    whole_stack: WholeStack,
) -> None:
    stack = whole_stack
    prompt = f"forged at {uuid.uuid4()} [sim:finish_ms=2500]"
    job = await stack.create("pika", prompt=prompt)
    request_id = (await task_of(stack, prompt))["id"]
    evil = {
        "request_id": request_id,
        "status": "OK",
        "payload": {"video": {"url": "https://evil.example/not-yours.mp4"}},
    }
    body = json.dumps(evil).encode()
    url = callback_url(stack)
    async with httpx.AsyncClient(timeout=10) as client:
        answers = [
            await client.post(url, content=body, headers={"content-type": "application/json"}),
            await client.post(url, content=body, headers=forged(request_id, body)),
            await client.post(url, content=body, headers=forged(request_id, body, age=3600)),
            await client.post(url, content=b"{" * (2 * 1024 * 1024)),
            await client.post(callback_url(stack, "runway"), content=body),
            await client.get(url),
        ]
    assert [a.status_code for a in answers] == [401, 401, 401, 413, 404, 405]
    done = await stack.until_done(job)
    assert done.state == pb.Job.STATE_COMPLETED, done
    (completed,) = stack.tap.of(topics.GENERATION_COMPLETED.name, job.name.removeprefix("jobs/"))
    assert b"evil.example" not in completed.value
