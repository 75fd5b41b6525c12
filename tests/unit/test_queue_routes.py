"""The queue routes and runner without Ray: the real Dispatcher over a fake deployment handle that
calls the behaviours fixture service in-process, and a JobStore in the same event loop."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from serve_app.endpoints import collect_endpoints
from serve_app.ingress import Dispatcher, IngressSettings, ServiceRoute
from serve_app.queue.client import StoreClient
from serve_app.queue.routes import install_queue_routes
from serve_app.queue.settings import QueueSettings
from serve_app.queue.store import JobStore
from tests.app.fixtures.behaviours import BehavioursConfig, BehavioursService


class FakeStream:
    """Stands in for a DeploymentResponseGenerator."""

    def __init__(self, agen: AsyncIterator[Any]) -> None:
        self._agen = agen
        self.cancelled = False

    def __aiter__(self) -> FakeStream:
        return self

    async def __anext__(self) -> Any:
        return await self._agen.__anext__()

    def cancel(self) -> None:
        self.cancelled = True


class FakeHandle:
    """Stands in for a DeploymentHandle: `.call_endpoint.remote(...)`, `.stream_endpoint.remote(...)`."""

    def __init__(self, service: BehavioursService) -> None:
        self.service = service

    def options(self, stream: bool = False) -> FakeHandle:
        return self

    def __getattr__(self, method: str) -> Any:
        target = getattr(self.service, method)

        class Method:
            @staticmethod
            def remote(*args: Any) -> Any:
                result = target(*args)
                return FakeStream(result) if method == "stream_endpoint" else result

        return Method


@pytest.fixture
def client() -> Iterator[tuple[TestClient, BehavioursService]]:
    service = BehavioursService(BehavioursConfig(step_s=0.01))
    route = ServiceRoute("b", "/b", FakeHandle(service), collect_endpoints(BehavioursService))
    settings = QueueSettings(defaults={"max_running": 1, "max_queued": 5})  # type: ignore[arg-type]
    dispatcher = Dispatcher([route], IngressSettings(storage={"kind": "data_url"}, queue=settings))  # type: ignore[arg-type]
    app = FastAPI()
    install_queue_routes(app, dispatcher, settings, StoreClient(JobStore(settings), timeout_s=10))
    with TestClient(app) as test_client:
        yield test_client, service


def wait_status(client: TestClient, url: str, status: str, timeout_s: float = 10) -> dict[str, Any]:
    deadline = time.time() + timeout_s
    while True:
        body = client.get(url, params={"logs": 1}).json()
        if body["status"] == status or time.time() > deadline:
            return body  # type: ignore[no-any-return]
        time.sleep(0.02)


def test_submit_runs_the_job_through_the_dispatcher(client: tuple[TestClient, BehavioursService]) -> None:
    http, _ = client
    submitted = http.post("/queue/b/steps", json={"steps": 3})
    assert submitted.status_code == 200
    body = submitted.json()
    assert set(body) == {"request_id", "response_url", "status_url", "cancel_url", "queue_position"}
    assert body["response_url"] == f"http://testserver/queue/b/requests/{body['request_id']}"
    assert submitted.headers["x-fal-request-id"] == body["request_id"]
    done = wait_status(http, body["status_url"], "COMPLETED")
    assert done["metrics"]["inference_time"] > 0 and done["error"] is None
    assert [log["message"] for log in done["logs"] if log["source"] == "user"] == [
        "working 1/3", "working 2/3", "working 3/3"]
    result = http.get(body["response_url"])
    assert result.json()["steps_done"] == 3 and result.headers["x-fal-billable-units"] == "3"
    again = http.post("/queue/fal-ai/b/stats", json={})  # owner alias; a non-streaming endpoint
    assert wait_status(http, again.json()["status_url"], "COMPLETED")["error"] is None
    assert http.get(again.json()["response_url"]).json()["completed"] == 1


def test_cancel_a_running_job_reaches_the_service(client: tuple[TestClient, BehavioursService]) -> None:
    http, service = client
    running = http.post("/queue/b/steps", json={"steps": 1000}).json()
    queued = http.post("/queue/b/steps", json={"steps": 1}).json()
    wait_status(http, running["status_url"], "IN_PROGRESS")
    assert http.get(queued["status_url"]).json()["queue_position"] == 0
    assert http.get(running["response_url"]).status_code == 400  # still in progress
    assert http.put(running["cancel_url"]).status_code == 202
    cancelled = wait_status(http, running["status_url"], "COMPLETED")
    assert cancelled["error_type"] == "request_cancelled" and http.get(running["response_url"]).status_code == 499
    deadline = time.time() + 10
    while service.counts["cancelled"] == 0 and time.time() < deadline:
        time.sleep(0.02)
    assert service.counts["cancelled"] == 1
    assert wait_status(http, queued["status_url"], "COMPLETED")["error"] is None  # the next one ran


def test_status_stream_and_errors(client: tuple[TestClient, BehavioursService]) -> None:
    http, _ = client
    job = http.post("/queue/b/steps", json={"steps": 2}).json()
    with http.stream("GET", job["status_url"] + "/stream") as r:
        frames = [json.loads(line[6:]) for line in r.iter_lines() if line.startswith("data: ")]
    assert frames[-1]["status"] == "COMPLETED"
    assert [f["event"]["step"] for f in frames if "event" in f] == [1, 2]
    failed = http.post("/queue/b/steps", json={"steps": 2, "fail_at": 0}).json()
    done = wait_status(http, failed["status_url"], "COMPLETED")
    assert done["error"] == "Internal Server Error" and done["error_type"] == "internal_error"
    assert http.get(failed["response_url"]).status_code == 500
    assert http.post("/queue/b/steps", json={"steps": "many"}).status_code == 422
    assert http.get("/queue/b/requests/nope/status").status_code == 404
    assert http.get("/queue/b/requests/nope").status_code == 404


def test_outside_serve_the_queue_answers_503() -> None:
    service = BehavioursService(BehavioursConfig())
    route = ServiceRoute("b", "/b", FakeHandle(service), collect_endpoints(BehavioursService))
    app = FastAPI()
    install_queue_routes(app, Dispatcher([route], IngressSettings()), QueueSettings())
    with TestClient(app) as http:
        r = http.post("/queue/b/steps", json={})
    assert r.status_code == 503 and "not available" in r.json()["detail"]
    with pytest.raises(ValueError, match="inside the queue"):
        bad = ServiceRoute("q", "/queue/x", FakeHandle(service), collect_endpoints(BehavioursService))
        install_queue_routes(FastAPI(), Dispatcher([bad], IngressSettings()), QueueSettings())
