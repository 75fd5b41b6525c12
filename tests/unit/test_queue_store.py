"""JobStore (claims, leases, cancel, watch, journal, webhooks) and the API key check, without Ray."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI, Request
from fastapi.testclient import TestClient

from serve_app.auth import ApiKeyAuth, api_keys_from_env, user_id_for
from serve_app.queue.journal import replay
from serve_app.queue.messages import JobUpdate, Outcome, QueueFull
from serve_app.queue.settings import QueueSettings, WebhookSettings
from serve_app.queue.state import Job, JobState
from serve_app.queue.store import JobStore
from serve_app.queue.webhooks import SIGNATURE_HEADER, WebhookSender, signature, verify, webhook_payload

SECRET_ENV = "SERVE_APP_TEST_WEBHOOK_SECRET"


def job(request_id: str, service: str = "svc", webhook: str | None = None) -> Job:
    return Job(request_id=request_id, service=service, path=f"/{service}", payload={"n": 1}, base_url="http://h/",
               response_url=f"http://h/queue/{service}/requests/{request_id}", created_at=time.time(),
               webhook_url=webhook)


def run(coro_fn: Callable[[], Coroutine[Any, Any, None]]) -> None:
    asyncio.run(coro_fn())


def settings(**kw: Any) -> QueueSettings:
    return QueueSettings.model_validate({"defaults": {"max_running": 2, "max_queued": 3}, **kw})


def ok(claim_id: str, gateway: str, body: Any = None) -> Outcome:
    return Outcome(claim_id, gateway, "succeeded", body or {"ok": True}, 200, None, 1.0, 0.01)


def test_fifo_positions_backpressure_and_claims_up_to_max_running() -> None:
    async def main() -> None:
        store = JobStore(settings())
        assert [await store.submit(job(f"j{i}")) for i in range(3)] == [0, 1, 2]
        assert await store.submit(job("other", service="svc2")) == 0  # queues are per service
        with pytest.raises(QueueFull) as full:
            await store.submit(job("j3"))
        assert full.value.status_code == 429 and full.value.retry_after_s == 2
        assert (await store.status("j2"))["queue_position"] == 2  # type: ignore[index]

        polled = await store.poll("w1", 0.01)
        claimed = [c.request_id for c in polled.jobs]
        assert claimed[:2] == ["j0", "j1"] and "j2" not in claimed and "other" in claimed
        assert (await store.status("j2"))["queue_position"] == 0  # type: ignore[index]
        assert (await store.status("j0"))["status"] == "IN_PROGRESS"  # type: ignore[index]
        assert (await store.poll("w2", 0.01)).jobs == []  # max_running reached

        assert await store.finish("w1", ok("j0", "j0", {"x": 1}))
        assert not await store.finish("w1", ok("j0", "j0"))  # already finished: stale
        view = await store.result("j0")
        assert view is not None and view.done and view.status_code == 200 and view.body == {"x": 1}
        assert [c.request_id for c in (await store.poll("w2", 0.01)).jobs] == ["j2"]  # the freed slot
        unfinished = await store.result("j1")
        assert unfinished is not None and not unfinished.done and unfinished.status_code == 400
        assert await store.status("nope") is None and await store.result("nope") is None
        await store.close()

    run(main)


def test_cancel_answers_like_fal_and_reaches_the_runner() -> None:
    async def main() -> None:
        store = JobStore(settings(defaults={"max_running": 1}))
        await store.submit(job("a"))
        await store.submit(job("b"))
        (claim,) = (await store.poll("w", 0.01)).jobs
        assert claim.request_id == "a"
        assert await store.cancel("b") == "OK"
        b = await store.status("b")
        assert b is not None and b["status"] == "COMPLETED" and b["error_type"] == "request_cancelled"
        view = await store.result("b")
        assert view is not None and view.status_code == 499

        waiting = asyncio.ensure_future(store.poll("w", 5.0))
        await asyncio.sleep(0.01)
        assert await store.cancel("a") == "CANCELLATION_REQUESTED"
        assert await store.cancel("a") == "CANCELLATION_REQUESTED"  # idempotent
        first = await asyncio.wait_for(waiting, 1.0)  # woken at once
        again = first.cancel or (await store.poll("w", 0.01)).cancel
        assert again == ["a"]
        assert await store.finish("w", Outcome("a", "a", "cancelled", status_code=499))
        assert await store.cancel("a") == "ALREADY_COMPLETED"
        assert await store.cancel("zzz") == "NOT_FOUND"
        await store.close()

    run(main)


def test_lost_runner_jobs_are_requeued_at_the_front_then_failed_after_max_attempts() -> None:
    async def main() -> None:
        store = JobStore(settings(max_attempts=2, worker_lease_s=0.3))
        for name in ("a", "b", "c"):
            await store.submit(job(name))
        first = await store.poll("dead", 0.01)
        assert [c.request_id for c in first.jobs] == ["a", "b"]
        await asyncio.sleep(0.7)  # the maintenance loop notices the expired lease
        a = await store.status("a", with_logs=True)
        assert a is not None and a["status"] == "IN_QUEUE" and a["queue_position"] == 0
        assert (await store.status("b"))["queue_position"] == 1  # type: ignore[index]
        second = await store.poll("alive", 0.01)
        assert [c.request_id for c in second.jobs] == ["a", "b"]
        assert second.jobs[0].attempt == 2 and second.jobs[0].gateway_request_id != "a"
        assert not await store.finish("dead", ok("a", "a"))  # the lost attempt reports late: ignored

        assert await store.cancel("b") == "CANCELLATION_REQUESTED"
        assert await store.release("alive") == 2  # orderly stop: give jobs back
        a_view = await store.result("a")
        b_view = await store.result("b")
        assert a_view is not None and a_view.status_code == 503  # second attempt lost: max_attempts
        assert b_view is not None and b_view.status_code == 499  # cancel requested: not run again
        assert (await store.status("a"))["error_type"] == "runner_disconnected"  # type: ignore[index]
        await store.close()

    run(main)


def test_watch_waits_for_changes_and_returns_events_and_logs_after_marks() -> None:
    async def main() -> None:
        store = JobStore(settings())
        await store.submit(job("a"))
        snap = await store.watch("a", -1, 1.0)
        assert snap is not None and snap.status["status"] == "IN_QUEUE"
        waiter = asyncio.ensure_future(store.watch("a", snap.version, 5.0, 0, 0, True))
        await asyncio.sleep(0.01)
        (claim,) = (await store.poll("w", 0.01)).jobs
        moved = await asyncio.wait_for(waiter, 1.0)
        assert moved is not None and moved.status["status"] == "IN_PROGRESS"
        update = JobUpdate("a", claim.gateway_request_id, logs=[{"message": "m1"}],
                           events=[{"type": "progress", "step": 1}, {"type": "progress", "step": 2}])
        await store.report("w", [update])
        snap2 = await store.watch("a", moved.version, 1.0, moved.event_seq, moved.log_total, True)
        assert snap2 is not None and [e["step"] for e in snap2.events] == [1, 2]
        assert [x["message"] for x in snap2.logs] == ["m1"]
        await store.report("w", [JobUpdate("a", claim.gateway_request_id, events=[{"type": "progress", "step": 3}])])
        snap3 = await store.watch("a", snap2.version, 1.0, snap2.event_seq, snap2.log_total, True)
        assert snap3 is not None and [e["step"] for e in snap3.events] == [3] and snap3.logs == []
        assert await store.watch("nope", 0, 0.01) is None
        await store.close()

    run(main)


def test_journal_restores_jobs_across_store_restarts(tmp_path: Path) -> None:
    config = settings(journal_dir=str(tmp_path))

    async def first_life() -> None:
        store = JobStore(config, name="app/1")
        for name in ("a", "b", "c"):
            await store.submit(job(name))
        (claim_a, _claim_b) = (await store.poll("w", 0.01)).jobs
        await store.finish("w", ok(claim_a.request_id, claim_a.gateway_request_id, {"done": "a"}))
        await store.close()

    async def second_life() -> None:
        store = JobStore(config, name="app/1")
        view = await store.result("a")
        assert view is not None and view.body == {"done": "a"}
        assert (await store.status("b"))["status"] == "IN_PROGRESS"  # type: ignore[index]  # its runner gets a lease
        assert (await store.status("c"))["queue_position"] == 0  # type: ignore[index]
        await store.close()

    run(first_life)
    path = tmp_path / "app_1.jsonl"
    with path.open("a") as f:
        f.write('{"request_id": "torn", "sta')  # a crash mid-write
    run(second_life)
    assert set(replay(path)) == {"a", "b", "c"}


def make_sender(calls: list[httpx.Request], answers: list[int]) -> WebhookSender:
    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request)
        return httpx.Response(answers.pop(0) if answers else 200)

    return WebhookSender(WebhookSettings(secret_env=SECRET_ENV, backoff_s=0.05), httpx.MockTransport(handler))


def test_webhook_is_signed_and_retried_after_a_failed_delivery(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(SECRET_ENV, "s3cret")
    calls: list[httpx.Request] = []

    async def main() -> None:
        store = JobStore(settings(), sender=make_sender(calls, [500]))
        await store.submit(job("a", webhook="https://hooks.example/x"))
        (claim,) = (await store.poll("w", 0.01)).jobs
        await store.finish("w", ok("a", claim.gateway_request_id, {"images": []}))
        for _ in range(100):
            if len(calls) == 2:
                break
            await asyncio.sleep(0.02)
        await store.close()

    run(main)
    assert len(calls) == 2  # one failure, one retry
    body = json.loads(calls[1].content)
    assert body == {"request_id": "a", "gateway_request_id": "a", "status": "OK", "payload": {"images": []},
                    "error": None}
    assert verify(b"s3cret", dict(calls[1].headers), calls[1].content)
    assert not verify(b"wrong", dict(calls[1].headers), calls[1].content)
    h = calls[1].headers
    expected = signature(b"s3cret", "a", "anonymous", h["x-fal-webhook-timestamp"], calls[1].content)
    assert h[SIGNATURE_HEADER] == expected and h["x-fal-webhook-request-id"] == "a"


def test_webhook_error_payload_and_missing_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    failed = job("x", webhook="https://h/")
    failed.start("w", "x", 1.0)
    failed.fail(422, [{"loc": ["body", "n"], "msg": "bad", "type": "value_error"}], "validation_error", 0.1, 2.0)
    payload = webhook_payload(failed)
    assert payload["status"] == "ERROR" and payload["error"] == "Invalid status code: 422"
    assert payload["payload"] == {"detail": [{"loc": ["body", "n"], "msg": "bad", "type": "value_error"}]}
    assert failed.state == JobState.FAILED
    monkeypatch.delenv(SECRET_ENV, raising=False)
    with pytest.raises(ValueError, match=SECRET_ENV):
        WebhookSettings(secret_env=SECRET_ENV).secret()


def test_api_key_check(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SERVE_APP_TEST_KEYS", "team:abc, other")
    keys = api_keys_from_env(["SERVE_APP_TEST_KEYS"])
    assert keys == ["team:abc", "other"]
    auth = ApiKeyAuth(keys)
    app = FastAPI()

    @app.get("/x")
    def x(request: Request) -> dict[str, str]:
        return {"user": auth(request)}

    client = TestClient(app, raise_server_exceptions=False)
    assert client.get("/x", headers={"Authorization": "Key team:abc"}).json() == {"user": "team"}
    assert client.get("/x", headers={"Authorization": "Key other"}).json() == {"user": user_id_for("other")}
    assert client.get("/x").status_code == 401
    assert client.get("/x", headers={"Authorization": "Key nope"}).status_code == 401
    assert client.get("/x", headers={"Authorization": "Bearer team:abc"}).status_code == 401
    assert ApiKeyAuth([])(None) == "anonymous"  # type: ignore[arg-type]
    monkeypatch.delenv("SERVE_APP_TEST_KEYS")
    with pytest.raises(ValueError, match="SERVE_APP_TEST_KEYS"):
        api_keys_from_env(["SERVE_APP_TEST_KEYS"])
