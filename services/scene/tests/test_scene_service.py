"""The scene service through a real gRPC channel, against real PostgreSQL and Kafka and a
running asset service (which it asks, with the caller's token, whose assets are whose)."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
import pytest_asyncio
from google.protobuf import field_mask_pb2
from pydantic import SecretStr

from pixsim.asset.v1 import asset_service_pb2 as asset_pb
from pixsim.asset.v1 import asset_service_pb2_grpc as asset_grpc
from pixsim.events.v1 import events_pb2
from pixsim.scene.v1 import scene_service_pb2 as pb
from pixsim.scene.v1 import scene_service_pb2_grpc as pb_grpc
from pixsim_asset import main as asset_main
from pixsim_asset.settings import Settings as AssetSettings
from pixsim_common import topics
from pixsim_common.auth import issue_token
from pixsim_common.db import run_migrations
from pixsim_common.errors import status_details
from pixsim_local.kafka import EventTap, KafkaBroker
from pixsim_local.pytest_plugin import DatabaseFactory
from pixsim_local.s3 import S3Server
from pixsim_provider_sim.media import render_mp4, render_png
from pixsim_scene import domain
from pixsim_scene import main as scene_main
from pixsim_scene.metrics import WRITE_ELEMENTS_LOADED
from pixsim_scene.settings import Settings as SceneSettings

pytestmark = pytest.mark.integration
Metadata = tuple[tuple[str, str], ...]
NEXT, CHOICE = pb.SceneConnection.TYPE_NEXT, pb.SceneConnection.TYPE_CHOICE
BRANCH = pb.SceneConnection.TYPE_BRANCH


@dataclass
class Stack:
    scenes: pb_grpc.SceneServiceAsyncStub
    assets: asset_grpc.AssetServiceAsyncStub
    tap: EventTap
    as_user: Callable[[str], Metadata]

    async def asset(self, who: Metadata, content: bytes = b"") -> str:
        """A fresh asset of `who`'s (an image unless `content` says otherwise), uploaded
        through the asset service."""

        async def parts() -> AsyncIterator[asset_pb.UploadAssetRequest]:
            yield asset_pb.UploadAssetRequest(metadata=asset_pb.UploadAssetRequest.Metadata())
            yield asset_pb.UploadAssetRequest(
                chunk=content or render_png(uuid.uuid4().int % 100_000, 16, 16)
            )

        return (await self.assets.UploadAsset(parts(), metadata=who)).name

    async def scene(self, who: Metadata, **fields: object) -> pb.Scene:
        return await self.scenes.CreateScene(
            pb.CreateSceneRequest(scene=pb.Scene(display_name="story", **fields)),  # type: ignore[arg-type]
            metadata=who,
        )

    async def place(self, scene: str, asset: str, who: Metadata, **fields: object) -> pb.SceneAsset:
        return await self.scenes.CreateSceneAsset(
            pb.CreateSceneAssetRequest(
                parent=scene,
                scene_asset=pb.SceneAsset(asset=asset, **fields),  # type: ignore[arg-type]
            ),
            metadata=who,
        )

    async def connect(
        self, scene: str, a: str, b: str, who: Metadata, kind: int = NEXT, label: str = ""
    ) -> pb.SceneConnection:
        return await self.scenes.CreateSceneConnection(
            pb.CreateSceneConnectionRequest(
                parent=scene,
                connection=pb.SceneConnection(
                    from_scene_asset=a,
                    to_scene_asset=b,
                    type=kind,  # type: ignore[arg-type]
                    label=label,
                ),
            ),
            metadata=who,
        )

    async def graph(self, scene: str, who: Metadata) -> pb.SceneGraph:
        return await self.scenes.GetSceneGraph(pb.GetSceneGraphRequest(name=scene), metadata=who)


@pytest_asyncio.fixture(loop_scope="session", scope="module")
async def stack(
    own_kafka: KafkaBroker,
    new_database_module: DatabaseFactory,
    signing_keys: tuple[str, str],
    tmp_path_factory: pytest.TempPathFactory,
    s3_server: S3Server,
) -> AsyncIterator[Stack]:
    asset_db = await new_database_module("assets")
    scene_db = await new_database_module("scenes")
    await asyncio.to_thread(run_migrations, asset_db.url, asset_main.MIGRATIONS)
    await asyncio.to_thread(run_migrations, scene_db.url, scene_main.MIGRATIONS)
    common = {
        "kafka_bootstrap": own_kafka.bootstrap,
        "jwt_public_key": signing_keys[1],
        "grpc_port": 0,
    }
    bucket = f"scenes-{uuid.uuid4().hex[:10]}"
    await s3_server.create_bucket(bucket)
    assets = await asset_main.build(  # in S3, so that a playthrough's clips have URLs
        AssetSettings(
            database_url=SecretStr(asset_db.url),
            storage_backend="s3",
            storage_root=tmp_path_factory.mktemp("scene-assets"),
            s3_endpoint_url=s3_server.endpoint,
            s3_bucket=bucket,
            s3_access_key_id=SecretStr(s3_server.access_key),
            s3_secret_access_key=SecretStr(s3_server.secret_key),
            **common,  # type: ignore[arg-type]
        )
    )
    await assets.start()
    scenes = await scene_main.build(
        SceneSettings(
            database_url=SecretStr(scene_db.url),
            asset_address=f"127.0.0.1:{assets.port}",
            **common,  # type: ignore[arg-type]
        )
    )
    await scenes.start()
    tap = EventTap(own_kafka.bootstrap, [topics.SCENE_UPDATED.name])
    await tap.start()

    def auth(user: str) -> Metadata:
        return (("authorization", "Bearer " + issue_token(signing_keys[0], user_id=user)),)

    async with (
        grpc.aio.insecure_channel(f"127.0.0.1:{scenes.port}") as scene_channel,
        grpc.aio.insecure_channel(f"127.0.0.1:{assets.port}") as asset_channel,
    ):
        yield Stack(
            pb_grpc.SceneServiceStub(scene_channel),
            asset_grpc.AssetServiceStub(asset_channel),
            tap,
            auth,
        )
    await tap.stop()
    await scenes.stop()
    await assets.stop()


def user(stack: Stack) -> Metadata:
    return stack.as_user(f"u-{uuid.uuid4().hex[:8]}")


def violations(error: grpc.aio.AioRpcError) -> list[tuple[str, str]]:
    return [(v.field, v.description) for v in status_details(error)["BadRequest"].field_violations]


async def test_a_scene_is_built_read_validated_and_announced(stack: Stack) -> None:
    alice = user(stack)
    scene = await stack.scene(alice, tags=["intro"], description="a test")
    a = await stack.place(scene.name, await stack.asset(alice), alice, order=1)
    b = await stack.place(scene.name, await stack.asset(alice), alice, order=2)
    c = await stack.place(
        scene.name, await stack.asset(alice), alice, order=3, metadata={"ending": True}
    )
    await stack.connect(scene.name, a.name, b.name, alice)
    await stack.connect(scene.name, b.name, c.name, alice, CHOICE)  # no label: a problem
    graph = await stack.graph(scene.name, alice)
    assert [n.name for n in graph.assets] == [a.name, b.name, c.name]
    assert len(graph.connections) == 2
    assert graph.scene.etag == "6"  # created, then five writes

    (choice,) = [c for c in graph.connections if c.type == CHOICE]
    report = await stack.scenes.ValidateScene(
        pb.ValidateSceneRequest(name=scene.name), metadata=alice
    )
    assert {(p.code, p.subject) for p in report.problems} == {
        ("NO_START_NODE", a.name),
        ("CHOICE_WITHOUT_LABEL", choice.name),
    }
    await stack.scenes.UpdateSceneConnection(
        pb.UpdateSceneConnectionRequest(
            connection=pb.SceneConnection(name=choice.name, label="onwards"),
            update_mask=field_mask_pb2.FieldMask(paths=["label"]),
        ),
        metadata=alice,
    )
    await stack.scenes.UpdateScene(
        pb.UpdateSceneRequest(
            scene=pb.Scene(name=scene.name, start_scene_asset=a.name),
            update_mask=field_mask_pb2.FieldMask(paths=["start_scene_asset"]),
        ),
        metadata=alice,
    )
    report = await stack.scenes.ValidateScene(
        pb.ValidateSceneRequest(name=scene.name), metadata=alice
    )
    assert list(report.problems) == []
    scene_id = scene.name.removeprefix("scenes/")
    updates = await stack.tap.wait_for(topics.SCENE_UPDATED.name, scene_id, count=8)
    etags = [events_pb2.SceneUpdated.FromString(r.value).etag for r in updates]
    assert etags == [str(v) for v in range(1, 9)]

    listed = await stack.scenes.ListScenes(pb.ListScenesRequest(tag="intro"), metadata=alice)
    assert [s.name for s in listed.scenes] == [scene.name]
    none = await stack.scenes.ListScenes(pb.ListScenesRequest(is_template=True), metadata=alice)
    assert list(none.scenes) == []


async def test_another_users_asset_is_refused_and_nothing_is_written(stack: Stack) -> None:
    alice, bob = user(stack), user(stack)
    scene = await stack.scene(alice)
    bobs_asset = await stack.asset(bob)
    mine = await stack.asset(alice)
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await stack.scenes.ApplySceneChanges(
            pb.ApplySceneChangesRequest(
                name=scene.name,
                changes=[
                    pb.SceneChange(create_asset=pb.SceneAsset(asset=mine)),
                    pb.SceneChange(create_asset=pb.SceneAsset(asset=bobs_asset)),
                    pb.SceneChange(create_asset=pb.SceneAsset(asset=f"assets/{uuid.uuid4()}")),
                ],
            ),
            metadata=alice,
        )
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert [f for f, _ in violations(refused.value)] == [
        "changes[1].create_asset.asset",
        "changes[2].create_asset.asset",
    ]
    graph = await stack.graph(scene.name, alice)
    assert list(graph.assets) == []  # the owned one was not written either: all or none
    assert graph.scene.etag == scene.etag
    with pytest.raises(grpc.aio.AioRpcError) as hidden:
        await stack.graph(scene.name, bob)
    assert hidden.value.code() == grpc.StatusCode.NOT_FOUND


async def test_a_batch_applies_in_order_and_refuses_edges_across_scenes(stack: Stack) -> None:
    alice = user(stack)
    scene = await stack.scene(alice)
    other = await stack.scene(alice)
    elsewhere = await stack.place(other.name, await stack.asset(alice), alice)
    first = f"{scene.name}/assets/{uuid.uuid4()}"
    second = f"{scene.name}/assets/{uuid.uuid4()}"
    graph = await stack.scenes.ApplySceneChanges(
        pb.ApplySceneChangesRequest(
            name=scene.name,
            etag=scene.etag,
            changes=[
                pb.SceneChange(
                    create_asset=pb.SceneAsset(name=first, asset=await stack.asset(alice))
                ),
                pb.SceneChange(
                    create_asset=pb.SceneAsset(name=second, asset=await stack.asset(alice))
                ),
                pb.SceneChange(
                    create_connection=pb.SceneConnection(
                        from_scene_asset=first, to_scene_asset=second, type=NEXT
                    )
                ),
            ],
        ),
        metadata=alice,
    )
    assert [(c.from_scene_asset, c.to_scene_asset) for c in graph.connections] == [(first, second)]
    for connection, field in (
        (
            pb.SceneConnection(from_scene_asset=first, to_scene_asset=elsewhere.name, type=NEXT),
            "connection.to_scene_asset",
        ),
        (
            pb.SceneConnection(from_scene_asset=first, to_scene_asset=second, type=NEXT),
            "connection.type",
        ),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await stack.scenes.CreateSceneConnection(
                pb.CreateSceneConnectionRequest(parent=scene.name, connection=connection),
                metadata=alice,
            )
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert [f for f, _ in violations(refused.value)] == [field]


async def test_a_stale_write_is_aborted(stack: Stack) -> None:
    alice = user(stack)
    scene = await stack.scene(alice)
    asset = await stack.asset(alice)

    async def place_with(etag: str) -> pb.SceneAsset:
        return await stack.scenes.CreateSceneAsset(
            pb.CreateSceneAssetRequest(
                parent=scene.name, etag=etag, scene_asset=pb.SceneAsset(asset=asset)
            ),
            metadata=alice,
        )

    outcomes = await asyncio.gather(
        *(place_with(scene.etag) for _ in range(5)), return_exceptions=True
    )
    won = [o for o in outcomes if isinstance(o, pb.SceneAsset)]
    lost = [o for o in outcomes if isinstance(o, grpc.aio.AioRpcError)]
    assert len(won) == 1
    assert [e.code() for e in lost] == [grpc.StatusCode.ABORTED] * 4
    assert status_details(lost[0])["ErrorInfo"].metadata["etag"] == "2"
    graph = await stack.graph(scene.name, alice)
    assert [n.name for n in graph.assets] == [won[0].name]


async def test_a_deleted_asset_is_detached_from_every_scene(stack: Stack) -> None:
    alice = user(stack)
    asset = await stack.asset(alice)
    scenes = [await stack.scene(alice) for _ in range(2)]
    nodes = [await stack.place(s.name, asset, alice) for s in scenes]
    await stack.assets.DeleteAsset(asset_pb.DeleteAssetRequest(name=asset), metadata=alice)
    for scene, node in zip(scenes, nodes, strict=True):
        for _ in range(200):
            graph = await stack.graph(scene.name, alice)
            if graph.assets[0].detached:
                break
            await asyncio.sleep(0.05)
        (detached,) = graph.assets
        assert (detached.name, detached.asset, detached.detached) == (node.name, "", True)
        report = await stack.scenes.ValidateScene(
            pb.ValidateSceneRequest(name=scene.name), metadata=alice
        )
        assert ("DETACHED_ASSET", node.name) in {(p.code, p.subject) for p in report.problems}
    # Placing the deleted asset again is refused, even if the asset service were slow to know.
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await stack.place(scenes[0].name, asset, alice)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_a_clone_equals_its_template_up_to_ids(stack: Stack) -> None:
    author, reader = user(stack), user(stack)
    template = await stack.scene(author, is_template=True, tags=["demo"])
    a = await stack.place(template.name, await stack.asset(author), author, order=1)
    b = await stack.place(
        template.name, await stack.asset(author), author, order=2, position={"x": 3, "y": 4}
    )
    await stack.connect(template.name, a.name, b.name, author, CHOICE, "go")
    await stack.scenes.UpdateScene(
        pb.UpdateSceneRequest(
            scene=pb.Scene(name=template.name, start_scene_asset=a.name),
            update_mask=field_mask_pb2.FieldMask(paths=["start_scene_asset"]),
        ),
        metadata=author,
    )
    source = await stack.graph(template.name, author)

    def shape(graph: pb.SceneGraph) -> tuple[object, ...]:
        index = {n.name: i for i, n in enumerate(graph.assets)}
        return (
            graph.scene.display_name,
            list(graph.scene.tags),
            index[graph.scene.start_scene_asset],
            [(n.order, n.position.x, n.position.y) for n in graph.assets],
            [
                (index[c.from_scene_asset], index[c.to_scene_asset], c.type, c.label)
                for c in graph.connections
            ],
        )

    own = await stack.scenes.CloneScene(pb.CloneSceneRequest(name=template.name), metadata=author)
    assert shape(own) == shape(source)
    assert own.scene.name != template.name
    assert not own.scene.is_template
    assert {n.asset for n in own.assets} == {n.asset for n in source.assets}
    assert not {n.name for n in own.assets} & {n.name for n in source.assets}

    # Someone else may clone a template; the author's assets come over detached.
    theirs = await stack.scenes.CloneScene(
        pb.CloneSceneRequest(name=template.name, display_name="mine now"), metadata=reader
    )
    assert theirs.scene.owner != own.scene.owner
    assert [(n.asset, n.detached) for n in theirs.assets] == [("", True), ("", True)]
    # ...but not a scene that is not a template.
    with pytest.raises(grpc.aio.AioRpcError) as hidden:
        await stack.scenes.CloneScene(pb.CloneSceneRequest(name=own.scene.name), metadata=reader)
    assert hidden.value.code() == grpc.StatusCode.NOT_FOUND


async def test_deleting_an_element_or_scene(stack: Stack) -> None:
    alice = user(stack)
    scene = await stack.scene(alice)
    a = await stack.place(scene.name, await stack.asset(alice), alice)
    b = await stack.place(scene.name, await stack.asset(alice), alice)
    await stack.connect(scene.name, a.name, b.name, alice)
    await stack.scenes.DeleteSceneAsset(pb.DeleteSceneAssetRequest(name=b.name), metadata=alice)
    graph = await stack.graph(scene.name, alice)
    assert ([n.name for n in graph.assets], list(graph.connections)) == ([a.name], [])
    with pytest.raises(grpc.aio.AioRpcError) as stale:
        await stack.scenes.DeleteScene(
            pb.DeleteSceneRequest(name=scene.name, etag=scene.etag), metadata=alice
        )
    assert stale.value.code() == grpc.StatusCode.ABORTED
    await stack.scenes.DeleteScene(
        pb.DeleteSceneRequest(name=scene.name, etag=graph.scene.etag), metadata=alice
    )
    with pytest.raises(grpc.aio.AioRpcError) as gone:
        await stack.graph(scene.name, alice)
    assert gone.value.code() == grpc.StatusCode.NOT_FOUND
    scene_id = scene.name.removeprefix("scenes/")
    last = (await stack.tap.wait_for(topics.SCENE_UPDATED.name, scene_id, count=6))[-1]
    assert events_pb2.SceneUpdated.FromString(last.value).deleted


async def test_bad_updates_name_their_fields(stack: Stack) -> None:
    alice = user(stack)
    scene = await stack.scene(alice)
    node = await stack.place(scene.name, await stack.asset(alice), alice)
    cases = [
        (
            pb.UpdateSceneRequest(
                scene=pb.Scene(name=scene.name),
                update_mask=field_mask_pb2.FieldMask(paths=["owner"]),
            ),
            "update_mask",
        ),
        (
            pb.UpdateSceneRequest(
                scene=pb.Scene(name=scene.name),
                update_mask=field_mask_pb2.FieldMask(paths=["display_name"]),
            ),
            "scene.display_name",
        ),
        (
            pb.UpdateSceneRequest(
                scene=pb.Scene(
                    name=scene.name, start_scene_asset=f"{scene.name}/assets/{uuid.uuid4()}"
                ),
                update_mask=field_mask_pb2.FieldMask(paths=["start_scene_asset"]),
            ),
            "scene.start_scene_asset",
        ),
    ]
    for request, field in cases:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await stack.scenes.UpdateScene(request, metadata=alice)
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert [f for f, _ in violations(refused.value)] == [field]
    with pytest.raises(grpc.aio.AioRpcError) as no_asset:
        await stack.scenes.UpdateSceneAsset(
            pb.UpdateSceneAssetRequest(
                scene_asset=pb.SceneAsset(name=node.name),
                update_mask=field_mask_pb2.FieldMask(paths=["asset"]),
            ),
            metadata=alice,
        )
    assert [f for f, _ in violations(no_asset.value)] == ["scene_asset.asset"]
    moved = await stack.scenes.UpdateSceneAsset(
        pb.UpdateSceneAssetRequest(
            scene_asset=pb.SceneAsset(name=node.name, position=pb.CanvasPosition(x=7, y=8)),
            update_mask=field_mask_pb2.FieldMask(paths=["position"]),
        ),
        metadata=alice,
    )
    assert (moved.asset, moved.position.x, moved.position.y) == (node.asset, 7, 8)


async def test_an_id_taken_in_another_scene_is_already_exists_and_touches_nothing(
    stack: Stack,
) -> None:
    """Ids of scene assets and connections may be chosen by the caller, and are unique
    across scenes: bob naming alice's element ids in his own scene is refused, and her rows
    stay as they were (no upsert reaches across scenes)."""
    alice, bob = user(stack), user(stack)
    hers = await stack.scene(alice)
    a = await stack.place(hers.name, await stack.asset(alice), alice, order=1)
    b = await stack.place(hers.name, await stack.asset(alice), alice, order=2)
    edge = await stack.connect(hers.name, a.name, b.name, alice, CHOICE, label="hers")
    before = await stack.graph(hers.name, alice)

    his = await stack.scene(bob)
    his_asset = await stack.asset(bob)
    node_id, edge_id = a.name.rsplit("/", 1)[1], edge.name.rsplit("/", 1)[1]
    mine_a = await stack.place(his.name, his_asset, bob)
    mine_b = await stack.place(his.name, await stack.asset(bob), bob)
    attempts: list[Awaitable[Any]] = [
        stack.scenes.CreateSceneAsset(
            pb.CreateSceneAssetRequest(
                parent=his.name,
                scene_asset=pb.SceneAsset(
                    name=f"{his.name}/assets/{node_id}", asset=his_asset, order=9
                ),
            ),
            metadata=bob,
        ),
        stack.scenes.CreateSceneConnection(
            pb.CreateSceneConnectionRequest(
                parent=his.name,
                connection=pb.SceneConnection(
                    name=f"{his.name}/connections/{edge_id}",
                    from_scene_asset=mine_a.name,
                    to_scene_asset=mine_b.name,
                    type=NEXT,
                    label="his",
                ),
            ),
            metadata=bob,
        ),
        stack.scenes.ApplySceneChanges(
            pb.ApplySceneChangesRequest(
                name=his.name,
                changes=[
                    pb.SceneChange(
                        create_asset=pb.SceneAsset(
                            name=f"{his.name}/assets/{node_id}", asset=his_asset
                        )
                    )
                ],
            ),
            metadata=bob,
        ),
        stack.scenes.ApplySceneChanges(
            pb.ApplySceneChangesRequest(
                name=his.name,
                changes=[
                    pb.SceneChange(
                        create_connection=pb.SceneConnection(
                            name=f"{his.name}/connections/{edge_id}",
                            from_scene_asset=mine_b.name,
                            to_scene_asset=mine_a.name,
                            type=CHOICE,
                            label="his",
                        )
                    )
                ],
            ),
            metadata=bob,
        ),
    ]
    for attempt in attempts:
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await attempt
        assert raised.value.code() == grpc.StatusCode.ALREADY_EXISTS, raised.value.details()
        assert status_details(raised.value)["ErrorInfo"].reason == "ID_TAKEN"
    # Alice's own id again in her own scene is taken as well.
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await stack.scenes.CreateSceneAsset(
            pb.CreateSceneAssetRequest(
                parent=hers.name,
                scene_asset=pb.SceneAsset(name=a.name, asset=await stack.asset(alice)),
            ),
            metadata=alice,
        )
    assert raised.value.code() == grpc.StatusCode.ALREADY_EXISTS
    after = await stack.graph(hers.name, alice)
    assert after.assets == before.assets
    assert after.connections == before.connections
    assert after.scene.etag == before.scene.etag
    his_graph = await stack.graph(his.name, bob)
    assert sorted(n.name for n in his_graph.assets) == sorted([mine_a.name, mine_b.name])
    assert list(his_graph.connections) == []


async def test_a_write_answers_with_what_it_changed_not_the_whole_graph(stack: Stack) -> None:
    alice = user(stack)
    scene = await stack.scene(alice)
    asset = await stack.asset(alice)
    first = await stack.place(scene.name, asset, alice)
    answer = await stack.scenes.ApplySceneChanges(
        pb.ApplySceneChangesRequest(
            name=scene.name,
            changes=[
                pb.SceneChange(
                    create_asset=pb.SceneAsset(name=f"{scene.name}/assets/{u}", asset=asset)
                )
                for u in (uuid.uuid4(), uuid.uuid4())
            ],
        ),
        metadata=alice,
    )
    assert len(answer.assets) == 2
    assert first.name not in {n.name for n in answer.assets}
    assert answer.scene.etag == "3"


async def test_a_scene_of_the_largest_size_is_written_in_batches_read_in_pages_cloned_and_exported(
    stack: Stack,
) -> None:
    """10,000 nodes showing one asset and 10,000 connections, written in batches of 500:
    each batch loads only what it names (so the whole write is linear in the scene's size),
    one more node is RESOURCE_EXHAUSTED, the graph reads in pages under gRPC's limit, the
    asset's deletion detaches all 10,000 in one event, and the scene still clones."""
    alice = user(stack)
    scene = await stack.scene(alice)
    asset = await stack.asset(alice)
    node_names = [f"{scene.name}/assets/{uuid.uuid4()}" for _ in range(domain.MAX_NODES)]
    batch = 500
    loaded: list[float] = []

    async def write(changes: list[pb.SceneChange]) -> None:
        before = _histogram_sum(WRITE_ELEMENTS_LOADED)
        await stack.scenes.ApplySceneChanges(
            pb.ApplySceneChangesRequest(name=scene.name, changes=changes),
            metadata=alice,
            timeout=60,
        )
        loaded.append(_histogram_sum(WRITE_ELEMENTS_LOADED) - before)

    for start in range(0, len(node_names), batch):
        await write(
            [
                pb.SceneChange(create_asset=pb.SceneAsset(name=name, asset=asset, order=i))
                for i, name in enumerate(node_names[start : start + batch], start)
            ]
        )
    for start in range(0, len(node_names), batch):
        await write(
            [
                pb.SceneChange(
                    create_connection=pb.SceneConnection(
                        from_scene_asset=node_names[i],
                        to_scene_asset=node_names[(i + 1) % len(node_names)],
                        type=NEXT,
                    )
                )
                for i in range(start, start + batch)
            ]
        )
    # A batch of new nodes loads nothing; a batch of connections, its ends and nothing else.
    assert max(loaded[:20]) == 0
    assert max(loaded[20:]) <= 2 * batch
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await stack.place(scene.name, asset, alice)
    assert raised.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert status_details(raised.value)["ErrorInfo"].metadata["limit"] == str(domain.MAX_NODES)

    async def read_all(
        name: str, token: str = ""
    ) -> tuple[list[pb.SceneAsset], list[pb.SceneConnection]]:
        nodes: list[pb.SceneAsset] = []
        edges: list[pb.SceneConnection] = []
        first = token
        while True:
            try:
                page = await stack.scenes.GetSceneGraph(
                    pb.GetSceneGraphRequest(name=name, page_token=token, page_size=5000),
                    metadata=alice,
                )
            except grpc.aio.AioRpcError as error:
                if error.code() != grpc.StatusCode.ABORTED:
                    raise
                # The scene changed between pages (the detachment): read it again.
                nodes, edges, token = [], [], first
                continue
            assert page.ByteSize() < 4 * 1024 * 1024 + 64 * 1024
            nodes += page.assets
            edges += page.connections
            token = page.next_page_token
            if not token:
                return nodes, edges

    nodes, edges = await read_all(scene.name)
    assert (len(nodes), len(edges)) == (domain.MAX_NODES, domain.MAX_NODES)
    assert {n.name for n in nodes} == set(node_names)

    await stack.assets.DeleteAsset(asset_pb.DeleteAssetRequest(name=asset), metadata=alice)
    deadline = asyncio.get_running_loop().time() + 60
    while True:
        nodes, _ = await read_all(scene.name)
        if all(n.detached for n in nodes):
            break
        assert asyncio.get_running_loop().time() < deadline, "not every node was detached"
        await asyncio.sleep(0.5)
    assert all(n.asset == "" for n in nodes)

    clone = await stack.scenes.CloneScene(pb.CloneSceneRequest(name=scene.name), metadata=alice)
    cloned_nodes, cloned_edges = list(clone.assets), list(clone.connections)
    more_nodes, more_edges = await read_all(clone.scene.name, clone.next_page_token)
    cloned_nodes += more_nodes
    cloned_edges += more_edges
    assert (len(cloned_nodes), len(cloned_edges)) == (domain.MAX_NODES, domain.MAX_NODES)
    assert all(n.detached for n in cloned_nodes)

    # The largest scene leaves and comes back whole as a manifest or Twee, to the same bytes;
    # as a player page beside its manifest it is more than one answer holds: refused whole.
    for kind in (pb.SCENE_FORMAT_JSON, pb.SCENE_FORMAT_TWEE):
        (exported,) = (
            await stack.scenes.ExportScene(
                pb.ExportSceneRequest(name=scene.name, format=kind), metadata=alice
            )
        ).files
        back = await stack.scenes.ImportScene(
            pb.ImportSceneRequest(format=kind, content=exported.content), metadata=alice
        )
        (again,) = (
            await stack.scenes.ExportScene(
                pb.ExportSceneRequest(name=back.scene.name, format=kind), metadata=alice
            )
        ).files
        assert again.content == exported.content
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await stack.scenes.ExportScene(
            pb.ExportSceneRequest(name=scene.name, format=pb.SCENE_FORMAT_HTML), metadata=alice
        )
    assert raised.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert status_details(raised.value)["ErrorInfo"].reason == "EXPORT_TOO_LARGE"


def _histogram_sum(histogram: Any) -> float:
    return float(
        sum(s.value for m in histogram.collect() for s in m.samples if s.name.endswith("_sum"))
    )


def variable(name: str, **initial: Any) -> pb.SceneVariable:
    kinds = {
        "bool_value": pb.SceneVariable.TYPE_BOOL,
        "number_value": pb.SceneVariable.TYPE_NUMBER,
        "string_value": pb.SceneVariable.TYPE_STRING,
    }
    ((field, _),) = initial.items()
    return pb.SceneVariable(name=name, type=kinds[field], initial=pb.SceneValue(**initial))


async def test_variables_conditions_and_effects_are_kept_and_validated(stack: Stack) -> None:
    alice = user(stack)
    scene = await stack.scenes.CreateScene(
        pb.CreateSceneRequest(
            scene=pb.Scene(
                display_name="the door",
                variables=[
                    variable("has_key", bool_value=False),
                    variable("tries", number_value=0),
                    variable("mood", string_value="calm"),
                ],
            )
        ),
        metadata=alice,
    )
    assert [v.name for v in scene.variables] == ["has_key", "tries", "mood"]
    hall, door, vault, street = [
        await stack.place(scene.name, await stack.asset(alice), alice, order=i) for i in range(4)
    ]
    for ending in (vault, street):
        await stack.scenes.UpdateSceneAsset(
            pb.UpdateSceneAssetRequest(
                scene_asset=pb.SceneAsset(name=ending.name, metadata={"ending": True}),  # type: ignore[arg-type]
                update_mask=field_mask_pb2.FieldMask(paths=["metadata"]),
            ),
            metadata=alice,
        )

    async def connect(a: str, b: str, kind: int, **fields: Any) -> pb.SceneConnection:
        return await stack.scenes.CreateSceneConnection(
            pb.CreateSceneConnectionRequest(
                parent=scene.name,
                connection=pb.SceneConnection(
                    from_scene_asset=a,
                    to_scene_asset=b,
                    type=kind,  # type: ignore[arg-type]
                    **fields,
                ),
            ),
            metadata=alice,
        )

    search = await connect(
        hall.name,
        hall.name,
        CHOICE,
        label="search",
        condition="not has_key",
        effects=[
            pb.SceneEffect(variable="has_key", set=pb.SceneValue(bool_value=True)),
            pb.SceneEffect(variable="tries", increment=1),
        ],
    )
    await connect(hall.name, door.name, CHOICE, label="to the door")
    opened = await connect(door.name, vault.name, BRANCH, condition="has_key and tries < 3")
    ghost = await connect(door.name, street.name, BRANCH, condition="lives > 0", order=1)
    assert (opened.condition, [e.variable for e in search.effects]) == (
        "has_key and tries < 3",
        ["has_key", "tries"],
    )
    await stack.scenes.UpdateScene(
        pb.UpdateSceneRequest(
            scene=pb.Scene(name=scene.name, start_scene_asset=hall.name),
            update_mask=field_mask_pb2.FieldMask(paths=["start_scene_asset"]),
        ),
        metadata=alice,
    )

    report = await stack.scenes.ValidateScene(
        pb.ValidateSceneRequest(name=scene.name), metadata=alice
    )
    assert {(p.code, p.subject) for p in report.problems} == {
        ("UNDEFINED_VARIABLE", ghost.name),
        ("BRANCH_WITHOUT_DEFAULT", door.name),
        ("UNUSED_VARIABLE", f"{scene.name}/variables/mood"),
    }
    # Fixed: the street is the default, `mood` goes.
    await stack.scenes.UpdateSceneConnection(
        pb.UpdateSceneConnectionRequest(
            connection=pb.SceneConnection(name=ghost.name, condition=""),
            update_mask=field_mask_pb2.FieldMask(paths=["condition"]),
        ),
        metadata=alice,
    )
    fixed = await stack.scenes.UpdateScene(
        pb.UpdateSceneRequest(
            scene=pb.Scene(
                name=scene.name,
                variables=[
                    variable("has_key", bool_value=False),
                    variable("tries", number_value=0),
                ],
            ),
            update_mask=field_mask_pb2.FieldMask(paths=["variables"]),
        ),
        metadata=alice,
    )
    assert [v.name for v in fixed.variables] == ["has_key", "tries"]
    report = await stack.scenes.ValidateScene(
        pb.ValidateSceneRequest(name=scene.name), metadata=alice
    )
    assert list(report.problems) == []


async def test_a_condition_that_does_not_parse_or_a_mistyped_variable_is_refused(
    stack: Stack,
) -> None:
    alice = user(stack)
    scene = await stack.scene(alice)
    a = await stack.place(scene.name, await stack.asset(alice), alice)
    b = await stack.place(scene.name, await stack.asset(alice), alice)
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await stack.scenes.CreateSceneConnection(
            pb.CreateSceneConnectionRequest(
                parent=scene.name,
                connection=pb.SceneConnection(
                    from_scene_asset=a.name,
                    to_scene_asset=b.name,
                    type=BRANCH,
                    condition="__import__('os').system('id')",
                ),
            ),
            metadata=alice,
        )
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert violations(refused.value)[0][0] == "connection.condition"
    for bad, field in (
        (
            [variable("x", bool_value=True), variable("x", number_value=1)],
            "scene.variables[1].name",
        ),
        (
            [
                pb.SceneVariable(
                    name="x",
                    type=pb.SceneVariable.TYPE_NUMBER,
                    initial=pb.SceneValue(string_value="1"),
                )
            ],
            "scene.variables[0].initial",
        ),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await stack.scenes.CreateScene(
                pb.CreateSceneRequest(scene=pb.Scene(display_name="x", variables=bad)),
                metadata=alice,
            )
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert violations(refused.value)[0][0] == field
    graph = await stack.graph(scene.name, alice)
    assert list(graph.connections) == []


# ---- playthroughs ---------------------------------------------------------------------


@dataclass
class Keep:
    """A scene with state: the hall offers the cellar (where the key is) and the door; the
    door branches to the vault with the key and to the street without it."""

    scene: pb.Scene
    hall: str
    cellar: str
    door: str
    vault: str
    street: str
    to_cellar: str
    to_door: str
    back: str
    opened: str
    shut: str


async def keep(stack: Stack, who: Metadata, clips: Sequence[bytes] = ()) -> Keep:
    scene = await stack.scenes.CreateScene(
        pb.CreateSceneRequest(
            scene=pb.Scene(
                display_name="the keep",
                variables=[
                    variable("has_key", bool_value=False),
                    variable("visits", number_value=0),
                ],
            )
        ),
        metadata=who,
    )
    hall, cellar, door, vault, street = [
        (
            await stack.place(
                scene.name,
                await stack.asset(who, clips[i] if clips else b""),
                who,
                order=i,
                metadata={"title": title},
            )
        ).name
        for i, title in enumerate(("Hall", "Cellar", "Door", "Vault", "Street"))
    ]

    async def connect(a: str, b: str, kind: int, **fields: Any) -> str:
        made = await stack.scenes.CreateSceneConnection(
            pb.CreateSceneConnectionRequest(
                parent=scene.name,
                connection=pb.SceneConnection(
                    from_scene_asset=a,
                    to_scene_asset=b,
                    type=kind,  # type: ignore[arg-type]
                    **fields,
                ),
            ),
            metadata=who,
        )
        return made.name

    to_cellar = await connect(
        hall,
        cellar,
        CHOICE,
        label="search the cellar",
        effects=[
            pb.SceneEffect(variable="has_key", set=pb.SceneValue(bool_value=True)),
            pb.SceneEffect(variable="visits", increment=1),
        ],
    )
    to_door = await connect(hall, door, CHOICE, label="try the door", order=1)
    back = await connect(cellar, hall, NEXT)
    opened = await connect(door, vault, BRANCH, condition="has_key")
    shut = await connect(door, street, BRANCH, order=1)
    scene = await stack.scenes.GetScene(pb.GetSceneRequest(name=scene.name), metadata=who)
    return Keep(scene, hall, cellar, door, vault, street, to_cellar, to_door, back, opened, shut)


async def start(stack: Stack, scene: str, who: Metadata, request_id: str = "") -> pb.Playthrough:
    return await stack.scenes.StartPlaythrough(
        pb.StartPlaythroughRequest(scene=scene, request_id=request_id), metadata=who
    )


async def choose(stack: Stack, at: pb.Playthrough, choice: str, who: Metadata) -> pb.Playthrough:
    return await stack.scenes.Choose(
        pb.ChooseRequest(name=at.name, step=at.step + 1, choice=choice), metadata=who
    )


def offered(at: pb.Playthrough) -> list[tuple[str, str]]:
    return [(c.connection, c.label) for c in at.choices]


def values(at: pb.Playthrough) -> dict[str, object]:
    return {v.name: getattr(v.value, str(v.value.WhichOneof("kind"))) for v in at.variables}


async def test_a_scene_with_a_condition_plays_two_ways_with_clips_that_play(
    stack: Stack,
) -> None:
    alice = user(stack)
    built = await keep(stack, alice)
    graph = await stack.graph(built.scene.name, alice)
    assets = {a.name: a.asset for a in graph.assets}

    # Straight to the door: no key, so the door's default branch leads to the street.
    at = await start(stack, built.scene.name, alice)
    assert (at.state, at.step, at.current_scene_asset) == (
        pb.Playthrough.STATE_ACTIVE,
        0,
        built.hall,  # no start is marked: the first asset by order
    )
    assert at.scene_etag == built.scene.etag
    assert offered(at) == [(built.to_cellar, "search the cellar"), (built.to_door, "try the door")]
    assert values(at) == {"has_key": False, "visits": 0.0}
    assert at.clip.asset == assets[built.hall]
    async with httpx.AsyncClient() as http:
        clip = await http.get(at.clip.url)
    assert clip.status_code == 200
    described = await stack.assets.GetAsset(
        asset_pb.GetAssetRequest(name=at.clip.asset), metadata=alice
    )
    assert hashlib.sha256(clip.content).hexdigest() == described.sha256
    assert at.clip.expire_time.ToDatetime(tzinfo=UTC) > datetime.now(UTC)
    at = await choose(stack, at, built.to_door, alice)
    assert [(c.connection, c.type) for c in at.choices] == [(built.shut, BRANCH)]
    at = await choose(stack, at, built.shut, alice)
    assert (at.state, at.step, at.current_scene_asset) == (
        pb.Playthrough.STATE_ENDED,
        2,
        built.street,
    )
    assert list(at.choices) == []
    assert at.clip.asset == assets[built.street]  # the last clip still plays

    # Through the cellar first: the key is found, and the same door opens on the vault.
    at = await start(stack, built.scene.name, alice)
    at = await choose(stack, at, built.to_cellar, alice)
    assert values(at) == {"has_key": True, "visits": 1.0}
    assert [(c.connection, c.type) for c in at.choices] == [(built.back, NEXT)]
    at = await choose(stack, at, built.back, alice)
    at = await choose(stack, at, built.to_door, alice)
    assert [c.connection for c in at.choices] == [built.opened]
    at = await choose(stack, at, built.opened, alice)
    assert (at.state, at.step, at.current_scene_asset) == (
        pb.Playthrough.STATE_ENDED,
        4,
        built.vault,
    )
    again = await stack.scenes.GetPlaythrough(
        pb.GetPlaythroughRequest(name=at.name), metadata=alice
    )
    assert (again.step, again.current_scene_asset, values(again)) == (4, built.vault, values(at))


async def test_a_step_sent_again_is_answered_and_never_taken_twice(stack: Stack) -> None:
    alice = user(stack)
    built = await keep(stack, alice)
    at = await start(stack, built.scene.name, alice)
    twice = await asyncio.gather(*(choose(stack, at, built.to_cellar, alice) for _ in range(5)))
    assert {(t.step, t.current_scene_asset) for t in twice} == {(1, built.cellar)}
    assert {values(t)["visits"] for t in twice} == {1.0}  # the effect applied once

    async def refused(step: int, choice: str) -> grpc.aio.AioRpcError:
        with pytest.raises(grpc.aio.AioRpcError) as error:
            await stack.scenes.Choose(
                pb.ChooseRequest(name=at.name, step=step, choice=choice), metadata=alice
            )
        return error.value

    taken = await refused(1, built.to_door)
    assert (taken.code(), status_details(taken)["ErrorInfo"].reason) == (
        grpc.StatusCode.ABORTED,
        "STEP_TAKEN",
    )
    ahead = await refused(3, built.back)
    assert (ahead.code(), status_details(ahead)["ErrorInfo"].reason) == (
        grpc.StatusCode.FAILED_PRECONDITION,
        "STEP_AHEAD",
    )
    for not_offered in (built.to_door, built.opened):  # another node's; a branch elsewhere
        error = await refused(2, not_offered)
        assert (error.code(), status_details(error)["ErrorInfo"].reason) == (
            grpc.StatusCode.FAILED_PRECONDITION,
            "CHOICE_NOT_OFFERED",
        )
    elsewhere = await keep(stack, alice)  # a connection of another scene of hers
    error = await refused(2, elsewhere.back)
    assert status_details(error)["ErrorInfo"].reason == "CHOICE_NOT_OFFERED"
    now = await stack.scenes.GetPlaythrough(pb.GetPlaythroughRequest(name=at.name), metadata=alice)
    assert (now.step, now.current_scene_asset, values(now)["visits"]) == (1, built.cellar, 1.0)

    # The same request id starts one playthrough, however often it is sent.
    key = str(uuid.uuid4())
    first, second = [await start(stack, built.scene.name, alice, key) for _ in range(2)]
    assert first.name == second.name


async def test_a_scene_edited_during_a_playthrough_fails_it_with_scene_changed(
    stack: Stack,
) -> None:
    alice = user(stack)
    built = await keep(stack, alice)
    at = await start(stack, built.scene.name, alice)
    at = await choose(stack, at, built.to_door, alice)
    await stack.scenes.UpdateSceneConnection(  # the author makes the door open for everyone
        pb.UpdateSceneConnectionRequest(
            connection=pb.SceneConnection(name=built.opened, condition=""),
            update_mask=field_mask_pb2.FieldMask(paths=["condition"]),
        ),
        metadata=alice,
    )
    seen = await stack.scenes.GetPlaythrough(pb.GetPlaythroughRequest(name=at.name), metadata=alice)
    assert (seen.state, seen.failure_reason, list(seen.choices)) == (
        pb.Playthrough.STATE_FAILED,
        "SCENE_CHANGED",
        [],
    )
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await choose(stack, at, built.shut, alice)
    assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert status_details(refused.value)["ErrorInfo"].reason == "SCENE_CHANGED"
    listed = await stack.scenes.ListPlaythroughs(
        pb.ListPlaythroughsRequest(scene=built.scene.name), metadata=alice
    )
    assert [(p.name, p.state) for p in listed.playthroughs] == [
        (at.name, pb.Playthrough.STATE_FAILED)
    ]
    fresh = await start(stack, built.scene.name, alice)  # a new one plays the new version
    assert fresh.scene_etag != at.scene_etag
    fresh = await choose(stack, fresh, built.to_door, alice)
    assert [c.connection for c in fresh.choices] == [built.opened]


async def test_playthroughs_are_their_players_own_and_an_unplayable_scene_is_refused(
    stack: Stack,
) -> None:
    alice, bob = user(stack), user(stack)
    built = await keep(stack, alice)
    at = await start(stack, built.scene.name, alice)
    for call in (
        stack.scenes.GetPlaythrough(pb.GetPlaythroughRequest(name=at.name), metadata=bob),
        stack.scenes.Choose(
            pb.ChooseRequest(name=at.name, step=1, choice=built.to_door), metadata=bob
        ),
        start(stack, built.scene.name, bob),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await call
        assert refused.value.code() == grpc.StatusCode.NOT_FOUND
    listed = await stack.scenes.ListPlaythroughs(pb.ListPlaythroughsRequest(), metadata=bob)
    assert list(listed.playthroughs) == []

    second = await start(stack, built.scene.name, alice)
    page = await stack.scenes.ListPlaythroughs(
        pb.ListPlaythroughsRequest(page_size=1), metadata=alice
    )
    rest = await stack.scenes.ListPlaythroughs(
        pb.ListPlaythroughsRequest(page_size=1, page_token=page.next_page_token), metadata=alice
    )
    assert [p.name for p in [*page.playthroughs, *rest.playthroughs]] == [second.name, at.name]
    assert (page.playthroughs[0].clip.asset, list(page.playthroughs[0].choices)) == ("", [])

    empty = await stack.scene(alice)
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await start(stack, empty.name, alice)
    assert status_details(refused.value)["ErrorInfo"].reason == "SCENE_EMPTY"
    await stack.scenes.UpdateSceneConnection(
        pb.UpdateSceneConnectionRequest(
            connection=pb.SceneConnection(name=built.opened, condition="has_lamp"),
            update_mask=field_mask_pb2.FieldMask(paths=["condition"]),
        ),
        metadata=alice,
    )
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await start(stack, built.scene.name, alice)
    details = status_details(refused.value)
    assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert details["ErrorInfo"].reason == "SCENE_NOT_PLAYABLE"
    assert [(v.type, v.subject) for v in details["PreconditionFailure"].violations] == [
        ("UNDEFINED_VARIABLE", built.opened)
    ]


# ---- interchange and the playable export --------------------------------------------


async def export(stack: Stack, scene: str, who: Metadata, html: bool = False) -> dict[str, bytes]:
    answer = await stack.scenes.ExportScene(
        pb.ExportSceneRequest(
            name=scene, format=pb.SCENE_FORMAT_HTML if html else pb.SCENE_FORMAT_JSON
        ),
        metadata=who,
    )
    return {f.path: f.content or f.asset.encode() for f in answer.files}


async def test_an_export_imported_and_exported_again_is_the_same_bytes(stack: Stack) -> None:
    alice, bob = user(stack), user(stack)
    built = await keep(stack, alice)
    first = (await export(stack, built.scene.name, alice))["manifest.json"]
    document = json.loads(first)
    assert [n["key"] for n in document["nodes"]] == ["Hall", "Cellar", "Door", "Vault", "Street"]
    assert document["variables"][0] == {"initial": False, "name": "has_key", "type": "BOOL"}

    imported = await stack.scenes.ImportScene(
        pb.ImportSceneRequest(format=pb.SCENE_FORMAT_JSON, content=first), metadata=alice
    )
    assert imported.scene.name != built.scene.name
    assert (imported.scene.display_name, list(imported.unattached)) == ("the keep", [])
    again = (await export(stack, imported.scene.name, alice))["manifest.json"]
    assert again == first
    played = await start(stack, imported.scene.name, alice)  # and it plays
    assert [c.label for c in played.choices] == ["search the cellar", "try the door"]

    # Bob's copy keeps the story, not Alice's clips: each node asks for an asset.
    copied = await stack.scenes.ImportScene(
        pb.ImportSceneRequest(
            format=pb.SCENE_FORMAT_JSON, content=first, display_name="bob's keep"
        ),
        metadata=bob,
    )
    assert [(u.key, u.asset) for u in copied.unattached] == [
        (n["key"], n["asset"]) for n in document["nodes"]
    ]
    report = await stack.scenes.ValidateScene(
        pb.ValidateSceneRequest(name=copied.scene.name), metadata=bob
    )
    assert {p.subject for p in report.problems if p.code == "NO_ASSET"} == {
        u.scene_asset for u in copied.unattached
    }
    bobs = json.loads((await export(stack, copied.scene.name, bob))["manifest.json"])
    assert [n["asset"] for n in bobs["nodes"]] == [None] * 5

    hall_meta = b'"metadata": {\n        "title": "Hall"\n      }'
    assert hall_meta in first

    def hall(metadata: bytes) -> bytes:
        return first.replace(hall_meta, b'"metadata": ' + metadata, 1)

    for content, where in (
        (b"{", "not JSON"),
        (first.replace(b'"BRANCH"', b'"GOTO"', 1), "connections["),
        (first.replace(b'"has_key"', b'"__import__(1)"', 1), "effects[0].variable"),
        # What PostgreSQL cannot store, and free JSON past the write path's bounds.
        (first.replace(b'"try the door"', b'"try the \\u0000door"', 1), "NUL"),
        (hall(b'{"title": "\\ud800"}'), "surrogate"),
        (hall(b'{"n": 1' + b"0" * 30 + b"}"), "too large an integer"),
        (hall(b'{"a": ' * 9 + b"1" + b"}" * 9), "deeper"),
        (hall(b'{"a": [[[[[1]]]]]}'), "nests deeper than 4"),
        (hall(b'{"text": "' + b"x" * 5000 + b'"}'), "longer than 4096"),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await stack.scenes.ImportScene(
                pb.ImportSceneRequest(format=pb.SCENE_FORMAT_JSON, content=content),
                metadata=alice,
            )
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        ((field, description),) = violations(refused.value)
        assert field == "content"
        assert where in description


PLAYER_ARTIFACTS = (
    Path(
        os.environ.get(
            "PIXSIM_TEST_ARTIFACTS",
            Path(__file__).resolve().parents[3] / "build" / "test-artifacts",
        )
    )
    / "player"
)
CHROMIUM = "/usr/bin/chromium"
# As root, in a closed network: no sandbox, and none of the browser's own calls home.
CHROMIUM_FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--autoplay-policy=no-user-gesture-required",
]


async def write_export(stack: Stack, scene: str, who: Metadata, folder: Path) -> None:
    """The export's files on disk, the clips read with ReadAssetContent (as `pixsim scene
    export --html` writes them)."""
    answer = await stack.scenes.ExportScene(
        pb.ExportSceneRequest(name=scene, format=pb.SCENE_FORMAT_HTML), metadata=who
    )
    for file in answer.files:
        target = folder / file.path
        target.parent.mkdir(parents=True, exist_ok=True)
        if file.asset:
            content = b""
            async for part in stack.assets.ReadAssetContent(
                asset_pb.ReadAssetContentRequest(name=file.asset), metadata=who
            ):
                content += part.chunk
            target.write_bytes(content)
        else:
            target.write_bytes(file.content)


async def test_the_exported_player_plays_a_scene_with_a_condition_both_ways_in_chromium(
    stack: Stack, tmp_path: Path
) -> None:
    from playwright.async_api import Page, async_playwright

    alice = user(stack)
    clips = [render_mp4(seed, 64, 48, 0.4) for seed in range(5)]
    built = await keep(stack, alice, clips)
    folder = tmp_path / "export"
    await write_export(stack, built.scene.name, alice, folder)
    graph = await stack.graph(built.scene.name, alice)
    clip_of = {
        a.metadata["title"]: f"clips/{a.asset.removeprefix('assets/')}.mp4" for a in graph.assets
    }
    assert sorted(p.name for p in (folder / "clips").iterdir()) == sorted(
        Path(p).name for p in clip_of.values()
    )
    PLAYER_ARTIFACTS.mkdir(parents=True, exist_ok=True)

    async def at(page: Page, title: str, step: int) -> None:
        """Wait until the player shows `title`'s clip at `step`."""
        await page.wait_for_function(
            "([clip, step]) => document.getElementById('clip').dataset.clip === clip"
            " && document.body.dataset.step === String(step)",
            arg=[clip_of[title], step],
        )

    async def choices(page: Page) -> list[str]:
        await page.wait_for_selector("#choices button")
        return await page.locator("#choices button").all_inner_texts()

    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
        context = await browser.new_context(offline=True)  # it plays with no network at all
        requests: list[str] = []
        context.on("request", lambda request: requests.append(request.url))
        page = await context.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda error: errors.append(str(error)))
        await page.goto((folder / "index.html").as_uri())

        # The same semantics as the service's, on the shared cases.
        cases_dir = Path(__file__).resolve().parent / "cases"
        held = await page.evaluate(
            """([conditions, play]) => ({
              conditions: conditions.map((c) => PixsimPlayer.holds(c.condition, c.values)),
              offered: play.offered.map(
                (c) => PixsimPlayer.offered(c.leaving, c.values).map((e) => e.id)),
              effects: play.effects.map((c) => PixsimPlayer.take(c.effects, c.values)),
            })""",
            [
                json.loads((cases_dir / "conditions.json").read_text())["cases"],
                json.loads((cases_dir / "play.json").read_text()),
            ],
        )
        conditions_cases = json.loads((cases_dir / "conditions.json").read_text())["cases"]
        play_cases = json.loads((cases_dir / "play.json").read_text())
        assert held["conditions"] == [c["holds"] for c in conditions_cases]
        assert held["offered"] == [c["offered"] for c in play_cases["offered"]]
        assert held["effects"] == [c["after"] for c in play_cases["effects"]]

        # Without the key: the door's default branch leads to the street.
        await at(page, "Hall", 0)
        assert await choices(page) == ["search the cellar", "try the door"]
        await page.screenshot(path=PLAYER_ARTIFACTS / "1-hall.png")
        await page.get_by_role("button", name="try the door").click()
        await at(page, "Door", 1)
        await at(page, "Street", 2)  # taken without asking when the door's clip ended
        await page.wait_for_selector("body[data-ended='true']")
        assert await page.locator("#status").inner_text() == "The end."
        await page.screenshot(path=PLAYER_ARTIFACTS / "2-street-the-end.png")

        # Start over; the cellar gives the key, and the same door opens on the vault.
        await page.get_by_role("button", name="Start over").click()
        await at(page, "Hall", 0)
        await page.get_by_role("button", name="search the cellar").click()
        await at(page, "Cellar", 1)
        await page.reload()  # the state survives a reload
        await at(page, "Cellar", 1)
        await at(page, "Hall", 2)
        assert await choices(page) == ["search the cellar", "try the door"]
        await page.screenshot(path=PLAYER_ARTIFACTS / "3-hall-with-the-key.png")
        await page.get_by_role("button", name="try the door").click()
        await at(page, "Door", 3)
        await at(page, "Vault", 4)
        await page.wait_for_selector("body[data-ended='true']")
        await page.screenshot(path=PLAYER_ARTIFACTS / "4-vault-the-end.png")

        # And from the keyboard alone: R starts over, the first choice has the focus, drawn,
        # a digit picks a choice, Tab and Enter take the focused one.
        await page.keyboard.press("r")
        await at(page, "Hall", 0)
        await choices(page)
        focused = await page.evaluate("document.activeElement.textContent")
        outline = await page.evaluate("getComputedStyle(document.activeElement).outlineStyle")
        await page.screenshot(path=PLAYER_ARTIFACTS / "5-keyboard-focus.png")
        await page.keyboard.press("1")
        await at(page, "Cellar", 1)
        await at(page, "Hall", 2)
        await choices(page)
        await page.keyboard.press("Tab")
        await page.keyboard.press("Enter")
        await at(page, "Door", 3)
        await at(page, "Vault", 4)
        await browser.close()
    assert errors == []
    assert {url.split(":", 1)[0] for url in requests} == {"file"}
    assert focused == "search the cellar"
    assert outline != "none"  # keyboard focus is visible


async def test_twee_round_trips_and_a_story_from_twine_plays_once_its_assets_are_attached(
    stack: Stack,
) -> None:
    alice = user(stack)
    built = await keep(stack, alice)
    first = (
        await stack.scenes.ExportScene(
            pb.ExportSceneRequest(name=built.scene.name, format=pb.SCENE_FORMAT_TWEE),
            metadata=alice,
        )
    ).files
    assert [f.path for f in first] == ["story.twee"]
    imported = await stack.scenes.ImportScene(
        pb.ImportSceneRequest(format=pb.SCENE_FORMAT_TWEE, content=first[0].content),
        metadata=alice,
    )
    again = await stack.scenes.ExportScene(
        pb.ExportSceneRequest(name=imported.scene.name, format=pb.SCENE_FORMAT_TWEE),
        metadata=alice,
    )
    assert again.files[0].content == first[0].content

    story = (Path(__file__).resolve().parent / "cases" / "twine" / "lock-and-key.twee").read_bytes()
    for odd in (story.replace(b"Rooms:", b"Rooms:\x00", 1), b":: Start\n" + b"<<if $a>>" * 40):
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await stack.scenes.ImportScene(
                pb.ImportSceneRequest(format=pb.SCENE_FORMAT_TWEE, content=odd), metadata=alice
            )
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert violations(refused.value)[0][0] == "content"
    made = await stack.scenes.ImportScene(
        pb.ImportSceneRequest(format=pb.SCENE_FORMAT_TWEE, content=story), metadata=alice
    )
    assert made.scene.display_name == "Lock and Key: Variable in SugarCube"
    assert [u.key for u in made.unattached] == ["Start", "Back Room", "Front Room", "Exit"]
    node = {u.key: u.scene_asset for u in made.unattached}
    for passage in node.values():  # the author attaches a clip to each passage
        await stack.scenes.UpdateSceneAsset(
            pb.UpdateSceneAssetRequest(
                scene_asset=pb.SceneAsset(name=passage, asset=await stack.asset(alice)),
                update_mask=field_mask_pb2.FieldMask(paths=["asset"]),
            ),
            metadata=alice,
        )
    report = await stack.scenes.ValidateScene(
        pb.ValidateSceneRequest(name=made.scene.name), metadata=alice
    )
    assert {p.code for p in report.problems} <= {"DEAD_END"}

    at = await start(stack, made.scene.name, alice)
    labels = {c.label: c.connection for c in at.choices}
    assert list(labels) == ["Back Room", "Front Room"]
    at = await choose(stack, at, labels["Front Room"], alice)
    assert [c.label for c in at.choices] == ["Back Room"]  # locked without the key
    at = await choose(stack, at, at.choices[0].connection, alice)
    assert (at.current_scene_asset, values(at)) == (node["Back Room"], {"key": True})
    at = await choose(stack, at, at.choices[0].connection, alice)
    assert [c.label for c in at.choices] == ["Exit", "Back Room"]
    at = await choose(stack, at, at.choices[0].connection, alice)
    assert (at.state, at.current_scene_asset) == (pb.Playthrough.STATE_ENDED, node["Exit"])
