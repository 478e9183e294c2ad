"""The chaos run's diagnosis reads each consumer group's lag from the broker."""

from __future__ import annotations

import uuid

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.structs import OffsetAndMetadata

from pixsim.events.v1 import events_pb2
from pixsim_local.chaos import _consumer_lag
from pixsim_local.infra import Infra
from pixsim_local.kafka import produce_raw
from pixsim_local.pytest_plugin import TopicFactory

pytestmark = pytest.mark.integration


async def test_lag_is_what_a_group_has_not_committed(infra: Infra, new_topic: TopicFactory) -> None:
    topic = await new_topic(events_pb2.JobCancelled, partitions=1)
    await produce_raw(infra.kafka.bootstrap, topic.name, [(b"k", b"v", [])] * 5)
    group = f"lag-{uuid.uuid4().hex[:8]}"
    consumer = AIOKafkaConsumer(
        bootstrap_servers=infra.kafka.bootstrap, group_id=group, enable_auto_commit=False
    )
    partition = TopicPartition(topic.name, 0)
    await consumer.start()
    try:
        consumer.assign([partition])
        await consumer.commit({partition: OffsetAndMetadata(2, "")})
    finally:
        await consumer.stop()

    assert (await _consumer_lag(infra.kafka.bootstrap))[group, topic.name] == 3
