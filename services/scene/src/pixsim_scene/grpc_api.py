"""`pixsim.scene.v1.SceneService`: thin handlers; the guard has authenticated and validated.
Single-element writes are one-change batches of `ApplySceneChanges`, so every write goes
through the same checks."""

from __future__ import annotations

import uuid
from typing import Any, TypeVar

from google.protobuf import empty_pb2

from pixsim.scene.v1 import scene_service_pb2 as pb
from pixsim.scene.v1 import scene_service_pb2_grpc as pb_grpc
from pixsim_common.auth import current_identity
from pixsim_common.pagination import PageTokens
from pixsim_common.timestamps import to_timestamp
from pixsim_scene import repository as repo
from pixsim_scene.changes import (
    Change,
    edge_name,
    edge_to_proto,
    edge_type_to_proto,
    node_name,
    node_to_proto,
    parse_element,
    value_to_proto,
    variable_to_proto,
)
from pixsim_scene.repository import Scene
from pixsim_scene.service import (
    Applied,
    GraphPage,
    PlaythroughService,
    PlaythroughView,
    SceneService,
)


def scene_to_proto(scene: Scene) -> pb.Scene:
    return pb.Scene(
        name=f"scenes/{scene.id}",
        owner=f"users/{scene.owner_id}",
        display_name=scene.display_name,
        description=scene.description,
        tags=scene.tags,
        is_template=scene.is_template,
        start_scene_asset=node_name(scene.id, scene.graph.start_id),
        etag=scene.etag,
        create_time=to_timestamp(scene.create_time),
        update_time=to_timestamp(scene.update_time),
        variables=[variable_to_proto(v) for v in scene.variables],
    )


def graph_to_proto(result: Applied | GraphPage) -> pb.SceneGraph:
    """A graph page, or what a write changed, with the scene it belongs to."""
    scene = result.scene
    return pb.SceneGraph(
        scene=scene_to_proto(scene),
        assets=[node_to_proto(scene.id, n) for n in result.nodes],
        connections=[edge_to_proto(scene.id, e) for e in result.edges],
        next_page_token=result.next_page_token if isinstance(result, GraphPage) else "",
    )


def playthrough_to_proto(view: PlaythroughView) -> pb.Playthrough:
    found = view.playthrough
    scene_id = found.scene_id
    message = pb.Playthrough(
        name=f"playthroughs/{found.id}",
        scene=f"scenes/{scene_id}",
        owner=f"users/{found.owner_id}",
        scene_etag=str(found.scene_version),
        state=pb.Playthrough.State.Value(f"STATE_{found.state.value}"),
        failure_reason=found.failure_reason,
        step=found.step,
        current_scene_asset=node_name(scene_id, found.current_id),
        choices=[
            pb.PlaythroughChoice(
                connection=edge_name(scene_id, e.id),
                type=edge_type_to_proto(e.type),
                label=e.label,
                to_scene_asset=node_name(scene_id, e.to_id),
            )
            for e in view.choices
        ],
        variables=[
            pb.PlaythroughVariable(name=v.name, value=value_to_proto(found.values[v.name]))
            for v in found.declared
            if v.name in found.values
        ],
        create_time=to_timestamp(found.create_time),
        update_time=to_timestamp(found.update_time),
    )
    if view.clip is not None:
        asset_id, url = view.clip
        message.clip.asset = f"assets/{asset_id}"
        if url is not None:
            message.clip.url = url.url
            message.clip.expire_time.CopyFrom(url.expire_time)
            message.clip.mime_type = url.mime_type
    return message


# protovalidate admits only these (defined, never UNSPECIFIED).
_FORMATS = {
    pb.SCENE_FORMAT_JSON: "json",
    pb.SCENE_FORMAT_HTML: "html",
    pb.SCENE_FORMAT_TWEE: "twee",
}


def _scene_id(name: str) -> str:
    return name.split("/")[1]


def _element_id(name: str) -> str:
    return name.rsplit("/", 1)[1]


Element = TypeVar("Element", pb.SceneAsset, pb.SceneConnection)


def _named(element: Element, collection: str) -> Element:
    """`element` with a new name in `collection` unless the caller chose one."""
    if element.name:
        return element
    named = type(element)()
    named.CopyFrom(element)
    named.name = f"{collection}/{uuid.uuid4()}"
    return named


class SceneApi(pb_grpc.SceneServiceServicer):
    def __init__(
        self,
        service: SceneService,
        playthroughs: PlaythroughService,
        reads: Any,
        tokens: PageTokens,
    ) -> None:
        self._service = service
        self._playthroughs = playthroughs
        self._reads = reads
        self._tokens = tokens

    async def CreateScene(self, request: pb.CreateSceneRequest, context: Any) -> pb.Scene:
        return scene_to_proto(await self._service.create(current_identity(), request.scene))

    async def GetScene(self, request: pb.GetSceneRequest, context: Any) -> pb.Scene:
        return scene_to_proto(await self._service.get(current_identity(), _scene_id(request.name)))

    async def ListScenes(
        self, request: pb.ListScenesRequest, context: Any
    ) -> pb.ListScenesResponse:
        filters = {
            "tag": request.tag,
            "is_template": request.is_template if request.HasField("is_template") else None,
        }
        async with self._reads() as session:
            found, token = await repo.list_page(
                session,
                self._tokens,
                current_identity().user_id,
                filters,
                page_token=request.page_token,
                page_size=request.page_size,
            )
        return pb.ListScenesResponse(
            scenes=[scene_to_proto(s) for s in found], next_page_token=token
        )

    async def UpdateScene(self, request: pb.UpdateSceneRequest, context: Any) -> pb.Scene:
        return scene_to_proto(
            await self._service.update(current_identity(), request.scene, request.update_mask)
        )

    async def DeleteScene(self, request: pb.DeleteSceneRequest, context: Any) -> empty_pb2.Empty:
        await self._service.delete(current_identity(), _scene_id(request.name), request.etag)
        return empty_pb2.Empty()

    async def _one(self, scene_name: str, etag: str, change: Change) -> Scene:
        applied = await self._service.apply(
            current_identity(), _scene_id(scene_name), etag, [change]
        )
        return applied.scene

    async def CreateSceneAsset(
        self, request: pb.CreateSceneAssetRequest, context: Any
    ) -> pb.SceneAsset:
        node = _named(request.scene_asset, f"{request.parent}/assets")
        scene = await self._one(
            request.parent, request.etag, Change("create_asset", node, "scene_asset")
        )
        return node_to_proto(scene.id, scene.graph.nodes[_element_id(node.name)])

    async def UpdateSceneAsset(
        self, request: pb.UpdateSceneAssetRequest, context: Any
    ) -> pb.SceneAsset:
        name = request.scene_asset.name
        _, node_id = parse_element(name, "assets", "scene_asset.name")
        scene = await self._one(
            name,
            request.etag,
            Change("update_asset", request.scene_asset, "scene_asset", request.update_mask),
        )
        return node_to_proto(scene.id, scene.graph.nodes[node_id])

    async def DeleteSceneAsset(
        self, request: pb.DeleteSceneAssetRequest, context: Any
    ) -> empty_pb2.Empty:
        await self._one(request.name, request.etag, Change("delete_asset", request.name, "name"))
        return empty_pb2.Empty()

    async def CreateSceneConnection(
        self, request: pb.CreateSceneConnectionRequest, context: Any
    ) -> pb.SceneConnection:
        edge = _named(request.connection, f"{request.parent}/connections")
        scene = await self._one(
            request.parent, request.etag, Change("create_connection", edge, "connection")
        )
        return edge_to_proto(scene.id, scene.graph.edges[_element_id(edge.name)])

    async def UpdateSceneConnection(
        self, request: pb.UpdateSceneConnectionRequest, context: Any
    ) -> pb.SceneConnection:
        name = request.connection.name
        _, edge_id = parse_element(name, "connections", "connection.name")
        scene = await self._one(
            name,
            request.etag,
            Change("update_connection", request.connection, "connection", request.update_mask),
        )
        return edge_to_proto(scene.id, scene.graph.edges[edge_id])

    async def DeleteSceneConnection(
        self, request: pb.DeleteSceneConnectionRequest, context: Any
    ) -> empty_pb2.Empty:
        await self._one(
            request.name, request.etag, Change("delete_connection", request.name, "name")
        )
        return empty_pb2.Empty()

    async def GetSceneGraph(self, request: pb.GetSceneGraphRequest, context: Any) -> pb.SceneGraph:
        return graph_to_proto(
            await self._service.graph_page(
                current_identity(), _scene_id(request.name), request.page_token, request.page_size
            )
        )

    async def CloneScene(self, request: pb.CloneSceneRequest, context: Any) -> pb.SceneGraph:
        return graph_to_proto(
            await self._service.clone(
                current_identity(), _scene_id(request.name), request.display_name
            )
        )

    async def ValidateScene(
        self, request: pb.ValidateSceneRequest, context: Any
    ) -> pb.ValidateSceneResponse:
        scene_id = _scene_id(request.name)
        problems = await self._service.validate(current_identity(), scene_id)
        return pb.ValidateSceneResponse(
            problems=[
                pb.SceneProblem(
                    code=p.code,
                    severity=pb.SceneProblem.Severity.Value(f"SEVERITY_{p.severity.value}"),
                    message=p.message,
                    subject=f"scenes/{scene_id}/{p.kind}/{p.subject}",
                )
                for p in problems
            ]
        )

    async def ApplySceneChanges(
        self, request: pb.ApplySceneChangesRequest, context: Any
    ) -> pb.SceneGraph:
        changes = []
        for index, change in enumerate(request.changes):
            kind = change.WhichOneof("change")
            assert kind is not None  # protovalidate requires the oneof
            changes.append(Change(kind, getattr(change, kind), f"changes[{index}].{kind}"))
        return graph_to_proto(
            await self._service.apply(
                current_identity(), _scene_id(request.name), request.etag, changes
            )
        )

    async def StartPlaythrough(
        self, request: pb.StartPlaythroughRequest, context: Any
    ) -> pb.Playthrough:
        view = await self._playthroughs.start(
            current_identity(), _scene_id(request.scene), request.request_id
        )
        return playthrough_to_proto(view)

    async def Choose(self, request: pb.ChooseRequest, context: Any) -> pb.Playthrough:
        view = await self._playthroughs.choose(
            current_identity(), _element_id(request.name), request.step, request.choice
        )
        return playthrough_to_proto(view)

    async def GetPlaythrough(
        self, request: pb.GetPlaythroughRequest, context: Any
    ) -> pb.Playthrough:
        view = await self._playthroughs.get(current_identity(), _element_id(request.name))
        return playthrough_to_proto(view)

    async def ListPlaythroughs(
        self, request: pb.ListPlaythroughsRequest, context: Any
    ) -> pb.ListPlaythroughsResponse:
        views, token = await self._playthroughs.list(
            current_identity(),
            _scene_id(request.scene) if request.scene else "",
            request.page_token,
            request.page_size,
        )
        return pb.ListPlaythroughsResponse(
            playthroughs=[playthrough_to_proto(v) for v in views], next_page_token=token
        )

    async def ExportScene(
        self, request: pb.ExportSceneRequest, context: Any
    ) -> pb.ExportSceneResponse:
        files = await self._service.export(
            current_identity(), _scene_id(request.name), _FORMATS[request.format]
        )
        return pb.ExportSceneResponse(
            files=[
                pb.ExportedFile(
                    path=f.path, content=f.content, asset=f.asset, mime_type=f.mime_type
                )
                for f in files
            ]
        )

    async def ImportScene(
        self, request: pb.ImportSceneRequest, context: Any
    ) -> pb.ImportSceneResponse:
        scene, unattached = await self._service.import_(
            current_identity(), _FORMATS[request.format], request.content, request.display_name
        )
        return pb.ImportSceneResponse(
            scene=scene_to_proto(scene),
            unattached=[
                pb.UnattachedSceneAsset(
                    scene_asset=node_name(scene.id, node_id), key=key, asset=asset
                )
                for node_id, key, asset in unattached
            ],
        )
