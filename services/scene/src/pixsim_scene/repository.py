"""The scene tables, and loading and saving a scene with its graph.

Every write locks the scene row (`SELECT ... FOR UPDATE`), loads the part of the graph its
changes touch (`load_part`: the elements they name, the connections that could duplicate
one of theirs, the connections of nodes they delete), edits it in memory and stores the
difference, and bumps `version` (the etag). So concurrent writers of one scene take turns,
a writer holding an old etag is refused, and a write costs what it changes, not what the
scene holds.

Element ids may be chosen by the caller, and ids are unique across every scene. A new
element is a plain INSERT and a changed one an UPDATE under its own scene: no write can
reach a row of another scene, whoever owns it.

Deleted assets are remembered in `deleted_assets` per owner, and writers and the
`asset.deleted` consumer take a transaction-scoped advisory lock per asset id, so an asset
deleted while a write that places it is in flight is either refused by the write or
detached by the consumer, never left attached.
"""

from __future__ import annotations

import uuid
import zlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    PrimaryKeyConstraint,
    Row,
    Table,
    Text,
    UniqueConstraint,
    bindparam,
    delete,
    func,
    literal,
    select,
    text,
    tuple_,
    update,
)
from sqlalchemy.dialects.postgresql import ARRAY, JSONB, UUID, insert
from sqlalchemy.ext.asyncio import AsyncSession

from pixsim_common.db import any_of
from pixsim_common.pagination import PageTokens
from pixsim_scene.conditions import (
    Value,
    Variable,
    effect_from_json,
    effect_to_json,
    from_json,
    variable_from_json,
    variable_to_json,
)
from pixsim_scene.domain import Edge, EdgeType, Graph, Node
from pixsim_scene.play import PlayState

metadata = MetaData()

scenes = Table(
    "scenes",
    metadata,
    Column("id", UUID(as_uuid=False), primary_key=True),
    Column("owner_id", Text, nullable=False),
    Column("display_name", Text, nullable=False),
    Column("description", Text, nullable=False, server_default=""),
    Column("tags", ARRAY(Text), nullable=False, server_default="{}"),
    Column("is_template", Boolean, nullable=False, server_default="false"),
    Column("start_scene_asset_id", UUID(as_uuid=False)),
    Column("version", BigInteger, nullable=False, server_default="1"),
    # Kept by every write, so the size limit is checked without counting the graph.
    Column("node_count", Integer, nullable=False, server_default="0"),
    Column("edge_count", Integer, nullable=False, server_default="0"),
    # [{name, type, initial}]: the state a playthrough carries (conditions.Variable).
    Column("variables", JSONB, nullable=False, server_default="[]"),
    # The story's IFID when it came from a document that had one (Twine's identifier).
    Column("ifid", UUID(as_uuid=False)),
    Column("create_time", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("update_time", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Index("scenes_by_owner_newest", "owner_id", text("create_time DESC"), text("id DESC")),
    Index("scenes_by_tag", "tags", postgresql_using="gin"),
)

scene_assets = Table(
    "scene_assets",
    metadata,
    Column("id", UUID(as_uuid=False), primary_key=True),
    Column(
        "scene_id", UUID(as_uuid=False), ForeignKey("scenes.id", ondelete="CASCADE"), nullable=False
    ),
    Column("asset_id", UUID(as_uuid=False)),
    Column("order", Integer, nullable=False, server_default="0"),
    Column("position_x", Float, nullable=False, server_default="0"),
    Column("position_y", Float, nullable=False, server_default="0"),
    Column("metadata", JSONB, nullable=False, server_default="{}"),
    Column("detached", Boolean, nullable=False, server_default="false"),
    Index("scene_assets_by_scene", "scene_id"),
    Index("scene_assets_by_asset", "asset_id"),
)

scene_connections = Table(
    "scene_connections",
    metadata,
    Column("id", UUID(as_uuid=False), primary_key=True),
    Column(
        "scene_id", UUID(as_uuid=False), ForeignKey("scenes.id", ondelete="CASCADE"), nullable=False
    ),
    Column(
        "from_id",
        UUID(as_uuid=False),
        ForeignKey("scene_assets.id", ondelete="CASCADE"),
        nullable=False,
    ),
    Column(
        "to_id",
        UUID(as_uuid=False),
        ForeignKey("scene_assets.id", ondelete="CASCADE"),
        nullable=False,
    ),
    Column("type", Text, nullable=False),
    Column("label", Text, nullable=False, server_default=""),
    Column("metadata", JSONB, nullable=False, server_default="{}"),
    Column("order", Integer, nullable=False, server_default="0"),
    Column("condition", Text, nullable=False, server_default=""),
    # [{variable, op, value}] (conditions.Effect), applied in order.
    Column("effects", JSONB, nullable=False, server_default="[]"),
    # Deferred: a batch may swap two edges' types; only the committed graph must be unique.
    UniqueConstraint(
        "from_id",
        "to_id",
        "type",
        name="scene_connections_one_per_type",
        deferrable=True,
        initially="DEFERRED",
    ),
    Index("scene_connections_by_scene", "scene_id"),
)

# Per owner: an event naming another owner's asset records nothing of theirs.
deleted_assets = Table(
    "deleted_assets",
    metadata,
    Column("asset_id", UUID(as_uuid=False), nullable=False),
    Column("owner_id", Text, nullable=False),
    Column("deleted_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    PrimaryKeyConstraint("asset_id", "owner_id"),
)

# A player's way through a scene. It plays the scene at `scene_version`; `variables` holds
# {name: value} of the scene's variables now. A deleted scene takes its playthroughs along.
playthroughs = Table(
    "playthroughs",
    metadata,
    Column("id", UUID(as_uuid=False), primary_key=True),
    Column("owner_id", Text, nullable=False),
    Column(
        "scene_id", UUID(as_uuid=False), ForeignKey("scenes.id", ondelete="CASCADE"), nullable=False
    ),
    Column("scene_version", BigInteger, nullable=False),
    Column("request_id", UUID(as_uuid=False)),
    Column("state", Text, nullable=False),
    Column("failure_reason", Text, nullable=False, server_default=""),
    Column("step", BigInteger, nullable=False, server_default="0"),
    Column("current_id", UUID(as_uuid=False), nullable=False),
    Column("variables", JSONB, nullable=False, server_default="{}"),
    Column("create_time", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("update_time", DateTime(timezone=True), nullable=False, server_default=func.now()),
    UniqueConstraint("owner_id", "request_id", name="playthroughs_one_per_request"),
    Index("playthroughs_by_owner_newest", "owner_id", text("create_time DESC"), text("id DESC")),
    Index("playthroughs_by_scene", "scene_id"),
)

# The connection each step went along: a step sent again is answered, not taken twice.
playthrough_steps = Table(
    "playthrough_steps",
    metadata,
    Column(
        "playthrough_id",
        UUID(as_uuid=False),
        ForeignKey("playthroughs.id", ondelete="CASCADE"),
        nullable=False,
    ),
    Column("step", BigInteger, nullable=False),
    Column("connection_id", UUID(as_uuid=False), nullable=False),
    Column("create_time", DateTime(timezone=True), nullable=False, server_default=func.now()),
    PrimaryKeyConstraint("playthrough_id", "step"),
)


@dataclass
class Scene:
    id: str
    owner_id: str
    display_name: str
    description: str = ""
    tags: list[str] = field(default_factory=list)
    is_template: bool = False
    version: int = 1
    node_count: int = 0
    edge_count: int = 0
    create_time: datetime | None = None
    update_time: datetime | None = None
    graph: Graph = field(default_factory=Graph)
    variables: list[Variable] = field(default_factory=list)
    ifid: str = ""

    @property
    def etag(self) -> str:
        return str(self.version)


def _to_scene(row: Row[Any], graph: Graph | None = None) -> Scene:
    return Scene(
        id=row.id,
        owner_id=row.owner_id,
        display_name=row.display_name,
        description=row.description,
        tags=list(row.tags),
        is_template=row.is_template,
        version=row.version,
        node_count=row.node_count,
        edge_count=row.edge_count,
        create_time=row.create_time,
        update_time=row.update_time,
        graph=graph or Graph(start_id=row.start_scene_asset_id or ""),
        variables=[variable_from_json(v) for v in row.variables],
        ifid=row.ifid or "",
    )


def _node(row: Row[Any]) -> Node:
    return Node(
        id=row.id,
        asset_id=row.asset_id or "",
        order=row.order,
        x=row.position_x,
        y=row.position_y,
        metadata=row.metadata,
        detached=row.detached,
    )


def _edge(row: Row[Any]) -> Edge:
    return Edge(
        id=row.id,
        from_id=row.from_id,
        to_id=row.to_id,
        type=EdgeType(row.type),
        label=row.label,
        metadata=row.metadata,
        order=row.order,
        condition=row.condition,
        effects=tuple(effect_from_json(e) for e in row.effects),
    )


def _node_values(scene_id: str, node: Node) -> dict[str, Any]:
    return {
        "id": node.id,
        "scene_id": scene_id,
        "asset_id": node.asset_id or None,
        "order": node.order,
        "position_x": node.x,
        "position_y": node.y,
        "metadata": node.metadata,
        "detached": node.detached,
    }


def _edge_values(scene_id: str, edge: Edge) -> dict[str, Any]:
    return {
        "id": edge.id,
        "scene_id": scene_id,
        "from_id": edge.from_id,
        "to_id": edge.to_id,
        "type": edge.type.value,
        "label": edge.label,
        "metadata": edge.metadata,
        "order": edge.order,
        "condition": edge.condition,
        "effects": [effect_to_json(e) for e in edge.effects],
    }


async def insert_scene(session: AsyncSession, scene: Scene) -> Scene:
    """Insert a scene with its graph (a new scene has none; a clone has its copy)."""
    row = (
        await session.execute(
            insert(scenes)
            .values(
                id=scene.id,
                owner_id=scene.owner_id,
                display_name=scene.display_name,
                description=scene.description,
                tags=scene.tags,
                is_template=scene.is_template,
                start_scene_asset_id=scene.graph.start_id or None,
                variables=[variable_to_json(v) for v in scene.variables],
                ifid=scene.ifid or None,
                node_count=len(scene.graph.nodes),
                edge_count=len(scene.graph.edges),
            )
            .returning(*scenes.c)
        )
    ).one()
    await save_graph(session, scene.id, Graph(), scene.graph)
    return _to_scene(row, scene.graph)


async def load(
    session: AsyncSession,
    scene_id: str,
    *,
    owner_id: str | None = None,
    lock: bool = False,
    with_graph: bool = True,
) -> Scene | None:
    """The scene (locked for update when asked); None when missing or not the owner's."""
    query = select(scenes).where(scenes.c.id == scene_id)
    if owner_id is not None:
        query = query.where(scenes.c.owner_id == owner_id)
    if lock:
        query = query.with_for_update()
    row = (await session.execute(query)).first()
    if row is None:
        return None
    if not with_graph:
        return _to_scene(row)
    nodes = await session.execute(select(scene_assets).where(scene_assets.c.scene_id == scene_id))
    edges = await session.execute(
        select(scene_connections).where(scene_connections.c.scene_id == scene_id)
    )
    graph = Graph(
        {r.id: _node(r) for r in nodes},
        {r.id: _edge(r) for r in edges},
        row.start_scene_asset_id or "",
    )
    return _to_scene(row, graph)


@dataclass(frozen=True)
class Refs:
    """What a batch of changes names, so that only that part of a graph is loaded."""

    nodes: set[str] = field(default_factory=set)  # scene assets named anywhere
    edges: set[str] = field(default_factory=set)  # connections named anywhere
    deleted_nodes: set[str] = field(default_factory=set)  # their connections go with them
    # Connections created or updated -> (from, to) when the change sets them, else None.
    ends: dict[str, tuple[str | None, str | None]] = field(default_factory=dict)


@dataclass(frozen=True)
class Part:
    """The part of a scene's graph a write touches, and the ids it named that belong to
    another scene (whoever's): a create with one of those is ALREADY_EXISTS."""

    graph: Graph
    foreign_nodes: set[str]
    foreign_edges: set[str]


async def load_part(session: AsyncSession, scene: Scene, refs: Refs) -> Part:
    """The elements `refs` names, the connections that could duplicate one the changes make,
    and the connections of nodes they delete: everything the domain's rules look at."""
    edge_rows = await _rows(session, scene_connections, refs.edges)
    mine_edges = {r.id: _edge(r) for r in edge_rows if r.scene_id == scene.id}
    node_ids = refs.nodes | {end for e in mine_edges.values() for end in (e.from_id, e.to_id)}
    node_rows = await _rows(session, scene_assets, node_ids)
    edges = dict(mine_edges)
    pairs = set()
    for edge_id, (from_id, to_id) in refs.ends.items():
        current = mine_edges.get(edge_id)
        from_id = from_id or (current.from_id if current else None)
        to_id = to_id or (current.to_id if current else None)
        if from_id and to_id:
            pairs.add((from_id, to_id))
    if pairs:
        froms, tos = zip(*sorted(pairs), strict=True)
        joining = await session.execute(
            text(
                "SELECT c.* FROM scene_connections c"
                " JOIN unnest(CAST(:froms AS uuid[]), CAST(:tos AS uuid[])) AS p(f, t)"
                " ON c.from_id = p.f AND c.to_id = p.t WHERE c.scene_id = :scene"
            ).columns(*scene_connections.c),
            {"froms": list(froms), "tos": list(tos), "scene": scene.id},
        )
        edges |= {r.id: _edge(r) for r in joining}
    if refs.deleted_nodes:
        touching = await session.execute(
            select(scene_connections).where(
                scene_connections.c.scene_id == scene.id,
                any_of(scene_connections.c.from_id, refs.deleted_nodes)
                | any_of(scene_connections.c.to_id, refs.deleted_nodes),
            )
        )
        edges |= {r.id: _edge(r) for r in touching}
    graph = Graph(
        {r.id: _node(r) for r in node_rows if r.scene_id == scene.id},
        edges,
        scene.graph.start_id,
    )
    return Part(
        graph,
        {r.id for r in node_rows if r.scene_id != scene.id},
        {r.id for r in edge_rows if r.scene_id != scene.id},
    )


async def _rows(session: AsyncSession, table: Table, ids: set[str]) -> list[Row[Any]]:
    """Rows of `table` with these ids, in any scene; ids that are no UUID name nothing."""
    wanted = [i for i in ids if _is_uuid(i)]
    if not wanted:
        return []
    return list((await session.execute(select(table).where(any_of(table.c.id, wanted)))).all())


def _is_uuid(value: str) -> bool:
    try:
        return str(uuid.UUID(value)) == value
    except ValueError:
        return False


@dataclass(frozen=True)
class Delta:
    nodes: int
    edges: int


async def save_graph(session: AsyncSession, scene_id: str, before: Graph, after: Graph) -> Delta:
    """Store the difference between two versions of (a part of) a scene's graph: new
    elements inserted, changed ones updated within this scene, gone ones deleted from it.
    Returns how many nodes and edges the scene gained (negative when it lost some)."""
    gone_edges = [i for i in before.edges if i not in after.edges]
    gone_nodes = [i for i in before.nodes if i not in after.nodes]
    if gone_edges:
        await session.execute(
            delete(scene_connections).where(
                scene_connections.c.scene_id == scene_id,
                any_of(scene_connections.c.id, gone_edges),
            )
        )
    if gone_nodes:
        await session.execute(
            delete(scene_assets).where(
                scene_assets.c.scene_id == scene_id, any_of(scene_assets.c.id, gone_nodes)
            )
        )
    new_nodes = [n for i, n in after.nodes.items() if i not in before.nodes]
    new_edges = [e for i, e in after.edges.items() if i not in before.edges]
    changed_nodes = [
        n for i, n in after.nodes.items() if i in before.nodes and before.nodes[i] != n
    ]
    changed_edges = [
        e for i, e in after.edges.items() if i in before.edges and before.edges[i] != e
    ]
    if new_nodes:
        await session.execute(insert(scene_assets), [_node_values(scene_id, n) for n in new_nodes])
    if changed_nodes:
        await session.execute(
            _UPDATE_NODE, [_keyed(_node_values(scene_id, n)) for n in changed_nodes]
        )
    if new_edges:
        await session.execute(
            insert(scene_connections), [_edge_values(scene_id, e) for e in new_edges]
        )
    if changed_edges:
        await session.execute(
            _UPDATE_EDGE, [_keyed(_edge_values(scene_id, e)) for e in changed_edges]
        )
    return Delta(len(new_nodes) - len(gone_nodes), len(new_edges) - len(gone_edges))


def _update_within_scene(table: Table) -> Any:
    """UPDATE one row by id, only where it belongs to the scene the write holds."""
    columns = [c.name for c in table.c if c.name not in ("id", "scene_id")]
    return (
        update(table)
        .where(table.c.id == bindparam("key_id"), table.c.scene_id == bindparam("key_scene"))
        .values({name: bindparam(f"new_{name}") for name in columns})
    )


_UPDATE_NODE = _update_within_scene(scene_assets)
_UPDATE_EDGE = _update_within_scene(scene_connections)


def _keyed(values: dict[str, Any]) -> dict[str, Any]:
    keyed = {f"new_{k}": v for k, v in values.items() if k not in ("id", "scene_id")}
    return keyed | {"key_id": values["id"], "key_scene": values["scene_id"]}


async def save_scene(session: AsyncSession, scene: Scene, delta: Delta = Delta(0, 0)) -> Scene:
    """Write the scene's own fields and start mark, add `delta` to its counts, and bump its
    version (the etag)."""
    row = (
        await session.execute(
            update(scenes)
            .where(scenes.c.id == scene.id)
            .values(
                display_name=scene.display_name,
                description=scene.description,
                tags=scene.tags,
                is_template=scene.is_template,
                start_scene_asset_id=scene.graph.start_id or None,
                variables=[variable_to_json(v) for v in scene.variables],
                node_count=scenes.c.node_count + delta.nodes,
                edge_count=scenes.c.edge_count + delta.edges,
                version=scenes.c.version + 1,
                update_time=func.now(),
            )
            .returning(
                scenes.c.version, scenes.c.update_time, scenes.c.node_count, scenes.c.edge_count
            )
        )
    ).one()
    scene.version, scene.update_time = row.version, row.update_time
    scene.node_count, scene.edge_count = row.node_count, row.edge_count
    return scene


async def delete_scene(session: AsyncSession, scene_id: str) -> None:
    await session.execute(delete(scenes).where(scenes.c.id == scene_id))


async def list_page(
    session: AsyncSession,
    tokens: PageTokens,
    owner_id: str,
    filters: dict[str, Any],
    *,
    page_token: str,
    page_size: int,
) -> tuple[list[Scene], str]:
    query = select(scenes).where(scenes.c.owner_id == owner_id)
    if filters.get("tag"):
        query = query.where(scenes.c.tags.contains([filters["tag"]]))
    if filters.get("is_template") is not None:
        query = query.where(scenes.c.is_template == filters["is_template"])
    rows, token = await tokens.fetch_page(
        session, query, scenes, page_token, page_size, filters, newest_first=True
    )
    return [_to_scene(r) for r in rows], token


def _lock_key(asset_id: str) -> int:
    return zlib.crc32(f"pixsim-asset:{asset_id}".encode()) - 2**31


async def lock_assets(session: AsyncSession, asset_ids: Iterable[str]) -> None:
    """Serialize with the `asset.deleted` consumer on these assets: one statement, the locks
    taken in key order (so two writers never deadlock on them)."""
    keys = sorted({_lock_key(a) for a in asset_ids})
    if keys:
        await session.execute(
            text(
                "SELECT pg_advisory_xact_lock(k)"
                " FROM (SELECT unnest(CAST(:keys AS bigint[])) AS k ORDER BY k) AS ordered"
            ),
            {"keys": keys},
        )


async def deleted_among(session: AsyncSession, asset_ids: Iterable[str], owner_id: str) -> set[str]:
    wanted = set(asset_ids)
    if not wanted:
        return set()
    result = await session.scalars(
        select(deleted_assets.c.asset_id).where(
            any_of(deleted_assets.c.asset_id, wanted), deleted_assets.c.owner_id == owner_id
        )
    )
    return set(result)


async def remember_deleted(session: AsyncSession, asset_id: str, owner_id: str) -> None:
    await session.execute(
        insert(deleted_assets).values(asset_id=asset_id, owner_id=owner_id).on_conflict_do_nothing()
    )


async def detach_everywhere(
    session: AsyncSession, asset_id: str, owner_id: str
) -> list[tuple[str, int]]:
    """Detach the asset from every node of its owner's scenes that shows it, in one
    statement however many there are; then bump those scenes' versions. Returns (scene id,
    new version) of each."""
    touched = await session.scalars(
        text(
            "UPDATE scene_assets AS n SET asset_id = NULL, detached = true FROM scenes AS s"
            " WHERE n.scene_id = s.id AND s.owner_id = :owner AND n.asset_id = :asset"
            " RETURNING n.scene_id"
        ),
        {"owner": owner_id, "asset": asset_id},
    )
    scene_ids = sorted({str(i) for i in touched})
    if not scene_ids:
        return []
    bumped = await session.execute(
        update(scenes)
        .where(any_of(scenes.c.id, scene_ids))
        .values(version=scenes.c.version + 1, update_time=func.now())
        .returning(scenes.c.id, scenes.c.version)
    )
    return sorted((row.id, row.version) for row in bumped)


async def graph_page(
    session: AsyncSession, scene_id: str, after: list[Any] | None, limit: int
) -> tuple[list[Node], list[Edge]]:
    """Up to `limit` elements of the graph after the position `after`: nodes in (order, id)
    order, then connections in (from, order, id) order. Positions are ["nodes", order, id]
    or ["edges", from, order, id]."""
    nodes: list[Node] = []
    edges: list[Edge] = []
    if after is None or after[0] == "nodes":
        query = select(scene_assets).where(scene_assets.c.scene_id == scene_id)
        if after is not None:
            order, last = after[1], after[2]
            query = query.where(
                tuple_(scene_assets.c.order, scene_assets.c.id)
                > tuple_(literal(order), literal(last, UUID(as_uuid=False)))
            )
        rows = await session.execute(
            query.order_by(scene_assets.c.order, scene_assets.c.id).limit(limit)
        )
        nodes = [_node(r) for r in rows]
        after = None
    left = limit - len(nodes)
    if left > 0:
        c = scene_connections.c
        query = select(scene_connections).where(c.scene_id == scene_id)
        if after is not None:
            start, order, last = after[1], after[2], after[3]
            query = query.where(
                tuple_(c.from_id, c.order, c.id)
                > tuple_(
                    literal(start, UUID(as_uuid=False)),
                    literal(order),
                    literal(last, UUID(as_uuid=False)),
                )
            )
        rows = await session.execute(query.order_by(c.from_id, c.order, c.id).limit(left))
        edges = [_edge(r) for r in rows]
    return nodes, edges


# ---- playthroughs ---------------------------------------------------------------------


@dataclass
class Playthrough:
    id: str
    owner_id: str
    scene_id: str
    scene_version: int
    state: PlayState
    current_id: str
    values: dict[str, Value]
    step: int = 0
    failure_reason: str = ""
    request_id: str | None = None
    create_time: datetime | None = None
    update_time: datetime | None = None
    # Read with the playthrough from its scene: the scene's version now (once it is not
    # `scene_version`, the scene changed under it), and its declared variables.
    scene_version_now: int = 0
    declared: list[Variable] = field(default_factory=list)


def _to_playthrough(row: Row[Any]) -> Playthrough:
    return Playthrough(
        id=row.id,
        owner_id=row.owner_id,
        scene_id=row.scene_id,
        scene_version=row.scene_version,
        state=PlayState(row.state),
        current_id=row.current_id,
        values=_numbers_as_floats(row.variables),
        step=row.step,
        failure_reason=row.failure_reason,
        request_id=row.request_id,
        create_time=row.create_time,
        update_time=row.update_time,
        scene_version_now=row.version,
        declared=[variable_from_json(v) for v in row.declared],
    )


def _numbers_as_floats(stored: dict[str, Any]) -> dict[str, Value]:
    return {name: from_json(value) for name, value in stored.items()}


def _with_scene() -> Any:
    return select(playthroughs, scenes.c.version, scenes.c.variables.label("declared")).join(
        scenes, scenes.c.id == playthroughs.c.scene_id
    )


async def insert_playthrough(session: AsyncSession, playthrough: Playthrough) -> Playthrough:
    """Insert a playthrough; with a request id the caller used before, the one it made then."""
    await session.execute(
        insert(playthroughs)
        .values(
            id=playthrough.id,
            owner_id=playthrough.owner_id,
            scene_id=playthrough.scene_id,
            scene_version=playthrough.scene_version,
            request_id=playthrough.request_id,
            state=playthrough.state.value,
            current_id=playthrough.current_id,
            variables=playthrough.values,
        )
        .on_conflict_do_nothing(index_elements=["owner_id", "request_id"])
    )
    query = _with_scene().where(playthroughs.c.owner_id == playthrough.owner_id)
    if playthrough.request_id is None:
        query = query.where(playthroughs.c.id == playthrough.id)
    else:
        query = query.where(playthroughs.c.request_id == playthrough.request_id)
    return _to_playthrough((await session.execute(query)).one())


async def load_playthrough(
    session: AsyncSession, playthrough_id: str, owner_id: str, *, lock: bool = False
) -> Playthrough | None:
    query = _with_scene().where(
        playthroughs.c.id == playthrough_id, playthroughs.c.owner_id == owner_id
    )
    if lock:
        query = query.with_for_update(of=playthroughs)
    row = (await session.execute(query)).first()
    return _to_playthrough(row) if row is not None else None


async def save_playthrough(session: AsyncSession, playthrough: Playthrough) -> None:
    stored = await session.execute(
        update(playthroughs)
        .where(playthroughs.c.id == playthrough.id)
        .values(
            state=playthrough.state.value,
            failure_reason=playthrough.failure_reason,
            step=playthrough.step,
            current_id=playthrough.current_id,
            variables=playthrough.values,
            update_time=func.now(),
        )
        .returning(playthroughs.c.update_time)
    )
    playthrough.update_time = stored.scalar_one()


async def record_step(
    session: AsyncSession, playthrough_id: str, step: int, connection_id: str
) -> None:
    await session.execute(
        insert(playthrough_steps).values(
            playthrough_id=playthrough_id, step=step, connection_id=connection_id
        )
    )


async def step_taken(session: AsyncSession, playthrough_id: str, step: int) -> str | None:
    """The connection step `step` went along, or None when it was not taken."""
    taken: str | None = await session.scalar(
        select(playthrough_steps.c.connection_id).where(
            playthrough_steps.c.playthrough_id == playthrough_id,
            playthrough_steps.c.step == step,
        )
    )
    return taken


async def list_playthroughs(
    session: AsyncSession,
    tokens: PageTokens,
    owner_id: str,
    filters: dict[str, Any],
    *,
    page_token: str,
    page_size: int,
) -> tuple[list[Playthrough], str]:
    query = _with_scene().where(playthroughs.c.owner_id == owner_id)
    if filters.get("scene"):
        query = query.where(playthroughs.c.scene_id == filters["scene"])
    rows, token = await tokens.fetch_page(
        session, query, playthroughs, page_token, page_size, filters, newest_first=True
    )
    return [_to_playthrough(r) for r in rows], token


async def node_with_outgoing(
    session: AsyncSession, scene_id: str, node_id: str
) -> tuple[Node | None, list[Edge]]:
    """One node of a scene and the connections leaving it: what a player at it needs."""
    node = (
        await session.execute(
            select(scene_assets).where(
                scene_assets.c.scene_id == scene_id, scene_assets.c.id == node_id
            )
        )
    ).first()
    if node is None:
        return None, []
    edges = await session.execute(
        select(scene_connections).where(
            scene_connections.c.scene_id == scene_id, scene_connections.c.from_id == node_id
        )
    )
    return _node(node), [_edge(r) for r in edges]
