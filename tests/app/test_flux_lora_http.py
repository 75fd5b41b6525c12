"""Flux with LoRAs on Ray Serve: two replicas in a fixture app of their own show Serve's multiplexed
routing (every later request for a LoRA set goes to the replica that downloaded it: each file is
fetched once), the stream and the 422 over HTTP; then, on the dev.yaml app, a LoRA trained by
`/flux-train` is served by `/flux-lora` straight from its checkpoint URL."""

from __future__ import annotations

import base64
import http.server
import io
import json
import threading
import time
import zipfile
from collections import Counter
from collections.abc import Iterator
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image

from tests.app.conftest import FIXTURE_PREFIX
from tests.unit.test_flux_lora_t2i import data_url, trainer_lora

MUX_APP, MUX_PREFIX = "flux_multiplexing", "/fm"
FLUX = {"module": "deployments.flux", "route_prefix": "/",
        "config": {"model": {"preset": "tiny"}, "safety_checker": {"preset": "tiny"}, "device": "cpu",
                   "max_sequence_length": 16, "warmup": {"enabled": False},
                   "loras": {"allow": ["127.0.0.1"]}},  # the test's file server; loopback is refused otherwise
        "deployment": {"num_replicas": 2, "ray_actor_options": {"num_cpus": 0.05}}}
GEN = {"prompt": "a photo of sks", "image_size": {"width": 64, "height": 64}, "num_inference_steps": 2, "seed": 3,
       "output_format": "png", "enable_safety_checker": False}


class FileServer:
    """Serves files on a free loopback port and counts the downloads of each."""

    def __init__(self, files: dict[str, bytes]) -> None:
        self.downloads: Counter[str] = Counter()
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                name = self.path.lstrip("/")
                server.downloads[name] += 1
                self.send_response(200 if name in files else 404)
                self.send_header("Content-Length", str(len(files.get(name, b""))))
                self.end_headers()
                self.wfile.write(files.get(name, b""))

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/{name}"

    def __enter__(self) -> FileServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture(scope="module")
def mux_url(serve_url: str) -> Iterator[str]:
    from ray import serve

    from serve_app.app import build_app

    assert MUX_PREFIX != FIXTURE_PREFIX
    args = {"ingress": {"storage": {"kind": "data_url"}}, "services": {"flux": FLUX},
            "ingress_deployment": {"ray_actor_options": {"num_cpus": 0.05}}}
    serve.run(build_app(args), name=MUX_APP, route_prefix=MUX_PREFIX)
    yield f"{serve_url}{MUX_PREFIX}"
    serve.delete(MUX_APP)


def image(client: httpx.Client, body: dict[str, Any]) -> np.ndarray:
    (out,) = body["images"]
    url = out["url"]
    data = base64.b64decode(url.split(",", 1)[1]) if url.startswith("data:") else client.get(url).content
    return np.asarray(Image.open(io.BytesIO(data)))


def test_each_lora_set_is_routed_to_the_replica_that_loaded_it(mux_url: str) -> None:
    files = {"a.safetensors": trainer_lora(1), "b.safetensors": trainer_lora(2)}
    with FileServer(files) as server, httpx.Client(timeout=300) as client:
        seen: dict[str, list[float]] = {name: [] for name in files}
        for _ in range(4):
            for name in files:
                r = client.post(f"{mux_url}/flux-lora", json={**GEN, "loras": [{"path": server.url(name)}]})
                assert r.status_code == 200, r.text
                seen[name].append(r.json()["timings"]["lora_loading"])
                time.sleep(0.5)  # the replica reports the set it loaded (every 0.1 s) to Serve's router
    # Four requests per set over two replicas: any request on the other replica would download again.
    assert server.downloads == Counter({"a.safetensors": 1, "b.safetensors": 1})
    assert all(max(times[1:]) < times[0] for times in seen.values())  # later requests found them loaded


def test_stream_and_errors_over_http(mux_url: str) -> None:
    with httpx.Client(timeout=300) as client:
        body = {**GEN, "num_inference_steps": 3, "loras": [{"path": data_url(trainer_lora(1)), "scale": 0.5}]}
        with client.stream("POST", f"{mux_url}/flux-lora/stream", json=body) as r:
            assert r.status_code == 200
            frames = [json.loads(x[6:]) for x in r.iter_lines() if x.startswith("data: ")]
        steps = [f["step"] for f in frames if f.get("type") == "progress"]
        assert steps == [1, 2, 3] and len(frames[-1]["images"]) == 1
        r = client.post(f"{mux_url}/flux-lora", json={**GEN, "loras": [{"path": data_url(b"PK\x03\x04 a pickle")}]})
        assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "loras"], r.text
        assert r.headers["x-fal-billable-units"] == "0"
        r = client.post(f"{mux_url}/flux/dev", json={**GEN, "image_size": "square_hd", "num_inference_steps": 1})
        assert r.status_code == 200 and r.headers["x-fal-billable-units"] == "1", r.text


def test_sync_mode_answers_the_image_inline(client: httpx.Client) -> None:
    """fal's `sync_mode`: the dev app stores outputs as files to download; with it, the same image
    comes inside the response as a data URI."""
    stored = client.post("/flux/dev", json=GEN)
    inline = client.post("/flux/dev", json={**GEN, "sync_mode": True})
    assert stored.status_code == inline.status_code == 200, inline.text
    url, data = stored.json()["images"][0]["url"], inline.json()["images"][0]["url"]
    assert url.startswith("http") and data.startswith("data:image/png;base64,")
    downloaded = client.get(url)
    assert downloaded.status_code == 200
    assert base64.b64decode(data.split(",", 1)[1]) == downloaded.content  # same seed, same bytes


def image_zip() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for i, color in enumerate([(200, 10, 10), (10, 200, 10), (10, 10, 200)]):
            im = io.BytesIO()
            Image.new("RGB", (96, 80), color).save(im, format="PNG")
            zf.writestr(f"img{i}.png", im.getvalue())
    return buf.getvalue()


def test_a_lora_from_flux_train_is_served_from_its_checkpoint_url(client: httpx.Client) -> None:
    train = {"images_data_url": data_url(image_zip()), "trigger_word": "sks", "steps": 100, "resolution": 256,
             "batch_size": 2, "learning_rate": 1e-2}
    r = client.post("/flux-train", json=train, timeout=900)
    assert r.status_code == 200, r.text
    checkpoint = r.json()["checkpoint"]["url"]
    base = client.post("/flux-lora", json=GEN)
    trained = client.post("/flux-lora", json={**GEN, "loras": [{"path": checkpoint, "scale": 1.0}]})
    assert base.status_code == trained.status_code == 200, trained.text
    assert np.abs(image(client, trained.json()).astype(int) - image(client, base.json())).max() > 0
    again = client.post("/flux/dev", json=GEN)  # the LoRA does not stay on for requests without it
    assert np.array_equal(image(client, again.json()), image(client, base.json()))
