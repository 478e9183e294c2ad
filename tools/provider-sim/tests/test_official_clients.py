"""The providers' official clients against the simulator, and what the simulator serves."""

from __future__ import annotations

import hashlib
import io
import threading
import time

import av
import fal_client
import fal_client.client
import httpx
import pytest
from runwayml import RunwayML

from pixsim_provider_sim.media import render_png

pytestmark = pytest.mark.integration


@pytest.fixture
def sim(provider_sim: str) -> str:
    httpx.post(f"{provider_sim}/_sim/reset", json={"seed": 7}).raise_for_status()
    return provider_sim


def configure(sim: str, key: str, **knobs: object) -> None:
    httpx.put(f"{sim}/_sim/keys/{key}", json=knobs).raise_for_status()


def probe(url: str) -> tuple[int, int, float, str]:
    data = httpx.get(url).raise_for_status().content
    with av.open(io.BytesIO(data), mode="r") as container:
        stream = container.streams.video[0]
        assert container.duration is not None
        return (
            stream.width,
            stream.height,
            container.duration / 1_000_000,
            stream.codec_context.name,
        )


def test_runway_sdk_creates_a_task_and_retrieves_it_to_succeeded(sim: str) -> None:
    configure(sim, "key_runway", finish_ms=300)
    client = RunwayML(base_url=sim, api_key="key_runway", max_retries=0)
    # The SDK's own uploads flow: a slot, the file to the slot's URL, the runway:// URI.
    image = render_png(5, 32, 32)
    uploaded = client.uploads.create_ephemeral(file=("frame.png", image, "image/png"))
    created = client.image_to_video.create(
        model="gen4_turbo",
        prompt_image=uploaded.uri,
        prompt_text="a cat from an upload",
        ratio="1280:720",
        duration=5,
    )
    (task_record,) = httpx.get(
        f"{sim}/_sim/tasks", params={"prompt": "a cat from an upload"}
    ).json()
    assert [i["sha256"] for i in task_record["inputs"]] == [hashlib.sha256(image).hexdigest()]
    task = client.tasks.retrieve(created.id)
    assert task.status in ("PENDING", "RUNNING")
    time.sleep(0.5)
    task = client.tasks.retrieve(created.id)
    assert task.status == "SUCCEEDED"
    assert probe(task.output[0]) == (1280, 720, 5.0, "h264")
    organization = client.organization.retrieve()
    assert organization.credit_balance == 1_000_000 - 25


def test_runway_sdk_waits_for_output_and_sees_moderation(sim: str) -> None:
    configure(sim, "key_runway2", finish_ms=50)
    client = RunwayML(base_url=sim, api_key="key_runway2", max_retries=0)
    task = client.text_to_video.create(
        model="gen4.5", prompt_text="a cat [sim:moderation]", ratio="1280:720", duration=5
    )
    failed = client.tasks.retrieve(task.id)
    time.sleep(0.2)
    failed = client.tasks.retrieve(task.id)
    assert failed.status == "FAILED"
    assert failed.failure_code == "SAFETY.INPUT.TEXT"


def test_fal_client_submits_a_pika_request_and_gets_its_result(
    sim: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    configure(sim, "fal-key:secret", finish_ms=200)
    monkeypatch.setattr(fal_client.client, "QUEUE_URL_FORMAT", f"{sim}/")
    client = fal_client.SyncClient(key="fal-key:secret")
    handle = client.submit(
        "fal-ai/pika/v2.2/text-to-video",
        arguments={"prompt": "a cat", "aspect_ratio": "9:16", "duration": 5, "resolution": "720p"},
    )
    statuses = []
    for event in handle.iter_events(interval=0.05):
        statuses.append(type(event).__name__)
    result = handle.get()
    assert statuses[-1] == "Completed"
    assert probe(result["video"]["url"]) == (720, 1280, 5.0, "h264")

    cancelled = client.submit(
        "fal-ai/pika/v2.2/text-to-video", arguments={"prompt": "slow [sim:finish_ms=60000]"}
    )
    cancelled.cancel()


def test_pixverse_shapes_answer_as_the_real_api(sim: str) -> None:
    headers = {"API-KEY": "pv-key", "Ai-trace-id": "00000000-0000-4000-8000-000000000001"}
    configure(sim, "pv-key", finish_ms=100)
    created = httpx.post(
        f"{sim}/openapi/v2/video/text/generate",
        headers=headers,
        json={
            "prompt": "a cat",
            "model": "v4.5",
            "duration": 5,
            "quality": "540p",
            "aspect_ratio": "16:9",
            "seed": 0,
        },
    ).json()
    assert created["ErrCode"] == 0
    video_id = created["Resp"]["video_id"]
    assert isinstance(video_id, int)
    time.sleep(0.2)
    result = httpx.get(f"{sim}/openapi/v2/video/result/{video_id}", headers=headers).json()
    resp = result["Resp"]
    assert (resp["status"], resp["outputWidth"], resp["outputHeight"]) == (1, 1024, 576)
    assert probe(resp["url"]) == (1024, 576, 5.0, "h264")


def test_same_seed_same_bytes_and_every_task_its_own_file(sim: str) -> None:
    headers = {"Authorization": "Bearer det-key", "X-Runway-Version": "2024-11-06"}
    configure(sim, "det-key", finish_ms=0)

    def one_output(prompt: str = "x") -> bytes:
        task = httpx.post(
            f"{sim}/v1/text_to_video",
            headers=headers,
            json={"model": "gen4.5", "promptText": prompt, "ratio": "720:1280", "duration": 2},
        ).json()
        body = httpx.get(f"{sim}/v1/tasks/{task['id']}", headers=headers).json()
        return httpx.get(body["output"][0]).content

    first, second = one_output(), one_output()
    assert first != second
    httpx.post(f"{sim}/_sim/reset", json={"seed": 7}).raise_for_status()
    configure(sim, "det-key", finish_ms=0)
    assert one_output() == first
    # Two tasks asking for the same seed knob render the same file.
    assert one_output("a [sim:seed=3]") == one_output("b [sim:seed=3]") != first


def test_it_records_the_highest_concurrency_each_key_reached(sim: str) -> None:
    headers = {"Authorization": "Bearer busy-key", "X-Runway-Version": "2024-11-06"}
    configure(sim, "busy-key", finish_ms=2000)

    def submit() -> None:
        httpx.post(
            f"{sim}/v1/text_to_video",
            headers=headers,
            json={"model": "gen4.5", "promptText": "x", "duration": 5},
        ).raise_for_status()

    threads = [threading.Thread(target=submit) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    stats = httpx.get(f"{sim}/_sim/stats").json()["keys"]["busy-key"]
    assert (stats["submits"], stats["in_flight"], stats["in_flight_max"]) == (4, 4, 4)
    httpx.post(f"{sim}/_sim/reset", json={}).raise_for_status()
    assert httpx.get(f"{sim}/_sim/stats").json()["keys"] == {}
