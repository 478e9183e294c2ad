"""The `pixsim` command on the whole stack: an operator pauses and resumes a provider and
drains and enables an account; an author builds a scene with state, checks it and plays it."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest
from google.protobuf import json_format
from rich.console import Console

from pixsim.job.v1 import job_service_pb2 as job_pb
from pixsim_cli.usage import usage_table
from pixsim_local.whole_stack import WholeStack
from pixsim_provider_sim.media import render_png

pytestmark = pytest.mark.e2e
TWINE = Path(__file__).resolve().parents[1] / "services" / "scene" / "tests" / "cases" / "twine"


def run_pixsim(
    stack: WholeStack, *arguments: str, user: str, exit_code: int
) -> subprocess.CompletedProcess[str]:
    services = stack.services
    env = {
        **os.environ,
        "PIXSIM_SIGNING_KEY": str(services.keys[0]),
        "PIXSIM_USER": user,
        **{
            f"PIXSIM_{variable}_ADDR": services.address(service)
            for variable, service in (
                ("JOB", "job"),
                ("ASSET", "asset"),
                ("SCENE", "scene"),
                ("GATEWAY", "provider-gateway"),
            )
        },
    }
    result = subprocess.run(
        [sys.executable, "-c", "from pixsim_cli.main import app; app()", "--json", *arguments],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == exit_code, result.stderr
    return result


def pixsim(stack: WholeStack, *arguments: str, user: str = "operator", exit_code: int = 0) -> Any:
    """What `pixsim --json ...` printed."""
    return json.loads(run_pixsim(stack, *arguments, user=user, exit_code=exit_code).stdout)


def pixsim_failing(stack: WholeStack, *arguments: str, user: str, exit_code: int) -> str:
    """What a failing `pixsim` said on stderr."""
    return run_pixsim(stack, *arguments, user=user, exit_code=exit_code).stderr


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


async def test_an_author_builds_a_scene_with_state_validates_and_plays_it(
    whole_stack: WholeStack,
) -> None:
    stack = whole_stack
    author = f"author-{uuid.uuid4().hex[:8]}"
    scene = pixsim(
        stack,
        *("scene", "create", "--name", "the door"),
        *("--variable", "has_key=bool:false", "--variable", "tries=number:0"),
        user=author,
    )
    assert [v["name"] for v in scene["variables"]] == ["has_key", "tries"]
    # Unmarked, the start is the first by order: the hall.
    hall, door, vault = [
        pixsim(
            stack,
            *("scene", "add-asset", scene["name"]),
            (await stack.uploaded(render_png(seed, 16, 16), stack.auth(author))).name,
            *("--order", str(seed)),
            user=author,
        )["name"]
        for seed in (1, 2, 3)
    ]

    def connect(a: str, b: str, *options: str) -> Any:
        return pixsim(stack, "scene", "connect", scene["name"], a, b, *options, user=author)

    search = connect(
        *(hall, hall, "--type", "choice", "--label", "search"),
        *("--condition", "not has_key", "--set", "has_key=true", "--increment", "tries=1"),
    )
    assert search["condition"] == "not has_key"
    assert [e["variable"] for e in search["effects"]] == ["has_key", "tries"]
    connect(hall, door, "--type", "choice", "--label", "the door", "--condition", "has_key")
    connect(door, vault, "--type", "branch", "--condition", "tries <= 3")
    connect(door, hall, "--type", "branch", "--order", "1")  # the default, after it
    report = pixsim(stack, "scene", "validate", scene["name"], user=author)
    codes = {p["code"] for p in report.get("problems", [])}
    assert codes <= {"NO_START_NODE", "DEAD_END"}  # warnings: it plays

    # Played in the terminal: one pick, then resumed where the picks ran out.
    played = pixsim(stack, "play", scene["name"], "--choose", "1", user=author)["steps"]
    assert [(s.get("step", "0"), s["currentSceneAsset"]) for s in played] == [
        ("0", hall),
        ("1", hall),  # searched: the key is found, and the door is offered now
    ]
    assert played[-1]["state"] == "STATE_ACTIVE"
    assert [c["label"] for c in played[-1]["choices"]] == ["the door"]
    resumed = pixsim(stack, "play", "--resume", played[-1]["name"], "--choose", "1", user=author)[
        "steps"
    ]
    assert [s["currentSceneAsset"] for s in resumed] == [hall, door, vault]  # the branch: auto
    assert resumed[-1]["state"] == "STATE_ENDED"
    values = {v["name"]: v["value"] for v in resumed[-1]["variables"]}
    assert values == {"has_key": {"boolValue": True}, "tries": {"numberValue": 1.0}}

    ghost = connect(vault, hall, "--type", "choice", "--label", "again", "--condition", "lives > 0")
    report = pixsim(stack, "scene", "validate", scene["name"], user=author, exit_code=1)
    found = {(p["code"], p["subject"]) for p in report["problems"]}
    assert ("UNDEFINED_VARIABLE", ghost["name"]) in found
    refused = pixsim_failing(stack, "play", scene["name"], user=author, exit_code=5)
    assert "cannot be played" in refused
    assert f"UNDEFINED_VARIABLE {ghost['name']}" in refused


async def test_an_author_imports_a_twine_story_attaching_clips_and_exports_it_to_play(
    whole_stack: WholeStack, tmp_path: Path
) -> None:
    stack = whole_stack
    author = f"author-{uuid.uuid4().hex[:8]}"
    clips = {
        passage: (await stack.uploaded(render_png(seed, 16, 16), stack.auth(author))).name
        for seed, passage in enumerate(("Start", "Back Room", "Front Room"), 10)
    }
    story = TWINE / "lock-and-key.twee"
    made = pixsim(
        stack,
        *("scene", "import", str(story)),
        *(
            option
            for passage, asset in clips.items()
            for option in ("--attach", f"{passage}={asset}")
        ),
        user=author,
    )
    assert made["scene"]["displayName"] == "Lock and Key: Variable in SugarCube"
    assert [u["key"] for u in made["unattached"]] == ["Exit"]  # the one not attached
    scene = made["scene"]["name"]

    played = pixsim(stack, "play", scene, "--choose", "2", "--choose", "1", user=author)
    assert [c["label"] for c in played["steps"][-1]["choices"]] == ["Front Room"]  # key found

    folder = tmp_path / "html"
    written = pixsim(stack, "scene", "export", scene, "--html", "--out", str(folder), user=author)[
        "files"
    ]
    assert sorted(Path(p).relative_to(folder).parts[0] for p in written) == [
        "clips",
        "clips",
        "clips",
        "index.html",
        "manifest.json",
    ]
    for path in (folder / "clips").iterdir():  # each clip is its asset's bytes
        assert path.read_bytes().startswith(b"\x89PNG")
    twee_folder = tmp_path / "twee"
    pixsim(stack, "scene", "export", scene, "--twee", "--out", str(twee_folder), user=author)
    again = pixsim(
        stack, "scene", "import", str(twee_folder / "story.twee"), "--name", "copy", user=author
    )
    assert (again["scene"]["displayName"], [u["key"] for u in again["unattached"]]) == (
        "copy",
        ["Exit"],
    )


async def test_a_user_runs_a_job_and_sees_what_it_cost_in_their_usage(
    whole_stack: WholeStack, capsys: pytest.CaptureFixture[str]
) -> None:
    stack = whole_stack
    user = f"spender-{uuid.uuid4().hex[:8]}"
    pixsim(
        stack,
        *("job", "create", "--provider", "runway", "--operation", "text-to-video"),
        *("--prompt", "a lighthouse at dusk", "--wait"),
        user=user,
    )
    (job,) = pixsim(stack, "job", "list", user=user)["jobs"]
    assert job["state"] == "STATE_COMPLETED"
    for _ in range(100):  # its cost and its asset come on different topics
        if job.get("cost", {}).get("final"):
            break
        await asyncio.sleep(0.1)
        job = pixsim(stack, "job", "get", job["name"], user=user)
    # Runway reports a task's cost: the simulator charges what the adapter estimates (5 s
    # at 5 credits a second), at the price table's $0.01 a credit.
    settled = job["cost"]["settled"]
    assert (settled["credits"], settled["price"]) == (
        "25",
        {"currencyCode": "USD", "nanos": 250000000},
    )
    usage = pixsim(stack, "usage", user=user)
    (row,) = usage["rows"]
    assert (row["providerId"], row["operationType"], row["jobs"]) == (
        "runway",
        "OPERATION_TYPE_TEXT_TO_VIDEO",
        "1",
    )
    assert usage["totalPrice"] == {"currencyCode": "USD", "nanos": 250000000}
    with capsys.disabled():
        print(f"\npixsim usage of {user}:")
        Console(width=100).print(usage_table(json_format.ParseDict(usage, job_pb.Usage())))
    # An operator (signing locally, so with the admin role) reads anyone's.
    assert pixsim(stack, "usage", "--of", user)["rows"] == usage["rows"]

    # With a daily budget of $0.30, $0.25 is spent: the next $0.25 job is refused.
    budget = pixsim(stack, "budget", "set", user, "--limit", "0.30", "--period", "day")
    assert budget["remaining"] == {"currencyCode": "USD", "nanos": 50000000}
    refused = pixsim_failing(
        stack,
        *("job", "create", "--provider", "runway", "--operation", "text-to-video"),
        *("--prompt", "another lighthouse"),
        user=user,
        exit_code=8,
    )
    assert "RESOURCE_EXHAUSTED" in refused
    assert "remaining: $0.05" in refused
    assert pixsim(stack, "budget", "get", user=user)["spent"]["nanos"] == 250000000
    pixsim(stack, "budget", "clear", user)
