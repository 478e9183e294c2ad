"""Webhooks on the real stack, received by a server that verifies every delivery with the
`standardwebhooks` package, fails each event's first attempt on purpose, and counts events
by `webhook-id`: each event arrives exactly once, signed, with the job as its body; a
rotation signs with both secrets while it overlaps; redirects are never followed; URLs that
lead to private addresses, and owners without a secret, are refused at CreateJob."""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import grpc
import pytest
import pytest_asyncio
from google.protobuf import json_format
from standardwebhooks import Webhook as Verifier

from pixsim.job.v1 import job_service_pb2 as pb
from pixsim.types.v1 import types_pb2 as t
from pixsim_common.errors import status_details
from pixsim_local.whole_stack import WholeStack

pytestmark = pytest.mark.e2e


@dataclass
class Receiver:
    """An HTTP receiver on loopback: POST /hook verifies and fails each id's first attempt;
    POST /moved answers a redirect to a private address."""

    secrets: list[str] = field(default_factory=list)
    attempts: Counter[str] = field(default_factory=Counter)
    events: dict[str, pb.Job] = field(default_factory=dict)  # by webhook-id, once each
    signatures: dict[str, str] = field(default_factory=dict)
    unverified: list[str] = field(default_factory=list)
    url: str = ""

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        request_line = (await reader.readline()).decode()
        headers: dict[str, str] = {}
        while (line := (await reader.readline()).decode().strip()) != "":
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        body = await reader.readexactly(int(headers.get("content-length", "0")))
        path = request_line.split()[1]
        status, extra = "200 OK", ""
        if path == "/moved":
            status, extra = "307 Temporary Redirect", "location: http://10.0.0.1/hook\r\n"
        else:
            msg_id = headers.get("webhook-id", "")
            self.attempts[msg_id] += 1
            try:
                for secret in self.secrets:  # every signing secret verifies on its own
                    Verifier(secret).verify(body, headers)
            except Exception as error:
                self.unverified.append(f"{msg_id}: {error!r}")
            if self.attempts[msg_id] == 1:
                status = "500 Internal Server Error"  # on purpose: it must come again
            elif msg_id not in self.events:
                self.events[msg_id] = json_format.Parse(body, pb.Job())
                self.signatures[msg_id] = headers["webhook-signature"]
        writer.write(f"HTTP/1.1 {status}\r\n{extra}content-length: 0\r\n\r\n".encode())
        await writer.drain()
        writer.close()


@pytest_asyncio.fixture(loop_scope="session")
async def receiver() -> AsyncIterator[Receiver]:
    made = Receiver()
    server = await asyncio.start_server(made.handle, "127.0.0.1", 0)
    made.url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    try:
        yield made
    finally:
        server.close()


def job_with(prompt: str, webhook: pb.Webhook, provider: str = "pika") -> pb.CreateJobRequest:
    return pb.CreateJobRequest(
        job=pb.Job(
            provider_id=provider,
            operation_type=t.OPERATION_TYPE_TEXT_TO_VIDEO,
            prompt=prompt,
            webhook=webhook,
        )
    )


async def delivered(stack: WholeStack, receiver: Receiver, job: pb.Job, count: int) -> list[pb.Job]:
    """The first `count` events the receiver accepted for `job`; on a timeout, the job
    service's warnings say why."""
    for _ in range(300):
        mine = [e for e in receiver.events.values() if e.name == job.name]
        if len(mine) >= count:
            return mine
        await asyncio.sleep(0.05)
    warnings = "\n".join(
        line[:400]
        for line in (stack.services.logs / "job.log").read_text().splitlines()
        if '"level": "warning"' in line or '"level": "error"' in line
    )[-4000:]
    raise AssertionError(f"{job.name}: {len(mine)} of {count} events arrived; {warnings}")


async def test_each_event_arrives_once_signed_with_the_job_as_its_body(
    whole_stack: WholeStack, receiver: Receiver
) -> None:
    stack = whole_stack
    who = stack.auth(f"hooked-{uuid.uuid4().hex[:6]}")
    secret = await stack.jobs.RotateWebhookSecret(pb.RotateWebhookSecretRequest(), metadata=who)
    assert secret.secret.startswith("whsec_")
    receiver.secrets = [secret.secret]
    ends = pb.Webhook(url=f"{receiver.url}/hook")
    every = pb.Webhook(
        url=f"{receiver.url}/hook",
        events=[pb.Webhook.EVENT_PROGRESS, pb.Webhook.EVENT_STARTED, pb.Webhook.EVENT_COMPLETED],
    )
    # Held in line until its QUEUED event is out: on a free provider the start can overtake
    # the queued event (they travel on different topics), and the job then skips QUEUED.
    async with stack.starved("pika"):
        steps = await stack.jobs.CreateJob(job_with("hooked owl", every), metadata=who)
        (queued,) = await delivered(stack, receiver, steps, 1)
        assert queued.state == pb.Job.STATE_QUEUED
        await asyncio.sleep(0.5)  # and nothing else while it is held
        assert len([e for e in receiver.events.values() if e.name == steps.name]) == 1
    plain = await stack.jobs.CreateJob(job_with("hooked fox", ends), metadata=who)
    assert plain.webhook.url == ends.url

    (end,) = await delivered(stack, receiver, plain, 1)
    assert end.state == pb.Job.STATE_COMPLETED
    assert end.asset
    stages = await delivered(stack, receiver, steps, 3)
    assert sorted(e.state for e in stages) == [
        pb.Job.STATE_QUEUED,
        pb.Job.STATE_PROCESSING,
        pb.Job.STATE_COMPLETED,
    ]
    await asyncio.sleep(1)  # nothing more comes: each event once, however often it was tried
    mine = [e for e in receiver.events.values() if e.name in (plain.name, steps.name)]
    assert len(mine) == 4
    assert receiver.unverified == []

    deliveries = (
        await stack.jobs.ListWebhookDeliveries(
            pb.ListWebhookDeliveriesRequest(job=plain.name), metadata=who
        )
    ).deliveries
    assert [(d.event, d.state) for d in deliveries] == [
        (pb.Webhook.EVENT_COMPLETED, pb.WebhookDelivery.STATE_DELIVERED)
    ]
    assert [a.status_code for a in deliveries[0].attempts] == [500, 200]
    assert receiver.attempts[deliveries[0].id] == 2

    # Rotated: both secrets sign while they overlap, and each verifies on its own.
    rotated = await stack.jobs.RotateWebhookSecret(pb.RotateWebhookSecretRequest(), metadata=who)
    assert rotated.previous_expire_time.seconds > 0
    receiver.secrets = [secret.secret, rotated.secret]
    after = await stack.jobs.CreateJob(job_with("hooked again", ends), metadata=who)
    await delivered(stack, receiver, after, 1)
    assert receiver.unverified == []
    last = next(i for i, e in receiver.events.items() if e.name == after.name)
    assert len(receiver.signatures[last].split()) == 2


async def test_redirects_are_not_followed_and_private_urls_are_refused(
    whole_stack: WholeStack, receiver: Receiver
) -> None:
    stack = whole_stack
    who = stack.auth(f"hooked-{uuid.uuid4().hex[:6]}")
    with pytest.raises(grpc.aio.AioRpcError) as no_secret:
        await stack.jobs.CreateJob(
            job_with("unsigned", pb.Webhook(url=f"{receiver.url}/hook")), metadata=who
        )
    assert no_secret.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    await stack.jobs.RotateWebhookSecret(pb.RotateWebhookSecretRequest(), metadata=who)
    # Checked on the address alone: nothing connects to these.
    for url in ("http://10.0.0.1/hook", "http://169.254.169.254/latest", "http://[fd00::1]/x"):
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await stack.jobs.CreateJob(job_with("private", pb.Webhook(url=url)), metadata=who)
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT, url
        violations = status_details(refused.value)["BadRequest"].field_violations
        assert [v.field for v in violations] == ["job.webhook.url"]

    moved = await stack.jobs.CreateJob(
        job_with("moved", pb.Webhook(url=f"{receiver.url}/moved")), metadata=who
    )
    await stack.until_done(moved, metadata=who)
    for _ in range(100):
        deliveries = (
            await stack.jobs.ListWebhookDeliveries(
                pb.ListWebhookDeliveriesRequest(job=moved.name), metadata=who
            )
        ).deliveries
        if deliveries and len(deliveries[0].attempts) >= 2:
            break
        await asyncio.sleep(0.1)
    (delivery,) = deliveries
    assert delivery.state == pb.WebhookDelivery.STATE_PENDING  # retried, never followed
    assert {a.status_code for a in delivery.attempts} == {307}
    assert all("307" in a.error for a in delivery.attempts)
    # Another user cannot read them.
    with pytest.raises(grpc.aio.AioRpcError) as hidden:
        await stack.jobs.ListWebhookDeliveries(
            pb.ListWebhookDeliveriesRequest(job=moved.name), metadata=stack.auth("bob")
        )
    assert hidden.value.code() == grpc.StatusCode.NOT_FOUND
