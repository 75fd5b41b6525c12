"""The queue API through the official, unmodified fal_client (sync and async) over TLS, against
configs/dev.yaml (Sana) and a queue test app at /q (the behaviours fixture service)."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import fal_client
import httpx
import pytest

from serve_app.queue.webhooks import verify
from tests.app.conftest import QUEUE_KEY, QUEUE_PREFIX, ROOT, WEBHOOK_SECRET


@dataclass
class Fal:
    """fal_client pointed at one application root, as FAL_RUN_HOST / FAL_QUEUE_RUN_HOST would."""

    sync: fal_client.SyncClient
    aio: fal_client.AsyncClient
    host: str
    ca: Path


def point_fal_client(monkeypatch: pytest.MonkeyPatch, host: str, ca: Path, root: str, key: str) -> Fal:
    # fal_client reads FAL_RUN_HOST / FAL_QUEUE_RUN_HOST when it is imported (another test may have
    # imported it first), so set the two URL constants it derives from them; its httpx clients read
    # SSL_CERT_FILE when they are created (at a client's first call).
    import fal_client.client as fc

    monkeypatch.setattr(fc, "RUN_URL_FORMAT", f"https://{host}{root}/")
    monkeypatch.setattr(fc, "QUEUE_URL_FORMAT", f"https://{host}{root}/queue/")
    monkeypatch.setenv("SSL_CERT_FILE", str(ca))
    return Fal(fal_client.SyncClient(key=key), fal_client.AsyncClient(key=key), host, ca)


@pytest.fixture
def fal_q(queue_app: str, tls_host: tuple[str, Path], monkeypatch: pytest.MonkeyPatch) -> Fal:
    return point_fal_client(monkeypatch, *tls_host, QUEUE_PREFIX, QUEUE_KEY)


@pytest.fixture
def fal_dev(tls_host: tuple[str, Path], monkeypatch: pytest.MonkeyPatch) -> Fal:
    return point_fal_client(monkeypatch, *tls_host, "", "unused")


def stats(queue_app: str, service: str = "b") -> dict[str, int]:
    r = httpx.post(f"{queue_app}/{service}/stats", json={}, timeout=30,
                   headers={"Authorization": f"Key {QUEUE_KEY}"})
    r.raise_for_status()
    return r.json()  # type: ignore[no-any-return]


def wait_until(predicate: Any, timeout_s: float = 30.0, what: str = "condition") -> None:
    deadline = time.time() + timeout_s
    while not predicate():
        if time.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def test_sana_subscribe_with_logs_and_validation_at_submit(fal_dev: Fal) -> None:
    updates: list[fal_client.Status] = []
    out = fal_dev.sync.subscribe("sana/sprint", {"prompt": "a cat", "image_size": "square", "num_inference_steps": 2},
                                 with_logs=True, on_queue_update=updates.append)
    assert out["images"][0]["width"] == 512 and out["images"][0]["url"].startswith(f"https://{fal_dev.host}/files/")
    assert isinstance(updates[-1], fal_client.Completed) and updates[-1].error is None
    assert updates[-1].metrics["inference_time"] > 0
    assert any("denoising" in log["message"] for log in updates[-1].logs or [])

    with pytest.raises(fal_client.FalClientHTTPError) as bad:  # rejected before it enters the queue
        fal_dev.sync.submit("sana/sprint", {"prompt": "a cat", "num_inference_steps": 999})
    assert bad.value.status_code == 422
    assert bad.value.response.json()["detail"][0]["loc"] == ["body", "num_inference_steps"]

    # the service's root endpoint, by its bare id and by a fal-style owner/app id
    handle = fal_dev.sync.submit("fal-ai/sana", {"prompt": "a dog", "image_size": "square",
                                                 "num_inference_steps": 1})
    assert "/queue/sana/requests/" in handle.status_url and handle.get()["images"]
    assert fal_dev.sync.status("fal-ai/sana", handle.request_id).__class__ is fal_client.Completed


def test_submit_status_iter_events_result_sync(fal_q: Fal, queue_app: str) -> None:
    handle = fal_q.sync.submit("b/steps", {"steps": 6})
    submitted = httpx.get(handle.status_url, headers={"Authorization": f"Key {QUEUE_KEY}"}, verify=str(fal_q.ca))
    assert submitted.status_code in (200, 202) and submitted.headers["x-fal-request-id"]
    seen = list(handle.iter_events(with_logs=True, interval=0.05))
    assert isinstance(seen[-1], fal_client.Completed)
    assert any(isinstance(s, fal_client.InProgress) for s in seen)
    assert any(log["message"] == "working 6/6" for log in seen[-1].logs or [])
    assert handle.get() == fal_q.sync.result("b/steps", handle.request_id)
    assert handle.get()["steps_done"] == 6
    raw = httpx.get(handle.response_url, headers={"Authorization": f"Key {QUEUE_KEY}"}, verify=str(fal_q.ca))
    assert raw.headers["x-fal-billable-units"] == "6" and raw.headers["x-fal-request-id"] == handle.request_id
    status = httpx.get(handle.status_url, headers={"Authorization": f"Key {QUEUE_KEY}"}, verify=str(fal_q.ca))
    assert status.status_code == 200 and status.json()["logs"] is None


def test_async_api_submit_subscribe_and_stream(fal_q: Fal) -> None:
    async def main() -> None:
        handle = await fal_q.aio.submit("b/steps", {"steps": 3})
        statuses = [s async for s in handle.iter_events(with_logs=True, interval=0.05)]
        assert isinstance(statuses[-1], fal_client.Completed)
        assert (await handle.get())["steps_done"] == 3
        assert isinstance(await fal_q.aio.status("b/steps", handle.request_id), fal_client.Completed)
        enqueued: list[str] = []
        out = await fal_q.aio.subscribe("b/steps", {"steps": 2}, on_enqueue=enqueued.append)
        assert out["steps_done"] == 2 and len(enqueued) == 1
        events = [e async for e in fal_q.aio.stream("b/steps", {"steps": 2})]
        assert events[0]["type"] == "progress" and events[-1]["steps_done"] == 2
        slow = await fal_q.aio.submit("b/steps", {"steps": 400})
        await fal_q.aio.cancel("b/steps", slow.request_id)
        last = [s async for s in slow.iter_events(interval=0.05)][-1]
        assert isinstance(last, fal_client.Completed) and last.error_type == "request_cancelled"

    asyncio.run(main())
    assert [e.get("type") for e in fal_q.sync.stream("b/steps", {"steps": 2})] == ["progress", "progress", None]


def test_failures_complete_with_error_and_keep_status_and_body(fal_q: Fal) -> None:
    handle = fal_q.sync.submit("b/steps", {"field_error": True})
    *_, last = handle.iter_events(interval=0.05)
    assert isinstance(last, fal_client.Completed) and last.error_type == "value_error"
    with pytest.raises(fal_client.FalClientHTTPError) as err:
        handle.get()
    assert err.value.status_code == 422
    assert err.value.response.json()["detail"] == [{"loc": ["body", "steps"], "msg": "steps are not allowed today",
                                                    "type": "value_error"}]

    crash = fal_q.sync.submit("b/steps", {"steps": 2, "fail_at": 1})
    with pytest.raises(fal_client.FalClientHTTPError) as err:
        crash.get()
    assert err.value.status_code == 500 and "secret" not in err.value.response.text
    assert err.value.response.json()["request_id"] == crash.request_id

    with pytest.raises(fal_client.FalClientHTTPError) as bad:
        fal_q.sync.submit("b/steps", {"steps": 0})
    assert bad.value.status_code == 422 and bad.value.response.json()["detail"][0]["loc"] == ["body", "steps"]


def test_cancel_queued_and_running_jobs(fal_q: Fal, queue_app: str) -> None:
    before = stats(queue_app, "tiny")
    running = fal_q.sync.submit("tiny/steps", {"steps": 400})
    wait_until(lambda: isinstance(running.status(), fal_client.InProgress), what="the first job to run")
    queued = fal_q.sync.submit("tiny/steps", {"steps": 1})
    status = queued.status()
    assert isinstance(status, fal_client.Queued) and status.position == 0

    queued.cancel()  # removed from the queue: 200 OK
    cancel_again = httpx.put(queued.cancel_url, headers={"Authorization": f"Key {QUEUE_KEY}"}, verify=str(fal_q.ca))
    assert cancel_again.status_code == 400 and cancel_again.json() == {"status": "ALREADY_COMPLETED"}
    with pytest.raises(fal_client.FalClientHTTPError) as err:
        queued.get()
    assert err.value.status_code == 499

    r = httpx.put(running.cancel_url, headers={"Authorization": f"Key {QUEUE_KEY}"}, verify=str(fal_q.ca))
    assert r.status_code == 202 and r.json() == {"status": "CANCELLATION_REQUESTED"}
    *_, last = running.iter_events(interval=0.05)
    assert isinstance(last, fal_client.Completed) and last.error_type == "request_cancelled"
    with pytest.raises(fal_client.FalClientHTTPError) as err:
        running.get()
    assert err.value.status_code == 499
    wait_until(lambda: stats(queue_app, "tiny")["cancelled"] == before["cancelled"] + 1,
               what="the service to see the cancellation")
    assert stats(queue_app, "tiny")["completed"] == before["completed"]
    unknown = httpx.put(running.cancel_url.replace(running.request_id, "nope"),
                        headers={"Authorization": f"Key {QUEUE_KEY}"}, verify=str(fal_q.ca))
    assert unknown.status_code == 404 and unknown.json() == {"status": "NOT_FOUND"}


def test_full_queue_answers_429_with_retry_after(queue_app: str) -> None:
    auth = {"Authorization": f"Key {QUEUE_KEY}"}
    with httpx.Client(base_url=queue_app, headers=auth, timeout=30) as http:
        ids = [http.post("/queue/tiny/steps", json={"steps": 400}).json()["request_id"]]
        wait_until(lambda: http.get(f"/queue/tiny/requests/{ids[0]}/status").json()["status"] == "IN_PROGRESS")
        ids += [http.post("/queue/tiny/steps", json={"steps": 1}).json()["request_id"] for _ in range(2)]
        full = http.post("/queue/tiny/steps", json={"steps": 1})
        assert full.status_code == 429 and full.headers["retry-after"] == "2"
        assert "full" in full.json()["detail"]
        for request_id in reversed(ids):
            assert http.put(f"/queue/tiny/requests/{request_id}/cancel").status_code in (200, 202)
        assert http.post("/queue/tiny/steps", json={"steps": 1}).status_code == 200


def test_api_key_is_required(queue_app: str) -> None:
    assert httpx.post(f"{queue_app}/queue/b/steps", json={"steps": 1}).status_code == 401
    wrong = httpx.post(f"{queue_app}/queue/b/steps", json={"steps": 1}, headers={"Authorization": "Key nope"})
    assert wrong.status_code == 401 and wrong.json()["detail"] == "Invalid API key."
    assert httpx.get(f"{queue_app}/queue/b/requests/x/status").status_code == 401
    for path in ("/b/steps", "/b/steps/stream"):  # the sync and stream routes too
        r = httpx.post(f"{queue_app}{path}", json={"steps": 1})
        assert r.status_code == 401 and r.headers["www-authenticate"] == "Key"
    ok = httpx.post(f"{queue_app}/b/steps", json={"steps": 1}, headers={"Authorization": f"Key {QUEUE_KEY}"})
    assert ok.status_code == 200
    assert httpx.get(f"{queue_app}/health").status_code == 200


def test_status_stream_carries_progress_until_completed(fal_q: Fal) -> None:
    handle = fal_q.sync.submit("b/steps", {"steps": 5})
    frames = []
    with httpx.stream("GET", f"{handle.status_url}/stream", params={"logs": 1}, verify=str(fal_q.ca),
                      headers={"Authorization": f"Key {QUEUE_KEY}"}, timeout=60) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        frames = [json.loads(line[6:]) for line in r.iter_lines() if line.startswith("data: ")]
    assert frames[-1]["status"] == "COMPLETED" and frames[-1]["error"] is None
    assert all(f["status"] in ("IN_QUEUE", "IN_PROGRESS") for f in frames[:-1])
    progress = [f["event"]["step"] for f in frames if f.get("event", {}).get("type") == "progress"]
    assert progress == sorted(progress) and progress[-1] == 5
    logs = [log["message"] for f in frames for log in (f.get("logs") or [])]
    assert "working 5/5" in logs


class Receiver(BaseHTTPRequestHandler):
    """Records webhook deliveries; answers 500 to the first one."""

    deliveries: list[tuple[dict[str, str], bytes]] = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["content-length"]))
        self.deliveries.append((dict(self.headers), body))
        self.send_response(500 if len(self.deliveries) == 1 else 200)
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def receiver() -> Iterator[str]:
    Receiver.deliveries = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/hook"
    server.shutdown()


def test_webhook_is_signed_and_retried(fal_q: Fal, receiver: str) -> None:
    handle = fal_q.sync.submit("b/steps", {"steps": 2}, webhook_url=receiver)
    output = handle.get()
    wait_until(lambda: len(Receiver.deliveries) >= 2, what="the webhook retry")
    headers, body = Receiver.deliveries[1]
    payload = json.loads(body)
    assert payload == {"request_id": handle.request_id, "gateway_request_id": handle.request_id, "status": "OK",
                       "payload": output, "error": None}
    assert verify(WEBHOOK_SECRET.encode(), headers, body)
    assert headers["X-Fal-Webhook-User-Id"] == "tester" and headers["X-Fal-Webhook-Request-Id"] == handle.request_id
    assert Receiver.deliveries[0][1] == body  # the same payload, delivered again

    Receiver.deliveries = [({}, b"")]  # the next delivery succeeds at once
    failing = fal_q.sync.submit("b/steps", {"field_error": True}, webhook_url=receiver)
    wait_until(lambda: len(Receiver.deliveries) >= 2, what="the error webhook")
    error = json.loads(Receiver.deliveries[1][1])
    assert error["request_id"] == failing.request_id and error["status"] == "ERROR"
    assert error["error"] == "Invalid status code: 422" and error["payload"]["detail"][0]["loc"] == ["body", "steps"]

    bad = httpx.post(f"https://{fal_q.host}{QUEUE_PREFIX}/queue/b/steps", params={"fal_webhook": "ftp://x"},
                     json={"steps": 1}, headers={"Authorization": f"Key {QUEUE_KEY}"}, verify=str(fal_q.ca))
    assert bad.status_code == 422 and bad.json()["detail"][0]["loc"] == ["query", "fal_webhook"]


def test_readme_snippet_with_environment_variables_only(queue_app: str, tls_host: tuple[str, Path]) -> None:
    host, ca = tls_host
    script = (
        "import fal_client\n"
        "handle = fal_client.submit('b/steps', arguments={'steps': 2})\n"
        "for event in handle.iter_events(with_logs=True):\n"
        "    print(type(event).__name__)\n"
        "print(handle.get()['steps_done'])\n"
    )
    env = {**os.environ, "FAL_KEY": QUEUE_KEY, "SSL_CERT_FILE": str(ca),
           "FAL_RUN_HOST": f"{host}{QUEUE_PREFIX}", "FAL_QUEUE_RUN_HOST": f"{host}{QUEUE_PREFIX}/queue"}
    done = subprocess.run([sys.executable, "-c", script], env=env, cwd=ROOT, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.split()
    assert lines[-2:] == ["Completed", "2"]
