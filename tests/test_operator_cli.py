"""An operator's controls through the `pixsim` command, on the whole stack: pause and resume
a provider, drain and enable an account."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any

import pytest

from pixsim_local.whole_stack import WholeStack

pytestmark = pytest.mark.e2e


def pixsim(stack: WholeStack, *arguments: str) -> Any:
    services = stack.services
    env = {
        **os.environ,
        "PIXSIM_SIGNING_KEY": str(services.keys[0]),
        "PIXSIM_USER": "operator",
        "PIXSIM_GATEWAY_ADDR": services.address("provider-gateway"),
    }
    result = subprocess.run(
        [sys.executable, "-c", "from pixsim_cli.main import app; app()", "--json", *arguments],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


async def test_an_operator_pauses_a_provider_and_drains_an_account(
    whole_stack: WholeStack,
) -> None:
    stack = whole_stack
    paused = pixsim(stack, "provider", "pause", "runway", "--reason", "maintenance window")
    assert (paused["state"], paused["pauseReason"]) == ("STATE_PAUSED", "maintenance window")
    listed = pixsim(stack, "provider", "list")
    states = {p["name"]: p["state"] for p in listed["providers"]}
    assert states["providers/runway"] == "STATE_PAUSED"
    assert states["providers/pika"] == "STATE_ACTIVE"
    assert pixsim(stack, "provider", "resume", "runway")["state"] == "STATE_ACTIVE"

    account = (await stack.account_of("runway")).name
    assert pixsim(stack, "account", "drain", account)["state"] == "STATE_DRAINING"
    assert pixsim(stack, "account", "enable", account)["state"] == "STATE_ACTIVE"
