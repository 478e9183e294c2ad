"""Every field a caller sets has a size limit (docs/decisions.md, "Limits"), and the events a
request can cause fit the topics' limit. Read from the protos themselves, so a new field
without a bound fails here."""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest
from google.api import field_behavior_pb2
from google.protobuf import descriptor as d
from google.protobuf import struct_pb2

from buf.validate import validate_pb2
from pixsim.asset.v1 import asset_service_pb2
from pixsim.events.v1 import events_pb2
from pixsim.job.v1 import job_service_pb2 as job_pb
from pixsim.provider.v1 import provider_gateway_service_pb2
from pixsim.scene.v1 import scene_service_pb2
from pixsim.types.v1 import types_pb2 as t
from pixsim_common.topics import MAX_EVENT_BYTES
from pixsim_common.validation import JSON_LIMITS

pytestmark = pytest.mark.unit

SERVICES = [
    job_pb.DESCRIPTOR.services_by_name["JobService"],
    asset_service_pb2.DESCRIPTOR.services_by_name["AssetService"],
    provider_gateway_service_pb2.DESCRIPTOR.services_by_name["ProviderGatewayService"],
    scene_service_pb2.DESCRIPTOR.services_by_name["SceneService"],
]
# Bounded by the kit for every request, whatever the proto says (pixsim_common.validation).
KIT_BOUNDED = {
    "google.protobuf.Struct",
    "google.protobuf.Value",
    "google.protobuf.ListValue",
    "google.protobuf.FieldMask",
    "google.protobuf.Timestamp",
    "google.protobuf.Duration",
    "google.type.Money",  # a three-letter currency code; nanos within a unit
}
_UNBOUNDED_QUANTIFIER = re.compile(r"(?<!\\)[*+]|\{\d+,\}")


def _output_only(field: d.FieldDescriptor) -> bool:
    behaviors = field.GetOptions().Extensions[field_behavior_pb2.field_behavior]
    return field_behavior_pb2.OUTPUT_ONLY in behaviors


def _string_bounded(rules: validate_pb2.StringRules) -> bool:
    if rules.HasField("max_len") or rules.HasField("max_bytes") or rules.HasField("len"):
        return True
    if rules.uuid or rules.HasField("const") or len(rules.__getattribute__("in")) > 0:
        return True
    pattern = rules.pattern
    return (
        bool(pattern)
        and pattern.startswith("^")
        and pattern.endswith("$")
        and not (_UNBOUNDED_QUANTIFIER.search(pattern))
    )


def unbounded(descriptor: d.Descriptor, prefix: str, seen: set[str]) -> Iterator[str]:
    """Paths of fields under `descriptor` a caller could make as large as the message limit."""
    if descriptor.full_name in seen or descriptor.full_name in KIT_BOUNDED:
        return
    seen = seen | {descriptor.full_name}
    for field in descriptor.fields:
        path = f"{prefix}.{field.name}"
        if _output_only(field):
            continue  # never read from a request
        rules = field.GetOptions().Extensions[validate_pb2.field]
        entry = field.message_type
        if entry is not None and entry.GetOptions().map_entry:
            if not rules.map.HasField("max_pairs"):
                yield f"{path} (map without max_pairs)"
            for part in ("keys", "values"):
                inner = getattr(rules.map, part)
                kind = entry.fields_by_name["key" if part == "keys" else "value"]
                if kind.type == d.FieldDescriptor.TYPE_STRING and not _string_bounded(inner.string):
                    yield f"{path} ({part} without a length bound)"
            continue
        if field.is_repeated:
            if not rules.repeated.HasField("max_items"):
                yield f"{path} (repeated without max_items)"
            item_rules = rules.repeated.items
            if field.type == d.FieldDescriptor.TYPE_STRING and not _string_bounded(
                item_rules.string
            ):
                yield f"{path}[] (strings without a length bound)"
        elif field.type == d.FieldDescriptor.TYPE_STRING and not _string_bounded(rules.string):
            yield f"{path} (string without a length bound)"
        elif field.type == d.FieldDescriptor.TYPE_BYTES and not rules.bytes.HasField("max_len"):
            yield f"{path} (bytes without max_len)"
        if entry is not None:
            yield from unbounded(entry, path, seen)


@pytest.mark.parametrize(
    "method",
    [m for s in SERVICES for m in s.methods],
    ids=[f"{s.name}.{m.name}" for s in SERVICES for m in s.methods],
)
def test_every_field_a_caller_sets_is_bounded(method: d.MethodDescriptor) -> None:
    assert list(unbounded(method.input_type, method.input_type.name, set())) == []


def test_the_largest_job_a_caller_may_send_makes_an_event_the_topic_takes() -> None:
    """Every bound of a CreateJob at once: its job.submitted still fits MAX_EVENT_BYTES."""
    prompt_chars = job_pb.Job.DESCRIPTOR.fields_by_name["prompt"]
    max_prompt = prompt_chars.GetOptions().Extensions[validate_pb2.field].string.max_len
    inputs_rules = job_pb.Job.DESCRIPTOR.fields_by_name["inputs"].GetOptions()
    max_inputs = inputs_rules.Extensions[validate_pb2.field].repeated.max_items
    uri_rules = t.GenerationInput.DESCRIPTOR.fields_by_name["uri"].GetOptions()
    max_uri = uri_rules.Extensions[validate_pb2.field].string.max_len
    params = struct_pb2.Struct()
    # Keys and strings at their limits, 4-byte characters, up to the encoded-size bound.
    value = "\U0001f98a" * JSON_LIMITS.max_string_chars
    for index in range(JSON_LIMITS.max_keys):
        params.fields[f"k{index:0{JSON_LIMITS.max_key_chars - 1}d}"].string_value = value
        if params.ByteSize() > JSON_LIMITS.max_bytes:
            del params.fields[f"k{index:0{JSON_LIMITS.max_key_chars - 1}d}"]
            break
    event = events_pb2.JobSubmitted(
        job_id="0" * 36,
        user_id="u" * 256,
        operation_type=t.OPERATION_TYPE_FUSION,
        provider_id="p" * 32,
        prompt="\U0001f98a" * max_prompt,
        inputs=[
            t.GenerationInput(
                role=t.INPUT_ROLE_REFERENCE, uri="h" * max_uri, resolved_uri="h" * max_uri
            )
            for _ in range(max_inputs)
        ],
        params=params,
        retry_count=2**31 - 1,
    )
    assert event.ByteSize() < MAX_EVENT_BYTES
