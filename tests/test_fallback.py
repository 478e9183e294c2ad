"""Cross-provider fallback on the whole stack: a job whose provider cannot take it goes on
with its fallback, and says which provider made its asset."""

from __future__ import annotations

import uuid

import pytest

from pixsim.job.v1 import job_service_pb2 as pb
from pixsim.provider.v1 import provider_gateway_service_pb2 as gw_pb
from pixsim.types.v1 import types_pb2 as t
from pixsim_local.whole_stack import WholeStack

pytestmark = pytest.mark.e2e


async def test_a_job_whose_provider_has_no_usable_account_completes_on_its_fallback(
    whole_stack: WholeStack,
) -> None:
    stack = whole_stack
    admin = stack.auth("root", admin=True)
    account = await stack.account_of("pixverse")
    await stack.gateway.DrainAccount(gw_pb.DrainAccountRequest(name=account.name), metadata=admin)
    try:
        job = await stack.jobs.CreateJob(
            pb.CreateJobRequest(
                job=pb.Job(
                    provider_id="pixverse",
                    operation_type=t.OPERATION_TYPE_TEXT_TO_VIDEO,
                    prompt=f"a fox elsewhere {uuid.uuid4().hex[:6]}",
                    fallbacks=[pb.Fallback(provider_id="runway")],
                )
            ),
            metadata=stack.alice,
        )
        done = await stack.until_done(job, timeout=60)
    finally:
        await stack.gateway.EnableAccount(
            gw_pb.EnableAccountRequest(name=account.name), metadata=admin
        )
    assert done.state == pb.Job.STATE_COMPLETED, done
    assert (done.provider_id, done.asset_provider_id) == ("pixverse", "runway")
    attempts = await stack.gateway.ListSubmissions(
        gw_pb.ListSubmissionsRequest(job=job.name), metadata=stack.alice
    )
    assert [s.provider_id for s in attempts.submissions] == ["runway"]

    plain = await stack.until_done(await stack.create("pika", prompt="a fox at home"))
    assert (plain.state, plain.asset_provider_id) == (pb.Job.STATE_COMPLETED, "pika")
