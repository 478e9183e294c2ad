"""Every RPC of every service against every way a caller can be wrong: no token, an expired one,
one signed with another key, another user's object, a non-admin on an admin RPC. Each gives
its code and none succeeds; the matrix is printed."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import grpc
import pytest
import pytest_asyncio
from google.protobuf import field_mask_pb2
from google.type import money_pb2

from pixsim.asset.v1 import asset_service_pb2 as asset_pb
from pixsim.job.v1 import job_service_pb2 as job_pb
from pixsim.provider.v1 import provider_gateway_service_pb2 as gw_pb
from pixsim.scene.v1 import scene_service_pb2 as scene_pb
from pixsim.types.v1 import types_pb2 as t
from pixsim_common.auth import generate_keypair, issue_token
from pixsim_local.whole_stack import Metadata, WholeStack
from pixsim_provider_sim.media import render_png

pytestmark = pytest.mark.e2e

CODES = grpc.StatusCode
CASES = ("no token", "expired", "wrong key", "other user's object", "non-admin")


@dataclass(frozen=True)
class Rpc:
    service: str  # the WholeStack attribute of its stub
    method: str
    request: Callable[[], Any]
    shape: str = "unary"  # or "server_stream", "client_stream"
    admin: bool = False
    # What bob (another, non-admin user) gets when he names alice's things, or None when the
    # RPC names no object of hers (a list or a create is simply his own).
    as_bob: CODES | None = CODES.NOT_FOUND


@dataclass
class Objects:
    job: str
    asset: str
    scene: str
    node: str
    edge: str
    account: str
    submission: str
    playthrough: str


async def call(stack: WholeStack, rpc: Rpc, metadata: Metadata) -> CODES:
    method = getattr(getattr(stack, rpc.service), rpc.method)
    try:
        if rpc.shape == "server_stream":
            async for _ in method(rpc.request(), metadata=metadata, timeout=10):
                break
        elif rpc.shape == "client_stream":

            async def requests() -> AsyncIterator[Any]:
                for message in rpc.request():
                    yield message

            await method(requests(), metadata=metadata, timeout=10)
        else:
            await method(rpc.request(), metadata=metadata, timeout=10)
    except grpc.aio.AioRpcError as error:
        return error.code()
    return CODES.OK


@pytest_asyncio.fixture(loop_scope="session", scope="module")
async def objects(whole_stack: WholeStack) -> Objects:
    stack, alice = whole_stack, whole_stack.alice
    image = await stack.registered(render_png(uuid.uuid4().int % 9999, 32, 32), "image/png")
    job = await stack.until_done(
        await stack.create(
            "pixverse",
            t.OPERATION_TYPE_IMAGE_TO_VIDEO,
            inputs=[t.GenerationInput(role=t.INPUT_ROLE_IMAGE, asset=image)],
        )
    )
    scene = await stack.scenes.CreateScene(
        scene_pb.CreateSceneRequest(scene=scene_pb.Scene(display_name="mine")), metadata=alice
    )
    nodes = [
        await stack.scenes.CreateSceneAsset(
            scene_pb.CreateSceneAssetRequest(
                parent=scene.name, scene_asset=scene_pb.SceneAsset(asset=asset)
            ),
            metadata=alice,
        )
        for asset in (image, job.asset)
    ]
    edge = await stack.scenes.CreateSceneConnection(
        scene_pb.CreateSceneConnectionRequest(
            parent=scene.name,
            connection=scene_pb.SceneConnection(
                from_scene_asset=nodes[0].name,
                to_scene_asset=nodes[1].name,
                type=scene_pb.SceneConnection.TYPE_NEXT,
            ),
        ),
        metadata=alice,
    )
    accounts = await stack.gateway.ListAccounts(
        gw_pb.ListAccountsRequest(), metadata=stack.auth("root", admin=True)
    )
    submissions = await stack.gateway.ListSubmissions(
        gw_pb.ListSubmissionsRequest(job=job.name), metadata=alice
    )
    playthrough = await stack.scenes.StartPlaythrough(
        scene_pb.StartPlaythroughRequest(scene=scene.name), metadata=alice
    )
    return Objects(
        job.name,
        job.asset,
        scene.name,
        nodes[0].name,
        edge.name,
        accounts.accounts[0].name,
        submissions.submissions[0].name,
        playthrough.name,
    )


def catalog(o: Objects) -> list[Rpc]:
    node_update = field_mask_pb2.FieldMask(paths=["order"])
    return [
        Rpc(
            "jobs",
            "CreateJob",
            lambda: job_pb.CreateJobRequest(
                job=job_pb.Job(
                    provider_id="pixverse",
                    operation_type=t.OPERATION_TYPE_IMAGE_TO_VIDEO,
                    inputs=[t.GenerationInput(role=t.INPUT_ROLE_IMAGE, asset=o.asset)],
                )
            ),
            as_bob=CODES.INVALID_ARGUMENT,  # her asset is no input of his
        ),
        Rpc(
            "jobs",
            "BatchCreateJobs",
            lambda: job_pb.BatchCreateJobsRequest(
                requests=[
                    job_pb.CreateJobRequest(
                        job=job_pb.Job(
                            provider_id="pixverse",
                            operation_type=t.OPERATION_TYPE_IMAGE_TO_VIDEO,
                            inputs=[t.GenerationInput(role=t.INPUT_ROLE_IMAGE, asset=o.asset)],
                        )
                    )
                ]
            ),
            as_bob=None,  # answered, the item refused: checked below
        ),
        Rpc(
            "jobs",
            "CancelJobs",
            lambda: job_pb.CancelJobsRequest(labels={"matrix": "nothing-has-this"}),
            as_bob=None,  # his own jobs only, and none match
        ),
        Rpc(
            "jobs",
            "RotateWebhookSecret",
            lambda: job_pb.RotateWebhookSecretRequest(),
            as_bob=None,  # his own secret
        ),
        Rpc(
            "jobs",
            "ListWebhookDeliveries",
            lambda: job_pb.ListWebhookDeliveriesRequest(job=o.job),
        ),
        Rpc("jobs", "GetJob", lambda: job_pb.GetJobRequest(name=o.job)),
        Rpc(
            "jobs",
            "GetUsage",
            lambda: job_pb.GetUsageRequest(user="users/alice"),
            as_bob=CODES.PERMISSION_DENIED,  # another user's usage is an admin's to read
        ),
        Rpc(
            "jobs",
            "GetBudget",
            lambda: job_pb.GetBudgetRequest(name="users/alice/budget"),
            as_bob=CODES.PERMISSION_DENIED,
        ),
        Rpc(
            "jobs",
            "SetBudget",
            lambda: job_pb.SetBudgetRequest(
                budget=job_pb.Budget(
                    name="users/alice/budget",
                    period=job_pb.Budget.PERIOD_DAY,
                    limit=money_pb2.Money(currency_code="USD", units=100),
                )
            ),
            admin=True,
        ),
        Rpc(
            "jobs",
            "DeleteBudget",
            lambda: job_pb.DeleteBudgetRequest(name="users/nobody/budget"),
            admin=True,
        ),
        Rpc("jobs", "ListJobs", lambda: job_pb.ListJobsRequest(), as_bob=None),
        Rpc("jobs", "CancelJob", lambda: job_pb.CancelJobRequest(name=o.job)),
        Rpc("jobs", "RetryJob", lambda: job_pb.RetryJobRequest(name=o.job)),
        Rpc("jobs", "WatchJob", lambda: job_pb.WatchJobRequest(name=o.job), "server_stream"),
        Rpc("assets", "GetAsset", lambda: asset_pb.GetAssetRequest(name=o.asset)),
        Rpc(
            "assets",
            "BatchGetAssets",
            lambda: asset_pb.BatchGetAssetsRequest(names=[o.asset]),
            as_bob=None,  # answered, without her asset: checked below
        ),
        Rpc("assets", "ListAssets", lambda: asset_pb.ListAssetsRequest(), as_bob=None),
        Rpc(
            "assets",
            "CreateAsset",
            lambda: asset_pb.CreateAssetRequest(uri="http://127.0.0.1:9/none.png"),
            as_bob=None,
        ),
        Rpc(
            "assets",
            "UploadAsset",
            lambda: [asset_pb.UploadAssetRequest(metadata=asset_pb.UploadAssetRequest.Metadata())],
            "client_stream",
            as_bob=None,
        ),
        Rpc(
            "assets",
            "ReadAssetContent",
            lambda: asset_pb.ReadAssetContentRequest(name=o.asset),
            "server_stream",
        ),
        Rpc(
            "assets",
            "DownloadAssetContent",
            lambda: asset_pb.DownloadAssetContentRequest(name=o.asset),
            "server_stream",
        ),
        Rpc(
            "assets",
            "GenerateAssetDownloadUrl",
            lambda: asset_pb.GenerateAssetDownloadUrlRequest(name=o.asset),
        ),
        Rpc("assets", "GetAssetLineage", lambda: asset_pb.GetAssetLineageRequest(name=o.asset)),
        Rpc("assets", "DeleteAsset", lambda: asset_pb.DeleteAssetRequest(name=o.asset)),
        Rpc(
            "gateway",
            "GetProvider",
            lambda: gw_pb.GetProviderRequest(name="providers/pixverse"),
            as_bob=None,
        ),
        Rpc("gateway", "ListProviders", lambda: gw_pb.ListProvidersRequest(), as_bob=None),
        Rpc(
            "gateway",
            "CreateAccount",
            lambda: gw_pb.CreateAccountRequest(
                account=gw_pb.Account(
                    provider_id="pixverse", credentials={"api_key": "x"}, max_concurrency=1
                )
            ),
            admin=True,
        ),
        Rpc(
            "gateway",
            "EstimateCost",
            lambda: gw_pb.EstimateCostRequest(
                provider="providers/runway",
                operation_type=t.OPERATION_TYPE_TEXT_TO_VIDEO,
                prompt="a cat",
            ),
            as_bob=None,  # names nothing of anyone's
        ),
        Rpc("gateway", "GetAccount", lambda: gw_pb.GetAccountRequest(name=o.account), admin=True),
        Rpc("gateway", "ListAccounts", lambda: gw_pb.ListAccountsRequest(), admin=True),
        Rpc(
            "gateway",
            "UpdateAccount",
            lambda: gw_pb.UpdateAccountRequest(
                account=gw_pb.Account(name=o.account, label="mine now"),
                update_mask=field_mask_pb2.FieldMask(paths=["label"]),
            ),
            admin=True,
        ),
        Rpc(
            "gateway",
            "DisableAccount",
            lambda: gw_pb.DisableAccountRequest(name=o.account),
            admin=True,
        ),
        Rpc(
            "gateway",
            "EnableAccount",
            lambda: gw_pb.EnableAccountRequest(name=o.account),
            admin=True,
        ),
        Rpc(
            "gateway",
            "DrainAccount",
            lambda: gw_pb.DrainAccountRequest(name=o.account),
            admin=True,
        ),
        Rpc(
            "gateway",
            "PauseProvider",
            lambda: gw_pb.PauseProviderRequest(name="providers/pixverse"),
            admin=True,
        ),
        Rpc(
            "gateway",
            "ResumeProvider",
            lambda: gw_pb.ResumeProviderRequest(name="providers/pixverse"),
            admin=True,
        ),
        Rpc("gateway", "GetQueueStatus", lambda: gw_pb.GetQueueStatusRequest(job=o.job)),
        Rpc("gateway", "GetSubmission", lambda: gw_pb.GetSubmissionRequest(name=o.submission)),
        Rpc(
            "gateway",
            "ListSubmissions",
            lambda: gw_pb.ListSubmissionsRequest(job=o.job),
            as_bob=None,  # answered, empty: checked below
        ),
        Rpc(
            "scenes",
            "CreateScene",
            lambda: scene_pb.CreateSceneRequest(scene=scene_pb.Scene(display_name="x")),
            as_bob=None,
        ),
        Rpc("scenes", "GetScene", lambda: scene_pb.GetSceneRequest(name=o.scene)),
        Rpc("scenes", "ListScenes", lambda: scene_pb.ListScenesRequest(), as_bob=None),
        Rpc(
            "scenes",
            "UpdateScene",
            lambda: scene_pb.UpdateSceneRequest(
                scene=scene_pb.Scene(name=o.scene, description="his"),
                update_mask=field_mask_pb2.FieldMask(paths=["description"]),
            ),
        ),
        Rpc("scenes", "DeleteScene", lambda: scene_pb.DeleteSceneRequest(name=o.scene)),
        Rpc(
            "scenes",
            "CreateSceneAsset",
            lambda: scene_pb.CreateSceneAssetRequest(
                parent=o.scene, scene_asset=scene_pb.SceneAsset(asset=o.asset)
            ),
            as_bob=CODES.INVALID_ARGUMENT,  # her asset is refused before her scene is looked up
        ),
        Rpc(
            "scenes",
            "UpdateSceneAsset",
            lambda: scene_pb.UpdateSceneAssetRequest(
                scene_asset=scene_pb.SceneAsset(name=o.node, order=3), update_mask=node_update
            ),
        ),
        Rpc("scenes", "DeleteSceneAsset", lambda: scene_pb.DeleteSceneAssetRequest(name=o.node)),
        Rpc(
            "scenes",
            "CreateSceneConnection",
            lambda: scene_pb.CreateSceneConnectionRequest(
                parent=o.scene,
                connection=scene_pb.SceneConnection(
                    from_scene_asset=o.node,
                    to_scene_asset=o.node,
                    type=scene_pb.SceneConnection.TYPE_BRANCH,
                ),
            ),
        ),
        Rpc(
            "scenes",
            "UpdateSceneConnection",
            lambda: scene_pb.UpdateSceneConnectionRequest(
                connection=scene_pb.SceneConnection(name=o.edge, label="his"),
                update_mask=field_mask_pb2.FieldMask(paths=["label"]),
            ),
        ),
        Rpc(
            "scenes",
            "DeleteSceneConnection",
            lambda: scene_pb.DeleteSceneConnectionRequest(name=o.edge),
        ),
        Rpc("scenes", "GetSceneGraph", lambda: scene_pb.GetSceneGraphRequest(name=o.scene)),
        Rpc("scenes", "CloneScene", lambda: scene_pb.CloneSceneRequest(name=o.scene)),
        Rpc("scenes", "ValidateScene", lambda: scene_pb.ValidateSceneRequest(name=o.scene)),
        Rpc(
            "scenes",
            "ApplySceneChanges",
            lambda: scene_pb.ApplySceneChangesRequest(
                name=o.scene, changes=[scene_pb.SceneChange(delete_asset=o.node)]
            ),
        ),
        Rpc(
            "scenes",
            "ExportScene",
            lambda: scene_pb.ExportSceneRequest(name=o.scene, format=scene_pb.SCENE_FORMAT_HTML),
        ),
        Rpc(
            "scenes",
            "ImportScene",
            lambda: scene_pb.ImportSceneRequest(format=scene_pb.SCENE_FORMAT_JSON, content=b"{}"),
            as_bob=None,
        ),
        Rpc("scenes", "StartPlaythrough", lambda: scene_pb.StartPlaythroughRequest(scene=o.scene)),
        Rpc(
            "scenes",
            "Choose",
            lambda: scene_pb.ChooseRequest(name=o.playthrough, step=1, choice=o.edge),
        ),
        Rpc("scenes", "GetPlaythrough", lambda: scene_pb.GetPlaythroughRequest(name=o.playthrough)),
        Rpc("scenes", "ListPlaythroughs", lambda: scene_pb.ListPlaythroughsRequest(), as_bob=None),
    ]


def expected(rpc: Rpc, case: str) -> CODES | None:
    if case in ("no token", "expired", "wrong key"):
        return CODES.UNAUTHENTICATED
    if case == "non-admin":
        return CODES.PERMISSION_DENIED if rpc.admin else None
    return None if rpc.admin else rpc.as_bob  # an admin RPC names nothing of a user's


async def test_access_control_matrix(
    whole_stack: WholeStack, objects: Objects, capsys: pytest.CaptureFixture[str]
) -> None:
    stack = whole_stack
    key = stack.services.keys[0].read_text()
    stranger_key, _ = generate_keypair()
    bob = stack.auth("bob")
    credentials: dict[str, Metadata] = {
        "no token": (),
        "expired": (
            (
                "authorization",
                "Bearer "
                + issue_token(key, user_id="alice", ttl_seconds=60, now=time.time() - 3600),
            ),
        ),
        "wrong key": (("authorization", "Bearer " + issue_token(stranger_key, user_id="alice")),),
        "other user's object": bob,
        "non-admin": bob,
    }
    rpcs = catalog(objects)
    served = {
        f"{stub_name}.{method.name}"
        for stub_name, descriptor in (
            ("jobs", job_pb.DESCRIPTOR.services_by_name["JobService"]),
            ("assets", asset_pb.DESCRIPTOR.services_by_name["AssetService"]),
            ("gateway", gw_pb.DESCRIPTOR.services_by_name["ProviderGatewayService"]),
            ("scenes", scene_pb.DESCRIPTOR.services_by_name["SceneService"]),
        )
        for method in descriptor.methods
    }
    assert {f"{r.service}.{r.method}" for r in rpcs} == served  # every RPC is in the matrix

    rows = []
    wrong = []
    for rpc in rpcs:
        row = [f"{rpc.service}.{rpc.method}"]
        for case in CASES:
            want = expected(rpc, case)
            if want is None:
                row.append("-")
                continue
            got = await call(stack, rpc, credentials[case])
            row.append(got.name)
            if got != want:
                wrong.append(f"{rpc.method} / {case}: {got.name}, expected {want.name}")
        rows.append(row)
    widths = [max(len(r[i]) for r in [["rpc", *CASES], *rows]) for i in range(len(CASES) + 1)]
    with capsys.disabled():
        print("\naccess control matrix (- : not applicable)")
        for row in [["rpc", *CASES], *rows]:
            print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)))
    assert wrong == []

    # Where bob is answered, he sees nothing of alice's.
    batch_rpc = next(r for r in rpcs if r.method == "BatchCreateJobs")
    his_batch = await stack.jobs.BatchCreateJobs(batch_rpc.request(), metadata=bob)
    assert [r.error.code for r in his_batch.results] == [CODES.INVALID_ARGUMENT.value[0]]
    batch = await stack.assets.BatchGetAssets(
        asset_pb.BatchGetAssetsRequest(names=[objects.asset]), metadata=bob
    )
    assert list(batch.assets) == []
    listed = await stack.gateway.ListSubmissions(
        gw_pb.ListSubmissionsRequest(job=objects.job), metadata=bob
    )
    assert list(listed.submissions) == []
    mine = {objects.job, objects.asset, objects.scene, objects.playthrough}
    jobs = await stack.jobs.ListJobs(job_pb.ListJobsRequest(), metadata=bob)
    assets = await stack.assets.ListAssets(asset_pb.ListAssetsRequest(), metadata=bob)
    scenes = await stack.scenes.ListScenes(scene_pb.ListScenesRequest(), metadata=bob)
    seen = {j.name for j in jobs.jobs} | {a.name for a in assets.assets}
    played = await stack.scenes.ListPlaythroughs(scene_pb.ListPlaythroughsRequest(), metadata=bob)
    seen |= {s.name for s in scenes.scenes} | {p.name for p in played.playthroughs}
    assert not seen & mine
    # And alice's things are as they were.
    graph = await stack.scenes.GetSceneGraph(
        scene_pb.GetSceneGraphRequest(name=objects.scene), metadata=stack.alice
    )
    assert (len(graph.assets), len(graph.connections)) == (2, 1)
    assert graph.scene.description == ""


async def test_ids_a_caller_chooses_never_reach_another_tenants_rows(
    whole_stack: WholeStack, objects: Objects, capsys: pytest.CaptureFixture[str]
) -> None:
    """Every resource whose id a caller may choose, written by bob with the id of alice's:
    scene assets and connections (by name, alone or in a batch) are ALREADY_EXISTS, and an
    idempotency key is bob's own (a job of his). Alice's rows stay as they were."""
    stack, bob = whole_stack, whole_stack.auth("bob")
    before = await stack.scenes.GetSceneGraph(
        scene_pb.GetSceneGraphRequest(name=objects.scene), metadata=stack.alice
    )
    his_scene = await stack.scenes.CreateScene(
        scene_pb.CreateSceneRequest(scene=scene_pb.Scene(display_name="his")), metadata=bob
    )
    his_asset = await stack.registered(
        render_png(uuid.uuid4().int % 9999, 24, 24), "image/png", bob
    )
    ends = [
        await stack.scenes.CreateSceneAsset(
            scene_pb.CreateSceneAssetRequest(
                parent=his_scene.name, scene_asset=scene_pb.SceneAsset(asset=his_asset)
            ),
            metadata=bob,
        )
        for _ in range(2)
    ]
    node_id, edge_id = objects.node.rsplit("/", 1)[1], objects.edge.rsplit("/", 1)[1]
    his_node = scene_pb.SceneAsset(name=f"{his_scene.name}/assets/{node_id}", asset=his_asset)
    his_edge = scene_pb.SceneConnection(
        name=f"{his_scene.name}/connections/{edge_id}",
        from_scene_asset=ends[0].name,
        to_scene_asset=ends[1].name,
        type=scene_pb.SceneConnection.TYPE_CHOICE,
        label="his",
    )
    writes: dict[str, Any] = {
        "scene asset / CreateSceneAsset": lambda: stack.scenes.CreateSceneAsset(
            scene_pb.CreateSceneAssetRequest(parent=his_scene.name, scene_asset=his_node),
            metadata=bob,
        ),
        "scene asset / ApplySceneChanges": lambda: stack.scenes.ApplySceneChanges(
            scene_pb.ApplySceneChangesRequest(
                name=his_scene.name, changes=[scene_pb.SceneChange(create_asset=his_node)]
            ),
            metadata=bob,
        ),
        "connection / CreateSceneConnection": lambda: stack.scenes.CreateSceneConnection(
            scene_pb.CreateSceneConnectionRequest(parent=his_scene.name, connection=his_edge),
            metadata=bob,
        ),
        "connection / ApplySceneChanges": lambda: stack.scenes.ApplySceneChanges(
            scene_pb.ApplySceneChangesRequest(
                name=his_scene.name, changes=[scene_pb.SceneChange(create_connection=his_edge)]
            ),
            metadata=bob,
        ),
    }
    rows: list[tuple[str, str]] = []
    for what, write in writes.items():
        try:
            await write()
            got = CODES.OK
        except grpc.aio.AioRpcError as error:
            got = error.code()
        rows.append((what, got.name))
        assert got == CODES.ALREADY_EXISTS, what

    key = f"shared-{uuid.uuid4().hex[:8]}"
    hers = await stack.create("pixverse", request_id=key)
    his = await stack.create("pixverse", request_id=key, metadata=bob)
    outcome = "OK, his own job" if his.name != hers.name else "HERS"
    rows.append(("request_id / CreateJob", outcome))
    assert his.name != hers.name
    assert his.owner == "users/bob"
    with capsys.disabled():
        print("\nclient-chosen ids, bob writing with alice's")
        for what, answer in rows:
            print(f"  {what:<38} {answer}")

    after = await stack.scenes.GetSceneGraph(
        scene_pb.GetSceneGraphRequest(name=objects.scene), metadata=stack.alice
    )
    assert (after.assets, after.connections) == (before.assets, before.connections)
    assert after.scene.etag == before.scene.etag
    again = await stack.jobs.GetJob(job_pb.GetJobRequest(name=hers.name), metadata=stack.alice)
    assert again.owner == "users/alice"
