"""One Ray cluster and one Serve instance for all app tests, with the real configs/dev.yaml app.

Ray costs ~10 s to start on 2 cores, so it starts once per session; only what this fixture started
is shut down.
"""

from __future__ import annotations

import copy
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
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
            runtime_env={"env_vars": {"PYTHONPATH": str(ROOT)}},
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
