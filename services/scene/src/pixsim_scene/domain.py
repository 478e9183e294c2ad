"""A scene's graph and its rules, without I/O.

Writes edit a `Graph` in memory through the functions here, which refuse a change that would
break the graph's invariants (both ends of an edge in the scene, one edge per
(from, to, type), a start node that exists); the repository then stores the difference.
`problems` finds what is legal to save but wrong to play: unreachable nodes (given the
conditions), dead ends, choices without labels, cycles of only `next` edges, nodes whose
asset was deleted, and what is wrong with the scene's variables, conditions and effects
(`conditions`).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Any

from pixsim_scene import conditions
from pixsim_scene.conditions import Effect, Variable

# The most a scene holds. A write that would pass them is RESOURCE_EXHAUSTED; the graph is
# read in pages, so the largest scene still fits gRPC's message limit page by page.
MAX_NODES = 10_000
MAX_EDGES = 20_000


class EdgeType(StrEnum):
    NEXT = "NEXT"
    CHOICE = "CHOICE"
    BRANCH = "BRANCH"


class Severity(StrEnum):
    WARNING = "WARNING"
    ERROR = "ERROR"


@dataclass(frozen=True, slots=True)
class Node:
    id: str
    asset_id: str  # "" once the asset was deleted (detached)
    order: int = 0
    x: float = 0.0
    y: float = 0.0
    metadata: dict[str, Any] = field(default_factory=dict)
    detached: bool = False


@dataclass(frozen=True, slots=True)
class Edge:
    id: str
    from_id: str
    to_id: str
    type: EdgeType
    label: str = ""
    metadata: dict[str, Any] = field(default_factory=dict)
    order: int = 0
    # Whether a branch is taken or a choice offered (empty: always), in conditions' grammar.
    condition: str = ""
    # Applied, in order, when a player goes along it.
    effects: tuple[Effect, ...] = ()


class EdgeMap(dict[str, Edge]):
    """Edges by id that also know, without a scan, which edges join two nodes by a type and
    which touch a node: a write's checks cost the same in a scene of ten edges or ten
    thousand."""

    def __init__(self, edges: Mapping[str, Edge] | None = None) -> None:
        super().__init__()
        self._by_key: dict[tuple[str, str, EdgeType], set[str]] = {}
        self._touching: dict[str, set[str]] = {}
        for edge_id, edge in (edges or {}).items():
            self[edge_id] = edge

    def __setitem__(self, edge_id: str, edge: Edge) -> None:
        if edge_id in self:
            self._forget(edge_id)
        super().__setitem__(edge_id, edge)
        self._by_key.setdefault((edge.from_id, edge.to_id, edge.type), set()).add(edge_id)
        for end in (edge.from_id, edge.to_id):
            self._touching.setdefault(end, set()).add(edge_id)

    def __delitem__(self, edge_id: str) -> None:
        self._forget(edge_id)
        super().__delitem__(edge_id)

    def pop(self, edge_id: str, *default: Any) -> Any:
        if edge_id not in self:
            return dict.pop(self, edge_id, *default)
        edge = self[edge_id]
        del self[edge_id]
        return edge

    def _forget(self, edge_id: str) -> None:
        edge = self[edge_id]
        self._by_key[(edge.from_id, edge.to_id, edge.type)].discard(edge_id)
        for end in (edge.from_id, edge.to_id):
            self._touching[end].discard(edge_id)

    def joining(self, from_id: str, to_id: str, type: EdgeType) -> set[str]:
        return set(self._by_key.get((from_id, to_id, type), ()))

    def touching(self, node_id: str) -> set[str]:
        return set(self._touching.get(node_id, ()))


class Graph:
    """A scene's graph, or the part of it that a write touches (see the repository)."""

    def __init__(
        self,
        nodes: Mapping[str, Node] | None = None,
        edges: Mapping[str, Edge] | None = None,
        start_id: str = "",
    ) -> None:
        self.nodes: dict[str, Node] = dict(nodes or {})
        self.edges = EdgeMap(edges)
        self.start_id = start_id

    def copy(self) -> Graph:
        return Graph(self.nodes, self.edges, self.start_id)


class Rejected(Exception):
    """A change the graph cannot take; `field` is relative to the change that was refused."""

    def __init__(self, message: str, *, field: str, reason: str) -> None:
        super().__init__(message)
        self.field = field
        self.reason = reason


# ---- editing ------------------------------------------------------------------------


def add_node(graph: Graph, node: Node) -> None:
    if node.id in graph.nodes:
        raise Rejected(f"scene asset {node.id} already exists", field="name", reason="DUPLICATE")
    graph.nodes[node.id] = node


def replace_node(graph: Graph, node: Node) -> None:
    if node.id not in graph.nodes:
        raise Rejected(f"no scene asset {node.id} in this scene", field="name", reason="NOT_FOUND")
    graph.nodes[node.id] = node


def remove_node(graph: Graph, node_id: str) -> None:
    """Remove a node with every edge that touches it (and the start mark, if it was it)."""
    if graph.nodes.pop(node_id, None) is None:
        raise Rejected(f"no scene asset {node_id} in this scene", field="name", reason="NOT_FOUND")
    for edge_id in graph.edges.touching(node_id):
        del graph.edges[edge_id]
    if graph.start_id == node_id:
        graph.start_id = ""


def _check_edge(graph: Graph, edge: Edge) -> None:
    for end, field_name in ((edge.from_id, "from_scene_asset"), (edge.to_id, "to_scene_asset")):
        if end not in graph.nodes:
            raise Rejected(
                f"scene asset {end} is not in this scene", field=field_name, reason="NOT_IN_SCENE"
            )
    if graph.edges.joining(edge.from_id, edge.to_id, edge.type) - {edge.id}:
        raise Rejected(
            f"a {edge.type.value} connection from {edge.from_id} to {edge.to_id} exists",
            field="type",
            reason="DUPLICATE_CONNECTION",
        )


def add_edge(graph: Graph, edge: Edge) -> None:
    if edge.id in graph.edges:
        raise Rejected(f"connection {edge.id} already exists", field="name", reason="DUPLICATE")
    _check_edge(graph, edge)
    graph.edges[edge.id] = edge


def replace_edge(graph: Graph, edge: Edge) -> None:
    if edge.id not in graph.edges:
        raise Rejected(f"no connection {edge.id} in this scene", field="name", reason="NOT_FOUND")
    _check_edge(graph, edge)
    graph.edges[edge.id] = edge


def remove_edge(graph: Graph, edge_id: str) -> None:
    if graph.edges.pop(edge_id, None) is None:
        raise Rejected(f"no connection {edge_id} in this scene", field="name", reason="NOT_FOUND")


def set_start(graph: Graph, node_id: str) -> None:
    if node_id and node_id not in graph.nodes:
        raise Rejected(
            f"scene asset {node_id} is not in this scene",
            field="start_scene_asset",
            reason="NOT_IN_SCENE",
        )
    graph.start_id = node_id


def detach(graph: Graph, asset_id: str) -> bool:
    """Mark every node showing `asset_id` detached; whether any was."""
    hit = [n for n in graph.nodes.values() if n.asset_id == asset_id]
    for node in hit:
        graph.nodes[node.id] = replace(node, asset_id="", detached=True)
    return bool(hit)


def clone(
    graph: Graph, new_id: Callable[[], str], keeps_asset: Callable[[str], bool]
) -> tuple[Graph, dict[str, str]]:
    """The same graph under new ids (and the old-to-new map). A node whose asset the new
    owner may not use is kept in place, detached, so the structure survives the copy."""
    ids = {old: new_id() for old in [*graph.nodes, *graph.edges]}
    nodes = {}
    for node in graph.nodes.values():
        kept = bool(node.asset_id) and keeps_asset(node.asset_id)
        nodes[ids[node.id]] = replace(
            node,
            id=ids[node.id],
            asset_id=node.asset_id if kept else "",
            detached=node.detached or not kept,
            metadata=copy.deepcopy(node.metadata),
        )
    edges = {
        ids[e.id]: replace(
            e,
            id=ids[e.id],
            from_id=ids[e.from_id],
            to_id=ids[e.to_id],
            metadata=copy.deepcopy(e.metadata),
        )
        for e in graph.edges.values()
    }
    return Graph(nodes, edges, ids.get(graph.start_id, "")), ids


# ---- problems -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True, order=True)
class Problem:
    code: str
    subject: str  # a node or edge id, or a variable's name
    severity: Severity
    message: str
    kind: str = "assets"  # what `subject` is: assets, connections or variables


def _successors(
    graph: Graph,
    types: Iterable[EdgeType] = tuple(EdgeType),
    never: frozenset[str] = frozenset(),
) -> dict[str, list[str]]:
    """Each node's targets, leaving out the edges in `never` (whose condition never holds)."""
    wanted = set(types)
    out: dict[str, list[str]] = {node_id: [] for node_id in graph.nodes}
    for edge in sorted(graph.edges.values(), key=lambda e: (e.order, e.id)):
        if edge.type in wanted and edge.id not in never:
            out[edge.from_id].append(edge.to_id)
    return out


def start_of(graph: Graph) -> str:
    """The node a player starts from: the marked one, else the first by (order, id)."""
    if graph.start_id in graph.nodes:
        return graph.start_id
    first = min(graph.nodes.values(), key=lambda n: (n.order, n.id), default=None)
    return first.id if first is not None else ""


def reachable(graph: Graph, start: str, never: frozenset[str] = frozenset()) -> set[str]:
    successors = _successors(graph, never=never)
    seen = {start} if start else set()
    stack = [start] if start else []
    while stack:
        for target in successors[stack.pop()]:
            if target not in seen:
                seen.add(target)
                stack.append(target)
    return seen


def next_cycles(graph: Graph) -> list[list[str]]:
    """Strongly connected sets of nodes joined by `next` edges alone that loop (Tarjan's
    algorithm, iterative): a player in one never leaves without a choice."""
    successors = _successors(graph, [EdgeType.NEXT])
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    cycles: list[list[str]] = []
    counter = 0
    for root in sorted(graph.nodes):
        if root in index:
            continue
        work: list[tuple[str, int]] = [(root, 0)]
        while work:
            node, child = work.pop()
            if child == 0:
                index[node] = low[node] = counter
                counter += 1
                stack.append(node)
                on_stack.add(node)
            targets = successors[node]
            if child < len(targets):
                work.append((node, child + 1))
                target = targets[child]
                if target not in index:
                    work.append((target, 0))
                elif target in on_stack:
                    low[node] = min(low[node], index[target])
                continue
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1 or node in successors[node]:
                    cycles.append(sorted(component))
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
    return sorted(cycles)


def problems(graph: Graph, variables: Sequence[Variable] = ()) -> list[Problem]:
    """Everything wrong with playing this graph, sorted by (code, subject)."""
    found, never = state_problems(graph, variables)
    if not graph.nodes:
        return sorted(found)
    start = start_of(graph)
    if not graph.start_id:
        found.append(
            Problem(
                "NO_START_NODE",
                start,
                Severity.WARNING,
                "no start is marked; a player would begin at the first scene asset by order",
            )
        )
    seen = reachable(graph, start, never)
    successors = _successors(graph)
    for node in graph.nodes.values():
        if node.id not in seen:
            found.append(
                Problem(
                    "UNREACHABLE_NODE",
                    node.id,
                    Severity.ERROR,
                    "no path from the start (a connection whose condition never holds is none)",
                )
            )
        if not successors[node.id] and not node.metadata.get("ending"):
            found.append(
                Problem(
                    "DEAD_END",
                    node.id,
                    Severity.WARNING,
                    'nothing follows it and it is not marked {"ending": true}',
                )
            )
        if node.detached:
            found.append(
                Problem("DETACHED_ASSET", node.id, Severity.ERROR, "its asset was deleted")
            )
        elif not node.asset_id:
            found.append(
                Problem(
                    "NO_ASSET",
                    node.id,
                    Severity.WARNING,
                    "no asset is attached yet (an imported passage): a player sees no clip",
                )
            )
    for edge in graph.edges.values():
        if edge.type is EdgeType.CHOICE and not edge.label.strip():
            found.append(
                Problem(
                    "CHOICE_WITHOUT_LABEL",
                    edge.id,
                    Severity.ERROR,
                    "a choice needs a label to show the viewer",
                    "connections",
                )
            )
    for cycle in next_cycles(graph):
        found.append(
            Problem(
                "NEXT_CYCLE",
                cycle[0],
                Severity.ERROR,
                f"{len(cycle)} scene asset(s) loop through next edges only: {', '.join(cycle)}",
            )
        )
    return sorted(found)


def state_problems(
    graph: Graph, variables: Sequence[Variable]
) -> tuple[list[Problem], frozenset[str]]:
    """What is wrong with the variables, conditions and effects, and the edges whose
    condition can never hold (so a player never goes along them)."""
    found: list[Problem] = []
    types = {v.name: v.type for v in variables}
    written = {effect.variable for edge in graph.edges.values() for effect in edge.effects}
    # A variable no effect writes keeps its initial value: a condition over only such
    # variables has one value for every player.
    fixed = {v.name: v.initial for v in variables if v.name not in written}
    read: set[str] = set()
    never: set[str] = set()

    def edge_problem(code: str, edge: Edge, severity: Severity, message: str) -> None:
        found.append(Problem(code, edge.id, severity, message, "connections"))

    for edge in graph.edges.values():
        for effect in edge.effects:
            wrong = conditions.check_effect(effect, types)
            if wrong is not None:
                edge_problem(wrong.code, edge, Severity.ERROR, wrong.message)
        if not edge.condition.strip():
            continue
        if edge.type is EdgeType.NEXT:
            edge_problem(
                "CONDITION_ON_NEXT",
                edge,
                Severity.ERROR,
                "a next connection always follows; make it a branch to give it a condition",
            )
        try:
            expr = conditions.parse(edge.condition)
        except conditions.ConditionSyntaxError as error:
            edge_problem("CONDITION_SYNTAX", edge, Severity.ERROR, str(error))
            continue
        read.update(name.name for name in conditions.names_in(expr))
        typed = conditions.check(expr, types)
        for wrong in typed:
            edge_problem(wrong.code, edge, Severity.ERROR, wrong.message)
        value = None if typed else conditions.constant(expr, fixed)
        if value is not None:
            edge_problem(
                "CONSTANT_CONDITION",
                edge,
                Severity.WARNING,
                "it always holds" if value else "it never holds: nothing goes along it",
            )
            if not value:
                never.add(edge.id)
    for variable in variables:
        if variable.name not in read:
            found.append(
                Problem(
                    "UNUSED_VARIABLE",
                    variable.name,
                    Severity.WARNING,
                    "no condition reads it",
                    "variables",
                )
            )
    # A player at a node goes along the first branch (by order) whose condition holds; if
    # none does, picks among the choices whose conditions hold; else follows the next
    # connection. A branch without a condition is always taken: whatever comes after it
    # at its node is never used.
    leaving: dict[str, list[Edge]] = {}
    for edge in graph.edges.values():
        leaving.setdefault(edge.from_id, []).append(edge)
    for node_id, edges in leaving.items():
        branches = sorted(
            (e for e in edges if e.type is EdgeType.BRANCH), key=lambda e: (e.order, e.id)
        )
        if not branches:
            continue
        default = next((e for e in branches if not e.condition.strip()), None)
        if default is None:
            if len(branches) == len(edges):
                found.append(
                    Problem(
                        "BRANCH_WITHOUT_DEFAULT",
                        node_id,
                        Severity.ERROR,
                        "when none of its branches' conditions holds, a player is stuck here:"
                        " give its last branch no condition",
                    )
                )
            continue
        after = branches[branches.index(default) + 1 :]
        for edge in after + [e for e in edges if e.type is not EdgeType.BRANCH]:
            never.add(edge.id)
            edge_problem(
                "SHADOWED_CONNECTION",
                edge,
                Severity.WARNING,
                f"never used: the branch {default.id} before it has no condition,"
                " so it is always taken",
            )
    return found, frozenset(never)
