"""Inputs that name an asset, checked at CreateJob: asked of the asset service with the
caller's token (so another user's asset is simply not found), then held to what the
provider's intake takes for the input's role (media, size, resolution, duration), with a
field violation per input. Any asset of the caller's is an input: uploaded, generated or
registered from a URL. The bytes reach the provider at dispatch (the gateway's business);
here the job only records which of the asset's files it is: a video given where an image
is wanted gives a frame."""

from __future__ import annotations

from collections.abc import Sequence

from pixsim.asset.v1 import asset_service_pb2 as asset_pb
from pixsim.provider.v1 import provider_gateway_service_pb2 as gw_pb
from pixsim.types.v1 import types_pb2
from pixsim_common.clients import AssetLookup
from pixsim_common.errors import FieldViolation, InvalidArgument

# The frame a video gives where an image is wanted: an image to start from, or the start of
# a transition, is where the clip ends; the end of a transition, or a reference, where it
# begins.
FRAME_OF_ROLE = {
    types_pb2.INPUT_ROLE_IMAGE: "last_frame",
    types_pb2.INPUT_ROLE_START_FRAME: "last_frame",
    types_pb2.INPUT_ROLE_END_FRAME: "first_frame",
    types_pb2.INPUT_ROLE_REFERENCE: "first_frame",
}


class InputResolver:
    def __init__(self, assets: AssetLookup) -> None:
        self._assets = assets

    async def assets_of(
        self, inputs: Sequence[types_pb2.GenerationInput], token: str
    ) -> dict[str, asset_pb.Asset]:
        """The caller's assets that `inputs` name, by name, fetched once for every provider
        they are checked against (`resolved`)."""
        named = [i.asset for i in inputs if i.WhichOneof("source") == "asset"]
        return await self._assets.batch_get(named, token) if named else {}


def _effective(asset: asset_pb.Asset, variant: str) -> tuple[int, int, int, float]:
    """(size, width, height, seconds) of the file the provider would get."""
    chosen = next((v for v in asset.variants if v.kind == variant), None) if variant else None
    if chosen is not None:
        return chosen.size_bytes, chosen.width, chosen.height, 0.0
    seconds = asset.duration.seconds + asset.duration.nanos / 1e9
    return asset.size_bytes, asset.width, asset.height, seconds


def _problem(
    asset: asset_pb.Asset, variant: str, limit: gw_pb.InputLimits | None
) -> tuple[str, str] | None:
    """(reason, why) an asset does not fit its role's limits, or None."""
    if limit is None:
        return None
    size, width, height, seconds = _effective(asset, variant)
    if limit.media_types and asset.media_type not in limit.media_types:
        wanted = ", ".join(types_pb2.MediaType.Name(m) for m in limit.media_types)
        return "INPUT_MEDIA_TYPE", f"this input must be one of {wanted}"
    if limit.max_size_bytes and size > limit.max_size_bytes:
        return "INPUT_TOO_LARGE", f"{size} bytes is over the provider's {limit.max_size_bytes}"
    if limit.max_side and max(width, height) > limit.max_side:
        return "INPUT_TOO_LARGE", f"{width}x{height} is over the provider's {limit.max_side} px"
    longest = limit.max_duration.seconds if limit.HasField("max_duration") else 0
    if longest and seconds > longest:
        return "INPUT_TOO_LONG", f"{seconds:.1f}s is over the provider's {longest}s"
    return None


def resolved(
    inputs: Sequence[types_pb2.GenerationInput],
    found: dict[str, asset_pb.Asset],
    capability: gw_pb.OperationCapability,
) -> list[types_pb2.GenerationInput]:
    """Pure part of `resolve`: missing assets and assets the provider's intake would not
    take are INVALID_ARGUMENT, one violation per input."""
    limits = {limit.role: limit for limit in capability.input_limits}
    violations: list[FieldViolation] = []
    result = []
    for index, item in enumerate(inputs):
        copy = types_pb2.GenerationInput()
        copy.CopyFrom(item)
        copy.ClearField("resolved_uri")  # the service's to set, never the caller's
        copy.ClearField("variant")
        result.append(copy)
        if item.WhichOneof("source") != "asset":
            continue
        field = f"job.inputs[{index}].asset"
        asset = found.get(item.asset)
        if asset is None:
            violations.append(
                FieldViolation(field, f"{item.asset} does not exist", "ASSET_NOT_FOUND")
            )
            continue
        limit = limits.get(item.role)
        wants_image = limit is not None and types_pb2.MEDIA_TYPE_IMAGE in limit.media_types
        if wants_image and asset.media_type == types_pb2.MEDIA_TYPE_VIDEO:
            copy.variant = FRAME_OF_ROLE.get(item.role, "first_frame")
        problem = _problem(asset, copy.variant, limit)
        if problem is not None:
            violations.append(FieldViolation(field, problem[1], problem[0]))
    if violations:
        raise InvalidArgument(
            "an input cannot be given to this provider: "
            + "; ".join(f"{v.field}: {v.description}" for v in violations[:3]),
            violations,
            reason="INVALID_INPUT",
        )
    return result
