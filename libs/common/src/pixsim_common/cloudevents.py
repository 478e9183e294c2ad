"""CloudEvents 1.0 Kafka protocol binding, binary content mode.

The protobuf event is the message value; the attributes travel as `ce_*` headers and the
data content type as `content-type`, so any CloudEvents SDK reads our messages as they are.
W3C `traceparent` rides alongside, so one trace spans the whole flow.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime

SPEC_VERSION = "1.0"
CONTENT_TYPE = "application/protobuf"
REQUIRED_HEADERS = ("ce_id", "ce_type", "ce_source", "ce_specversion")


class MalformedEvent(Exception):
    """A message that is not a valid PixSim7 CloudEvent; it belongs in the dead-letter topic."""

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class EventMeta:
    id: str
    type: str
    source: str
    time: str
    trace_headers: Mapping[str, str]


def event_headers(
    *,
    event_type: str,
    source: str,
    event_id: str | None = None,
    time: datetime | None = None,
    trace_headers: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """The headers of one event, as strings (Kafka carries them as UTF-8 bytes)."""
    moment = (time or datetime.now(UTC)).astimezone(UTC)
    headers = {
        "ce_specversion": SPEC_VERSION,
        "ce_id": event_id or str(uuid.uuid4()),
        "ce_type": event_type,
        "ce_source": source,
        "ce_time": moment.isoformat(timespec="microseconds").replace("+00:00", "Z"),
        "content-type": CONTENT_TYPE,
    }
    headers.update(trace_headers or {})
    return headers


def encode_headers(headers: Mapping[str, str]) -> list[tuple[str, bytes]]:
    return [(key, value.encode()) for key, value in headers.items()]


def parse_headers(raw: Iterable[tuple[str, bytes]] | None) -> EventMeta:
    """Read and check the CloudEvents headers of a consumed message."""
    try:
        headers = {key: value.decode() for key, value in (raw or ())}
    except UnicodeDecodeError as error:
        raise MalformedEvent("a header is not UTF-8", "BAD_HEADERS") from error
    missing = [name for name in REQUIRED_HEADERS if not headers.get(name)]
    if missing:
        raise MalformedEvent(
            f"missing CloudEvents headers: {', '.join(missing)}", "MISSING_HEADERS"
        )
    if headers["ce_specversion"] != SPEC_VERSION:
        raise MalformedEvent(
            f"unsupported ce_specversion {headers['ce_specversion']!r}", "BAD_SPECVERSION"
        )
    if headers.get("content-type", CONTENT_TYPE) != CONTENT_TYPE:
        raise MalformedEvent(f"content-type must be {CONTENT_TYPE}", "BAD_CONTENT_TYPE")
    try:
        uuid.UUID(headers["ce_id"])
    except ValueError as error:
        raise MalformedEvent("ce_id must be a UUID", "BAD_EVENT_ID") from error
    return EventMeta(
        id=headers["ce_id"],
        type=headers["ce_type"],
        source=headers["ce_source"],
        time=headers.get("ce_time", ""),
        trace_headers={k: v for k, v in headers.items() if k in ("traceparent", "tracestate")},
    )
