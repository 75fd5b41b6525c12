"""One Ray cluster and one Serve instance for all app tests, with the real configs/dev.yaml app.

Ray costs ~10 s to start on 2 cores, so it starts once per session; only what this fixture started
is shut down.
"""

from __future__ import annotations

import copy
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
# Ray workers must import both this repo and whatever the environment already adds (the device
# machines put their packages on PYTHONPATH).
PYTHONPATH = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
DEV_CONFIG = ROOT / "configs" / "dev.yaml"
FIXTURE_PREFIX = "/t"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def load_dev_app() -> dict[str, Any]:
    config = yaml.safe_load(DEV_CONFIG.read_text())
    (app,) = config["applications"]
    return copy.deepcopy(app)


@pytest.fixture(scope="session")
def ray_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    import ray

    started = False
    if not ray.is_initialized():
        ray.init(
            address="local",
            num_cpus=4,
            include_dashboard=False,
            object_store_memory=200 * 1024 * 1024,
            _temp_dir=str(tmp_path_factory.mktemp("ray")),
            runtime_env={"env_vars": {"PYTHONPATH": PYTHONPATH}},
            log_to_driver=False,
        )
        started = True
    yield
    if started:
        from ray import serve

        serve.shutdown()
        ray.shutdown()


@pytest.fixture(scope="session")
def serve_url(ray_cluster: None) -> Iterator[str]:
    """Base URL of Serve running the dev.yaml application plus a behaviours fixture app."""
    from ray import serve

    from serve_app.app import build_app

    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port},
                logging_config={"log_level": "WARNING", "enable_access_log": False})
    dev = load_dev_app()
    serve.run(build_app(dev["args"]), name=dev["name"], route_prefix=dev["route_prefix"])
    fixtures_args = {
        "ingress": {"storage": {"kind": "data_url"}},
        "ingress_deployment": {"ray_actor_options": {"num_cpus": 0.05}},
        "services": {
            "behaviours": {
                "module": "tests.app.fixtures.behaviours",
                "route_prefix": "/b",
                "deployment": {"max_ongoing_requests": 4, "ray_actor_options": {"num_cpus": 0.05}},
            }
        },
    }
    serve.run(build_app(fixtures_args), name="fixtures", route_prefix=FIXTURE_PREFIX)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    yield url
    serve.delete("fixtures")
    serve.delete(dev["name"])


@pytest.fixture
def client(serve_url: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=serve_url, timeout=120) as c:
        yield c


# ----------------------------------------------------------------------------- queue API (fal_client)
QUEUE_APP = "queue_tests"
QUEUE_PREFIX = "/q"
QUEUE_KEY = "tester:s3cret-key"
WEBHOOK_SECRET = "webhook-s3cret"


@pytest.fixture(scope="session")
def queue_app(serve_url: str) -> Iterator[str]:
    """A second application at /q for queue tests: the behaviours service twice ("b", and "tiny" with
    a queue of 2 and one job at a time), API keys and a webhook secret from environment variables
    (given to the ingress, and so to its store actor, through runtime_env), short leases."""
    from ray import serve

    from serve_app.app import build_app

    env = {"QUEUE_TEST_API_KEYS": QUEUE_KEY, "QUEUE_TEST_WEBHOOK_SECRET": WEBHOOK_SECRET}
    small = {"max_ongoing_requests": 4, "ray_actor_options": {"num_cpus": 0.05}}
    args = {
        "ingress": {
            "storage": {"kind": "data_url"},
            "api_key_env": ["QUEUE_TEST_API_KEYS"],
            "queue": {
                "worker_lease_s": 2.0,
                "defaults": {"max_running": 2, "max_queued": 100},
                "services": {"tiny": {"max_running": 1, "max_queued": 2}},
                # The test's receiver is on loopback, which the URL policy refuses unless allowed.
                "webhook": {"secret_env": "QUEUE_TEST_WEBHOOK_SECRET", "backoff_s": 0.2, "allow": ["127.0.0.1"]},
            },
        },
        "ingress_deployment": {"health_check_period_s": 1,
                               "ray_actor_options": {"num_cpus": 0.05, "runtime_env": {"env_vars": env}}},
        "services": {
            "b": {"module": "tests.app.fixtures.behaviours", "deployment": small},
            "tiny": {"module": "tests.app.fixtures.behaviours", "deployment": small},
        },
    }
    serve.run(build_app(args), name=QUEUE_APP, route_prefix=QUEUE_PREFIX)
    yield f"{serve_url}{QUEUE_PREFIX}"
    serve.delete(QUEUE_APP)


@pytest.fixture(scope="session")
def tls_host(serve_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """`(host:port, CA file)` of a TLS-terminating proxy in front of Serve (fal_client needs https)."""
    from tests.app.fixtures.tls import TlsProxy, make_certificates

    ca, cert, key = make_certificates(tmp_path_factory.mktemp("tls"))
    port = free_port()
    proxy = TlsProxy(serve_url, port, cert, key)
    proxy.start()
    yield f"127.0.0.1:{port}", ca
    proxy.stop()
