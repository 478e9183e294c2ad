"""Request and event validation with protovalidate: the rules live in the protos."""

from __future__ import annotations

from typing import Any

import protovalidate
from google.protobuf.message import Message

from pixsim_common.errors import FieldViolation, InvalidArgument


def field_path(violation: Any) -> str:
    """`job.inputs[2].uri` or `account.credentials["key"]` from a protovalidate violation."""
    parts: list[str] = []
    for element in violation.proto.field.elements:
        name = element.field_name
        subscript = element.subscript
        if subscript is not None:
            value = subscript.value
            name += f"[{value}]" if subscript.field == "index" else f"[{value!r}]"
        parts.append(name)
    return ".".join(parts)


def violations_of(message: Message) -> list[FieldViolation]:
    return [
        FieldViolation(
            field=field_path(v) + ("(key)" if v.proto.for_key else ""),
            description=v.proto.message,
            reason=v.proto.rule_id,
        )
        for v in protovalidate.collect_violations(message)
    ]


def validate(message: Message) -> None:
    """Raise `InvalidArgument` carrying every field violation of `message`."""
    violations = violations_of(message)
    if violations:
        summary = "; ".join(f"{v.field}: {v.description}" for v in violations[:3])
        raise InvalidArgument(
            f"invalid {message.DESCRIPTOR.name}: {summary}", violations, reason="INVALID_REQUEST"
        )
