"""The graph rules and checks, without I/O; property tests on random graphs."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pixsim_scene.conditions import Effect, EffectOp, Variable, VariableType
from pixsim_scene.domain import (
    Edge,
    EdgeType,
    Graph,
    Node,
    Rejected,
    add_edge,
    add_node,
    clone,
    detach,
    next_cycles,
    problems,
    reachable,
    remove_node,
    replace_edge,
    start_of,
    state_problems,
)


def graph_of(edges: list[tuple[str, str, EdgeType]], nodes: str = "", start: str = "") -> Graph:
    graph = Graph(start_id=start)
    for name in sorted(set(nodes) | {e[0] for e in edges} | {e[1] for e in edges}):
        add_node(graph, Node(name, f"asset-{name}", metadata={}))
    for index, (a, b, kind) in enumerate(edges):
        add_edge(graph, Edge(f"e{index}", a, b, kind, label=f"go {b}"))
    return graph


def codes(graph: Graph) -> set[tuple[str, str]]:
    return {(p.code, p.subject) for p in problems(graph)}


N, C, B = EdgeType.NEXT, EdgeType.CHOICE, EdgeType.BRANCH


def test_a_well_formed_story_has_only_its_marked_ending_to_report() -> None:
    graph = graph_of([("a", "b", N), ("b", "c", C), ("b", "d", C), ("c", "d", N)], start="a")
    graph.nodes["d"] = Node("d", "asset-d", metadata={"ending": True})
    assert problems(graph) == []


def test_each_kind_of_problem_names_its_node_or_edge() -> None:
    graph = graph_of([("a", "b", N), ("b", "c", N), ("c", "b", N), ("a", "d", C)], nodes="x")
    graph.edges["e3"] = Edge("e3", "a", "d", C, label=" ")
    detach(graph, "asset-c")
    assert codes(graph) == {
        ("NO_START_NODE", "a"),
        ("UNREACHABLE_NODE", "x"),
        ("DEAD_END", "d"),
        ("DEAD_END", "x"),
        ("CHOICE_WITHOUT_LABEL", "e3"),
        ("NEXT_CYCLE", "b"),
        ("DETACHED_ASSET", "c"),
    }


def test_edges_must_join_nodes_of_the_scene_once_per_type() -> None:
    graph = graph_of([("a", "b", N)])
    with pytest.raises(Rejected) as outside:
        add_edge(graph, Edge("e9", "a", "elsewhere", N))
    assert (outside.value.field, outside.value.reason) == ("to_scene_asset", "NOT_IN_SCENE")
    with pytest.raises(Rejected) as duplicate:
        add_edge(graph, Edge("e9", "a", "b", N))
    assert duplicate.value.reason == "DUPLICATE_CONNECTION"
    add_edge(graph, Edge("e9", "a", "b", C, label="again"))  # another type is another edge
    with pytest.raises(Rejected):
        replace_edge(graph, Edge("e9", "a", "b", N))


def test_removing_a_node_takes_its_edges_and_start_mark() -> None:
    graph = graph_of([("a", "b", N), ("b", "c", N)], start="b")
    remove_node(graph, "b")
    assert (set(graph.nodes), graph.edges, graph.start_id) == ({"a", "c"}, {}, "")


def test_a_clone_is_the_same_graph_under_new_ids_with_foreign_assets_detached() -> None:
    graph = graph_of([("a", "b", N), ("b", "c", C)], start="a")
    counter = itertools.count()
    copied, ids = clone(graph, lambda: f"n{next(counter)}", lambda asset: asset != "asset-c")
    assert copied.start_id == ids["a"]
    assert copied.nodes[ids["c"]].detached
    assert copied.nodes[ids["c"]].asset_id == ""
    assert {(e.from_id, e.to_id, e.type) for e in copied.edges.values()} == {
        (ids["a"], ids["b"], N),
        (ids["b"], ids["c"], C),
    }


# ---- properties -------------------------------------------------------------------------

NAMES = "abcdefgh"


@st.composite
def graphs(draw: st.DrawFn) -> Graph:
    nodes = draw(st.sets(st.sampled_from(NAMES), min_size=1))
    graph = Graph(start_id=draw(st.sampled_from([*sorted(nodes), ""])))
    for name in sorted(nodes):
        graph.nodes[name] = Node(
            name,
            f"asset-{name}",
            order=draw(st.integers(0, 3)),
            metadata={"ending": True} if draw(st.booleans()) else {},
            detached=draw(st.booleans()),
        )
    triples = st.tuples(
        st.sampled_from(sorted(nodes)),
        st.sampled_from(sorted(nodes)),
        st.sampled_from(list(EdgeType)),
    )
    for index, (a, b, kind) in enumerate(draw(st.lists(triples, max_size=16, unique=True))):
        label = draw(st.sampled_from(["", "left", "right"]))
        # Distinct orders: which branch a player takes never rests on ids, which clones change.
        graph.edges[f"e{index}"] = Edge(f"e{index}", a, b, kind, label=label, order=index)
    return graph


def loops_by_next(graph: Graph, node: str) -> bool:
    """Brute force: can `node` reach itself through one or more next edges?"""
    frontier = {e.to_id for e in graph.edges.values() if e.from_id == node and e.type is N}
    seen: set[str] = set()
    while frontier:
        current = frontier.pop()
        if current == node:
            return True
        if current in seen:
            continue
        seen.add(current)
        frontier |= {e.to_id for e in graph.edges.values() if e.from_id == current and e.type is N}
    return False


@settings(max_examples=300)
@given(graphs())
def test_next_cycles_are_exactly_the_nodes_that_loop_through_next_edges(graph: Graph) -> None:
    in_cycles = {n for cycle in next_cycles(graph) for n in cycle}
    assert in_cycles == {n for n in graph.nodes if loops_by_next(graph, n)}


@settings(max_examples=300)
@given(graphs())
def test_every_problem_names_a_real_element_and_unreachable_means_no_path(graph: Graph) -> None:
    start = start_of(graph)
    _, never = state_problems(graph, ())  # what follows a branch without a condition
    seen = reachable(graph, start, never)
    for problem in problems(graph):
        assert problem.subject in graph.nodes or problem.subject in graph.edges
        if problem.code == "UNREACHABLE_NODE":
            assert problem.subject not in seen
    unreachable = {p.subject for p in problems(graph) if p.code == "UNREACHABLE_NODE"}
    assert unreachable == set(graph.nodes) - seen


@settings(max_examples=200)
@given(graphs())
def test_linking_the_start_to_every_node_leaves_nothing_unreachable(graph: Graph) -> None:
    start = start_of(graph)
    for edge in list(graph.edges.values()):  # a branch at the start would take them over
        if edge.from_id == start and edge.type is B:
            del graph.edges[edge.id]
    for index, node in enumerate(sorted(graph.nodes)):
        if node != start:
            graph.edges[f"link{index}"] = Edge(f"link{index}", start, node, C, label="go")
    assert not [p for p in problems(graph) if p.code == "UNREACHABLE_NODE"]


@settings(max_examples=200)
@given(graphs())
def test_a_clone_has_the_same_problems_up_to_ids(graph: Graph) -> None:
    counter = itertools.count()
    copied, ids = clone(graph, lambda: f"z{next(counter):03d}", lambda _asset: True)
    back = {new: old for old, new in ids.items()}
    if not graph.start_id:
        return  # without a marked start, the start is chosen by id order, which clones change
    original = {(p.code, p.subject) for p in problems(graph)}
    assert {(p.code, back[p.subject]) for p in problems(copied)} == original


def test_the_state_of_a_scene_is_checked_with_stable_codes() -> None:
    graph = graph_of([("a", "b", N)], nodes="abcdefg", start="a")
    for node in "cdefg":
        graph.nodes[node] = Node(node, f"asset-{node}", metadata={"ending": True})
    edges = [
        # From b: a branch on the key, a default, and a branch on a number read as a bool.
        Edge(
            "has-key",
            "b",
            "c",
            B,
            order=0,
            condition="has_key",
            effects=(Effect("score", EffectOp.INCREMENT, 1.0),),
        ),
        Edge("default", "b", "d", B, order=2),
        Edge("mistyped", "b", "e", B, condition="score and has_key", order=1),
        # A choice over a variable never declared, and an effect of the wrong type.
        Edge(
            "ghost",
            "c",
            "e",
            C,
            label="go",
            condition="lives > 0",
            effects=(Effect("has_key", EffectOp.SET, "yes"),),
        ),
        # A condition that can never hold: `locked` is written by no effect.
        Edge("never", "c", "f", C, label="open", condition="not locked"),
        # Branches that may all fail, and a condition a next connection cannot have.
        Edge("stuck", "d", "g", B, condition="score > 2"),
        Edge("gated-next", "e", "d", N, condition="has_key"),
    ]
    for edge in edges:
        add_edge(graph, edge)
    variables = [
        Variable("has_key", VariableType.BOOL, False),
        Variable("score", VariableType.NUMBER, 0.0),
        Variable("locked", VariableType.BOOL, True),
        Variable("mood", VariableType.STRING, "calm"),
    ]
    found = {(p.code, p.kind, p.subject) for p in problems(graph, variables)}
    assert found == {
        ("TYPE_MISMATCH", "connections", "mistyped"),
        ("UNDEFINED_VARIABLE", "connections", "ghost"),
        ("TYPE_MISMATCH", "connections", "ghost"),
        ("CONSTANT_CONDITION", "connections", "never"),
        ("UNREACHABLE_NODE", "assets", "f"),  # only the connection that never holds leads there
        ("BRANCH_WITHOUT_DEFAULT", "assets", "d"),
        ("CONDITION_ON_NEXT", "connections", "gated-next"),
        ("UNUSED_VARIABLE", "variables", "mood"),
    }


def test_a_conditional_story_without_mistakes_has_nothing_to_report() -> None:
    graph = graph_of([], nodes="amxbc", start="a")
    for node in "xbc":
        graph.nodes[node] = Node(node, f"asset-{node}", metadata={"ending": True})
    search = (Effect("has_key", EffectOp.SET, True), Effect("score", EffectOp.INCREMENT, 1.0))
    for edge in (
        Edge("search", "a", "a", C, label="search", condition="not has_key", effects=search),
        Edge("open", "a", "m", C, label="open the door", condition="has_key"),
        Edge("leave", "a", "x", C, label="leave"),
        Edge("lucky", "m", "b", B, condition="score >= 1 and has_key"),
        Edge("else", "m", "c", B, order=1),
    ):
        add_edge(graph, edge)
    variables = [
        Variable("has_key", VariableType.BOOL, False),
        Variable("score", VariableType.NUMBER, 0.0),
    ]
    assert problems(graph, variables) == []


def test_what_follows_a_branch_without_a_condition_is_never_used() -> None:
    graph = graph_of([], nodes="abcd", start="a")
    for node in "bcd":
        graph.nodes[node] = Node(node, f"asset-{node}", metadata={"ending": True})
    add_edge(graph, Edge("always", "a", "b", B))
    add_edge(graph, Edge("later", "a", "c", B, condition="true", order=1))
    add_edge(graph, Edge("pick", "a", "d", C, label="d"))
    found = {(p.code, p.subject) for p in problems(graph)}
    assert found == {
        ("SHADOWED_CONNECTION", "later"),
        ("SHADOWED_CONNECTION", "pick"),
        ("CONSTANT_CONDITION", "later"),
        ("UNREACHABLE_NODE", "c"),
        ("UNREACHABLE_NODE", "d"),
    }
