"""A service's process lifecycle, over a real gRPC server."""

from __future__ import annotations

import gc

import grpc
import pytest

from pixsim_common.app import ServiceApp
from pixsim_common.grpc_server import add_health_and_reflection

pytestmark = pytest.mark.integration


async def test_what_startup_made_is_frozen_out_of_the_collectors_full_passes() -> None:
    gc.unfreeze()
    server = grpc.aio.server()
    app = ServiceApp(
        name="test",
        server=server,
        health=await add_health_and_reflection(server, []),
        service_names=[],
        address="127.0.0.1:0",
        drain_seconds=0.1,
    )
    try:
        assert gc.get_freeze_count() == 0
        await app.start()
        assert app.port != 0
        assert gc.get_freeze_count() > 0
    finally:
        await app.stop()
        gc.unfreeze()
