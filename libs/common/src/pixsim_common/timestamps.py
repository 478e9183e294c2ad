"""`google.protobuf.Timestamp` from Python datetimes, written once."""

from __future__ import annotations

from datetime import UTC, datetime

from google.protobuf import timestamp_pb2
from google.protobuf.message import Message

from pixsim_common.errors import FieldViolation, InvalidArgument


def to_timestamp(value: datetime | None) -> timestamp_pb2.Timestamp | None:
    """A resource's time field: None stays unset."""
    if value is None:
        return None
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(value)
    return stamp


def now_timestamp() -> timestamp_pb2.Timestamp:
    """The moment an event happens."""
    stamp = timestamp_pb2.Timestamp()
    stamp.GetCurrentTime()
    return stamp


def time_of(message: Message, field: str) -> datetime | None:
    """A time field of a message we trust (an event a service wrote), as an aware datetime;
    None when it was left out."""
    if not message.HasField(field):
        return None
    stamp: timestamp_pb2.Timestamp = getattr(message, field)
    return stamp.ToDatetime(tzinfo=UTC)


def from_request(stamp: timestamp_pb2.Timestamp, field: str) -> datetime:
    """A timestamp a caller sent, as an aware datetime; one outside what a Timestamp may
    hold (years 1 to 9999, nanos below a second) is INVALID_ARGUMENT naming `field`."""
    try:
        if not 0 <= stamp.nanos < 1_000_000_000:
            raise ValueError(f"nanos {stamp.nanos} is not within a second")
        return stamp.ToDatetime(tzinfo=UTC)
    except (ValueError, OverflowError, OSError) as error:
        why = f"not a valid timestamp: {error}"
        raise InvalidArgument(
            f"{field} is {why}", [FieldViolation(field, why, "INVALID_TIMESTAMP")]
        ) from None
