"""`SceneService`: the use cases. Every write is one transaction that locks the scene, checks
its etag, loads the part of the graph its changes touch, applies them in memory (the domain
refuses what would break the graph), stores the difference, bumps the etag and enqueues
`scene.updated`. A write costs what it changes, whatever the scene holds; a scene's size is
bounded (`domain.MAX_NODES`, `domain.MAX_EDGES`) and its graph is read in pages.

Assets placed in a scene are checked with the asset service, with the caller's token, in one
batch per write and before the transaction; inside it, an advisory lock per asset and the
`deleted_assets` record close the gap to an `asset.deleted` arriving meanwhile.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from typing import Any

import structlog
from google.protobuf import field_mask_pb2
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from pixsim.asset.v1 import asset_service_pb2 as asset_pb
from pixsim.events.v1 import events_pb2
from pixsim.scene.v1 import scene_service_pb2 as pb
from pixsim_common import topics
from pixsim_common.auth import Identity
from pixsim_common.clients import AssetLookup
from pixsim_common.db import UnitOfWork
from pixsim_common.errors import (
    Aborted,
    AlreadyExists,
    DomainError,
    FailedPrecondition,
    FieldViolation,
    InvalidArgument,
    NotFound,
    PreconditionViolation,
    ResourceExhausted,
)
from pixsim_common.outbox import Outgoing, collect
from pixsim_common.pagination import PageTokens
from pixsim_common.timestamps import now_timestamp
from pixsim_common.validation import violations_of
from pixsim_scene import domain, interchange, play, twee
from pixsim_scene import repository as repo
from pixsim_scene.changes import (
    EDGE_FIELDS,
    NODE_FIELDS,
    SCENE_FIELDS,
    Change,
    edge_from,
    edge_name,
    edge_to_proto,
    element_id,
    invalid,
    masked,
    node_from,
    node_to_proto,
    parse_element,
    parse_scene,
    referenced,
    variable_to_proto,
    variables_from,
)
from pixsim_scene.domain import Edge, EdgeType, Node, Rejected
from pixsim_scene.interchange import ExportedFile, ManifestError, SceneData
from pixsim_scene.metrics import WRITE_ELEMENTS_LOADED
from pixsim_scene.play import PlayState, StepKind
from pixsim_scene.repository import Part, Playthrough, Refs, Scene

log = structlog.get_logger("pixsim.scene")
SOURCE = "/scene"
# GetSceneGraph pages: this many elements unless asked otherwise, never more than the
# maximum, and never more bytes than fit a gRPC answer with room to spare.
DEFAULT_GRAPH_PAGE = 1000
MAX_GRAPH_PAGE = 5000
MAX_GRAPH_PAGE_BYTES = 4 * 1024 * 1024
# What an export's files may hold in all: one gRPC answer, and what an import reads back.
MAX_EXPORT_BYTES = interchange.MAX_DOCUMENT_BYTES


@dataclass(frozen=True)
class Applied:
    """A write's result: the scene after it, and the elements it created or updated."""

    scene: Scene
    nodes: list[Node]
    edges: list[Edge]


@dataclass(frozen=True)
class GraphPage:
    scene: Scene
    nodes: list[Node]
    edges: list[Edge]
    next_page_token: str


class SceneService:
    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        assets: AssetLookup,
        page_tokens: PageTokens,
    ) -> None:
        self._sessions = sessions
        self._assets = assets
        self._tokens = page_tokens

    async def _owned(self, asset_ids: Iterable[str], identity: Identity) -> set[str]:
        """The ids among `asset_ids` that name live assets of the caller's."""
        found = await self._assets.batch_get((f"assets/{a}" for a in asset_ids), identity.token)
        return {name.removeprefix("assets/") for name in found}

    async def create(self, identity: Identity, message: pb.Scene) -> Scene:
        if not message.display_name.strip():
            raise invalid("scene.display_name", "a scene needs a name", "REQUIRED")
        if message.start_scene_asset:
            raise invalid(
                "scene.start_scene_asset", "a new scene has no assets to start from", "NOT_IN_SCENE"
            )
        scene = Scene(
            id=str(uuid.uuid4()),
            owner_id=identity.user_id,
            display_name=message.display_name,
            description=message.description,
            tags=list(message.tags),
            is_template=message.is_template,
            variables=variables_from(message.variables, "scene.variables"),
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

    async def graph_page(
        self, identity: Identity, scene_id: str, page_token: str, page_size: int
    ) -> GraphPage:
        """One page of the graph: nodes first, then connections. A token is bound to the
        scene's etag; a page asked for after the scene changed is ABORTED."""
        size = min(page_size or DEFAULT_GRAPH_PAGE, MAX_GRAPH_PAGE)
        bound = {"graph": scene_id}
        position = self._tokens.decode(page_token, bound)  # a forged token names nothing
        async with self._sessions() as session:
            scene = await repo.load(session, scene_id, owner_id=identity.user_id, with_graph=False)
            if scene is None:
                raise NotFound(f"scenes/{scene_id} does not exist", reason="SCENE_NOT_FOUND")
            if position is not None and position[0] != scene.etag:
                raise Aborted(
                    f"scenes/{scene_id} changed since its first page was read; read it again",
                    reason="STALE_ETAG",
                    metadata={"etag": scene.etag},
                )
            nodes, edges = await repo.graph_page(
                session, scene_id, position[1:] if position else None, size + 1
            )
        nodes, edges, more = _fit(scene_id, nodes, edges, size)
        token = ""
        if more:
            last = (
                ["edges", edges[-1].from_id, edges[-1].order, edges[-1].id]
                if edges
                else ["nodes", nodes[-1].order, nodes[-1].id]
            )
            token = self._tokens.encode([scene.etag, *last], bound)
        return GraphPage(scene, nodes, edges, token)

    async def update(
        self, identity: Identity, message: pb.Scene, mask: field_mask_pb2.FieldMask
    ) -> Scene:
        scene_id = parse_scene(message.name, "scene.name")
        fields = masked(mask, SCENE_FIELDS, "update_mask")
        start = ""
        if "start_scene_asset" in fields and message.start_scene_asset:
            start = element_id(
                scene_id, message.start_scene_asset, "assets", "scene.start_scene_asset"
            )
        async with UnitOfWork(self._sessions) as uow:
            scene = await self._locked(uow.session, identity, scene_id, message.etag)
            if "display_name" in fields:
                if not message.display_name.strip():
                    raise invalid("scene.display_name", "a scene needs a name", "REQUIRED")
                scene.display_name = message.display_name
            if "description" in fields:
                scene.description = message.description
            if "tags" in fields:
                scene.tags = list(message.tags)
            if "is_template" in fields:
                scene.is_template = message.is_template
            if "variables" in fields:
                scene.variables = variables_from(message.variables, "scene.variables")
            if "start_scene_asset" in fields:
                part = await repo.load_part(uow.session, scene, Refs(nodes={start} - {""}))
                try:
                    domain.set_start(part.graph, start)
                except Rejected as error:
                    raise invalid(f"scene.{error.field}", str(error), error.reason) from error
                scene.graph = part.graph
            await self._save(uow.session, scene)
            await uow.commit()
        return scene

    async def delete(self, identity: Identity, scene_id: str, etag: str) -> None:
        async with UnitOfWork(self._sessions) as uow:
            scene = await self._locked(uow.session, identity, scene_id, etag)
            await repo.delete_scene(uow.session, scene_id)
            await self._updated(uow.session, scene, deleted=True)
            await uow.commit()

    async def clone(self, identity: Identity, scene_id: str, display_name: str) -> GraphPage:
        """Copy one of the caller's scenes, or anyone's template, into a new scene of the
        caller's, and answer with the new graph's first page. Assets the caller does not own
        (or that are gone) come over detached."""
        async with self._sessions() as session:
            source = await repo.load(session, scene_id)
        if source is None or not (source.is_template or source.owner_id == identity.user_id):
            raise NotFound(f"scenes/{scene_id} does not exist", reason="SCENE_NOT_FOUND")
        asset_ids = {n.asset_id for n in source.graph.nodes.values() if n.asset_id}
        owned = await self._owned(asset_ids, identity) if asset_ids else set()
        graph, _ = domain.clone(source.graph, _fresh_id, owned.__contains__)
        scene = Scene(
            id=str(uuid.uuid4()),
            owner_id=identity.user_id,
            display_name=display_name or source.display_name,
            description=source.description,
            tags=list(source.tags),
            graph=graph,
            variables=list(source.variables),
        )
        async with UnitOfWork(self._sessions) as uow:
            await repo.lock_assets(uow.session, owned)
            for asset_id in await repo.deleted_among(uow.session, owned, identity.user_id):
                domain.detach(graph, asset_id)
            stored = await repo.insert_scene(uow.session, scene)
            await self._updated(uow.session, stored)
            await uow.commit()
        return await self.graph_page(identity, stored.id, "", 0)

    async def apply(
        self, identity: Identity, scene_id: str, etag: str, changes: Sequence[Change]
    ) -> Applied:
        """Apply `changes` in order, all or none."""
        placed = self._placed_assets(changes)
        if placed:
            self._refuse_unowned(placed, await self._owned(placed, identity))
        refs = referenced(scene_id, changes)
        async with UnitOfWork(self._sessions) as uow:
            # Assets before the scene row: the order the asset.deleted consumer locks in.
            await repo.lock_assets(uow.session, placed)
            scene = await self._locked(uow.session, identity, scene_id, etag)
            gone = await repo.deleted_among(uow.session, placed, identity.user_id)
            self._refuse_unowned(placed, set(placed) - gone)
            part = await repo.load_part(uow.session, scene, refs)
            WRITE_ELEMENTS_LOADED.observe(len(part.graph.nodes) + len(part.graph.edges))
            before = part.graph.copy()
            touched: dict[str, None] = {}
            for change in changes:
                try:
                    made = self._apply_one(scene_id, part, change)
                except Rejected as error:
                    raise _refused(change, error) from error
                if made:
                    touched[made] = None
            graph = scene.graph = part.graph
            nodes = scene.node_count + len(graph.nodes) - len(before.nodes)
            edges = scene.edge_count + len(graph.edges) - len(before.edges)
            _check_size(nodes, edges)
            try:
                delta = await repo.save_graph(uow.session, scene_id, before, graph)
                await self._save(uow.session, scene, delta)
                await uow.commit()
            except IntegrityError as error:  # a concurrent write won the same id
                raise _conflict(error) from error
        return Applied(
            scene,
            [graph.nodes[i] for i in touched if i in graph.nodes],
            [graph.edges[i] for i in touched if i in graph.edges],
        )

    @staticmethod
    def _placed_assets(changes: Sequence[Change]) -> dict[str, str]:
        """Asset id -> the field placing it, for every asset the changes put in the scene."""
        placed: dict[str, str] = {}
        for change in changes:
            if change.kind not in ("create_asset", "update_asset"):
                continue
            fields = masked(change.mask, NODE_FIELDS, f"{change.path}.update_mask")
            if "asset" not in fields:
                continue
            asset = change.value.asset
            if not asset:
                raise invalid(f"{change.path}.asset", "a scene asset needs an asset", "REQUIRED")
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

    @staticmethod
    def _new_id(scene_id: str, name: str, kind: str, path: str, foreign: set[str]) -> str:
        """The id of a created element: the caller's choice, unless another scene has it."""
        if not name:
            return str(uuid.uuid4())
        chosen = element_id(scene_id, name, kind, path)
        if chosen in foreign:
            raise AlreadyExists(
                f"{kind[:-1]} id {chosen} is taken; choose another or let the service choose",
                reason="ID_TAKEN",
                metadata={"field": path},
            )
        return chosen

    def _apply_one(self, scene_id: str, part: Part, change: Change) -> str | None:
        """Apply one change to the loaded part; the id it created or updated, if any."""
        graph, value, path = part.graph, change.value, change.path
        if change.kind == "create_asset":
            node_id = self._new_id(
                scene_id, value.name, "assets", f"{path}.name", part.foreign_nodes
            )
            domain.add_node(graph, node_from(Node(node_id, ""), value, list(NODE_FIELDS)))
            return node_id
        if change.kind == "update_asset":
            node_id = element_id(scene_id, value.name, "assets", f"{path}.name")
            current = graph.nodes.get(node_id)
            if current is None:
                raise Rejected(
                    f"no scene asset {node_id} in this scene", field="name", reason="NOT_FOUND"
                )
            fields = masked(change.mask, NODE_FIELDS, f"{path}.update_mask")
            domain.replace_node(graph, node_from(current, value, fields))
            return node_id
        if change.kind == "delete_asset":
            domain.remove_node(graph, element_id(scene_id, value, "assets", path))
            return None
        if change.kind == "create_connection":
            edge_id = self._new_id(
                scene_id, value.name, "connections", f"{path}.name", part.foreign_edges
            )
            blank = Edge(edge_id, "", "", EdgeType.NEXT)
            domain.add_edge(graph, edge_from(scene_id, blank, value, list(EDGE_FIELDS), path))
            return edge_id
        if change.kind == "update_connection":
            edge_id = element_id(scene_id, value.name, "connections", f"{path}.name")
            current_edge = graph.edges.get(edge_id)
            if current_edge is None:
                raise Rejected(
                    f"no connection {edge_id} in this scene", field="name", reason="NOT_FOUND"
                )
            fields = masked(change.mask, EDGE_FIELDS, f"{path}.update_mask")
            domain.replace_edge(graph, edge_from(scene_id, current_edge, value, fields, path))
            return edge_id
        if change.kind == "delete_connection":
            domain.remove_edge(graph, element_id(scene_id, value, "connections", path))
            return None
        raise AssertionError(change.kind)  # pragma: no cover - the oneof has no other members

    async def export(self, identity: Identity, scene_id: str, kind: str) -> list[ExportedFile]:
        """The scene as `kind`: its manifest (`json`), Twee 3 (`twee`), or the manifest with
        the player and the clips beside it (`html`)."""
        scene = await self.get(identity, scene_id, with_graph=True)
        graph = scene.graph
        data = SceneData(
            scene.display_name,
            scene.description,
            list(scene.tags),
            list(scene.variables),
            graph,
            interchange.node_keys(graph),
            interchange.ifid_of(scene.id, scene.ifid),
        )
        if kind == "twee":
            return _fitting([ExportedFile("story.twee", "text/plain", content=twee.to_twee(data))])
        document = interchange.to_manifest(data)
        manifest = ExportedFile(
            "manifest.json", "application/json", content=interchange.dumps(document)
        )
        if kind != "html":
            return _fitting([manifest])
        shown = {f"assets/{n.asset_id}" for n in graph.nodes.values() if n.asset_id}
        found = await self._assets.batch_get(shown, identity.token) if shown else {}
        clips = {
            name: {
                "path": interchange.clip_path(name.removeprefix("assets/"), asset.mime_type),
                "mime_type": asset.mime_type,
            }
            for name, asset in sorted(found.items())
        }
        player = ExportedFile(
            "index.html", "text/html", content=interchange.player_html(document, clips)
        )
        return _fitting(
            [
                player,
                manifest,
                *(ExportedFile(c["path"], c["mime_type"], asset=name) for name, c in clips.items()),
            ]
        )

    async def import_(
        self, identity: Identity, kind: str, content: bytes, display_name: str
    ) -> tuple[Scene, list[tuple[str, str, str]]]:
        """A new scene from a manifest (`json`) or Twee 3 (`twee`), and its nodes without an
        asset: (node id, key, the asset the document named when it is not the caller's)."""
        try:
            if kind == "twee":
                data = twee.from_twee(content, _fresh_id)
            else:
                data = interchange.from_manifest(interchange.parse_json(content), _fresh_id)
        except ManifestError as error:
            raise _bad_document(str(error)) from None
        scene_id = str(uuid.uuid4())
        _refuse_unwritable(scene_id, data)
        graph = data.graph
        named = {n.asset_id for n in graph.nodes.values() if n.asset_id}
        owned = await self._owned(named, identity) if named else set()
        scene = Scene(
            id=scene_id,
            owner_id=identity.user_id,
            display_name=display_name or data.display_name,
            description=data.description,
            tags=data.tags,
            graph=graph,
            variables=data.variables,
            ifid=data.ifid.lower(),
        )
        async with UnitOfWork(self._sessions) as uow:
            await repo.lock_assets(uow.session, owned)
            usable = owned - await repo.deleted_among(uow.session, owned, identity.user_id)
            unattached = []
            for node in sorted(graph.nodes.values(), key=lambda n: (n.order, n.id)):
                if node.asset_id in usable:
                    continue
                asset = f"assets/{node.asset_id}" if node.asset_id else ""
                unattached.append((node.id, data.keys[node.id], asset))
                graph.nodes[node.id] = replace(node, asset_id="")
            stored = await repo.insert_scene(uow.session, scene)
            await self._updated(uow.session, stored)
            await uow.commit()
        return stored, unattached

    async def validate(self, identity: Identity, scene_id: str) -> list[domain.Problem]:
        scene = await self.get(identity, scene_id, with_graph=True)
        return domain.problems(scene.graph, scene.variables)

    async def asset_deleted(self, session: AsyncSession, asset_id: str, owner_id: str) -> None:
        """Detach a deleted asset from every scene of its owner that shows it, in the
        consumer's transaction: one statement however many nodes show it."""
        await repo.lock_assets(session, [asset_id])
        await repo.remember_deleted(session, asset_id, owner_id)
        for scene_id, version in await repo.detach_everywhere(session, asset_id, owner_id):
            await self._announce(session, scene_id, owner_id, str(version))
            log.info("asset detached", asset_id=asset_id, scene_id=scene_id)

    async def _locked(
        self, session: AsyncSession, identity: Identity, scene_id: str, etag: str
    ) -> Scene:
        scene = await repo.load(
            session, scene_id, owner_id=identity.user_id, lock=True, with_graph=False
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

    async def _save(
        self, session: AsyncSession, scene: Scene, delta: repo.Delta | None = None
    ) -> None:
        await repo.save_scene(session, scene, delta or repo.Delta(0, 0))
        await self._updated(session, scene)

    async def _updated(self, session: AsyncSession, scene: Scene, *, deleted: bool = False) -> None:
        await self._announce(session, scene.id, scene.owner_id, scene.etag, deleted=deleted)

    async def _announce(
        self,
        session: AsyncSession,
        scene_id: str,
        owner_id: str,
        etag: str,
        *,
        deleted: bool = False,
    ) -> None:
        collect(
            session,
            [
                Outgoing(
                    topics.SCENE_UPDATED,
                    scene_id,
                    events_pb2.SceneUpdated(
                        scene_id=scene_id,
                        user_id=owner_id,
                        etag=etag,
                        deleted=deleted,
                        update_time=now_timestamp(),
                    ),
                    SOURCE,
                )
            ],
        )


@dataclass(frozen=True)
class Now:
    """What a playthrough's player has before them: the node playing, and what is offered
    after it."""

    node: Node | None
    offered: list[Edge]


@dataclass(frozen=True)
class PlaythroughView:
    """A playthrough as its player sees it (its scene's variables read with it), with its
    clip's URL."""

    playthrough: Playthrough
    choices: list[Edge]
    clip: tuple[str, asset_pb.AssetDownloadUrl | None] | None  # (asset id, its URL)


class PlaythroughService:
    """Playing a scene (docs/scenes.md, "Playthroughs"). A playthrough plays the scene at the
    version it started on; once the scene changes, it is FAILED `SCENE_CHANGED`, so a player
    never follows a graph that is neither the old one nor the new one. Steps are numbered, so
    a `Choose` sent again is answered and not taken twice."""

    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        assets: AssetLookup,
        page_tokens: PageTokens,
    ) -> None:
        self._sessions = sessions
        self._assets = assets
        self._tokens = page_tokens

    async def start(
        self, identity: Identity, scene_id: str, request_id: str = ""
    ) -> PlaythroughView:
        async with self._sessions() as session:
            scene = await repo.load(session, scene_id, owner_id=identity.user_id)
        if scene is None:
            raise NotFound(f"scenes/{scene_id} does not exist", reason="SCENE_NOT_FOUND")
        if not scene.graph.nodes:
            raise FailedPrecondition(
                f"scenes/{scene_id} has no assets to play", reason="SCENE_EMPTY"
            )
        _refuse_unplayable(scene)
        start = domain.start_of(scene.graph)
        values = play.initial_values(scene.variables)
        leaving = [scene.graph.edges[i] for i in scene.graph.edges.touching(start)]
        offered = play.offered([e for e in leaving if e.from_id == start], values)
        new = Playthrough(
            id=str(uuid.uuid4()),
            owner_id=identity.user_id,
            scene_id=scene_id,
            scene_version=scene.version,
            state=PlayState.ACTIVE if offered else PlayState.ENDED,
            current_id=start,
            values=values,
            request_id=request_id or None,
        )
        async with UnitOfWork(self._sessions) as uow:
            stored = await repo.insert_playthrough(uow.session, new)
            await uow.commit()
        if stored.id != new.id:  # the request id's earlier playthrough
            return await self.get(identity, stored.id)
        now = Now(scene.graph.nodes[start], offered)
        return await self._with_clip(identity, stored, now)

    async def get(self, identity: Identity, playthrough_id: str) -> PlaythroughView:
        async with self._sessions() as session:
            found = await self._load(session, identity, playthrough_id)
            now = await self._now(session, found)
        return await self._with_clip(identity, found, now)

    async def choose(
        self, identity: Identity, playthrough_id: str, step: int, choice: str
    ) -> PlaythroughView:
        scene_id, connection_id = parse_element(choice, "connections", "choice")
        async with UnitOfWork(self._sessions) as uow:
            session = uow.session
            found = await self._load(session, identity, playthrough_id, lock=True)
            recorded = None
            if step <= found.step:
                recorded = await repo.step_taken(session, found.id, step)
            kind = play.judge_step(step, found.step, recorded, connection_id)
            if kind is StepKind.REPEATED:
                now = await self._now(session, found)
            else:
                now = await self._step(session, found, kind, step, scene_id, connection_id)
                await uow.commit()
        return await self._with_clip(identity, found, now)

    async def _step(
        self,
        session: AsyncSession,
        found: Playthrough,
        kind: StepKind,
        step: int,
        scene_id: str,
        connection_id: str,
    ) -> Now:
        """Take step `step` along `connection_id`, or refuse it."""
        if kind is StepKind.TAKEN:
            raise Aborted(
                f"step {step} was taken with another choice; the playthrough is at step"
                f" {found.step}",
                reason="STEP_TAKEN",
                metadata={"step": str(found.step)},
            )
        if kind is StepKind.AHEAD:
            raise FailedPrecondition(
                f"the next step is {found.step + 1}, not {step}",
                reason="STEP_AHEAD",
                metadata={"step": str(found.step)},
            )
        if _scene_changed(found):
            await repo.save_playthrough(session, found)
            await session.commit()  # it stays FAILED, though this call is refused
            raise FailedPrecondition(
                f"scenes/{found.scene_id} changed since this playthrough started; start another",
                reason="SCENE_CHANGED",
            )
        if found.state is not PlayState.ACTIVE:
            raise FailedPrecondition(
                f"playthroughs/{found.id} has ended", reason="PLAYTHROUGH_ENDED"
            )
        _, leaving = await repo.node_with_outgoing(session, found.scene_id, found.current_id)
        offered = play.offered(leaving, found.values)
        edge = next((e for e in offered if e.id == connection_id), None)
        if edge is None or scene_id != found.scene_id:
            raise FailedPrecondition(
                f"{edge_name(scene_id, connection_id)} is not offered at step {step}",
                reason="CHOICE_NOT_OFFERED",
            )
        found.values = play.take(edge, found.values)
        found.current_id = edge.to_id
        found.step = step
        node, leaving = await repo.node_with_outgoing(session, found.scene_id, edge.to_id)
        offered = play.offered(leaving, found.values)
        found.state = PlayState.ACTIVE if offered else PlayState.ENDED
        await repo.record_step(session, found.id, step, edge.id)
        await repo.save_playthrough(session, found)
        return Now(node, offered)

    async def list(
        self, identity: Identity, scene_id: str, page_token: str, page_size: int
    ) -> tuple[list[PlaythroughView], str]:
        """A page of the caller's playthroughs, without clips or choices."""
        async with self._sessions() as session:
            found, token = await repo.list_playthroughs(
                session,
                self._tokens,
                identity.user_id,
                {"scene": scene_id},
                page_token=page_token,
                page_size=page_size,
            )
        for playthrough in found:
            _scene_changed(playthrough)
        return [PlaythroughView(p, [], None) for p in found], token

    async def _load(
        self, session: AsyncSession, identity: Identity, playthrough_id: str, *, lock: bool = False
    ) -> Playthrough:
        found = await repo.load_playthrough(session, playthrough_id, identity.user_id, lock=lock)
        if found is None:
            raise NotFound(
                f"playthroughs/{playthrough_id} does not exist", reason="PLAYTHROUGH_NOT_FOUND"
            )
        return found

    @staticmethod
    async def _now(session: AsyncSession, playthrough: Playthrough) -> Now:
        node, leaving = await repo.node_with_outgoing(
            session, playthrough.scene_id, playthrough.current_id
        )
        offered: list[Edge] = []
        if not _scene_changed(playthrough) and playthrough.state is PlayState.ACTIVE:
            offered = play.offered(leaving, playthrough.values)
        return Now(node, offered)

    async def _with_clip(
        self, identity: Identity, playthrough: Playthrough, now: Now
    ) -> PlaythroughView:
        """The view with the current clip's URL, asked for outside any transaction. A failed
        playthrough shows no clip: its node may not be what it was."""
        node = now.node
        if playthrough.state is PlayState.FAILED or node is None or not node.asset_id:
            return PlaythroughView(playthrough, now.offered, None)
        url = await self._assets.download_url(f"assets/{node.asset_id}", identity.token)
        return PlaythroughView(playthrough, now.offered, (node.asset_id, url))


def _scene_changed(playthrough: Playthrough) -> bool:
    """Whether the scene changed under an active playthrough; if so, it is FAILED from now."""
    if playthrough.state is not PlayState.ACTIVE:
        return False
    if playthrough.scene_version_now == playthrough.scene_version:
        return False
    playthrough.state = PlayState.FAILED
    playthrough.failure_reason = "SCENE_CHANGED"
    return True


def _refuse_unplayable(scene: Scene) -> None:
    bad = play.unplayable(domain.problems(scene.graph, scene.variables))
    if bad:
        raise FailedPrecondition(
            f"scenes/{scene.id} cannot be played: {len(bad)} condition(s) or effect(s) have no"
            " meaning (see ValidateScene)",
            [
                PreconditionViolation(p.code, f"scenes/{scene.id}/{p.kind}/{p.subject}", p.message)
                for p in bad
            ],
            reason="SCENE_NOT_PLAYABLE",
        )


def _refuse_unwritable(scene_id: str, data: SceneData) -> None:
    """A document's scene holds to the rules every write does (the protos' and the text
    PostgreSQL can store, free-JSON bounds among them): each part of it is checked as the
    message that would write it."""
    keys = data.keys
    parts: list[tuple[str, Any]] = [
        (
            "scene",
            pb.Scene(
                display_name=data.display_name,
                description=data.description,
                tags=data.tags,
                variables=[variable_to_proto(v) for v in data.variables],
            ),
        )
    ]
    for node in data.graph.nodes.values():
        parts.append((f"nodes[{keys[node.id]!r}]", node_to_proto(scene_id, node)))
    for edge in data.graph.edges.values():
        where = f"connections[{keys[edge.from_id]!r} -> {keys[edge.to_id]!r}]"
        parts.append((where, edge_to_proto(scene_id, edge)))
    for where, message in parts:
        found = violations_of(message)
        if found:
            raise _bad_document(f"{where}.{found[0].field}: {found[0].description}")


def _bad_document(why: str) -> InvalidArgument:
    return InvalidArgument(
        f"the document does not describe a scene: {why}",
        [FieldViolation("content", why, "BAD_DOCUMENT")],
        reason="BAD_DOCUMENT",
    )


def _fitting(files: list[ExportedFile]) -> list[ExportedFile]:
    """`files`, when they fit one answer; else RESOURCE_EXHAUSTED (a document is read back
    up to the same size, ImportScene's limit)."""
    size = sum(len(f.content) for f in files)
    if size > MAX_EXPORT_BYTES:
        raise ResourceExhausted(
            f"this export is {size} bytes; an export is at most {MAX_EXPORT_BYTES}",
            reason="EXPORT_TOO_LARGE",
            metadata={"size": str(size), "limit": str(MAX_EXPORT_BYTES)},
        )
    return files


def _fresh_id() -> str:
    return str(uuid.uuid4())


def _check_size(nodes: int, edges: int) -> None:
    for kind, count, limit in (
        ("nodes", nodes, domain.MAX_NODES),
        ("edges", edges, domain.MAX_EDGES),
    ):
        if count > limit:
            raise ResourceExhausted(
                f"a scene holds at most {limit} {kind}; this write would make {count}",
                reason="SCENE_TOO_LARGE",
                metadata={"kind": kind, "limit": str(limit), "count": str(count)},
            )


def _refused(change: Change, error: Rejected) -> DomainError:
    path = f"{change.path}.{error.field}"
    if error.reason == "DUPLICATE":
        return AlreadyExists(str(error), reason="ID_TAKEN", metadata={"field": path})
    return invalid(path, str(error), error.reason)


def _conflict(error: IntegrityError) -> DomainError:
    constraint = getattr(getattr(error.orig, "__cause__", None), "constraint_name", "") or ""
    if "one_per_type" in constraint:
        return invalid(
            "changes", "a connection of this type between these two exists", "DUPLICATE_CONNECTION"
        )
    return AlreadyExists(
        "an element id of this write was taken meanwhile; try again", reason="ID_TAKEN"
    )


def _fit(
    scene_id: str, nodes: list[Node], edges: list[Edge], size: int
) -> tuple[list[Node], list[Edge], bool]:
    """The elements that fit one page (`size` of them, and `MAX_GRAPH_PAGE_BYTES`), and
    whether more follow."""
    kept_nodes: list[Node] = []
    kept_edges: list[Edge] = []
    used = 0
    elements: list[tuple[Node | None, Edge | None]] = [(n, None) for n in nodes]
    elements += [(None, e) for e in edges]
    for node, edge in elements:
        if len(kept_nodes) + len(kept_edges) == size:
            return kept_nodes, kept_edges, True
        message = node_to_proto(scene_id, node) if node else edge_to_proto(scene_id, edge)  # type: ignore[arg-type]
        used += message.ByteSize() + 8
        if used > MAX_GRAPH_PAGE_BYTES and (kept_nodes or kept_edges):
            return kept_nodes, kept_edges, True
        if node is not None:
            kept_nodes.append(node)
        elif edge is not None:
            kept_edges.append(edge)
    return kept_nodes, kept_edges, False
