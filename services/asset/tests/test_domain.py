"""The asset rules that need no I/O."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pixsim.types.v1 import types_pb2 as t
from pixsim_asset.domain import (
    byte_range,
    extension_for,
    lineage_edges,
    media_type_of,
    wants_thumbnail,
)
from pixsim_asset.probe import MediaInfo


def info(kind: str, mime: str) -> MediaInfo:
    return MediaInfo(kind, mime, 64, 64, 1.0, "h264", 100)


def test_files_are_named_by_their_probed_type() -> None:
    assert extension_for("video/mp4") == "mp4"
    assert extension_for("image/jpeg") == "jpg"
    assert extension_for("application/x-unknown") == "bin"


def test_media_types_and_thumbnails_follow_the_probe() -> None:
    assert media_type_of(info("video", "video/mp4")) == t.MEDIA_TYPE_VIDEO
    assert media_type_of(info("audio", "audio/mp3")) == t.MEDIA_TYPE_AUDIO
    assert wants_thumbnail(info("image", "image/png"))
    assert not wants_thumbnail(info("audio", "audio/mp3"))


def test_lineage_keeps_owned_inputs_once_and_never_the_asset_itself() -> None:
    edges = lineage_edges(
        [
            ("a", t.INPUT_ROLE_START_FRAME),
            ("a", t.INPUT_ROLE_START_FRAME),
            ("a", t.INPUT_ROLE_END_FRAME),
            ("someone-elses", t.INPUT_ROLE_IMAGE),
            ("child", t.INPUT_ROLE_VIDEO),
        ],
        t.OPERATION_TYPE_VIDEO_TRANSITION,
        owned={"a", "child"},
        child_id="child",
    )
    assert [(e.parent_id, e.role) for e in edges] == [
        ("a", t.INPUT_ROLE_START_FRAME),
        ("a", t.INPUT_ROLE_END_FRAME),
    ]
    assert {e.operation_type for e in edges} == {t.OPERATION_TYPE_VIDEO_TRANSITION}


@given(
    inputs=st.lists(st.tuples(st.sampled_from("abcdef"), st.integers(0, 5)), max_size=20),
    owned=st.sets(st.sampled_from("abcdef")),
)
def test_lineage_edges_are_distinct_owned_and_cover_every_owned_input(
    inputs: list[tuple[str, int]], owned: set[str]
) -> None:
    edges = lineage_edges(inputs, 1, owned, child_id="f")
    keys = [(e.parent_id, e.role) for e in edges]
    assert len(keys) == len(set(keys))
    assert set(keys) == {(a, r) for a, r in inputs if a in owned and a != "f"}


@pytest.mark.parametrize(
    ("size", "offset", "length", "span"),
    [
        (100, 0, 0, (0, 100)),
        (100, 10, 20, (10, 30)),
        (100, 90, 50, (90, 100)),
        (100, 99, 0, (99, 100)),
        (100, 100, 0, None),
        (100, 500, 1, None),
        (0, 0, 0, (0, 0)),
    ],
)
def test_a_byte_range_is_clipped_to_the_file_and_none_past_its_end(
    size: int, offset: int, length: int, span: tuple[int, int] | None
) -> None:
    assert byte_range(size, offset, length) == span
