"""Request and event validation: the rules in the protos (protovalidate), and the checks no
proto rule can say, made here once for every message:

- text PostgreSQL cannot store (NUL, which no `text` or `jsonb` value may hold, and lone
  surrogates) in any string, map key or value, or JSON value, at any depth;
- `google.protobuf.Struct` and `Value` fields (free JSON such as job `params` or scene
  metadata) bounded in keys, key and string length, list items, depth and encoded size;
- `google.type.Money` (a budget's limit) an amount as its definition says: a three-letter
  currency code, nanos within a unit and of the units' sign.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import protovalidate
from google.protobuf import descriptor as d
from google.protobuf import struct_pb2
from google.protobuf.message import Message

from buf.validate import validate_pb2
from pixsim_common.errors import FieldViolation, InvalidArgument


@dataclass(frozen=True, slots=True)
class JsonLimits:
    """Bounds of one free-JSON field (a Struct, Value or ListValue) of a request."""

    max_bytes: int = 64 * 1024  # its encoded size
    max_keys: int = 64  # per object
    max_key_chars: int = 64
    max_string_chars: int = 4096  # e.g. a negative_prompt
    max_items: int = 64  # per list
    max_depth: int = 4  # objects and lists inside each other


JSON_LIMITS = JsonLimits()
_JSON_TYPES = ("google.protobuf.Struct", "google.protobuf.Value", "google.protobuf.ListValue")
# An update mask names fields of one resource: a handful, each a short path.
MAX_MASK_PATHS = 64
MAX_MASK_PATH_CHARS = 256


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


def text_problem(value: str) -> str | None:
    """Why PostgreSQL could not store `value` as text, or None."""
    if "\x00" in value:
        return "must not contain NUL characters"
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return "must be valid Unicode (no lone surrogates)"
    return None


def _json_problems(
    value: struct_pb2.Value, path: str, depth: int, limits: JsonLimits
) -> Iterator[FieldViolation]:
    kind = value.WhichOneof("kind")
    if kind == "number_value" and not math.isfinite(value.number_value):
        yield FieldViolation(path, "must be a finite number (JSON has no NaN)", "NOT_FINITE")
    elif kind == "string_value":
        yield from _text_violations(value.string_value, path, limits.max_string_chars)
    elif kind == "struct_value":
        yield from _object_problems(value.struct_value, path, depth + 1, limits)
    elif kind == "list_value":
        yield from _list_problems(value.list_value, path, depth + 1, limits)


def _object_problems(
    struct: struct_pb2.Struct, path: str, depth: int, limits: JsonLimits
) -> Iterator[FieldViolation]:
    if depth > limits.max_depth:
        yield FieldViolation(path, f"nests deeper than {limits.max_depth}", "JSON_TOO_DEEP")
        return
    if len(struct.fields) > limits.max_keys:
        yield FieldViolation(path, f"has more than {limits.max_keys} keys", "JSON_TOO_MANY_KEYS")
        return
    for key, inner in struct.fields.items():
        inner_path = f"{path}.{key}" if key.isidentifier() else f"{path}[{key[:40]!r}]"
        yield from _text_violations(key, f"{inner_path}(key)", limits.max_key_chars)
        yield from _json_problems(inner, inner_path, depth, limits)


def _list_problems(
    items: struct_pb2.ListValue, path: str, depth: int, limits: JsonLimits
) -> Iterator[FieldViolation]:
    if depth > limits.max_depth:
        yield FieldViolation(path, f"nests deeper than {limits.max_depth}", "JSON_TOO_DEEP")
        return
    if len(items.values) > limits.max_items:
        yield FieldViolation(path, f"has more than {limits.max_items} items", "JSON_TOO_MANY_ITEMS")
        return
    for index, inner in enumerate(items.values):
        yield from _json_problems(inner, f"{path}[{index}]", depth, limits)


def _text_violations(
    value: str, path: str, max_chars: int | None = None
) -> Iterator[FieldViolation]:
    problem = text_problem(value)
    if problem is not None:
        yield FieldViolation(path, problem, "UNSTORABLE_TEXT")
    elif max_chars is not None and len(value) > max_chars:
        yield FieldViolation(path, f"is longer than {max_chars} characters", "TOO_LONG")


def _json_field(message: Message, path: str, limits: JsonLimits) -> Iterator[FieldViolation]:
    size = message.ByteSize()
    if size > limits.max_bytes:
        yield FieldViolation(path, f"is {size} bytes, over {limits.max_bytes}", "JSON_TOO_LARGE")
        return
    if isinstance(message, struct_pb2.Struct):
        yield from _object_problems(message, path, 1, limits)
    elif isinstance(message, struct_pb2.ListValue):
        yield from _list_problems(message, path, 1, limits)
    elif isinstance(message, struct_pb2.Value):
        yield from _json_problems(message, path, 0, limits)


_CURRENCY_CODE = re.compile(r"[A-Z]{3}")
_NANOS = 1_000_000_000


def _money_violations(money: Any, path: str) -> Iterator[FieldViolation]:
    if not _CURRENCY_CODE.fullmatch(money.currency_code):
        why = "must be a three-letter ISO 4217 code"
        yield FieldViolation(f"{path}.currency_code", why, "BAD_CURRENCY")
    if not -_NANOS < money.nanos < _NANOS or money.units * money.nanos < 0:
        why = "must be within a unit and of the units' sign"
        yield FieldViolation(f"{path}.nanos", why, "BAD_AMOUNT")


def _scalar_problems(field: d.FieldDescriptor, value: Any, path: str) -> Iterator[FieldViolation]:
    if field.type == d.FieldDescriptor.TYPE_STRING:
        yield from _text_violations(value, path)
    elif field.message_type is not None and field.message_type.full_name == "google.type.Money":
        yield from _money_violations(value, path)
    elif field.message_type is not None:
        yield from content_violations(value, path)


def _mask_violations(mask: Any, path: str) -> Iterator[FieldViolation]:
    if len(mask.paths) > MAX_MASK_PATHS:
        yield FieldViolation(path, f"names more than {MAX_MASK_PATHS} paths", "MASK_TOO_LARGE")
        return
    for index, item in enumerate(mask.paths):
        yield from _text_violations(item, f"{path}.paths[{index}]", MAX_MASK_PATH_CHARS)


def content_violations(
    message: Message, prefix: str = "", limits: JsonLimits = JSON_LIMITS
) -> Iterator[FieldViolation]:
    """Every string PostgreSQL could not store and every free-JSON field out of bounds in
    `message`, at any depth, by field path."""
    for field, value in message.ListFields():
        path = f"{prefix}.{field.name}" if prefix else field.name
        entry = field.message_type
        if entry is not None and entry.GetOptions().map_entry:
            key_field, value_field = entry.fields_by_name["key"], entry.fields_by_name["value"]
            for key, item in value.items():
                item_path = f"{path}[{key!r}]"
                if key_field.type == d.FieldDescriptor.TYPE_STRING:
                    yield from _text_violations(key, f"{item_path}(key)")
                yield from _scalar_problems(value_field, item, item_path)
        elif entry is not None and entry.full_name == "google.protobuf.FieldMask":
            yield from _mask_violations(value, path)
        elif entry is not None and entry.full_name in _JSON_TYPES:
            items = value if field.is_repeated else [value]
            for index, item in enumerate(items):
                item_path = f"{path}[{index}]" if field.is_repeated else path
                yield from _json_field(item, item_path, limits)
        elif field.is_repeated and items_validated_by_handler(field):
            continue
        elif field.is_repeated:
            for index, item in enumerate(value):
                yield from _scalar_problems(field, item, f"{path}[{index}]")
        else:
            yield from _scalar_problems(field, value, path)


def items_validated_by_handler(field: d.FieldDescriptor) -> bool:
    """A repeated field whose items the proto leaves out of request validation
    (`repeated.items.ignore = IGNORE_ALWAYS`): a batch, whose handler validates each item on
    its own (`violations_of`) so one bad item does not refuse the others."""
    rules = field.GetOptions().Extensions[validate_pb2.field]
    return bool(rules.repeated.items.ignore == validate_pb2.IGNORE_ALWAYS)


def violations_of(message: Message) -> list[FieldViolation]:
    violations = [
        FieldViolation(
            field=field_path(v) + ("(key)" if v.proto.for_key else ""),
            description=v.proto.message,
            reason=v.proto.rule_id,
        )
        for v in protovalidate.collect_violations(message)
    ]
    return violations + list(content_violations(message))


def validate(message: Message) -> None:
    """Raise `InvalidArgument` carrying every field violation of `message`."""
    violations = violations_of(message)
    if violations:
        summary = "; ".join(f"{v.field}: {v.description}" for v in violations[:3])
        raise InvalidArgument(
            f"invalid {message.DESCRIPTOR.name}: {summary}", violations, reason="INVALID_REQUEST"
        )
