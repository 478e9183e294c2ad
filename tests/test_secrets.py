"""A provider credential never leaves the gateway except toward its provider: after the
session's full runs (every end-to-end, access and poison test shares this stack), no log
line, span, RPC response or event of any service contains one."""

from __future__ import annotations

import secrets

import pytest
from aiokafka import AIOKafkaConsumer
from google.protobuf import json_format

from pixsim.job.v1 import job_service_pb2 as job_pb
from pixsim.provider.v1 import provider_gateway_service_pb2 as gw_pb
from pixsim_common import topics
from pixsim_local.kafka import partitions_of
from pixsim_local.stack import SEED_ACCOUNTS
from pixsim_local.whole_stack import WholeStack

pytestmark = pytest.mark.e2e


async def every_event(bootstrap: str) -> list[bytes]:
    """Key, value and headers of every record on every topic and dead-letter topic."""
    names = [name for topic in topics.ALL_TOPICS for name in (topic.name, topic.dlq)]
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        partitions = await partitions_of(consumer, names)
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        ends = await consumer.end_offsets(partitions)
        seen: list[bytes] = []

        async def unread() -> bool:
            return any([await consumer.position(tp) < ends[tp] for tp in partitions])

        while await unread():
            for records in (await consumer.getmany(timeout_ms=1000)).values():
                for record in records:
                    seen.append(
                        (record.key or b"")
                        + (record.value or b"")
                        + b"".join(k.encode() + v for k, v in record.headers)
                    )
        return seen
    finally:
        await consumer.stop()


async def test_no_credential_appears_in_logs_traces_responses_or_events(
    whole_stack: WholeStack,
) -> None:
    stack = whole_stack
    admin = stack.auth("root", admin=True)
    # One more account, with a credential no other text could contain, made to do work.
    marked = f"sk-pixsim-{secrets.token_hex(12)}"
    account = await stack.gateway.CreateAccount(
        gw_pb.CreateAccountRequest(
            account=gw_pb.Account(
                provider_id="pika",
                label="marked",
                credentials={"api_key": marked},
                credits=1000,
                max_concurrency=2,
                priority=100,
            )
        ),
        metadata=admin,
    )
    done = await stack.until_done(await stack.create("pika", prompt="a marked fox"))
    assert done.state == job_pb.Job.STATE_COMPLETED  # on the marked account: highest priority
    used = await stack.gateway.ListSubmissions(
        gw_pb.ListSubmissionsRequest(job=done.name), metadata=admin
    )
    assert [s.account for s in used.submissions] == [account.name]

    credentials = [marked.encode()] + [f"local-{p}-key".encode() for p in SEED_ACCOUNTS]
    responses = [
        json_format.MessageToJson(
            await stack.gateway.ListAccounts(gw_pb.ListAccountsRequest(), metadata=admin)
        ),
        json_format.MessageToJson(account),
        json_format.MessageToJson(used),
        json_format.MessageToJson(
            await stack.gateway.GetAccount(
                gw_pb.GetAccountRequest(name=account.name), metadata=admin
            )
        ),
    ]
    logs = {
        name: (stack.services.logs / f"{name}.log").read_bytes()
        for name in ("job", "asset", "provider-gateway", "scene")
    }
    assert b'"trace_id": "0x' in logs["provider-gateway"]  # spans are in the logs too
    assert logs["provider-gateway"].count(b"\n") > 1000  # a full run's worth
    events = await every_event(stack.services.infra.kafka.bootstrap)
    assert len(events) > 100

    leaks = [
        f"{where}: {credential.decode()}"
        for credential in credentials
        for where, text in [
            *((f"{name}.log", body) for name, body in logs.items()),
            *((f"response {i}", r.encode()) for i, r in enumerate(responses)),
            *((f"event {i}", e) for i, e in enumerate(events)),
        ]
        if credential in text
    ]
    assert leaks == []
    # Out of rotation again: the tests after this one count on the seeded accounts alone.
    await stack.gateway.DisableAccount(
        gw_pb.DisableAccountRequest(name=account.name), metadata=admin
    )
