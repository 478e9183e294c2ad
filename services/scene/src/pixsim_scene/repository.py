"""The scene tables, and loading and saving a scene with its graph.

Every write locks the scene row (`SELECT ... FOR UPDATE`), edits the graph in memory and
stores the difference, and bumps `version` (the etag), so concurrent writers of one scene
take turns and a writer holding an old etag is refused. Deleted assets are remembered in
`deleted_assets`, and writers and the `asset.deleted` consumer take a transaction-scoped
advisory lock per asset id, so an asset deleted while a write that places it is in flight
is either refused by the write or detached by the consumer, never left attached.
"""

from __future__ import annotations

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
    Row,
    Table,
    Text,
    UniqueConstraint,
    delete,
    func,
    select,
    text,
    update,
)
from sqlalchemy.dialects.postgresql import ARRAY, JSONB, UUID, insert
from sqlalchemy.ext.asyncio import AsyncSession

from pixsim_common import pagination
from pixsim_scene.domain import Edge, EdgeType, Graph, Node

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

deleted_assets = Table(
    "deleted_assets",
    metadata,
    Column("asset_id", UUID(as_uuid=False), primary_key=True),
    Column("owner_id", Text, nullable=False),
    Column("deleted_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
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
    create_time: datetime | None = None
    update_time: datetime | None = None
    graph: Graph = field(default_factory=Graph)

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
        create_time=row.create_time,
        update_time=row.update_time,
        graph=graph or Graph(start_id=row.start_scene_asset_id or ""),
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
    scene = _to_scene(row)
    if with_graph:
        scene.graph.nodes = {
            r.id: _node(r)
            for r in await session.execute(
                select(scene_assets).where(scene_assets.c.scene_id == scene_id)
            )
        }
        scene.graph.edges = {
            r.id: _edge(r)
            for r in await session.execute(
                select(scene_connections).where(scene_connections.c.scene_id == scene_id)
            )
        }
    return scene


async def save_graph(session: AsyncSession, scene_id: str, before: Graph, after: Graph) -> None:
    """Store the difference between two versions of a scene's graph."""
    gone_edges = [i for i in before.edges if i not in after.edges]
    gone_nodes = [i for i in before.nodes if i not in after.nodes]
    if gone_edges:
        await session.execute(
            delete(scene_connections).where(scene_connections.c.id.in_(gone_edges))
        )
    if gone_nodes:
        await session.execute(delete(scene_assets).where(scene_assets.c.id.in_(gone_nodes)))
    await _upsert(
        session,
        scene_assets,
        [_node_values(scene_id, n) for i, n in after.nodes.items() if before.nodes.get(i) != n],
    )
    await _upsert(
        session,
        scene_connections,
        [_edge_values(scene_id, e) for i, e in after.edges.items() if before.edges.get(i) != e],
    )


async def _upsert(session: AsyncSession, table: Table, rows: list[dict[str, Any]]) -> None:
    if not rows:
        return
    statement = insert(table).values(rows)
    columns = {c: statement.excluded[c] for c in rows[0] if c not in ("id", "scene_id")}
    await session.execute(statement.on_conflict_do_update(index_elements=["id"], set_=columns))


async def save_scene(session: AsyncSession, scene: Scene) -> Scene:
    """Write the scene's own fields and start mark, bumping its version (the etag)."""
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
                version=scenes.c.version + 1,
                update_time=func.now(),
            )
            .returning(scenes.c.version, scenes.c.update_time)
        )
    ).one()
    scene.version, scene.update_time = row.version, row.update_time
    return scene


async def delete_scene(session: AsyncSession, scene_id: str) -> None:
    await session.execute(delete(scenes).where(scenes.c.id == scene_id))


async def list_page(
    session: AsyncSession,
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
    rows, token = await pagination.fetch_page(
        session, query, scenes, page_token, page_size, filters, newest_first=True
    )
    return [_to_scene(r) for r in rows], token


def _lock_key(asset_id: str) -> int:
    return zlib.crc32(f"pixsim-asset:{asset_id}".encode()) - 2**31


async def lock_assets(session: AsyncSession, asset_ids: Iterable[str]) -> None:
    """Serialize with the `asset.deleted` consumer on these assets (sorted: no deadlocks)."""
    for key in sorted({_lock_key(a) for a in asset_ids}):
        await session.execute(select(func.pg_advisory_xact_lock(key)))


async def deleted_among(session: AsyncSession, asset_ids: Iterable[str]) -> set[str]:
    wanted = set(asset_ids)
    if not wanted:
        return set()
    result = await session.scalars(
        select(deleted_assets.c.asset_id).where(deleted_assets.c.asset_id.in_(wanted))
    )
    return set(result)


async def remember_deleted(session: AsyncSession, asset_id: str, owner_id: str) -> None:
    await session.execute(
        insert(deleted_assets).values(asset_id=asset_id, owner_id=owner_id).on_conflict_do_nothing()
    )


async def scenes_showing(session: AsyncSession, asset_id: str) -> list[str]:
    result = await session.scalars(
        select(scene_assets.c.scene_id).where(scene_assets.c.asset_id == asset_id).distinct()
    )
    return sorted(result)
