"""How fast a consumer drains a backlog: the records a service finds waiting after it was
down, or behind a burst.

The same backlog (BENCH_BACKLOG_RECORDS records on 6 partitions, keyed by 1,000 jobs) is
consumed twice over in one run, alternately: by the kit's consumer taking every record in a
transaction of its own (`max_run_records=1`, the baseline), and by the consumer as it runs,
a partition's consecutive records sharing one. The handler does what the job service does
with an event: it locks its job's row, updates it and raises an event for the outbox. Figures
are records a second and CPU ms per 1,000 records (this process and the PostgreSQL cluster).
"""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from typing import Any

from aiokafka import AIOKafkaProducer
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from bench.common import cpu_of_tree, verdict, write_result
from pixsim.events.v1 import events_pb2
from pixsim_common import topics
from pixsim_common.cloudevents import EventMeta, encode_headers, event_headers
from pixsim_common.consumer import MAX_RUN_RECORDS, EventConsumer, Subscription
from pixsim_common.db import create_engine, create_sessionmaker
from pixsim_common.logging import configure_logging
from pixsim_common.migrations import create_messaging_schema
from pixsim_common.outbox import Outgoing, collect
from pixsim_common.topics import Topic
from pixsim_local.infra import Infra, infra_of_its_own

RECORDS = int(os.environ.get("BENCH_BACKLOG_RECORDS", "6000"))
PARTITIONS = 6
JOBS = 1000
ROUNDS = 2


async def handle(session: AsyncSession, event: events_pb2.JobCancelled, meta: EventMeta) -> None:
    await session.execute(
        text("SELECT n FROM tallies WHERE job_id = :job FOR UPDATE"), {"job": event.job_id}
    )
    await session.execute(
        text("UPDATE tallies SET n = n + 1 WHERE job_id = :job"), {"job": event.job_id}
    )
    collect(session, [Outgoing(topics.JOB_CANCELLED, event.job_id, event, "/bench")])


async def produce(bootstrap: str, topic: Topic, jobs: list[str]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5)
    await producer.start()
    try:
        sent = []
        for index in range(RECORDS):
            job = jobs[index % JOBS]
            headers = encode_headers(event_headers(event_type=topic.event_type, source="/bench"))
            event = events_pb2.JobCancelled(job_id=job, user_id="bench")
            sent.append(
                await producer.send(
                    topic.name, value=event.SerializeToString(), key=job.encode(), headers=headers
                )
            )
        await asyncio.gather(*sent)
    finally:
        await producer.stop()


async def drain(infra: Infra, sessions: Any, engine: Any, run_records: int) -> dict[str, float]:
    """A fresh backlog on a fresh topic, consumed to its end with `run_records`."""
    topic = Topic(f"bench.backlog.{uuid.uuid4().hex[:8]}.v1", events_pb2.JobCancelled)
    await infra.kafka.ensure_topics([topic.name, topic.dlq], PARTITIONS)
    jobs = [str(uuid.uuid4()) for _ in range(JOBS)]
    async with engine.begin() as connection:
        await connection.execute(text("TRUNCATE tallies, inbox, outbox"))
        await connection.execute(
            text("INSERT INTO tallies (job_id, n) SELECT unnest(CAST(:jobs AS text[])), 0"),
            {"jobs": jobs},
        )
    await produce(infra.kafka.bootstrap, topic, jobs)
    consumer = EventConsumer(
        name="bench-backlog",
        group_id=f"bench-{uuid.uuid4().hex[:8]}",
        kafka_bootstrap=infra.kafka.bootstrap,
        sessions=sessions,
        subscriptions=[Subscription(topic, handle)],
        max_run_records=run_records,
    )
    assert infra.postgres.process is not None
    postgres_before, own_before = cpu_of_tree(infra.postgres.process.pid), time.process_time()
    started = time.perf_counter()
    await consumer.start()
    try:
        while True:
            async with engine.connect() as connection:
                done = await connection.scalar(text("SELECT sum(n) FROM tallies"))
            if done == RECORDS:
                break
            await asyncio.sleep(0.05)
    finally:
        wall = time.perf_counter() - started
        await consumer.stop()
    cpu = time.process_time() - own_before + cpu_of_tree(infra.postgres.process.pid)
    cpu -= postgres_before
    return {"records_per_second": RECORDS / wall, "cpu_ms_per_1000": cpu * 1e6 / RECORDS}


async def main() -> None:
    configure_logging("bench-backlog", level="WARNING")
    async with infra_of_its_own("pixsim-bench-backlog-") as infra:
        database = await infra.postgres.create_service_database("bench_backlog")
        engine = create_engine(database.url, pool_size=PARTITIONS + 2)
        async with engine.begin() as connection:
            await connection.run_sync(create_messaging_schema)
            await connection.execute(
                text("CREATE TABLE tallies (job_id text PRIMARY KEY, n integer NOT NULL)")
            )
        sessions = create_sessionmaker(engine)
        rows: dict[str, list[dict[str, float]]] = {"alone": [], "together": []}
        for _ in range(ROUNDS):
            rows["alone"].append(await drain(infra, sessions, engine, 1))
            rows["together"].append(await drain(infra, sessions, engine, MAX_RUN_RECORDS))
        await engine.dispose()

    print(
        f"\nBacklog drain: {RECORDS} records waiting on {PARTITIONS} partitions, a handler that"
        " locks and updates its job's row and raises an event"
    )
    print(f"{'':31}records/s   CPU ms per 1,000 records (consumer + PostgreSQL)")
    best = {name: max(runs, key=lambda r: r["records_per_second"]) for name, runs in rows.items()}
    for name, label in (("alone", "a transaction a record"), ("together", "a partition's run")):
        for run in rows[name]:
            print(f"  {label:28} {run['records_per_second']:9.0f}   {run['cpu_ms_per_1000']:9.0f}")
    ratio = best["together"]["records_per_second"] / best["alone"]["records_per_second"]
    cpu_ratio = best["together"]["cpu_ms_per_1000"] / best["alone"]["cpu_ms_per_1000"]
    write_result("backlog", {"records": RECORDS, "runs": rows, "ratio": ratio})
    print(
        f"backlog: a partition's run drains {ratio:.2f}x as fast as a transaction a record,"
        f" at {cpu_ratio:.2f}x the CPU (no target; it must not be slower):"
        f" {verdict(ratio >= 1.0)}"
    )
