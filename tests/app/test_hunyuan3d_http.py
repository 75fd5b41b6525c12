"""The Hunyuan3D proxy deployed on Ray Serve, pointed at a local fake of fal's queue through the
environment fal-client reads (FAL_QUEUE_RUN_HOST, FAL_KEY) and SSL_CERT_FILE for the fake's CA."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.fakes.fal_queue import API_KEY, FalQueueFake

PREFIX = "/h3d"


@pytest.fixture(scope="module")
def proxy(serve_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[FalQueueFake]:
    from ray import serve

    from serve_app.app import build_app

    fake = FalQueueFake(tmp_path_factory.mktemp("fal")).start()
    env = {"FAL_KEY": API_KEY, "FAL_QUEUE_RUN_HOST": fake.host, "SSL_CERT_FILE": str(fake.ca_path)}
    args = {
        "ingress": {"storage": {"kind": "data_url"}},
        "ingress_deployment": {"ray_actor_options": {"num_cpus": 0.05}},
        "services": {"hunyuan3d": {
            "module": "deployments.hunyuan3d",
            "config": {"poll_interval_s": 0.05},
            "deployment": {"ray_actor_options": {"num_cpus": 0.05, "runtime_env": {"env_vars": env}}},
        }},
    }
    serve.run(build_app(args), name="hunyuan3d-fake", route_prefix=PREFIX)
    yield fake
    serve.delete("hunyuan3d-fake")
    fake.stop()


def post(client: httpx.Client, path: str, image: str) -> httpx.Response:
    return client.post(f"{PREFIX}/hunyuan3d/v2/mini/turbo{path}",
                       json={"input_image_url": f"https://images.example/{image}", "seed": 3})


def test_proxy_returns_fals_mesh_url_and_seed(client: httpx.Client, proxy: FalQueueFake) -> None:
    r = post(client, "", "cat.png")
    assert r.status_code == 200, r.text
    assert r.json() == {"model_mesh": {"url": f"{proxy.base_url}/files/mesh.glb", "content_type": "model/gltf-binary",
                                       "file_name": "mesh.glb", "file_size": 64}, "seed": 3}
    assert r.headers["x-fal-billable-units"] == "1"
    assert proxy.submissions[-1] == ("fal-ai/hunyuan3d/v2/mini/turbo", f"Key {API_KEY}")


def test_proxy_streams_the_upstream_queue(client: httpx.Client, proxy: FalQueueFake) -> None:
    with client.stream("POST", f"{PREFIX}/hunyuan3d/v2/mini/turbo/stream",
                       json={"input_image_url": "https://images.example/dog.png"}) as r:
        assert r.status_code == 200
        events: list[dict[str, Any]] = [json.loads(line[6:]) for line in r.iter_lines() if line.startswith("data: ")]
    updates = [(e["status"], e["queue_position"]) for e in events if e.get("type") == "queue_update"]
    assert updates[:2] == [("IN_QUEUE", 1), ("IN_QUEUE", 0)] and updates[-1] == ("COMPLETED", None)
    logs = [log["message"] for e in events if e.get("type") == "queue_update" for log in e["logs"]]
    assert logs == ["loading image", "generating mesh"]
    assert events[-1]["model_mesh"]["url"].endswith("/files/mesh.glb")


def test_upstream_user_error_is_422_with_fals_detail(client: httpx.Client, proxy: FalQueueFake) -> None:
    r = post(client, "", "user-error.png")
    assert r.status_code == 422, r.text
    assert r.json()["detail"][0]["loc"] == ["body", "input_image_url"]
    assert r.headers["x-fal-billable-units"] == "0"
    assert post(client, "", "server-error.png").status_code == 502
