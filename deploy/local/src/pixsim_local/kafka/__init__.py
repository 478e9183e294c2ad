"""A single-node Apache Kafka (KRaft) broker run from its Maven Central jars.

The recipe and the reasons for each setting are in shared/LOCAL-KAFKA.md and docs/decisions.md.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import os
import subprocess
import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError, TopicAlreadyExistsError, for_code
from google.protobuf.message import Message

from pixsim_common.background import Background
from pixsim_common.cloudevents import encode_headers, event_headers
from pixsim_common.topics import TOPIC_CONFIG, Topic
from pixsim_local.processes import ManagedProcess

POM = Path(__file__).with_name("pom.xml")
HEAP = "512m"

LOG4J2_XML = """<?xml version="1.0" encoding="UTF-8"?>
<Configuration status="WARN">
  <Appenders>
    <Console name="STDOUT" target="SYSTEM_OUT">
      <PatternLayout pattern="[%d] %p %m (%c)%n"/>
    </Console>
  </Appenders>
  <Loggers>
    <Logger name="kafka.request.logger" level="WARN"/>
    <Logger name="state.change.logger" level="WARN"/>
    <Root level="INFO"><AppenderRef ref="STDOUT"/></Root>
  </Loggers>
</Configuration>
"""


def cache_dir() -> Path:
    return Path(os.environ.get("PIXSIM_CACHE_DIR", Path.home() / ".cache" / "pixsim"))


def ensure_jars() -> Path:
    """The broker's runtime classpath, fetched once per pom version into the cache."""
    digest = hashlib.sha256(POM.read_bytes()).hexdigest()[:16]
    lib = cache_dir() / "kafka" / digest / "lib"
    marker = lib / ".complete"
    if marker.exists():
        return lib
    lib.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [
            "mvn",
            "-q",
            "-B",
            "-f",
            str(POM),
            "dependency:copy-dependencies",
            "-DincludeScope=runtime",
            f"-DoutputDirectory={lib}",
        ],
        check=True,
    )
    marker.write_text(digest)
    return lib


def new_cluster_id() -> str:
    """22 characters of URL-safe base64, as Kafka's Uuid prints; never starting with '-'."""
    while True:
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).rstrip(b"=").decode()
        if not cluster_id.startswith("-"):
            return cluster_id


def server_properties(run_dir: Path, port: int, controller_port: int) -> str:
    settings = {
        "process.roles": "broker,controller",
        "node.id": "1",
        "controller.quorum.voters": f"1@127.0.0.1:{controller_port}",
        "listeners": f"PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{controller_port}",
        "advertised.listeners": f"PLAINTEXT://127.0.0.1:{port}",
        "inter.broker.listener.name": "PLAINTEXT",
        "controller.listener.names": "CONTROLLER",
        "listener.security.protocol.map": "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
        "log.dirs": str(run_dir / "data"),
        "offsets.topic.replication.factor": "1",
        "transaction.state.log.replication.factor": "1",
        "transaction.state.log.min.isr": "1",
        "share.coordinator.state.topic.replication.factor": "1",
        "share.coordinator.state.topic.min.isr": "1",
        "offsets.topic.num.partitions": "1",
        "transaction.state.log.num.partitions": "1",
        "share.coordinator.state.topic.num.partitions": "1",
        "group.initial.rebalance.delay.ms": "0",
        "group.min.session.timeout.ms": "1000",
        "auto.create.topics.enable": "false",
        "num.partitions": "1",
        "log.cleaner.dedupe.buffer.size": "16777216",
        "num.network.threads": "2",
        "num.io.threads": "4",
        "num.recovery.threads.per.data.dir": "1",
        "message.max.bytes": "1048588",
    }
    return "".join(f"{key}={value}\n" for key, value in settings.items())


class KafkaBroker:
    """A broker this process started (or an existing one given by its bootstrap address)."""

    def __init__(
        self,
        bootstrap: str,
        process: ManagedProcess | None = None,
        restart_with: tuple[Path, int, int] | None = None,
    ) -> None:
        self.bootstrap = bootstrap
        self.process = process
        # (run_dir, port, controller_port) of a broker this process started.
        self._restart_with = restart_with

    @classmethod
    async def start(
        cls, run_dir: Path, port: int, controller_port: int, *, timeout: float = 120.0
    ) -> KafkaBroker:
        lib = ensure_jars()
        run_dir.mkdir(parents=True, exist_ok=True)
        properties = run_dir / "server.properties"
        properties.write_text(server_properties(run_dir, port, controller_port))
        (run_dir / "log4j2.xml").write_text(LOG4J2_XML)
        cluster_id_file = run_dir / "cluster-id"
        if not cluster_id_file.exists():
            cluster_id_file.write_text(new_cluster_id())
        cluster_id = cluster_id_file.read_text().strip()
        classpath = f"{lib}/*"
        logging = f"-Dlog4j2.configurationFile={run_dir / 'log4j2.xml'}"
        log_path = run_dir / "kafka.log"
        # Readiness reads only what this start writes: an earlier run's lines are in the file.
        log_offset = log_path.stat().st_size if log_path.exists() else 0
        subprocess.run(
            [
                "java",
                "-Xmx256m",
                logging,
                "-cp",
                classpath,
                "kafka.tools.StorageTool",
                "format",
                "--config",
                str(properties),
                f"--cluster-id={cluster_id}",
                "--ignore-formatted",
            ],
            check=True,
            stdout=subprocess.DEVNULL,
        )
        process = ManagedProcess(
            "kafka",
            [
                "java",
                f"-Xms{HEAP}",
                f"-Xmx{HEAP}",
                "-XX:+UseG1GC",
                "-XX:MaxGCPauseMillis=20",
                "-XX:InitiatingHeapOccupancyPercent=35",
                "-XX:+ExplicitGCInvokesConcurrent",
                "-XX:MaxInlineLevel=15",
                "-XX:+ExitOnOutOfMemoryError",
                "-XX:TieredStopAtLevel=1",
                "-Djava.awt.headless=true",
                logging,
                "-cp",
                classpath,
                "kafka.Kafka",
                str(properties),
            ],
            log_path,
        )
        broker = cls(f"127.0.0.1:{port}", process, (run_dir, port, controller_port))
        try:
            await broker._wait_ready(cluster_id, log_offset, timeout)
        except BaseException:
            broker.stop()
            raise
        return broker

    async def _wait_ready(self, cluster_id: str, log_offset: int, timeout: float) -> None:
        """Ready when our process logged startup, answers with our cluster id, and has a
        group coordinator (the first FindCoordinator creates __consumer_offsets)."""
        assert self.process is not None
        deadline = time.monotonic() + timeout

        def alive() -> None:
            assert self.process is not None
            self.process.check_alive()
            if time.monotonic() > deadline:
                raise TimeoutError(f"kafka not ready in {timeout}s; see {self.process.log_path}")

        while b"Kafka Server started" not in self.process.log_path.read_bytes()[log_offset:]:
            alive()
            await asyncio.sleep(0.1)
        admin = AIOKafkaAdminClient(bootstrap_servers=self.bootstrap)
        while True:
            try:
                await admin.start()
                break
            except KafkaError:
                alive()
                await asyncio.sleep(0.2)
        try:
            meta = await admin.describe_cluster()
            if meta["cluster_id"] != cluster_id:
                raise RuntimeError(
                    f"{self.bootstrap} belongs to another cluster: {meta['cluster_id']}"
                )
            while True:
                try:
                    await admin.find_coordinator("readiness-probe")
                    return
                except KafkaError:
                    alive()
                    await asyncio.sleep(0.1)
        finally:
            await admin.close()

    async def ensure_topics(self, names: list[str], partitions: int, timeout: float = 60.0) -> None:
        """Create the topics that are missing and wait until every partition has a leader."""
        admin = AIOKafkaAdminClient(bootstrap_servers=self.bootstrap)
        await admin.start()
        try:
            response = await admin.create_topics(
                [NewTopic(name, partitions, 1, topic_configs=dict(TOPIC_CONFIG)) for name in names],
                timeout_ms=int(timeout * 1000),
            )
            for name, code, message in response.topic_errors:
                if code not in (0, TopicAlreadyExistsError.errno):
                    raise for_code(code)(f"{name}: {message}")
            deadline = time.monotonic() + timeout
            while True:
                described = await admin.describe_topics(names)
                if all(
                    topic["error_code"] == 0
                    and topic["partitions"]
                    and all(p["leader"] >= 0 for p in topic["partitions"])
                    for topic in described
                ):
                    return
                if time.monotonic() > deadline:
                    raise TimeoutError("topics have no leaders")
                await asyncio.sleep(0.1)
        finally:
            await admin.close()

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop(timeout=30)

    async def crash_and_restart(self) -> None:
        """SIGKILL the broker (unflushed segments are recovered at the next start, as after a
        crash), then start it again on the same data and ports."""
        if self.process is None or self._restart_with is None:
            raise RuntimeError("only a broker this process started can be restarted")
        await asyncio.to_thread(self.process.kill)
        again = await KafkaBroker.start(*self._restart_with)
        self.process = again.process


async def partitions_of(consumer: AIOKafkaConsumer, topics: Sequence[str]) -> list[TopicPartition]:
    """Every partition of `topics`, from fresh metadata (a started consumer may not have
    fetched any yet)."""
    await consumer._client.force_metadata_update()
    return [
        TopicPartition(topic, partition)
        for topic in topics
        for partition in sorted(consumer.partitions_for_topic(topic) or ())
    ]


async def read_topic(
    bootstrap: str,
    topic: str,
    *,
    until: int,
    timeout: float = 30.0,
) -> list[Any]:
    """Every record of `topic` from the beginning (no consumer group), stopping once `until`
    records arrived or `timeout` passed; a test then asserts on what it got."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        assigned = await partitions_of(consumer, [topic])
        consumer.assign(assigned)
        await consumer.seek_to_beginning(*assigned)
        records: list[Any] = []
        deadline = time.monotonic() + timeout
        while len(records) < until and time.monotonic() < deadline:
            batch = await consumer.getmany(timeout_ms=200)
            for part in batch.values():
                records.extend(part)
        return records
    finally:
        await consumer.stop()


async def produce_raw(
    bootstrap: str,
    topic: str,
    messages: list[tuple[bytes | None, bytes | None, list[tuple[str, bytes]]]],
) -> None:
    """Send (key, value, headers) tuples as they are, for tests of what consumers do with them."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    try:
        for key, value, headers in messages:
            await producer.send_and_wait(topic, value=value, key=key, headers=headers)
    finally:
        await producer.stop()


class EventTap(Background):
    """Collects every record of `topics` produced after `start()`, by key, so a test can
    wait for the events of its own job among everyone else's."""

    def __init__(self, bootstrap: str, topics: list[str]) -> None:
        self._bootstrap = bootstrap
        self._topics = topics
        self.records: dict[tuple[str, str], list[Any]] = {}
        self._arrived = asyncio.Event()
        self._consumer: AIOKafkaConsumer | None = None
        self.name = "event-tap"

    async def start(self) -> None:
        consumer = AIOKafkaConsumer(bootstrap_servers=self._bootstrap, enable_auto_commit=False)
        await consumer.start()
        assigned = await partitions_of(consumer, self._topics)
        consumer.assign(assigned)
        await consumer.seek_to_end(*assigned)
        for partition in assigned:  # resolve the end offsets now, before anything is produced
            await consumer.position(partition)
        self._consumer = consumer
        await super().start()

    async def _run(self) -> None:
        assert self._consumer is not None
        while True:
            batch = await self._consumer.getmany(timeout_ms=100)
            for records in batch.values():
                for record in records:
                    key = record.key.decode() if record.key else ""
                    self.records.setdefault((record.topic, key), []).append(record)
            if batch:
                self._arrived.set()

    def of(self, topic: str, key: str) -> list[Any]:
        return list(self.records.get((topic, key), []))

    def matching(self, topic: str, match: Callable[[Any], bool]) -> list[Any]:
        return [
            record
            for (record_topic, _), records in list(self.records.items())
            if record_topic == topic
            for record in records
            if match(record)
        ]

    async def wait_for(
        self, topic: str, key: str, count: int = 1, timeout: float = 30.0
    ) -> list[Any]:
        await self._wait(
            lambda: len(self.of(topic, key)) >= count, f"{count} of {key} on {topic}", timeout
        )
        return self.of(topic, key)

    async def wait_matching(
        self, topic: str, match: Callable[[Any], bool], count: int = 1, timeout: float = 30.0
    ) -> list[Any]:
        """Records of `topic` (any key) for which `match` holds, once there are `count`."""
        await self._wait(
            lambda: len(self.matching(topic, match)) >= count,
            f"{count} matching on {topic}",
            timeout,
        )
        return self.matching(topic, match)

    async def _wait(self, done: Callable[[], bool], what: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not done():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"{what} did not arrive in {timeout}s")
            self._arrived.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._arrived.wait(), timeout=min(remaining, 0.5))

    async def stop(self) -> None:
        await super().stop()
        if self._consumer is not None:
            # A fetch the close cuts short may end in its own timeout (aiokafka raises it
            # from stop): the tap is done with the broker either way.
            with contextlib.suppress(KafkaError):
                await self._consumer.stop()


async def publish_events(
    bootstrap: str, topic: Topic, events: Sequence[tuple[str, Message]]
) -> None:
    """Send well-formed events (key, message) as a producing service would: each with its own
    CloudEvents headers and ce_id, through one producer, in order."""
    await produce_raw(
        bootstrap,
        topic.name,
        [
            (
                key.encode(),
                event.SerializeToString(),
                encode_headers(event_headers(event_type=topic.event_type, source="/test")),
            )
            for key, event in events
        ],
    )
