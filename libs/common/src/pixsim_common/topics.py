"""The Kafka topics of DESIGN.md section 3 and the protobuf message each one carries."""

from __future__ import annotations

from dataclasses import dataclass

from google.protobuf.message import Message

from pixsim.events.v1 import events_pb2

DLQ_SUFFIX = ".dlq"
DEFAULT_PARTITIONS = 6
# Every topic the project makes says how large a record it takes (`max.message.bytes`: the
# local broker's topics and the KafkaTopic manifests), rather than inheriting a broker's
# default, so the limits below are a promise and not a guess.
TOPIC_MAX_MESSAGE_BYTES = 1024 * 1024
# The largest event value a service writes or reads. The rest of the topic's limit is room
# for the key, the CloudEvents headers and the batch framing. Requests are bounded so that
# their events fit (docs/decisions.md, "Limits"); a consumer treats anything larger as poison.
MAX_EVENT_BYTES = 512 * 1024
TOPIC_CONFIG = {"max.message.bytes": str(TOPIC_MAX_MESSAGE_BYTES)}


@dataclass(frozen=True, slots=True)
class Topic:
    """A topic name bound to its value type. The CloudEvents type is the topic name."""

    name: str
    message_type: type[Message]

    @property
    def dlq(self) -> str:
        return self.name + DLQ_SUFFIX

    @property
    def event_type(self) -> str:
        return self.name


JOB_SUBMITTED = Topic("pixsim.job.submitted.v1", events_pb2.JobSubmitted)
JOB_CANCELLED = Topic("pixsim.job.cancelled.v1", events_pb2.JobCancelled)
JOB_STATUS_CHANGED = Topic("pixsim.job.status_changed.v1", events_pb2.JobStatusChanged)
GENERATION_STARTED = Topic("pixsim.generation.started.v1", events_pb2.GenerationStarted)
GENERATION_COMPLETED = Topic("pixsim.generation.completed.v1", events_pb2.GenerationCompleted)
GENERATION_FAILED = Topic("pixsim.generation.failed.v1", events_pb2.GenerationFailed)
GENERATION_QUEUED = Topic("pixsim.generation.queued.v1", events_pb2.GenerationQueued)
GENERATION_SETTLED = Topic("pixsim.generation.settled.v1", events_pb2.GenerationSettled)
ASSET_CREATED = Topic("pixsim.asset.created.v1", events_pb2.AssetCreated)
ASSET_DELETED = Topic("pixsim.asset.deleted.v1", events_pb2.AssetDeleted)
SCENE_UPDATED = Topic("pixsim.scene.updated.v1", events_pb2.SceneUpdated)

ALL_TOPICS: tuple[Topic, ...] = (
    JOB_SUBMITTED,
    JOB_CANCELLED,
    JOB_STATUS_CHANGED,
    GENERATION_STARTED,
    GENERATION_COMPLETED,
    GENERATION_FAILED,
    GENERATION_QUEUED,
    GENERATION_SETTLED,
    ASSET_CREATED,
    ASSET_DELETED,
    SCENE_UPDATED,
)
_BY_NAME = {topic.name: topic for topic in ALL_TOPICS}


def topic_named(name: str) -> Topic:
    """The topic called `name`; KeyError for a name DESIGN.md does not list."""
    return _BY_NAME[name]


def all_topic_names() -> list[str]:
    """Every topic and its dead-letter twin, the set a broker must have."""
    return [name for topic in ALL_TOPICS for name in (topic.name, topic.dlq)]
