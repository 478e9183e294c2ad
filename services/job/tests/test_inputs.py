"""Resolving asset inputs to provider-fetchable URLs (the pure part)."""

from __future__ import annotations

import pytest

from pixsim.asset.v1 import asset_service_pb2 as asset_pb
from pixsim.types.v1 import types_pb2 as t
from pixsim_common.errors import FailedPrecondition, InvalidArgument
from pixsim_job.inputs import resolved

GENERATED = asset_pb.Asset(name="assets/a", remote_uri="https://cdn.example/a.png")
UPLOADED = asset_pb.Asset(name="assets/u")


def test_asset_inputs_get_their_remote_url_and_url_inputs_stay() -> None:
    inputs = [
        t.GenerationInput(role=t.INPUT_ROLE_START_FRAME, asset="assets/a"),
        t.GenerationInput(role=t.INPUT_ROLE_END_FRAME, uri="https://elsewhere.example/b.png"),
    ]
    out = resolved(inputs, {"assets/a": GENERATED})
    assert [(i.asset, i.uri, i.resolved_uri) for i in out] == [
        ("assets/a", "", "https://cdn.example/a.png"),
        ("", "https://elsewhere.example/b.png", ""),
    ]
    assert inputs[0].resolved_uri == ""  # the request itself is left alone


def test_missing_assets_are_named_per_input() -> None:
    inputs = [
        t.GenerationInput(role=t.INPUT_ROLE_REFERENCE, asset="assets/a"),
        t.GenerationInput(role=t.INPUT_ROLE_REFERENCE, asset="assets/gone"),
    ]
    with pytest.raises(InvalidArgument) as refused:
        resolved(inputs, {"assets/a": GENERATED})
    assert [v.field for v in refused.value.violations] == ["job.inputs[1].asset"]


def test_an_uploaded_asset_has_no_url_to_give_a_provider() -> None:
    with pytest.raises(FailedPrecondition) as refused:
        resolved([t.GenerationInput(asset="assets/u")], {"assets/u": UPLOADED})
    assert refused.value.reason == "ASSET_NOT_FETCHABLE"
