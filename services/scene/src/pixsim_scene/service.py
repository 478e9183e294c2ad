"""`SceneService`: the use cases. Every write is one transaction that locks the scene, checks
its etag, applies the changes to the graph in memory (the domain refuses what would break
it), stores the difference, bumps the etag and enqueues `scene.updated`.

Assets placed in a scene are checked with the asset service, with the caller's token, in one
batch per write and before the transaction; inside it, an advisory lock per asset and the
`deleted_assets` record close the gap to an `asset.deleted` arriving meanwhile.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from typing import Any

import structlog
from google.protobuf import field_mask_pb2, json_format
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from pixsim.events.v1 import events_pb2
from pixsim.scene.v1 import scene_service_pb2 as pb
from pixsim_common import topics
from pixsim_common.auth import Identity
from pixsim_common.clients import AssetLookup
from pixsim_common.db import UnitOfWork
from pixsim_common.errors import Aborted, FieldViolation, InvalidArgument, NotFound
from pixsim_common.outbox import enqueue
from pixsim_common.timestamps import now_timestamp
from pixsim_scene import domain
from pixsim_scene import repository as repo
from pixsim_scene.domain import Edge, EdgeType, Graph, Node, Rejected
from pixsim_scene.repository import Scene

log = structlog.get_logger("pixsim.scene")
SOURCE = "/scene"
UUID = "[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"
ELEMENT_NAME = re.compile(rf"^scenes/({UUID})/(assets|connections)/({UUID})$")
SCENE_NAME = re.compile(rf"^scenes/({UUID})$")

SCENE_FIELDS = ("display_name", "description", "tags", "is_template", "start_scene_asset")
NODE_FIELDS = ("asset", "order", "position", "metadata")
EDGE_FIELDS = ("from_scene_asset", "to_scene_asset", "type", "label", "metadata", "order")


@dataclass(frozen=True)
class Change:
    """One change of a write, and where its fields sit in the request (for errors)."""

    kind: str  # a `SceneChange.change` oneof name
    value: Any  # SceneAsset, SceneConnection, or an element name for deletes
    path: str
    mask: field_mask_pb2.FieldMask | None = None


def node_name(scene_id: str, node_id: str) -> str:
    return f"scenes/{scene_id}/assets/{node_id}" if node_id else ""


def edge_name(scene_id: str, edge_id: str) -> str:
    return f"scenes/{scene_id}/connections/{edge_id}"


def node_to_proto(scene_id: str, node: Node) -> pb.SceneAsset:
    message = pb.SceneAsset(
        name=node_name(scene_id, node.id),
        asset=f"assets/{node.asset_id}" if node.asset_id else "",
        order=node.order,
        position=pb.CanvasPosition(x=node.x, y=node.y),
        detached=node.detached,
    )
    message.metadata.update(node.metadata)
    return message


def edge_to_proto(scene_id: str, edge: Edge) -> pb.SceneConnection:
    message = pb.SceneConnection(
        name=edge_name(scene_id, edge.id),
        from_scene_asset=node_name(scene_id, edge.from_id),
        to_scene_asset=node_name(scene_id, edge.to_id),
        type=pb.SceneConnection.Type.Value(f"TYPE_{edge.type.value}"),
        label=edge.label,
        order=edge.order,
    )
    message.metadata.update(edge.metadata)
    return message


def _invalid(path: str, why: str, reason: str) -> InvalidArgument:
    return InvalidArgument(why, [FieldViolation(path, why, reason)], reason=reason)


def parse_scene(name: str, field: str) -> str:
    """The id in a `scenes/{id}` that arrived inside a message (which no rule checked)."""
    match = SCENE_NAME.match(name)
    if match is None:
        raise _invalid(field, f"{name[:80]!r} is not a scene name (scenes/<uuid>)", "BAD_NAME")
    return match.group(1)


def parse_element(name: str, kind: str, field: str) -> tuple[str, str]:
    """(scene id, element id) of a `scenes/{id}/{kind}/{id}`; anything else is refused."""
    match = ELEMENT_NAME.match(name)
    if match is None or match.group(2) != kind:
        why = f"{name[:80]!r} is not a scene {kind[:-1]} name (scenes/<uuid>/{kind}/<uuid>)"
        raise _invalid(field, why, "BAD_NAME")
    return match.group(1), match.group(3)


def _element_id(scene_id: str, name: str, kind: str, path: str) -> str:
    """The id in `scenes/{scene_id}/{kind}/{id}`; a name in another scene is refused."""
    owner, element_id = parse_element(name, kind, path)
    if owner != scene_id:
        raise _invalid(path, f"{name} is not in scenes/{scene_id}", "NOT_IN_SCENE")
    return element_id


def _masked(mask: field_mask_pb2.FieldMask | None, allowed: Sequence[str], path: str) -> list[str]:
    """The top-level fields an update writes: those named (an empty mask or `*` is all)."""
    if mask is None or not mask.paths or list(mask.paths) == ["*"]:
        return list(allowed)
    fields = []
    for field_path in mask.paths:
        top = field_path.split(".", 1)[0]
        if top not in allowed or (field_path != top and top != "position"):
            raise _invalid(path, f"{field_path!r} cannot be updated", "INVALID_FIELD_MASK")
        fields.append(top)
    return fields


class SceneService:
    def __init__(self, sessions: async_sessionmaker[AsyncSession], assets: AssetLookup) -> None:
        self._sessions = sessions
        self._assets = assets

    async def _owned(self, asset_ids: Iterable[str], identity: Identity) -> set[str]:
        """The ids among `asset_ids` that name live assets of the caller's."""
        found = await self._assets.batch_get((f"assets/{a}" for a in asset_ids), identity.token)
        return {name.removeprefix("assets/") for name in found}

    # ---- scenes -----------------------------------------------------------------------

    async def create(self, identity: Identity, message: pb.Scene) -> Scene:
        if not message.display_name.strip():
            raise _invalid("scene.display_name", "a scene needs a name", "REQUIRED")
        if message.start_scene_asset:
            raise _invalid(
                "scene.start_scene_asset", "a new scene has no assets to start from", "NOT_IN_SCENE"
            )
        scene = Scene(
            id=str(uuid.uuid4()),
            owner_id=identity.user_id,
            display_name=message.display_name,
            description=message.description,
            tags=list(message.tags),
            is_template=message.is_template,
        )
        async with UnitOfWork(self._sessions) as uow:
            stored = await repo.insert_scene(uow.session, scene)
            await self._updated(uow.session, stored)
            await uow.commit()
        return stored

    async def get(self, identity: Identity, scene_id: str, *, with_graph: bool = False) -> Scene:
        async with self._sessions() as session:
            scene = await repo.load(
                session, scene_id, owner_id=identity.user_id, with_graph=with_graph
            )
        if scene is None:
            raise NotFound(f"scenes/{scene_id} does not exist", reason="SCENE_NOT_FOUND")
        return scene

    async def update(
        self, identity: Identity, message: pb.Scene, mask: field_mask_pb2.FieldMask
    ) -> Scene:
        scene_id = parse_scene(message.name, "scene.name")
        fields = _masked(mask, SCENE_FIELDS, "update_mask")
        async with UnitOfWork(self._sessions) as uow:
            scene = await self._locked(uow.session, identity, scene_id, message.etag)
            if "display_name" in fields:
                if not message.display_name.strip():
                    raise _invalid("scene.display_name", "a scene needs a name", "REQUIRED")
                scene.display_name = message.display_name
            if "description" in fields:
                scene.description = message.description
            if "tags" in fields:
                scene.tags = list(message.tags)
            if "is_template" in fields:
                scene.is_template = message.is_template
            if "start_scene_asset" in fields:
                start = (
                    _element_id(
                        scene_id, message.start_scene_asset, "assets", "scene.start_scene_asset"
                    )
                    if message.start_scene_asset
                    else ""
                )
                try:
                    domain.set_start(scene.graph, start)
                except Rejected as error:
                    raise _invalid(f"scene.{error.field}", str(error), error.reason) from error
            await self._save(uow.session, scene)
            await uow.commit()
        return scene

    async def delete(self, identity: Identity, scene_id: str, etag: str) -> None:
        async with UnitOfWork(self._sessions) as uow:
            scene = await self._locked(uow.session, identity, scene_id, etag, with_graph=False)
            await repo.delete_scene(uow.session, scene_id)
            await self._updated(uow.session, scene, deleted=True)
            await uow.commit()

    async def clone(self, identity: Identity, scene_id: str, display_name: str) -> Scene:
        """Copy one of the caller's scenes, or anyone's template, into a new scene of the
        caller's. Assets the caller does not own (or that are gone) come over detached."""
        async with self._sessions() as session:
            source = await repo.load(session, scene_id)
        if source is None or not (source.is_template or source.owner_id == identity.user_id):
            raise NotFound(f"scenes/{scene_id} does not exist", reason="SCENE_NOT_FOUND")
        asset_ids = {n.asset_id for n in source.graph.nodes.values() if n.asset_id}
        owned = await self._owned(asset_ids, identity) if asset_ids else set()
        graph, _ = domain.clone(source.graph, lambda: str(uuid.uuid4()), owned.__contains__)
        scene = Scene(
            id=str(uuid.uuid4()),
            owner_id=identity.user_id,
            display_name=display_name or source.display_name,
            description=source.description,
            tags=list(source.tags),
            graph=graph,
        )
        async with UnitOfWork(self._sessions) as uow:
            await repo.lock_assets(uow.session, owned)
            for asset_id in await repo.deleted_among(uow.session, owned):
                domain.detach(graph, asset_id)
            stored = await repo.insert_scene(uow.session, scene)
            await self._updated(uow.session, stored)
            await uow.commit()
        return stored

    # ---- graph writes -----------------------------------------------------------------

    async def apply(
        self, identity: Identity, scene_id: str, etag: str, changes: Sequence[Change]
    ) -> Scene:
        """Apply `changes` in order, all or none."""
        placed = self._placed_assets(changes)
        if placed:
            owned = await self._owned(placed, identity)
            self._refuse_unowned(placed, owned)
        async with UnitOfWork(self._sessions) as uow:
            scene = await self._locked(uow.session, identity, scene_id, etag)
            await repo.lock_assets(uow.session, placed)
            self._refuse_unowned(
                placed, set(placed) - await repo.deleted_among(uow.session, placed)
            )
            before = scene.graph.copy()
            for change in changes:
                try:
                    self._apply_one(scene_id, scene.graph, change)
                except Rejected as error:
                    raise _invalid(
                        f"{change.path}.{error.field}", str(error), error.reason
                    ) from error
            await repo.save_graph(uow.session, scene_id, before, scene.graph)
            await self._save(uow.session, scene)
            await uow.commit()
        return scene

    @staticmethod
    def _placed_assets(changes: Sequence[Change]) -> dict[str, str]:
        """Asset id -> the field placing it, for every asset the changes put in the scene."""
        placed: dict[str, str] = {}
        for change in changes:
            if change.kind not in ("create_asset", "update_asset"):
                continue
            fields = _masked(change.mask, NODE_FIELDS, f"{change.path}.update_mask")
            if "asset" not in fields:
                continue
            asset = change.value.asset
            if not asset:
                raise _invalid(f"{change.path}.asset", "a scene asset needs an asset", "REQUIRED")
            placed.setdefault(asset.removeprefix("assets/"), f"{change.path}.asset")
        return placed

    @staticmethod
    def _refuse_unowned(placed: dict[str, str], owned: set[str]) -> None:
        missing = [(asset_id, path) for asset_id, path in placed.items() if asset_id not in owned]
        if missing:
            raise InvalidArgument(
                f"{len(missing)} asset(s) do not exist or are not yours",
                [
                    FieldViolation(
                        path, f"assets/{a} does not exist or is not yours", "ASSET_NOT_FOUND"
                    )
                    for a, path in missing
                ],
                reason="ASSET_NOT_FOUND",
            )

    def _apply_one(self, scene_id: str, graph: Graph, change: Change) -> None:
        value = change.value
        if change.kind == "create_asset":
            node_id = (
                _element_id(scene_id, value.name, "assets", f"{change.path}.name")
                if value.name
                else str(uuid.uuid4())
            )
            domain.add_node(graph, self._node_from(Node(node_id, ""), value, list(NODE_FIELDS)))
        elif change.kind == "update_asset":
            node_id = _element_id(scene_id, value.name, "assets", f"{change.path}.name")
            current = graph.nodes.get(node_id)
            if current is None:
                raise Rejected(
                    f"no scene asset {node_id} in this scene", field="name", reason="NOT_FOUND"
                )
            fields = _masked(change.mask, NODE_FIELDS, f"{change.path}.update_mask")
            domain.replace_node(graph, self._node_from(current, value, fields))
        elif change.kind == "delete_asset":
            domain.remove_node(graph, _element_id(scene_id, value, "assets", change.path))
        elif change.kind == "create_connection":
            edge_id = (
                _element_id(scene_id, value.name, "connections", f"{change.path}.name")
                if value.name
                else str(uuid.uuid4())
            )
            blank = Edge(edge_id, "", "", EdgeType.NEXT)
            domain.add_edge(
                graph, self._edge_from(scene_id, blank, value, list(EDGE_FIELDS), change.path)
            )
        elif change.kind == "update_connection":
            edge_id = _element_id(scene_id, value.name, "connections", f"{change.path}.name")
            current_edge = graph.edges.get(edge_id)
            if current_edge is None:
                raise Rejected(
                    f"no connection {edge_id} in this scene", field="name", reason="NOT_FOUND"
                )
            fields = _masked(change.mask, EDGE_FIELDS, f"{change.path}.update_mask")
            domain.replace_edge(
                graph, self._edge_from(scene_id, current_edge, value, fields, change.path)
            )
        elif change.kind == "delete_connection":
            domain.remove_edge(graph, _element_id(scene_id, value, "connections", change.path))
        else:  # pragma: no cover - the oneof has no other members
            raise AssertionError(change.kind)

    @staticmethod
    def _node_from(current: Node, message: pb.SceneAsset, fields: list[str]) -> Node:
        node = current
        if "asset" in fields:
            node = replace(node, asset_id=message.asset.removeprefix("assets/"), detached=False)
        if "order" in fields:
            node = replace(node, order=message.order)
        if "position" in fields:
            node = replace(node, x=message.position.x, y=message.position.y)
        if "metadata" in fields:
            node = replace(node, metadata=json_format.MessageToDict(message.metadata))
        return node

    @staticmethod
    def _edge_from(
        scene_id: str, current: Edge, message: pb.SceneConnection, fields: list[str], path: str
    ) -> Edge:
        def end(field_name: str, current_id: str) -> str:
            if field_name not in fields:
                return current_id
            name = getattr(message, field_name)
            if not name:
                raise Rejected("a connection needs both ends", field=field_name, reason="REQUIRED")
            return _element_id(scene_id, name, "assets", f"{path}.{field_name}")

        edge = replace(
            current,
            from_id=end("from_scene_asset", current.from_id),
            to_id=end("to_scene_asset", current.to_id),
        )
        if "type" in fields:
            if message.type == pb.SceneConnection.TYPE_UNSPECIFIED:
                raise Rejected("a connection needs a type", field="type", reason="REQUIRED")
            edge = replace(
                edge,
                type=EdgeType(pb.SceneConnection.Type.Name(message.type).removeprefix("TYPE_")),
            )
        if "label" in fields:
            edge = replace(edge, label=message.label)
        if "order" in fields:
            edge = replace(edge, order=message.order)
        if "metadata" in fields:
            edge = replace(edge, metadata=json_format.MessageToDict(message.metadata))
        return edge

    # ---- reads and events -------------------------------------------------------------

    async def validate(self, identity: Identity, scene_id: str) -> list[domain.Problem]:
        return domain.problems((await self.get(identity, scene_id, with_graph=True)).graph)

    async def asset_deleted(self, session: AsyncSession, asset_id: str, owner_id: str) -> None:
        """Detach a deleted asset from every scene that shows it (the consumer's transaction)."""
        await repo.lock_assets(session, [asset_id])
        await repo.remember_deleted(session, asset_id, owner_id)
        for scene_id in await repo.scenes_showing(session, asset_id):
            scene = await repo.load(session, scene_id, lock=True)
            if scene is None:
                continue
            before = scene.graph.copy()
            domain.detach(scene.graph, asset_id)
            await repo.save_graph(session, scene_id, before, scene.graph)
            await self._save(session, scene)
            log.info("asset detached", asset_id=asset_id, scene_id=scene_id)

    async def _locked(
        self,
        session: AsyncSession,
        identity: Identity,
        scene_id: str,
        etag: str,
        *,
        with_graph: bool = True,
    ) -> Scene:
        scene = await repo.load(
            session, scene_id, owner_id=identity.user_id, lock=True, with_graph=with_graph
        )
        if scene is None:
            raise NotFound(f"scenes/{scene_id} does not exist", reason="SCENE_NOT_FOUND")
        if etag and etag != scene.etag:
            raise Aborted(
                f"scenes/{scene_id} changed since it was read (etag {etag}, now {scene.etag})",
                reason="STALE_ETAG",
                metadata={"etag": scene.etag},
            )
        return scene

    async def _save(self, session: AsyncSession, scene: Scene) -> None:
        await repo.save_scene(session, scene)
        await self._updated(session, scene)

    async def _updated(self, session: AsyncSession, scene: Scene, *, deleted: bool = False) -> None:
        await enqueue(
            session,
            topics.SCENE_UPDATED,
            scene.id,
            events_pb2.SceneUpdated(
                scene_id=scene.id,
                user_id=scene.owner_id,
                etag=scene.etag,
                deleted=deleted,
                update_time=now_timestamp(),
            ),
            source=SOURCE,
        )
