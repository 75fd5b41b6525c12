"""Framework behaviours through a model-free fixture service: 5xx with request ids, errors after
a stream started, cancellation on client disconnect, and Python handles."""

from __future__ import annotations

import json
import time

import httpx
import pytest

from tests.app.conftest import FIXTURE_PREFIX

STEPS = f"{FIXTURE_PREFIX}/b/steps"


def test_internal_error_is_clean_json_500_with_request_id_and_service_recovers(client: httpx.Client) -> None:
    r = client.post(STEPS, json={"steps": 2, "fail_at": 1}, headers={"x-fal-request-id": "req-abc"})
    assert r.status_code == 500
    assert r.json() == {"detail": "Internal Server Error", "request_id": "req-abc"}
    assert "secret" not in r.text
    assert r.headers["x-fal-request-id"] == "req-abc" and r.headers["x-fal-billable-units"] == "0"
    ok = client.post(STEPS, json={"steps": 2})
    assert ok.status_code == 200 and ok.json()["steps_done"] == 2
    assert ok.headers["x-fal-billable-units"] == "2"
    assert ok.json()["file"]["url"].startswith("data:text/plain;base64,")


def test_a_sync_call_says_where_its_time_went(client: httpx.Client) -> None:
    """`Server-Timing` (ms): the method's own run on the replica, the store, the handle call and the
    ingress route, each containing the one before."""
    r = client.post(STEPS, json={"steps": 4})  # the fixture's step is 0.05 s
    assert r.status_code == 200
    parts = {name: float(dur.removeprefix("dur="))
             for name, dur in (item.strip().split(";") for item in r.headers["server-timing"].split(","))}
    assert set(parts) == {"dispatch", "run", "store", "call", "ingress"}
    assert 200 <= parts["run"] < 2000
    assert 0 <= parts["dispatch"] < parts["run"] and 0 <= parts["store"] < parts["run"]
    assert parts["dispatch"] + parts["run"] + parts["store"] <= parts["call"] <= parts["ingress"]
    failed = client.post(STEPS, json={"steps": 1, "fail_at": 0})
    assert failed.status_code == 500 and "server-timing" not in failed.headers


def test_request_id_defaults_to_serves(client: httpx.Client) -> None:
    r = client.post(STEPS, json={"steps": 1, "fail_at": 0})
    assert r.status_code == 500
    assert r.json()["request_id"] == r.headers["x-request-id"] == r.headers["x-fal-request-id"]


def test_service_field_error_is_422_before_stream_starts(client: httpx.Client) -> None:
    for path in (STEPS, f"{STEPS}/stream"):
        r = client.post(path, json={"field_error": True})
        assert r.status_code == 422
        assert r.json()["detail"] == [{"loc": ["body", "steps"], "msg": "steps are not allowed today",
                                       "type": "value_error"}]


def test_failure_after_first_frame_ends_stream_with_error_event(client: httpx.Client) -> None:
    with client.stream("POST", f"{STEPS}/stream", json={"steps": 3, "fail_at": 2}) as r:
        assert r.status_code == 200
        events = [json.loads(x[6:]) for x in r.iter_lines() if x.startswith("data: ")]
    assert [e["type"] for e in events] == ["progress", "progress", "error"]
    assert events[-1]["status_code"] == 500 and events[-1]["request_id"]


def stats(client: httpx.Client) -> dict[str, int]:
    r = client.post(f"{FIXTURE_PREFIX}/b/stats", json={})
    assert r.status_code == 200
    return r.json()


def test_client_disconnect_cancels_the_running_job(client: httpx.Client) -> None:
    before = stats(client)
    with client.stream("POST", f"{STEPS}/stream", json={"steps": 400}) as r:
        for line in r.iter_lines():
            if line.startswith("data: "):
                break  # got the first progress frame; hang up
    deadline = time.time() + 30
    while time.time() < deadline and stats(client)["cancelled"] == before["cancelled"]:
        time.sleep(0.2)
    after = stats(client)
    assert after["cancelled"] == before["cancelled"] + 1
    assert after["completed"] == before["completed"]
    assert client.post(STEPS, json={"steps": 1}).status_code == 200


def test_a_cancel_serve_loses_is_found_on_the_callers_board(client: httpx.Client) -> None:
    """Serve's cancel is best effort (ray-project/ray#52533). The ingress also posts its cancel on
    its `CancelBoard`, which the replica polls: here only the board hears of it, and the work stops."""
    import ray
    from ray import serve

    from serve_app.context import CancelBoard, RequestInfo
    from serve_app.errors import RequestCancelled

    board = ray.remote(CancelBoard).options(num_cpus=0).remote()
    info = RequestInfo("lost-cancel", f"{STEPS}", caller=board)
    other = RequestInfo("lost-cancel", f"{STEPS}", caller=board)
    assert info.call_id != other.call_id  # a client's request id may repeat; a call's id doesn't
    handle = serve.get_deployment_handle("behaviours", app_name="fixtures")
    before = stats(client)
    gen = handle.options(stream=True).stream_endpoint.remote("steps", {"steps": 400}, info, store=False)
    deadline = time.time() + 30
    while stats(client)["started"] == before["started"]:
        assert time.time() < deadline, "the call never started"
        time.sleep(0.1)
    ray.get(board.cancel.remote(other.call_id))  # someone else's cancel: this call goes on
    time.sleep(2.5)  # longer than the replica's polling interval
    assert stats(client)["cancelled"] == before["cancelled"]
    ray.get(board.cancel.remote(info.call_id))  # Serve is never asked to cancel
    deadline = time.time() + 15  # 400 steps would take 20 s
    while (now := stats(client))["cancelled"] == before["cancelled"]:
        assert time.time() < deadline, f"the cancelled call kept running: {now}"
        time.sleep(0.2)
    assert now["completed"] == before["completed"]
    with pytest.raises(RequestCancelled):
        for _ in gen:
            pass


def test_python_handles(serve_url: str) -> None:
    from ray import serve

    from deployments.sana import SanaOutput, TextToImageInput

    ingress = serve.get_app_handle("default")
    out = ingress.run.remote("/sana", {"prompt": "a cat", "image_size": "square",
                                       "num_inference_steps": 1}).result(timeout_s=120)
    assert out["images"][0]["width"] == 512 and out["images"][0]["url"].startswith("http")
    r = httpx.get(out["images"][0]["url"].replace("http://127.0.0.1:8000", serve_url))
    assert r.status_code == 200 and r.headers["content-type"] == "image/jpeg"

    events = list(ingress.options(stream=True).stream.remote("/sana/sprint", {"prompt": "a cat",
                                                                              "image_size": "square"}))
    assert events[0]["type"] == "progress" and "images" in events[-1]

    sana = serve.get_deployment_handle("sana", app_name="default")
    direct = sana.generate.remote(TextToImageInput(prompt="a cat", image_size="square", num_inference_steps=1,
                                                   seed=7)).result(timeout_s=120)
    assert isinstance(direct, SanaOutput) and direct.seed == 7
    assert direct.images[0].data is not None and direct.images[0].data[:2] == b"\xff\xd8"  # JPEG bytes
