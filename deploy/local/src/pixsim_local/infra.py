"""PostgreSQL + Kafka + topics together: what `make run`, the tests and the benchmarks need.

`PIXSIM_DATABASE_URL` (a superuser URL) and `PIXSIM_KAFKA_BOOTSTRAP` make it use an existing
server instead of starting one.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from pixsim_common.topics import DEFAULT_PARTITIONS, all_topic_names
from pixsim_local.kafka import KafkaBroker
from pixsim_local.postgres import PostgresCluster


@dataclass
class Infra:
    postgres: PostgresCluster
    kafka: KafkaBroker
    timings: dict[str, float] = field(default_factory=dict)

    @classmethod
    async def start(
        cls,
        run_dir: Path,
        *,
        postgres_port: int,
        kafka_port: int,
        kafka_controller_port: int,
        durable: bool = False,
        partitions: int = DEFAULT_PARTITIONS,
    ) -> Infra:
        timings: dict[str, float] = {}
        started = time.monotonic()
        existing_database = os.environ.get("PIXSIM_DATABASE_URL")
        if existing_database:
            postgres = PostgresCluster(existing_database)
            await postgres.wait_ready()
        else:
            postgres = await PostgresCluster.start(
                run_dir / "postgres", postgres_port, durable=durable
            )
        timings["postgres_start_s"] = time.monotonic() - started
        started = time.monotonic()
        try:
            existing_kafka = os.environ.get("PIXSIM_KAFKA_BOOTSTRAP")
            kafka = (
                KafkaBroker(existing_kafka)
                if existing_kafka
                else await KafkaBroker.start(run_dir / "kafka", kafka_port, kafka_controller_port)
            )
            timings["kafka_start_s"] = time.monotonic() - started
            started = time.monotonic()
            infra = cls(postgres, kafka, timings)
            await kafka.ensure_topics(all_topic_names(), partitions)
        except BaseException:
            postgres.stop()
            raise
        timings["topics_s"] = time.monotonic() - started
        return infra

    def stop(self) -> None:
        """Stop what we started, newest first; servers we were given are left running."""
        self.kafka.stop()
        self.postgres.stop()
