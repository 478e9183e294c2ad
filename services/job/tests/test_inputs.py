"""Asset inputs held to the provider's intake limits, and which of an asset's files a
provider is given (the pure part)."""

from __future__ import annotations

import pytest
from google.protobuf import duration_pb2

from pixsim.asset.v1 import asset_service_pb2 as asset_pb
from pixsim.provider.v1 import provider_gateway_service_pb2 as gw_pb
from pixsim.types.v1 import types_pb2 as t
from pixsim_common.errors import InvalidArgument
from pixsim_job.inputs import resolved

pytestmark = pytest.mark.unit
MIB = 1024 * 1024

UPLOADED = asset_pb.Asset(
    name="assets/u", media_type=t.MEDIA_TYPE_IMAGE, size_bytes=1000, width=640, height=480
)
CLIP = asset_pb.Asset(
    name="assets/c",
    media_type=t.MEDIA_TYPE_VIDEO,
    size_bytes=5 * MIB,
    width=1280,
    height=720,
    duration=duration_pb2.Duration(seconds=5),
    variants=[
        asset_pb.AssetVariant(kind="first_frame", width=1280, height=720, size_bytes=300_000),
        asset_pb.AssetVariant(kind="last_frame", width=1280, height=720, size_bytes=310_000),
    ],
)
IMAGES = (t.MEDIA_TYPE_IMAGE, t.MEDIA_TYPE_VIDEO)
TRANSITION = gw_pb.OperationCapability(
    operation_type=t.OPERATION_TYPE_VIDEO_TRANSITION,
    input_limits=[
        gw_pb.InputLimits(role=t.INPUT_ROLE_START_FRAME, media_types=IMAGES, max_side=4000),
        gw_pb.InputLimits(role=t.INPUT_ROLE_END_FRAME, media_types=IMAGES, max_side=4000),
    ],
)
EXTEND = gw_pb.OperationCapability(
    operation_type=t.OPERATION_TYPE_VIDEO_EXTEND,
    input_limits=[
        gw_pb.InputLimits(
            role=t.INPUT_ROLE_VIDEO,
            media_types=[t.MEDIA_TYPE_VIDEO],
            max_size_bytes=50 * MIB,
            max_duration=duration_pb2.Duration(seconds=30),
        )
    ],
)


def test_any_asset_is_an_input_and_a_clip_gives_the_frame_its_role_wants() -> None:
    inputs = [
        t.GenerationInput(role=t.INPUT_ROLE_START_FRAME, asset="assets/c"),
        t.GenerationInput(role=t.INPUT_ROLE_END_FRAME, asset="assets/c"),
    ]
    out = resolved(inputs, {"assets/c": CLIP}, TRANSITION)
    assert [(i.asset, i.variant) for i in out] == [
        ("assets/c", "last_frame"),  # a transition starts where the first clip ends
        ("assets/c", "first_frame"),  # and ends where the second begins
    ]
    uploaded = resolved(
        [t.GenerationInput(role=t.INPUT_ROLE_START_FRAME, asset="assets/u")],
        {"assets/u": UPLOADED},
        TRANSITION,
    )
    assert uploaded[0].variant == ""  # an image is given as it is
    extended = resolved(
        [t.GenerationInput(role=t.INPUT_ROLE_VIDEO, asset="assets/c")], {"assets/c": CLIP}, EXTEND
    )
    assert extended[0].variant == ""


def test_whatever_a_caller_puts_in_service_fields_is_discarded() -> None:
    given = t.GenerationInput(
        role=t.INPUT_ROLE_START_FRAME,
        uri="https://x.example/a.png",
        resolved_uri="evil",
        variant="x",
    )
    (out,) = resolved([given], {}, TRANSITION)
    assert (out.uri, out.resolved_uri, out.variant) == ("https://x.example/a.png", "", "")


@pytest.mark.parametrize(
    ("asset", "role", "capability", "reason"),
    [
        (
            asset_pb.Asset(name="assets/x", media_type=t.MEDIA_TYPE_IMAGE),
            t.INPUT_ROLE_VIDEO,
            EXTEND,
            "INPUT_MEDIA_TYPE",
        ),
        (
            asset_pb.Asset(
                name="assets/x",
                media_type=t.MEDIA_TYPE_VIDEO,
                size_bytes=5 * MIB,
                duration=duration_pb2.Duration(seconds=45),
            ),
            t.INPUT_ROLE_VIDEO,
            EXTEND,
            "INPUT_TOO_LONG",
        ),
        (
            asset_pb.Asset(name="assets/x", media_type=t.MEDIA_TYPE_VIDEO, size_bytes=80 * MIB),
            t.INPUT_ROLE_VIDEO,
            EXTEND,
            "INPUT_TOO_LARGE",
        ),
        (
            asset_pb.Asset(name="assets/x", media_type=t.MEDIA_TYPE_IMAGE, width=6000, height=3000),
            t.INPUT_ROLE_START_FRAME,
            TRANSITION,
            "INPUT_TOO_LARGE",
        ),
    ],
    ids=["an image to extend", "too long", "too large", "too many pixels"],
)
def test_an_input_the_provider_would_refuse_is_refused_at_create_job(
    asset: asset_pb.Asset, role: int, capability: gw_pb.OperationCapability, reason: str
) -> None:
    inputs = [t.GenerationInput(role=role, asset="assets/x")]  # type: ignore[arg-type]
    with pytest.raises(InvalidArgument) as refused:
        resolved(inputs, {"assets/x": asset}, capability)
    assert [(v.field, v.reason) for v in refused.value.violations] == [
        ("job.inputs[0].asset", reason)
    ]


def test_missing_assets_are_named_per_input() -> None:
    inputs = [
        t.GenerationInput(role=t.INPUT_ROLE_START_FRAME, asset="assets/u"),
        t.GenerationInput(role=t.INPUT_ROLE_END_FRAME, asset="assets/gone"),
    ]
    with pytest.raises(InvalidArgument) as refused:
        resolved(inputs, {"assets/u": UPLOADED}, TRANSITION)
    assert [v.field for v in refused.value.violations] == ["job.inputs[1].asset"]
