"""Issue 21 without Ray: the input guard (body size, invalid Unicode, strict types), /files headers
and names, queue ownership and byte bounds, load-shedding options, request ids in logs, pixel and
decode bounds, and the rank actor's loopback-only rendezvous with in-place regrouping."""

from __future__ import annotations

import asyncio
import io
import json
import multiprocessing
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any

import pytest
from fastapi import Body, FastAPI
from fastapi.testclient import TestClient
from pydantic import BaseModel, Field

from serve_app.app import ScalingConfig, build_app, capacity
from serve_app.auth import ApiKeyAuth
from serve_app.errors import FieldError, Overloaded
from serve_app.http import error_response
from serve_app.ingress.middleware import install_input_guard
from serve_app.limits import check_pixels, open_image
from serve_app.queue.client import StoreClient
from serve_app.queue.messages import Claim, PayloadTooLarge, QueueFull
from serve_app.queue.settings import QueueSettings
from serve_app.queue.state import Job
from serve_app.queue.store import JobStore
from serve_app.queue.webhooks import WebhookRefused, WebhookSender
from serve_app.storage import LocalStore, materialize, safe_name
from serve_app.tracing import current_request_id


# ----------------------------------------------------------------------------------- the input guard
class Prompted(BaseModel):
    prompt: str = Field(max_length=100)
    seed: int | None = None
    guidance_scale: float = 1.0
    enable_safety_checker: bool = True
    loras: list[dict[str, str]] = []


def guarded_app(max_body_bytes: int = 10_000) -> TestClient:
    app = FastAPI()

    @app.post("/m")
    async def model_route(body: Annotated[Prompted, Body()]) -> dict[str, Any]:
        return body.model_dump()

    install_input_guard(app, max_body_bytes)
    return TestClient(app)


def post_raw(http: TestClient, raw: str) -> Any:
    return http.post("/m", content=raw.encode(), headers={"content-type": "application/json"})


def test_a_lone_surrogate_is_a_422_naming_the_field() -> None:
    """21.2: `"\\ud800"` reached tokenizers and the response encoder (a 500)."""
    http = guarded_app()
    r = post_raw(http, '{"prompt": "a cat \\ud800"}')
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "prompt"]
    r = post_raw(http, '{"prompt": "x", "loras": [{"path": "\\udfff"}]}')
    assert r.json()["detail"][0]["loc"] == ["body", "loras", 0, "path"]
    ok = post_raw(http, '{"prompt": "a cat \\ud83d\\ude00"}')  # a real pair: an emoji
    assert ok.status_code == 200 and ok.json()["prompt"] == "a cat \U0001F600"


def test_numbers_and_booleans_are_strict() -> None:
    """21.12: `seed: false` was coerced to 0."""
    http = guarded_app()
    for body, field in (({"prompt": "x", "seed": False}, "seed"), ({"prompt": "x", "seed": 1.5}, "seed"),
                        ({"prompt": "x", "enable_safety_checker": "true"}, "enable_safety_checker"),
                        ({"prompt": 5}, "prompt")):
        r = http.post("/m", json=body)
        assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", field], body
    assert http.post("/m", json={"prompt": "x", "seed": 3, "guidance_scale": 2}).status_code == 200  # int for float


def test_request_bodies_are_bounded() -> None:
    """21.3: a 50 MB prompt was accepted."""
    http = guarded_app(max_body_bytes=2000)
    r = http.post("/m", json={"prompt": "x" * 5000})
    assert r.status_code == 413 and "2000" in r.json()["detail"] and r.headers["x-fal-billable-units"] == "0"

    def chunks() -> Iterator[bytes]:  # no content-length: counted while reading
        yield b'{"prompt": "'
        for _ in range(30):
            yield b"y" * 100
        yield b'"}'

    assert http.post("/m", content=chunks(), headers={"content-type": "application/json"}).status_code == 413
    assert http.post("/m", json={"prompt": "z" * 101}).status_code == 422  # the field's own bound


# ----------------------------------------------------------------------------------- /files
def upload_app(tmp_path: Path) -> TestClient:
    from serve_app.ingress import Dispatcher, IngressSettings, create_app

    storage = {"kind": "local", "directory": str(tmp_path)}
    return TestClient(create_app(Dispatcher([], IngressSettings(storage=storage))))  # type: ignore[arg-type]


def test_uploaded_html_and_svg_download_as_attachments(tmp_path: Path) -> None:
    """21.5: an uploaded page was served as text/html from the API's origin (stored XSS)."""
    with upload_app(tmp_path) as http:
        for name, content_type in (("x.html", "text/html"), ("x.svg", "image/svg+xml")):
            up = http.post(f"/files?file_name={name}", content=b"<script>alert(1)</script>",
                           headers={"content-type": content_type}).json()
            r = http.get(up["url"])
            assert r.status_code == 200 and r.headers["x-content-type-options"] == "nosniff"
            assert r.headers["content-disposition"] == f'attachment; filename="{name}"'
            assert "sandbox" in r.headers["content-security-policy"]
        image = http.post("/files?file_name=cat.png", content=b"\x89PNG", headers={"content-type": "image/png"}).json()
        r = http.get(image["url"])
        assert r.headers["content-disposition"] == 'inline; filename="cat.png"'
        assert r.headers["content-type"] == "image/png"


def test_file_names_match_their_urls_and_keep_real_extensions(tmp_path: Path) -> None:
    """18.8: `file_name` is the URL's last segment; `.safetensors` stays `.safetensors`."""
    store = LocalStore(tmp_path)

    class Out(BaseModel):
        data: Any
        weights: Any

    out = Out(data=_file(b"x", "application/octet-stream", "preprocessed.safetensors"),
              weights=_file(b"y", "application/safetensors", None))
    asyncio.run(materialize(out, store, "http://h/"))
    for f in (out.data, out.weights):
        assert f.url.rsplit("/", 1)[1] == f.file_name and f.file_name.endswith(".safetensors")
        assert f.content_type == "application/safetensors"
    assert out.data.file_name == "preprocessed.safetensors"
    assert safe_name("../../etc/pass wd", "text/plain") == "pass_wd.txt"
    assert safe_name("", "image/png") == "file.png" and len(safe_name("a" * 500 + ".zip", "")) == 128


def _file(data: bytes, content_type: str, name: str | None) -> Any:
    from serve_app.io import File

    f = File.from_bytes(data, content_type, name)
    if name is None:
        f.file_name = None
    return f


def test_the_store_refuses_symlinked_or_shared_directories(tmp_path: Path) -> None:
    """21.6 (already in the store): a symlinked or group-writable directory is refused; 0700."""
    real = tmp_path / "real"
    store = LocalStore(real)
    assert (real.stat().st_mode & 0o777) == 0o700 and store.directory == real
    link = tmp_path / "link"
    link.symlink_to(real)
    with pytest.raises(ValueError, match="symlink"):
        LocalStore(link)
    shared = tmp_path / "shared"
    shared.mkdir(mode=0o777)
    shared.chmod(0o777)
    with pytest.raises(ValueError, match="writable by other users"):
        LocalStore(shared)


# ----------------------------------------------------------------------------------- the queue
def job(request_id: str, owner: str = "", payload_bytes: int = 10, webhook: str | None = None) -> Job:
    return Job(request_id=request_id, service="svc", path="/svc", payload={"x": 1}, base_url="http://h/",
               response_url=f"http://h/queue/svc/requests/{request_id}", created_at=time.time(), owner=owner,
               payload_bytes=payload_bytes, webhook_url=webhook)


def test_only_the_submitting_key_sees_its_job() -> None:
    """21.11: any valid key could read or cancel any job."""
    auth = ApiKeyAuth(["alice:one", "bob:two"])
    alice, bob = auth.identify("Key alice:one"), auth.identify("Key bob:two")
    assert alice.owner != bob.owner and "one" not in alice.owner and alice.user_id == "alice"

    async def scenario() -> None:
        store = JobStore(QueueSettings())
        await store.submit(job("a", owner=alice.owner))
        assert await store.status("a", owner=bob.owner) is None
        assert await store.result("a", owner=bob.owner) is None
        assert await store.cancel("a", owner=bob.owner) == "NOT_FOUND"
        assert await store.watch("a", -1, 0.01, owner=bob.owner) is None
        assert (await store.status("a", owner=alice.owner) or {})["status"] == "IN_QUEUE"
        assert await store.cancel("a", owner=alice.owner) == "OK"
        await store.close()

    asyncio.run(scenario())


def test_queue_bytes_are_bounded_and_inputs_dropped_when_done() -> None:
    """21.3: the store kept every payload for 24 h with no bound (three 50 MB jobs: 111 -> 462 MB)."""
    settings = QueueSettings(max_payload_bytes=1000, max_total_bytes=2500)

    async def scenario() -> None:
        store = JobStore(settings)
        with pytest.raises(PayloadTooLarge):
            await store.submit(job("big", payload_bytes=1001))
        await store.submit(job("a", payload_bytes=1000))
        await store.submit(job("b", payload_bytes=1000))
        with pytest.raises(QueueFull):
            await store.submit(job("c", payload_bytes=1000))  # 3000 > 2500
        (claim, _) = (await store.poll("w", 0.01)).jobs
        from serve_app.queue.messages import Outcome

        await store.finish("w", Outcome(claim.request_id, claim.gateway_request_id, "succeeded", {"ok": 1}))
        assert store._jobs["a"].payload == {} and (await store.stats())["bytes"] == 1000 + len('{"ok":1}')
        await store.submit(job("c", payload_bytes=1000))  # room again
        await store.close()

    asyncio.run(scenario())


def test_submissions_are_batched_into_one_store_call() -> None:
    calls: list[int] = []

    class Counting(JobStore):
        async def submit_many(self, jobs: list[Job]) -> list[Any]:
            calls.append(len(jobs))
            await asyncio.sleep(0.01)
            return await super().submit_many(jobs)

    async def scenario() -> None:
        store = Counting(QueueSettings())
        client = StoreClient(store, timeout_s=5)
        positions = await asyncio.gather(*(client.submit(job(f"j{i}")) for i in range(50)))
        assert sorted(positions) == list(range(50))
        assert len(calls) <= 3 and sum(calls) == 50  # one call for the first, the rest together
        with pytest.raises(ValueError, match="duplicate"):
            await client.submit(job("j1"))
        await store.close()

    asyncio.run(scenario())


def test_webhooks_to_internal_addresses_are_refused_once() -> None:
    """21.1: the job store posted to the dashboard's API."""
    from serve_app.queue.settings import WebhookSettings

    async def scenario() -> None:
        sender = WebhookSender(WebhookSettings())
        done = job("w", webhook="http://127.0.0.1:8265/api/jobs/")
        done.start("x", "w", 1.0)
        done.succeed({}, 1.0, 0.1, 2.0)
        with pytest.raises(WebhookRefused):
            await sender.deliver(done)
        await sender.aclose()
        store = JobStore(QueueSettings())
        store._jobs["w"] = done
        await store._deliver_webhook("w", 0.0)
        assert done.webhook_done and done.webhook_attempts == 0  # given up at once: not retried
        await store.close()

    asyncio.run(scenario())


def test_max_running_defaults_to_the_deployments_capacity() -> None:
    """18.7: with max_running 8 and one replica, 7 jobs read IN_PROGRESS while waiting inside Serve."""
    settings = QueueSettings(capacity={"one": 1, "ten": 10}, services={"own": {"max_running": 3}})  # type: ignore[arg-type]
    assert (settings.max_running("one"), settings.max_running("ten"), settings.max_running("own"),
            settings.max_running("unknown")) == (1, 10, 3, 8)
    assert capacity({"max_ongoing_requests": 1, "autoscaling_config": {"max_replicas": 4}}) == 4
    assert capacity({"max_ongoing_requests": 2, "num_replicas": 3}) == 6
    app = build_app({"services": {"b": {"module": "tests.app.fixtures.behaviours",
                                        "scaling": {"min_concurrency": 1, "max_concurrency": 1}}}})
    settings = app._bound_deployment.init_args[1]  # what the Ingress is bound with
    assert settings.queue.max_running("b") == 1


def test_runner_calls_carry_the_clients_request_id() -> None:
    """18.7: the fal request id appeared in no log of a queued job; Serve stamps its context's id."""
    from serve_app.queue.runner import QueueRunner

    seen: list[str] = []

    class Dispatch:
        routes: list[Any] = []
        settings = type("S", (), {"heartbeat_s": 1.0})()

        def lookup(self, path: str) -> Any:
            return None, type("Spec", (), {"stream": False})()

        async def run(self, *args: Any, **kwargs: Any) -> tuple[dict[str, Any], float, dict[str, float]]:
            seen.append(current_request_id())
            return {}, 1.0, {}

    async def scenario() -> None:
        runner = QueueRunner(None, Dispatch(), QueueSettings())  # type: ignore[arg-type]
        outcome = await runner._run(Claim("req-123", "req-123", "/svc", {}, "http://h/", 1))
        assert outcome.kind == "succeeded"

    asyncio.run(scenario())
    assert seen == ["req-123"]


# ----------------------------------------------------------------------------------- load shedding
def test_scaling_sets_serves_queue_cap_and_fixed_sizes() -> None:
    """21.4: dev had no queue cap: 200 concurrent requests all waited."""
    fixed = ScalingConfig(min_concurrency=1, max_concurrency=1, max_queued_requests=8, request_timeout_s=60)
    assert fixed.deployment_options() == {"max_queued_requests": 8, "num_replicas": 1}
    assert ScalingConfig(max_concurrency=2, max_multiplexing=3).deployment_options()["max_queued_requests"] == 24


def test_shed_requests_say_when_to_retry() -> None:
    class BackPressureError(Exception):
        retry_after_s = 2.5

    for exc in (BackPressureError(), Overloaded()):
        r = error_response(exc, "rid")
        assert r.status_code == 503 and int(r.headers["retry-after"]) >= 1
    assert error_response(BackPressureError(), "rid").headers["retry-after"] == "3"
    assert json.loads(bytes(error_response(RuntimeError("secret"), "rid").body))["detail"] == "Internal Server Error"


# ----------------------------------------------------------------------------------- pixels, decoding
def test_pixels_per_request_are_bounded() -> None:
    check_pixels(1024, 1024, 4, 4 * 1024 * 1024)
    with pytest.raises(FieldError) as e:
        check_pixels(14142, 14142, 4, 4096 * 4096 * 4, field="image_size")
    assert e.value.field == "image_size"


def test_image_size_is_checked_before_decoding() -> None:
    """21.7: a 3.5 KB ZIP of huge PNGs cost 11 s of CPU to decode."""
    from PIL import Image

    buf = io.BytesIO()
    Image.new("1", (20000, 20000)).save(buf, format="PNG")
    data = buf.getvalue()
    assert len(data) < 100_000
    started = time.monotonic()
    with pytest.raises(FieldError, match="larger than the limit"):
        open_image(data, 4096 * 4096, "images_data_url")
    assert time.monotonic() - started < 0.5
    small = io.BytesIO()
    Image.new("RGB", (8, 8)).save(small, format="PNG")
    assert open_image(small.getvalue(), 100, "f").size == (8, 8)


# ----------------------------------------------------------------------------------- rank actors
def _rank(rank: int, port_queue: Any, results: Any, fail: bool) -> None:
    import os
    import threading

    import psutil

    from serve_app.distributed.rank import RankActor
    from tests.app.fixtures.workers import FailingWorker

    actor = RankActor(FailingWorker, rank, 2)
    if rank == 0:
        port = actor.open_rendezvous("127.0.0.1")
        port_queue.put(port)
    else:
        port = port_queue.get(timeout=30)
    actor.setup("127.0.0.1", port, "gloo", 60.0, None, {})
    listening = {c.laddr.ip for c in psutil.Process(os.getpid()).net_connections("inet") if c.status == "LISTEN"}
    worker = actor.worker
    outcome: list[str] = []

    def call() -> None:
        try:
            actor.call({"before_collective": True}, False)
            outcome.append("returned")
        except Exception as e:
            outcome.append(type(e).__name__)

    thread = threading.Thread(target=call)
    thread.start()
    time.sleep(1.0)  # rank 1 raised at once; rank 0 waits in all_reduce
    actor.abort()
    thread.join(15)
    if rank == 0:
        port = actor.open_rendezvous("127.0.0.1")
        port_queue.put(port)
    else:
        port = port_queue.get(timeout=30)
    actor.regroup("127.0.0.1", port, "gloo", 30.0)
    import torch
    import torch.distributed as dist

    t = torch.ones(1)
    dist.all_reduce(t)
    results.put((rank, sorted(listening), outcome, thread.is_alive(), actor.worker is worker, float(t.item())))
    actor.teardown()


def test_rank_sockets_listen_on_loopback_and_a_stuck_group_regroups_in_place() -> None:
    """21.8: rendezvous ports listened on all interfaces. 21.13: a failed call broke the group for good."""
    ctx = multiprocessing.get_context("spawn")
    port_queue, results = ctx.Queue(), ctx.Queue()
    procs = [ctx.Process(target=_rank, args=(r, port_queue, results, r == 1)) for r in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    got = sorted(results.get(timeout=5) for _ in range(2))
    for _, listening, outcome, stuck, same_worker, total in got:
        assert listening and set(listening) <= {"127.0.0.1"}, listening  # store + gloo pairs: loopback only
        assert not stuck and same_worker and total == 2.0
        assert outcome == ["RankFailed"]  # rank 1 raised; rank 0's collective was aborted


def test_workers_with_state_from_the_old_group_are_not_regrouped_blindly() -> None:
    """A worker that made subgroups (xfuser) or wraps DDP (the trainer) and has no `regroup()` would
    fail on a re-formed group: the runner replaces the replica for it instead."""
    from serve_app.distributed import DistributedWorker
    from serve_app.distributed.rank import bound_to_group

    class Plain(DistributedWorker):
        pass

    class Rebuilds(DistributedWorker):
        def regroup(self) -> None:
            self.rebuilt = True

    assert bound_to_group(Plain(0, 2), 1) is None
    assert bound_to_group(Plain(0, 2), 4) == "3 subgroup(s)"
    assert bound_to_group(Rebuilds(0, 2), 4) is None
