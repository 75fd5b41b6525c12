"""A new user's first hour, against the dev app started as the README says (`DevServer`): HTTPS from
the app itself with the dev certificate, the unmodified fal-client from a fresh shell, fal-style ids
on every route, Python handles and Serve's CLI from another process, one metrics scrape target, and
an OpenAPI document that describes streams, queue results, uploads and API keys.

The app runs in its own processes (its own Ray, token auth on, as `make run`), so it costs one
Ray start for the whole module."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydantic import TypeAdapter

from serve_app.ingress.docs import ProgressFrame, stream_frame_model
from tests.app.conftest import ROOT
from tests.app.first_hour_server import API_KEY, DevServer, fresh_env, run_python

SANA_ARGS = {"prompt": "a lighthouse at dusk", "image_size": "square", "num_inference_steps": 2, "seed": 7}
DASHBOARD = ROOT / "scripts" / "grafana" / "serve_app_dashboard.json"


@pytest.fixture(scope="module")
def app() -> Iterator[DevServer]:
    server = DevServer(tls=True, api_keys=True)
    try:
        server.start()
        yield server
    finally:
        server.stop()


def documented_fal_env(app: DevServer) -> dict[str, str]:
    """The variables `python -m serve_app.tls env` prints for fal-client (the README's step)."""
    out = run_python(f"from serve_app.tls import main; main(['env', '--port', '{app.port}', '--dir', "
                     f"'{app.tls_dir}'])", fresh_env(app.home))
    assert out.returncode == 0, out.stderr
    env = dict(re.findall(r"^export (\w+)=(\S+)", out.stdout, re.M))
    assert set(env) == {"FAL_RUN_HOST", "FAL_QUEUE_RUN_HOST", "SSL_CERT_FILE", "FAL_KEY"}
    return {**env, "FAL_KEY": API_KEY}


FAL_CLIENT_SCRIPT = """
import json, os, ssl
import fal_client, httpx
args = json.loads(os.environ["ARGS"])
handle = fal_client.submit("fal-ai/sana/sprint", arguments=args)
statuses = [type(s).__name__ for s in handle.iter_events(with_logs=True)]
queued = handle.get()
ran = fal_client.run("fal-ai/sana/sprint", arguments=args)
streamed = list(fal_client.stream("fal-ai/sana/sprint", arguments=args))
image = httpx.get(ran["images"][0]["url"], timeout=60)
public_cas = ssl.create_default_context(cafile=os.environ["SSL_CERT_FILE"]).cert_store_stats()["x509_ca"]
print(json.dumps({"statuses": statuses, "queued": queued, "ran": ran, "streamed": streamed,
                  "image": [image.status_code, image.headers.get("content-type"), image.content[:2].hex()],
                  "public_cas": public_cas}))
"""


def test_unmodified_fal_client_over_the_apps_own_https(app: DevServer) -> None:
    """Points 1 and 2: fal-client, as installed, with the documented variables only: queue (submit,
    status events, result), run() and stream() with fal-style ids; file URLs are https URLs of the
    app; the CA bundle still holds the public CAs."""
    env = fresh_env(app.home, ARGS=json.dumps(SANA_ARGS), **documented_fal_env(app))
    out = run_python(FAL_CLIENT_SCRIPT, env)
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["statuses"][-1] == "Completed"
    for output in (result["queued"], result["ran"], result["streamed"][-1]):
        assert output["seed"] == 7 and output["images"][0]["url"].startswith(f"{app.url}/files/")
    assert any(frame.get("type") == "progress" for frame in result["streamed"][:-1])
    assert result["image"] == [200, "image/jpeg", "ffd8"]
    assert result["public_cas"] > 100  # certifi's roots plus ours: nothing was replaced


def test_fal_style_ids_on_sync_and_stream_routes_and_a_real_404(app: DevServer) -> None:
    """Point 2 over plain HTTP: the owner alias works on the sync and SSE routes; an unknown stream
    path is a JSON 404, not an event stream."""
    with app.client() as http:
        sync = http.post("/fal-ai/sana/sprint", json=SANA_ARGS)
        assert sync.status_code == 200, sync.text
        assert sync.json()["images"][0]["width"] == 512
        with http.stream("POST", "/fal-ai/sana/sprint/stream", json=SANA_ARGS) as stream:
            assert stream.status_code == 200
            assert stream.headers["content-type"].startswith("text/event-stream")
            frames = [json.loads(line[5:]) for line in stream.iter_lines() if line.startswith("data:")]
        assert frames[-1]["seed"] == 7
        missing = http.post("/fal-ai/no-such-model/stream", json={})
        assert missing.status_code == 404
        assert missing.headers["content-type"].startswith("application/json")
        assert missing.json()["detail"] == "Path /fal-ai/no-such-model/stream not found"


HANDLES_SCRIPT = """
import json, time
started = time.monotonic()
from serve_app.connect import connect
from ray import serve

ingress = connect()
out = ingress.run.remote("/sana/sprint", {"prompt": "a cat", "image_size": "square"}).result()
events = list(ingress.options(stream=True).stream.remote("/sana/sprint", {"prompt": "a cat", "image_size": "square"}))
sana = serve.get_deployment_handle("sana", app_name="default")
direct = sana.sprint_generate.remote({"prompt": "a cat", "image_size": "square"}).result()
print(json.dumps({"url": out["images"][0]["url"], "frames": [e.get("type") for e in events[:-1]],
                  "last": sorted(events[-1]), "direct": [direct.images[0].width, direct.seed],
                  "seconds": time.monotonic() - started}))
"""


def test_python_handles_from_a_fresh_shell(app: DevServer) -> None:
    """Point 5: the README's snippet in a new process with nothing exported but the cluster's address
    (which `ray.init(address="auto")` finds by itself when one cluster runs on the machine)."""
    out = run_python(HANDLES_SCRIPT, fresh_env(app.home, RAY_ADDRESS=app.gcs_address()), timeout_s=240)
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["url"].startswith("http") and "/files/" in result["url"]
    assert "progress" in result["frames"] and result["last"] == ["has_nsfw_concepts", "images", "prompt", "seed"]
    assert result["direct"][0] == 512
    assert result["seconds"] < 120  # no minutes of retries against the machine's network address


def test_serve_cli_from_a_fresh_shell(app: DevServer, monkeypatch: pytest.MonkeyPatch) -> None:
    """Point 6: `serve status` and `serve config` with the variables the README exports (the same
    ones `serve_app.connect` sets); without `RAY_AUTH_MODE=token` Ray refuses them."""
    from serve_app.connect import ray_client_env

    monkeypatch.setenv("HOME", str(app.home))  # where `serve run` saved the cluster's token
    documented = {"RAY_AUTH_MODE": "token", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
    assert ray_client_env() == documented
    serve = str(Path(fresh_env(app.home)["PATH"].split(":")[0]) / "serve")
    address = ["--address", app.dashboard_url()]

    def cli(*args: str, env: dict[str, str]) -> tuple[int, str]:
        import subprocess

        done = subprocess.run([serve, *args, *address], env=env, capture_output=True, text=True, timeout=120)
        return done.returncode, done.stdout + done.stderr

    code, status = cli("status", env=fresh_env(app.home, **documented))
    assert code == 0, status
    assert re.search(r"status: RUNNING", status) and "sana:" in status and "HEALTHY" in status
    code, config = cli("config", env=fresh_env(app.home, **documented))
    assert code == 0 and "import_path: serve_app.app:build_app" in config, config
    code, refused = cli("status", env=fresh_env(app.home, RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0"))
    assert code != 0 and re.search(r"(?i)auth|token|401|403", refused), refused


def scrape(app: DevServer) -> dict[str, list[tuple[dict[str, str], float]]]:
    from prometheus_client.parser import text_string_to_metric_families

    with app.client() as http:
        response = http.get("/metrics")
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/plain")
    samples: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            samples.setdefault(sample.name, []).append((sample.labels, sample.value))
    return samples


def value(samples: dict[str, list[tuple[dict[str, str], float]]], name: str, **labels: str) -> float:
    return sum(v for lab, v in samples.get(name, []) if all(lab.get(k) == x for k, x in labels.items()))


def test_one_scrape_target_with_requests_latency_queue_and_billing(app: DevServer) -> None:
    """Point 9: GET /metrics holds per-service request counts and latencies, queue depth and running
    jobs, and billing under its real name; every metric the Grafana dashboard plots is there."""
    body = {**SANA_ARGS, "num_inference_steps": 6}
    seen_depth = seen_running = 0.0
    with app.client() as http:
        ids = [http.post("/queue/sana", json=body).json() for _ in range(3)]
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            samples = scrape(app)
            seen_depth = max(seen_depth, value(samples, "serve_app_queue_depth", service="sana"))
            seen_running = max(seen_running, value(samples, "serve_app_queue_running_jobs", service="sana"))
            if all(http.get(j["status_url"]).json()["status"] == "COMPLETED" for j in ids):
                break
            time.sleep(0.3)
        http.post("/sana/sprint", json=SANA_ARGS).raise_for_status()
    assert seen_depth >= 1 and seen_running == 1  # max_running 1: one job with Sana, the others wait
    # Each process (ingress, replicas) exports what it records every few seconds, on its own clock:
    # wait until every counter below has caught up, not just the first two.
    deadline = time.monotonic() + 90
    while True:
        samples = scrape(app)
        seen = {
            "billed": value(samples, "ray_serve_app_billable_units_total", service="sana"),
            "sync_200": value(samples, "ray_serve_app_requests_total", endpoint="/sana/sprint", mode="sync",
                              status="200"),
            "replica_requests": value(samples, "ray_serve_deployment_request_counter_total", deployment="sana"),
            "replica_latencies": value(samples, "ray_serve_deployment_processing_latency_ms_count",
                                       deployment="sana"),
            "ingress_latencies": value(samples, "ray_serve_app_request_latency_s_count", endpoint="/sana/sprint"),
        }
        # 3 queued + 1 sync call reach the Sana replica; billing is 1 unit each (512x512, one image)
        caught_up = {k: v >= (1 if k in ("sync_200", "ingress_latencies") else 4) for k, v in seen.items()}
        if all(caught_up.values()) or time.monotonic() > deadline:
            break
        time.sleep(2)
    assert all(caught_up.values()), (seen, sorted(samples))
    assert value(samples, "serve_app_queue_depth", service="sana") == 0
    plotted = set(re.findall(r"\b((?:ray_)?serve_app_\w+|ray_serve_\w+)", DASHBOARD.read_text()))
    exported = {n.removesuffix(s) for n in samples for s in ("_bucket", "_count", "_sum", "") if n.endswith(s)}
    assert plotted and plotted <= exported | set(samples), plotted - exported


def test_openapi_documents_streams_queue_results_uploads_and_keys(app: DevServer) -> None:
    """Point 10: stream frames, queue results and status events, the upload body, the API key
    scheme (Swagger's Authorize); the frames the stream really sends match the documented schema."""
    with app.client() as http:
        doc = http.get("/openapi.json").json()
        with http.stream("POST", "/sana/sprint/stream", json=SANA_ARGS) as stream:
            frames = [json.loads(line[5:]) for line in stream.iter_lines() if line.startswith("data:")]
    schemas, paths = doc["components"]["schemas"], doc["paths"]
    stream_schema = paths["/sana/sprint/stream"]["post"]["responses"]["200"]["content"]["text/event-stream"]["schema"]
    frame_model = schemas[stream_schema["$ref"].rsplit("/", 1)[1]]
    refs = {v["$ref"].rsplit("/", 1)[1] for v in frame_model["anyOf"]}
    assert {"ProgressFrame", "PartialFrame", "ErrorFrame", "SanaOutput"} <= refs
    from deployments.sana.service import SanaOutput

    adapter = TypeAdapter(stream_frame_model(SanaOutput))
    for frame in frames[:-1]:
        ProgressFrame.model_validate(frame)
    assert SanaOutput.model_validate(adapter.validate_python(frames[-1]).root.model_dump()).seed == 7
    result = paths["/queue/{app_id}/requests/{request_id}"]["get"]["responses"]["200"]["content"]
    assert {"$ref": "#/components/schemas/SanaOutput"} in result["application/json"]["schema"]["anyOf"]
    status_stream = paths["/queue/{app_id}/requests/{request_id}/status/stream"]["get"]["responses"]["200"]
    assert "event" in json.dumps(status_stream["content"]["text/event-stream"]["schema"])
    upload = paths["/files"]["post"]["requestBody"]["content"]
    assert upload["multipart/form-data"]["schema"]["properties"]["file"]["format"] == "binary"
    assert "application/octet-stream" in upload
    assert doc["components"]["securitySchemes"]["FalKey"] == {
        **doc["components"]["securitySchemes"]["FalKey"], "type": "apiKey", "in": "header", "name": "Authorization"}
    for path, method in (("/sana", "post"), ("/sana/sprint/stream", "post"), ("/queue/sana", "post"),
                         ("/queue/{app_id}/requests/{request_id}", "get"), ("/files", "post")):
        assert paths[path][method].get("security") == [{"FalKey": []}], path
    for path in ("/health", "/ready", "/metrics", "/files/{key}"):
        assert "security" not in paths[path]["get"], path
    for name, prop in schemas["TextToImageInput"]["properties"].items():
        assert "examples" in prop or "default" in prop, name
