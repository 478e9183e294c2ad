"""Poison on every consumed topic, against the running services: garbage bytes, the wrong
message type, missing CloudEvents headers and an oversized message each land in the topic's
`.dlq` with the reason in its headers, and the consumer goes on to the next message."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable

import pytest
from aiokafka import AIOKafkaConsumer
from aiokafka.admin import AIOKafkaAdminClient
from google.protobuf.message import Message

from pixsim.events.v1 import events_pb2
from pixsim.types.v1 import types_pb2 as t
from pixsim_common import topics
from pixsim_common.cloudevents import encode_headers, event_headers
from pixsim_common.timestamps import now_timestamp
from pixsim_local.kafka import partitions_of, produce_raw, publish_events
from pixsim_local.whole_stack import WholeStack

pytestmark = pytest.mark.e2e

# Each consumed topic, the consumer group that reads it, and a valid event to send after the
# poison (it names nothing that exists, which each consumer handles in its own way).
CONSUMED: dict[topics.Topic, tuple[tuple[str, ...], Callable[[str], Message]]] = {
    topics.JOB_SUBMITTED: (
        ("provider-gateway",),
        lambda i: events_pb2.JobSubmitted(
            job_id=i,
            user_id="nobody",
            operation_type=t.OPERATION_TYPE_TEXT_TO_VIDEO,
            provider_id="no-such-provider",
        ),
    ),
    topics.JOB_CANCELLED: (
        ("provider-gateway",),
        lambda i: events_pb2.JobCancelled(job_id=i, user_id="nobody"),
    ),
    topics.GENERATION_STARTED: (
        ("job",),
        lambda i: events_pb2.GenerationStarted(
            job_id=i, user_id="nobody", submission_id=str(uuid.uuid4()), provider_id="pika"
        ),
    ),
    topics.GENERATION_FAILED: (
        ("job",),
        lambda i: events_pb2.GenerationFailed(
            job_id=i,
            user_id="nobody",
            provider_id="pika",
            error_code=t.GENERATION_ERROR_CODE_TRANSIENT,
        ),
    ),
    topics.GENERATION_SETTLED: (
        ("job",),
        lambda i: events_pb2.GenerationSettled(
            job_id=i,
            user_id="nobody",
            submission_id=str(uuid.uuid4()),
            provider_id="pika",
            operation_type=t.OPERATION_TYPE_TEXT_TO_VIDEO,
            cost=t.Cost(credits=1),
            billing=t.BILLING_ESTIMATED,
            settle_time=now_timestamp(),
        ),
    ),
    # The asset service stores the result; the job service takes the provider's end time.
    topics.GENERATION_COMPLETED: (
        ("asset", "job"),
        lambda i: events_pb2.GenerationCompleted(
            job_id=i,
            user_id="nobody",
            submission_id=str(uuid.uuid4()),
            provider_id="pika",
            operation_type=t.OPERATION_TYPE_TEXT_TO_VIDEO,
            provider_asset_id="x",
            media=events_pb2.GeneratedMedia(
                uri="http://169.254.169.254/refused.mp4", media_type=t.MEDIA_TYPE_VIDEO
            ),
        ),
    ),
    topics.ASSET_CREATED: (
        ("job",),
        lambda i: events_pb2.AssetCreated(asset_id=i, user_id="nobody", job_id=i),
    ),
    topics.ASSET_DELETED: (
        ("scene",),
        lambda i: events_pb2.AssetDeleted(asset_id=i, user_id="nobody"),
    ),
}


def poison(topic: topics.Topic) -> dict[str, tuple[bytes, list[tuple[str, bytes]]]]:
    """Reason -> (value, headers) of each kind of bad message for `topic`."""
    good_headers = encode_headers(event_headers(event_type=topic.event_type, source="/test"))
    other = next(o for o in topics.ALL_TOPICS if o.event_type != topic.event_type)
    sample = CONSUMED[topic][1](str(uuid.uuid4())).SerializeToString()
    return {
        "UNDECODABLE": (b"\xff\xfe not protobuf \x00\x01" * 4, good_headers),
        "WRONG_EVENT_TYPE": (
            sample,
            encode_headers(event_headers(event_type=other.event_type, source="/test")),
        ),
        "MISSING_HEADERS": (sample, []),
        "TOO_LARGE": (b"\x0a" + b"x" * 600_000, good_headers),
    }


async def settled(bootstrap: str, group: str, topic: str, timeout: float = 60) -> None:
    """Wait until `group` has committed every partition of `topic` up to its end."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap)
    await admin.start()
    await consumer.start()
    try:
        partitions = await partitions_of(consumer, [topic])
        ends = await consumer.end_offsets(partitions)
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            answer = await admin.list_consumer_group_offsets(group, partitions=partitions)
            # A partition the group never committed on reads as -1.
            committed = {tp: max(answer[tp].offset, 0) if tp in answer else 0 for tp in partitions}
            behind = {tp: ends[tp] - committed[tp] for tp in partitions if ends[tp] > committed[tp]}
            if not behind:
                return
            if asyncio.get_running_loop().time() > deadline:
                raise AssertionError(f"{group} stopped on {topic}: behind by {behind}")
            await asyncio.sleep(0.2)
    finally:
        await consumer.stop()
        await admin.close()


@pytest.mark.parametrize("topic", list(CONSUMED), ids=[t.name for t in CONSUMED])
async def test_poison_goes_to_the_dead_letter_topic_and_the_consumer_goes_on(
    whole_stack: WholeStack, topic: topics.Topic
) -> None:
    groups, sentinel = CONSUMED[topic]
    bootstrap = whole_stack.services.infra.kafka.bootstrap
    keys = {}
    for reason, (value, headers) in poison(topic).items():
        keys[reason] = str(uuid.uuid4())
        await produce_raw(bootstrap, topic.name, [(keys[reason].encode(), value, headers)])
    after = str(uuid.uuid4())
    await publish_events(bootstrap, topic, [(after, sentinel(after))])
    for reason, key in keys.items():
        # Each consuming group sets it aside once.
        letters = await whole_stack.tap.wait_for(topic.dlq, key, count=len(groups))
        by_group = {dict(d.headers)["pixsim_consumer_group"].decode(): d for d in letters}
        assert sorted(by_group) == sorted(groups), reason
        for group, dead in by_group.items():
            why = {name: value.decode() for name, value in dead.headers}
            assert why["pixsim_error_reason"] == reason, group
            assert why["pixsim_original_topic"] == topic.name
            assert why["pixsim_error"]
            if reason == "TOO_LARGE":
                assert why["pixsim_truncated"] == "true"
                assert len(dead.value) <= 1024
    for group in groups:
        try:
            await settled(bootstrap, group, topic.name)
        except AssertionError as stuck:
            log = whole_stack.services.processes[group].log_tail(40)
            raise AssertionError(f"{stuck}\n{group} log:\n{log}") from None
