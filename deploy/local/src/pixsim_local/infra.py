"""PostgreSQL + Kafka + topics together: what `make run`, the tests and the benchmarks need.

`PIXSIM_DATABASE_URL` (a superuser URL) and `PIXSIM_KAFKA_BOOTSTRAP` make it use an existing
server instead of starting one.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

from pixsim_common.topics import DEFAULT_PARTITIONS, all_topic_names
from pixsim_local.kafka import KafkaBroker
from pixsim_local.postgres import PostgresCluster
from pixsim_local.processes import free_port


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


@asynccontextmanager
async def infra_of_its_own(prefix: str) -> AsyncIterator[Infra]:
    """PostgreSQL and Kafka on free ports in a throwaway directory, removed afterwards. Not
    pytest's tmp_path: its ancestors are private to root, and PostgreSQL runs as
    `postgres` (the cluster opens its own run directory to that user)."""
    run_dir = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        infra = await Infra.start(
            run_dir,
            postgres_port=free_port(),
            kafka_port=free_port(),
            kafka_controller_port=free_port(),
        )
        try:
            yield infra
        finally:
            infra.stop()
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)
