"""The JSON manifest without I/O: written the one way, read back to the same scene under new
ids, and any other document refused with where it went wrong."""

from __future__ import annotations

import contextlib
import itertools
import json
import re
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pixsim_scene import interchange
from pixsim_scene.conditions import Effect, EffectOp, Variable, VariableType
from pixsim_scene.domain import Edge, EdgeType, Graph, Node
from pixsim_scene.interchange import ManifestError, SceneData

pytestmark = pytest.mark.unit
ASSET = "0e6b5a53-7f0e-4f4e-9d36-2b5f3d0c9a11"


def counter(prefix: str) -> Callable[[], str]:
    numbers = itertools.count(1)
    return lambda: f"{prefix}-{next(numbers):04d}"


def scene(titles: bool) -> SceneData:
    """Nodes with tied orders and connections with tied orders: only ids break the ties."""

    def meta(title: str) -> dict[str, Any]:
        return {"title": title} if titles else {}

    graph = Graph(
        {
            "b": Node("b", ASSET, order=1, x=1.5, y=-2, metadata={**meta("Cellar"), "n": 3}),
            "a": Node("a", ASSET, order=1, metadata=meta("Hall")),
            "c": Node("c", "", order=0, metadata={**meta("Door"), "ending": True}),
        },
        {
            "e2": Edge("e2", "a", "b", EdgeType.CHOICE, label="down", order=4),
            "e1": Edge(
                "e1",
                "a",
                "c",
                EdgeType.CHOICE,
                label="out",
                order=4,
                condition='has_key and mood == "calm"',
                effects=(
                    Effect("tries", EffectOp.INCREMENT, 1.0),
                    Effect("has_key", EffectOp.SET, False),
                ),
            ),
            "e3": Edge("e3", "b", "a", EdgeType.NEXT, metadata={"why": ["back", 1]}),
        },
        start_id="a",
    )
    variables = [
        Variable("has_key", VariableType.BOOL, False),
        Variable("tries", VariableType.NUMBER, 0.0),
        Variable("mood", VariableType.STRING, "calm ✓"),
    ]
    return SceneData(
        "The keep", "a story", ["demo"], variables, graph, interchange.node_keys(graph)
    )


@pytest.mark.parametrize("titles", [True, False])
def test_an_export_read_back_and_written_again_is_the_same_bytes(titles: bool) -> None:
    first = interchange.dumps(interchange.to_manifest(scene(titles)))
    read = interchange.from_manifest(interchange.parse_json(first), counter("new"))
    assert set(read.graph.nodes) == {"new-0001", "new-0002", "new-0003"}
    again = interchange.dumps(interchange.to_manifest(read))
    assert again == first
    document = json.loads(first)
    keys = [n["key"] for n in document["nodes"]]
    assert keys == (["Door", "Hall", "Cellar"] if titles else ["n1", "n2", "n3"])
    # Ties fall to the id, as in play, and are written as positions.
    assert [(c["from"], c["to"], c["order"]) for c in document["connections"]] == [
        (keys[1], keys[0], 0),
        (keys[1], keys[2], 1),
        (keys[2], keys[1], 0),
    ]
    assert document["scene"]["start"] == keys[1]
    assert read.variables == scene(titles).variables
    (leaving,) = [e for e in read.graph.edges.values() if e.effects]
    assert leaving.effects == scene(titles).graph.edges["e1"].effects


def test_titles_that_repeat_are_not_keys() -> None:
    data = scene(True)
    data.graph.nodes["b"] = Node("b", ASSET, order=1, metadata={"title": "Hall"})
    assert sorted(interchange.node_keys(data.graph).values()) == ["n1", "n2", "n3"]


def manifest(**changes: Any) -> dict[str, Any]:
    document: dict[str, Any] = json.loads(interchange.dumps(interchange.to_manifest(scene(True))))
    for path, value in changes.items():
        *parents, last = path.split("__")
        target: Any = document
        for part in parents:
            target = target[int(part)] if part.isdigit() else target[part]
        if value is DELETE:
            del target[int(last) if last.isdigit() else last]
        else:
            target[int(last) if last.isdigit() else last] = value
    return document


DELETE = object()


@pytest.mark.parametrize(
    ("changes", "path"),
    [
        ({"format": "twine"}, "format"),
        ({"surprise": 1}, "surprise"),
        ({"nodes__0__key": "a [[link]]"}, "nodes[0].key"),
        ({"nodes__0__key": " Hall"}, "nodes[0].key"),
        ({"nodes__1__key": "Door"}, "nodes[1].key"),
        ({"nodes__0__order": -1}, "nodes[0].order"),
        ({"nodes__0__order": True}, "nodes[0].order"),
        ({"nodes__0__position": [1]}, "nodes[0].position"),
        ({"nodes__0__asset": "assets/../x"}, "nodes[0].asset"),
        ({"connections__0__to": "Nowhere"}, "connections[0].to"),
        ({"connections__0__type": "GOTO"}, "connections[0].type"),
        ({"connections__0__condition": "has_key and"}, "connections[0].condition"),
        ({"connections__0__condition": "x" * 1001}, "connections[0].condition"),
        ({"connections__0__effects__0__value": "one"}, "connections[0].effects[0].value"),
        ({"variables__0__initial": 1}, "variables[0].initial"),
        ({"variables__1__name": "has_key"}, "variables[1].name"),
        ({"scene__start": "Nowhere"}, "scene.start"),
        ({"scene__display_name": ""}, "scene.display_name"),
        ({"scene__tags": ["Not A Tag"]}, "scene.tags[0]"),
        ({"nodes": DELETE}, "nodes"),
    ],
)
def test_a_document_that_does_not_fit_is_refused_where_it_goes_wrong(
    changes: dict[str, Any], path: str
) -> None:
    with pytest.raises(ManifestError) as refused:
        interchange.from_manifest(manifest(**changes), counter("x"))
    assert refused.value.path == path


def test_a_second_connection_of_one_type_between_two_nodes_is_refused() -> None:
    document = manifest()
    document["connections"].append(dict(document["connections"][0]))
    with pytest.raises(ManifestError) as refused:
        interchange.from_manifest(document, counter("x"))
    assert refused.value.path == f"connections[{len(document['connections']) - 1}]"


@pytest.mark.parametrize(
    "content",
    [
        b"",
        b"\xff\xfe",
        b"[1, 2]",
        b'{"a": NaN}',
        b'{"a": 1e400}',
        b"[" * 100_000,
        b"{" * 10,
        b'{"a": "\\u0000"}',
        b'{"\\ud800": 1}',
        b'{"a": 1' + b"0" * 20 + b"}",
        b'{"a": ' * 13 + b"1" + b"}" * 13,
    ],
)
def test_bytes_that_are_no_json_object_are_refused(content: bytes) -> None:
    with pytest.raises(ManifestError):
        interchange.parse_json(content)


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=20,
)


def leaves(value: Any, path: tuple[str | int, ...] = ()) -> Iterator[tuple[str | int, ...]]:
    if path:
        yield path
    if isinstance(value, dict):
        for key, inner in value.items():
            yield from leaves(inner, (*path, key))
    elif isinstance(value, list):
        for index, inner in enumerate(value):
            yield from leaves(inner, (*path, index))


VALID = manifest()
PATHS = sorted(leaves(VALID), key=str)


@settings(max_examples=400, deadline=None)
@given(st.sampled_from(PATHS), JSON)
def test_a_manifest_with_any_part_replaced_is_a_scene_or_refused_never_anything_else(
    path: tuple[str | int, ...], replacement: Any
) -> None:
    document = json.loads(json.dumps(VALID))
    target: Any = document
    for part in path[:-1]:
        target = target[part]
    target[path[-1]] = replacement
    with contextlib.suppress(ManifestError):
        interchange.from_manifest(document, counter("x"))


def test_the_player_page_keeps_its_data_inside_its_script_element() -> None:
    data = scene(True)
    document = interchange.to_manifest(data)
    document["scene"]["display_name"] = "</script><script>alert(1)</script> {{style}}"
    page = interchange.player_html(
        document, {f"assets/{ASSET}": {"path": f"clips/{ASSET}.mp4", "mime_type": "video/mp4"}}
    ).decode()
    assert "<script>alert(1)" not in page
    assert page.count("</script>") == 2  # the data's and the player's, nothing else
    assert "&lt;/script&gt;&lt;script&gt;alert(1)&lt;/script&gt; {{style}}" in page


def test_a_scene_without_an_ifid_gets_one_of_its_own_shaped_as_twine_makes_them() -> None:
    made = interchange.ifid_of("6f9f0d4e-5f57-4b0e-9a0a-0d1e2f3a4b5c", "")
    assert made == interchange.ifid_of("6f9f0d4e-5f57-4b0e-9a0a-0d1e2f3a4b5c", "")
    assert made != interchange.ifid_of("0e6b5a53-7f0e-4f4e-9d36-2b5f3d0c9a11", "")
    assert re.fullmatch(
        r"[0-9A-F]{8}-[0-9A-F]{4}-4[0-9A-F]{3}-[89AB][0-9A-F]{3}-[0-9A-F]{12}", made
    )
    assert interchange.ifid_of("x", "d674c58c-defa-4f70-b7a2-27742230c0fc") == (
        "D674C58C-DEFA-4F70-B7A2-27742230C0FC"
    )
