"""The Hunyuan3D proxy against a local fake of fal's queue (no Ray): the output, queue events,
error mapping, time-outs, cancellation, and the missing key."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from deployments.hunyuan3d import Hunyuan3DConfig, Hunyuan3DInput, Hunyuan3DService, build
from serve_app.app import ServiceArgs
from serve_app.errors import RequestTimeout, ServiceUnavailable, UpstreamError, to_http
from serve_app.events import Partial
from serve_app.service import RequestInfo, RunContext
from tests.fakes.fal_queue import API_KEY, MESH, FalQueueFake

APPLICATION = "fal-ai/hunyuan3d/v2/mini/turbo"


@pytest.fixture(scope="module")
def fal_fake(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FalQueueFake]:
    fake = FalQueueFake(tmp_path_factory.mktemp("fal")).start()
    yield fake
    fake.stop()


@pytest.fixture
def upstream(fal_fake: FalQueueFake, monkeypatch: pytest.MonkeyPatch) -> FalQueueFake:
    import fal_client.client

    # What FAL_QUEUE_RUN_HOST sets when fal_client is first imported (the app test sets the variable).
    monkeypatch.setattr(fal_client.client, "QUEUE_URL_FORMAT", f"{fal_fake.base_url}/")
    monkeypatch.setenv("SSL_CERT_FILE", str(fal_fake.ca_path))
    monkeypatch.setenv("FAL_KEY", API_KEY)
    return fal_fake


def make_service(**config: Any) -> Hunyuan3DService:
    return Hunyuan3DService(Hunyuan3DConfig(poll_interval_s=0.01, **config))


def image(behaviour: str = "ok") -> str:
    return f"https://images.example/{uuid.uuid4().hex}/{behaviour}.png"


def test_success_relays_queue_events_and_passes_the_mesh_url_through(upstream: FalQueueFake) -> None:
    events: list[Any] = []
    request = Hunyuan3DInput(input_image_url=image(), seed=0, textured_mesh=True)
    out = asyncio.run(make_service().mini_turbo(request, RunContext("r", emit=events.append)))
    assert out.seed == 0  # 0 is a real seed
    assert out.model_mesh.url == f"{upstream.base_url}/files/mesh.glb" and out.model_mesh.data is None
    assert out.model_mesh.content_type == "model/gltf-binary"
    path, auth = upstream.submissions[-1]
    assert path == APPLICATION and auth == f"Key {API_KEY}"
    (sent,) = [r.arguments for r in upstream.requests.values() if r.arguments["input_image_url"] ==
               request.input_image_url]
    assert sent == {"input_image_url": request.input_image_url, "textured_mesh": True, "seed": 0,
                    "num_inference_steps": 50, "guidance_scale": 7.5, "octree_resolution": 256}
    assert all(isinstance(e, Partial) and e.kind == "queue_update" for e in events)
    frames = [(e.data.status, e.data.queue_position, [log["message"] for log in e.data.logs]) for e in events]
    assert frames == [("IN_QUEUE", 1, []), ("IN_QUEUE", 0, []), ("IN_PROGRESS", None, ["loading image"]),
                      ("IN_PROGRESS", None, ["generating mesh"]), ("COMPLETED", None, [])]
    assert {e.data.upstream_request_id for e in events} <= set(upstream.requests)


def test_seed_left_out_is_not_sent(upstream: FalQueueFake) -> None:
    request = Hunyuan3DInput(input_image_url=image())
    out = asyncio.run(make_service().mini_turbo(request))
    (sent,) = [r.arguments for r in upstream.requests.values() if r.arguments["input_image_url"] ==
               request.input_image_url]
    assert "seed" not in sent and out.seed == 1234  # the seed upstream picked


def test_rehost_downloads_the_mesh_into_our_store(upstream: FalQueueFake) -> None:
    out = asyncio.run(make_service(rehost_mesh=True).mini_turbo(Hunyuan3DInput(input_image_url=image())))
    assert out.model_mesh.data == MESH and out.model_mesh.url == ""  # the ingress stores it and fills url
    assert out.model_mesh.file_name == "mesh.glb" and out.model_mesh.file_size == len(MESH)
    with pytest.raises(UpstreamError, match="max_mesh_bytes"):
        asyncio.run(make_service(rehost_mesh=True, max_mesh_bytes=8).mini_turbo(
            Hunyuan3DInput(input_image_url=image())))


def test_upstream_user_error_keeps_its_status_and_detail(upstream: FalQueueFake) -> None:
    with pytest.raises(Exception) as e:
        asyncio.run(make_service().mini_turbo(Hunyuan3DInput(input_image_url=image("user-error"))))
    status, detail = to_http(e.value)
    assert status == 422
    assert detail == [{"loc": ["body", "input_image_url"], "msg": "Could not load the image.",
                       "type": "image_load_error"}]


def test_upstream_failure_is_502(upstream: FalQueueFake) -> None:
    with pytest.raises(UpstreamError) as e:
        asyncio.run(make_service().mini_turbo(Hunyuan3DInput(input_image_url=image("server-error"))))
    assert to_http(e.value)[0] == 502


def test_a_rejected_key_is_502_not_the_callers_fault(upstream: FalQueueFake,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAL_KEY", "wrong")
    with pytest.raises(UpstreamError, match="API key"):
        asyncio.run(make_service().mini_turbo(Hunyuan3DInput(input_image_url=image())))


def test_timeout_is_504_and_cancels_upstream(upstream: FalQueueFake) -> None:
    request = Hunyuan3DInput(input_image_url=image("slow"))
    with pytest.raises(RequestTimeout) as e:
        asyncio.run(make_service(request_timeout_s=0.5).mini_turbo(request))
    assert to_http(e.value)[0] == 504
    (fake,) = [r for r in upstream.requests.values() if r.arguments["input_image_url"] == request.input_image_url]
    assert fake.cancelled


def test_caller_leaving_cancels_upstream(upstream: FalQueueFake) -> None:
    request = Hunyuan3DInput(input_image_url=image("slow"))

    async def leave_after_first_frame() -> Any:
        stream = make_service().stream_endpoint("mini_turbo", request, RequestInfo("r"))
        first = await stream.__anext__()
        await stream.aclose()  # what the ingress does when the client disconnects
        return first

    first = asyncio.run(leave_after_first_frame())
    assert first.kind == "queue_update" and first.data.status == "IN_QUEUE"
    (fake,) = [r for r in upstream.requests.values() if r.arguments["input_image_url"] == request.input_image_url]
    assert fake.cancelled


def test_missing_key_is_503_at_request_time_not_at_start(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FAL_KEY", raising=False)
    service = make_service()  # starts fine
    with pytest.raises(ServiceUnavailable, match="FAL_KEY") as e:
        asyncio.run(service.mini_turbo(Hunyuan3DInput(input_image_url=image())))
    assert to_http(e.value)[0] == 503


def test_inputs_follow_fal_and_the_deployment_only_waits() -> None:
    with pytest.raises(ValueError):
        Hunyuan3DInput.model_validate({})
    for bad in ({"num_inference_steps": 51}, {"guidance_scale": 21}, {"octree_resolution": 0}):
        with pytest.raises(ValueError):
            Hunyuan3DInput.model_validate({"input_image_url": "https://x/y.png", **bad})
    with pytest.raises(ValueError):
        Hunyuan3DConfig.model_validate({"api_key": "inline keys are not a config field"})
    assert Hunyuan3DService.concurrency_safe
    route = build("hunyuan3d", ServiceArgs(module="deployments.hunyuan3d"))
    assert route.prefix == "/hunyuan3d" and [s.route(route.prefix) for s in route.endpoints] == \
        ["/hunyuan3d/v2/mini/turbo"]
    assert Hunyuan3DService.deployment_defaults(Hunyuan3DConfig()) == {"max_ongoing_requests": 100}
