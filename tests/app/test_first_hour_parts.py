"""The parts of the first-hour fixes, without Ray: the dev certificate and the CA bundle (checked by a
real TLS handshake), the HTTPS config, the metrics exposition merge, the OpenAPI completion, the
Python client environment."""

from __future__ import annotations

import datetime
import os
import ssl
from pathlib import Path
from typing import Any

import certifi
import httpx
import pytest
import yaml
from cryptography import x509
from fastapi import Depends, FastAPI
from prometheus_client.parser import text_string_to_metric_families

from serve_app import tls
from serve_app.connect import prepare_environment, ray_client_env
from serve_app.ingress.docs import complete_openapi, secured_operations
from serve_app.metrics import merge_expositions, queue_families, render
from tests.app.conftest import ROOT
from tests.fakes.tls import ThreadedServer


def test_dev_certificate_is_made_once_and_serves_tls_that_the_bundle_trusts(tmp_path: Path) -> None:
    made = tls.ensure_dev_certificate(tmp_path / "tls")
    assert oct(made.key.stat().st_mode & 0o777) == "0o600" and oct((tmp_path / "tls").stat().st_mode & 0o777) == "0o700"
    ca_before, cert_before = made.ca.read_bytes(), made.cert.read_bytes()
    again = tls.ensure_dev_certificate(tmp_path / "tls")
    assert (again.ca.read_bytes(), again.cert.read_bytes()) == (ca_before, cert_before)  # kept, not remade
    # the bundle ADDS our CA to certifi's public roots
    public = Path(certifi.where()).read_text()
    bundle = made.bundle.read_text()
    assert bundle.startswith(public.rstrip("\n")) and bundle.rstrip().endswith(made.ca.read_text().rstrip())
    assert ssl.create_default_context(cafile=str(made.bundle)).cert_store_stats()["x509_ca"] > 100

    app = FastAPI()

    @app.get("/")
    def hello() -> dict[str, str]:
        return {"hello": "tls"}

    server = ThreadedServer(app, made.cert, made.key)
    server.start()
    try:
        for host in ("127.0.0.1", "localhost"):
            port = server.host.rsplit(":", 1)[1]
            assert httpx.get(f"https://{host}:{port}/", verify=str(made.bundle)).json() == {"hello": "tls"}
        with pytest.raises(httpx.ConnectError):  # the public roots alone don't trust it
            httpx.get(f"https://{server.host}/", verify=certifi.where())
    finally:
        server.stop()


def test_dev_certificate_is_renewed_for_new_hosts_and_before_expiry(tmp_path: Path, monkeypatch: Any) -> None:
    made = tls.ensure_dev_certificate(tmp_path)
    ca = made.ca.read_bytes()
    extended = tls.ensure_dev_certificate(tmp_path, hosts=("gpu-box.internal",))
    san = x509.load_pem_x509_certificate(extended.cert.read_bytes()).extensions.get_extension_for_class(
        x509.SubjectAlternativeName).value
    assert "gpu-box.internal" in san.get_values_for_type(x509.DNSName) and extended.ca.read_bytes() == ca
    monkeypatch.setattr(tls, "RENEW_BEFORE", datetime.timedelta(days=400))  # "about to expire"
    before = extended.cert.read_bytes()
    assert tls.ensure_dev_certificate(tmp_path, hosts=("gpu-box.internal",)).cert.read_bytes() != before


def test_https_config_and_client_env(tmp_path: Path) -> None:
    config = yaml.safe_load((ROOT / "configs" / "dev.yaml").read_text())
    derived = tls.https_config(config, tmp_path / "c.pem", tmp_path / "k.pem", port=9443)
    assert derived["http_options"] == {**config["http_options"], "port": 9443,
                                       "ssl_certfile": str((tmp_path / "c.pem").resolve()),
                                       "ssl_keyfile": str((tmp_path / "k.pem").resolve())}
    assert "ssl_certfile" not in config["http_options"]  # the original is untouched
    from ray.serve.schema import ServeDeploySchema

    ServeDeploySchema.model_validate(derived)  # what `serve run` accepts
    env = tls.client_env("127.0.0.1", 9443, tmp_path / "b.pem")
    assert env == {"FAL_RUN_HOST": "127.0.0.1:9443", "FAL_QUEUE_RUN_HOST": "127.0.0.1:9443/queue",
                   "SSL_CERT_FILE": str(tmp_path / "b.pem")}


NODE = """# HELP ray_serve_app_billable_units_total Billable units.
# TYPE ray_serve_app_billable_units_total counter
ray_serve_app_billable_units_total{{NodeAddress="{node}",service="sana"}} {units}
# HELP ray_node_cpu_utilization CPU.
# TYPE ray_node_cpu_utilization gauge
ray_node_cpu_utilization{{NodeAddress="{node}"}} 3.0
"""


def test_metrics_of_several_nodes_merge_into_one_valid_exposition() -> None:
    merged = merge_expositions([NODE.format(node="a", units=2), NODE.format(node="b", units=3)], ["ray_serve_"])
    families = merged + queue_families({"queued": {"sana": 2}, "running": {"sana": 1}}, ["sana", "kokoro"])
    parsed = {f.name: f for f in text_string_to_metric_families(render(families).decode())}
    assert sum(s.value for s in parsed["ray_serve_app_billable_units"].samples) == 5
    assert "ray_node_cpu_utilization" not in parsed  # outside the kept prefixes
    depth = {s.labels["service"]: s.value for s in parsed["serve_app_queue_depth"].samples}
    assert depth == {"kokoro": 0, "sana": 2}
    assert [s.value for s in parsed["serve_app_queue_running_jobs"].samples] == [0, 1]


def test_openapi_completion_marks_the_routes_that_check_keys() -> None:
    def guard() -> str:
        return "user"

    app = FastAPI()

    @app.post("/model", dependencies=[Depends(guard)])
    def model() -> dict[str, str]:
        return {}

    @app.get("/health")
    def health() -> dict[str, str]:
        return {}

    secured = secured_operations(app, guard)
    assert secured == {("/model", "post")}
    doc = complete_openapi(app.openapi(), None, secured)
    assert doc["paths"]["/model"]["post"]["security"] == [{"FalKey": []}]
    assert "security" not in doc["paths"]["/health"]["get"]
    assert doc["components"]["securitySchemes"]["FalKey"]["name"] == "Authorization"


def test_client_env_keeps_ray_on_loopback_and_sends_the_token(tmp_path: Path, monkeypatch: Any) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("RAY_AUTH_TOKEN", raising=False)
    monkeypatch.delenv("RAY_AUTH_TOKEN_PATH", raising=False)
    assert ray_client_env() == {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}  # no token: no auth mode
    (tmp_path / ".ray").mkdir()
    (tmp_path / ".ray" / "auth_token").write_text("t")
    assert ray_client_env() == {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_AUTH_MODE": "token"}
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")  # set by the user: kept
    import ray._private.ray_constants as constants

    monkeypatch.setattr(constants, "ENABLE_RAY_CLUSTER", True)
    prepare_environment()
    assert os.environ["RAY_AUTH_MODE"] == "disabled" and constants.ENABLE_RAY_CLUSTER is False

