"""Twee 3 without I/O: an export read back writes the same bytes, a story written in Twine
comes in as a scene that plays as it did there, and any other text is refused or read, never
anything else."""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pixsim_scene import interchange, twee
from pixsim_scene.conditions import Effect, EffectOp, Variable, VariableType
from pixsim_scene.domain import Edge, EdgeType, Graph, Node
from pixsim_scene.interchange import ManifestError, SceneData
from pixsim_scene.play import offered, take

pytestmark = pytest.mark.unit
TWINE = Path(__file__).resolve().parent / "cases" / "twine"
ASSET = "0e6b5a53-7f0e-4f4e-9d36-2b5f3d0c9a11"
IFID = "D674C58C-DEFA-4F70-B7A2-27742230C0FC"


def counter() -> Callable[[], str]:
    numbers = itertools.count(1)
    return lambda: f"id-{next(numbers):04d}"


def keep() -> SceneData:
    graph = Graph(
        {
            "h": Node("h", ASSET, order=0, x=10.5, y=20, metadata={"title": "Hall"}),
            "c": Node("c", ASSET, order=1, metadata={"title": "Cellar (old)"}),
            "d": Node("d", "", order=2, metadata={"title": "Door"}),
            "v": Node("v", ASSET, order=3, metadata={"title": "Vault", "ending": True}),
            "s": Node("s", ASSET, order=4, metadata={"title": "Street", "ending": True}),
        },
        {
            "1": Edge(
                "1",
                "h",
                "c",
                EdgeType.CHOICE,
                label="search the cellar",
                effects=(
                    Effect("has_key", EffectOp.SET, True),
                    Effect("visits", EffectOp.INCREMENT, 1.0),
                ),
            ),
            "2": Edge("2", "h", "d", EdgeType.CHOICE, label="try the door", order=1),
            "3": Edge("3", "c", "h", EdgeType.NEXT),
            "4": Edge("4", "d", "v", EdgeType.BRANCH, condition='has_key and mood == "calm"'),
            "5": Edge("5", "d", "s", EdgeType.BRANCH, order=1),
        },
        start_id="h",
    )
    variables = [
        Variable("has_key", VariableType.BOOL, False),
        Variable("visits", VariableType.NUMBER, 0.0),
        Variable("mood", VariableType.STRING, "calm"),
    ]
    return SceneData(
        "The keep", "a story", ["demo"], variables, graph, interchange.node_keys(graph), IFID
    )


def test_an_export_read_back_writes_the_same_bytes_and_says_it_in_sugarcube() -> None:
    first = twee.to_twee(keep())
    read = twee.from_twee(first, counter())
    assert twee.to_twee(read) == first
    assert (read.display_name, read.ifid, read.tags) == ("The keep", IFID, ["demo"])
    text = first.decode()
    assert ":: StoryInit\n<<set $has_key to false>>\n<<set $visits to 0.0>>" in text
    assert ':: Cellar (old) {"pixsim":' in text
    assert "[[search the cellar|Cellar (old)][$has_key to true; $visits += 1.0]]" in text
    assert (
        '<<if $has_key and $mood == "calm">><<goto [[Vault]]>><<else>><<goto [[Street]]>><</if>>'
        in text
    )
    assert "[[Continue|Hall]]" in text
    passages = {p.name: p for p in twee.passages(text)}
    assert passages["Hall"].metadata is not None
    assert passages["Hall"].metadata["position"] == "10,20"  # Twine's tile, rounded


def test_a_header_reads_escapes_tags_and_metadata_and_discards_metadata_that_is_no_json() -> None:
    found = twee.passages(
        ':: A \\[1\\] \\\\ b [x y] {"position":"1,2"}\ntext\n\n\n:: C {broken\nmore'
    )
    assert [(p.name, p.tags, p.metadata, p.text) for p in found] == [
        ("A [1] \\ b", ["x", "y"], {"position": "1,2"}, "text"),
        ("C", [], None, "more"),
    ]


def test_a_scene_without_a_marked_start_comes_back_without_one() -> None:
    data = keep()
    data.graph.start_id = ""
    first = twee.to_twee(data)
    read = twee.from_twee(first, counter())
    assert (read.graph.start_id, twee.to_twee(read)) == ("", first)


def test_a_sugarcube_condition_prefixes_variables_and_leaves_strings_alone() -> None:
    assert twee.sugarcube_condition('mood == "has_key" or not has_key') == (
        '$mood == "has_key" or not $has_key'
    )


def test_a_story_from_the_twine_cookbook_plays_as_it_does_in_sugarcube() -> None:
    read = twee.from_twee((TWINE / "lock-and-key.twee").read_bytes(), counter())
    assert read.display_name == "Lock and Key: Variable in SugarCube"
    assert read.variables == [Variable("key", VariableType.BOOL, False)]
    keys = read.keys
    by_key = {keys[n]: n for n in read.graph.nodes}
    assert list(by_key) == ["Start", "Back Room", "Front Room", "Exit"]
    assert keys[read.graph.start_id] == "Start"
    assert all(node.asset_id == "" for node in read.graph.nodes.values())  # assets to attach

    def leaving(key: str) -> list[Edge]:
        return [e for e in read.graph.edges.values() if e.from_id == by_key[key]]

    def choices(key: str, values: dict[str, bool | float | str]) -> list[str]:
        return [keys[e.to_id] for e in offered(leaving(key), values)]

    values: dict[str, bool | float | str] = {"key": False}
    assert choices("Start", values) == ["Back Room", "Front Room"]
    assert choices("Front Room", values) == ["Back Room"]  # the door is locked
    (into_back,) = [e for e in leaving("Front Room") if keys[e.to_id] == "Back Room"]
    values = take(into_back, values)  # the key lies in the back room
    assert values == {"key": True}
    assert choices("Front Room", values) == ["Exit", "Back Room"]
    assert choices("Exit", values) == []
    (exit_,) = [e for e in leaving("Front Room") if keys[e.to_id] == "Exit"]
    assert exit_.condition == "(key == true)"

    again = twee.to_twee(read)  # and it writes out as any scene does, the same each time
    assert twee.to_twee(twee.from_twee(again, counter())) == again


def test_conditions_beyond_the_grammar_are_kept_as_written_and_not_applied() -> None:
    story = b""":: StoryTitle
Odd

:: Start
<<if $gold * 2 > 10>>[[Buy->Shop]]<</if>>
<<if $gold gte 5 && !$poor>>[[Haggle|Shop][$gold -= 5]]<<elseif $poor>><<goto 'Street'>><</if>>

:: Shop
<<set $gold to 0>><<set $poor to true>>

:: Street
"""
    read = twee.from_twee(story, counter())
    edges = sorted(read.graph.edges.values(), key=lambda e: e.order)
    assert [(read.keys[e.to_id], e.type, e.condition) for e in edges] == [
        ("Shop", EdgeType.CHOICE, ""),
        ("Street", EdgeType.BRANCH, "not (gold >= 5 and not poor) and (poor)"),
    ]
    assert edges[0].metadata == {"twee_condition": "$gold * 2 > 10"}
    assert {v.name: v.type for v in read.variables} == {
        "gold": VariableType.NUMBER,
        "poor": VariableType.BOOL,
    }


@pytest.mark.parametrize(
    ("story", "where"),
    [
        (b"", ""),
        (b":: StoryTitle\nOnly a title\n", ""),
        (b":: Start\n[[Nowhere]]\n", "passage 'Start'"),
        (b":: \nnameless\n", "line 1"),
        (b"\xff\xfe", ""),
    ],
)
def test_a_story_that_cannot_be_a_scene_is_refused(story: bytes, where: str) -> None:
    with pytest.raises(ManifestError) as refused:
        twee.from_twee(story, counter())
    assert refused.value.path == where


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.sampled_from(
            [
                ":: A",
                ":: B [t] {",
                ':: C {"pixsim": {"order": -1}}',
                "[[A]]",
                "[[x|B][$y to 1]]",
                "<<if $y>>",
                "<<else>>",
                "<</if>>",
                "<<set $z += 2>>",
                "<<goto 'A'>>",
                ":: StoryData",
                '{"start": "B"}',
            ]
        )
        | st.text(max_size=20),
        max_size=25,
    )
)
def test_any_text_is_a_scene_or_refused_never_anything_else(lines: list[str]) -> None:
    with contextlib.suppress(ManifestError):
        twee.from_twee("\n".join(lines).encode(), counter())


MEGABYTE = 1024 * 1024
HOSTILE = {
    "a header of spaces": "::a" + " " * MEGABYTE + "b",
    "a header of words": "::" + "a " * MEGABYTE,
    "an unclosed tag block": ":: a [" + "x " * MEGABYTE,
    "openers without closers": ":: S\n" + "[[<<" * MEGABYTE,
    "a million links": ":: S\n" + "[[S]]" * (MEGABYTE // 2),
    "a million sets": ":: S\n" + "<<set $a to 1>>" * (MEGABYTE // 4),
    "ifs a million deep": ":: S\n" + "<<if $a>>" * (MEGABYTE // 2),
    "trailing blank lines": ":: S\n" + "\n" * (4 * MEGABYTE - 8),
}


@pytest.mark.parametrize("text", HOSTILE.values(), ids=list(HOSTILE))
def test_a_hostile_document_is_read_or_refused_in_one_pass(text: str) -> None:
    """Each shape made the first reader backtrack or rescan for minutes; now each is a scene
    or a ManifestError (the suite's timeout would end a reader that went back to that)."""
    with contextlib.suppress(ManifestError):
        twee.from_twee(text.encode()[: interchange.MAX_DOCUMENT_BYTES], counter())
