"""Typed application args, and every configs/*.yaml: its services import, its args validate, and
Serve accepts the file's schema."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from ray.serve.schema import ServeDeploySchema

from serve_app.app import AppArgs, ScalingConfig, ServiceArgs, build_app, import_service_module

CONFIGS = sorted((Path(__file__).resolve().parents[2] / "configs").glob("**/*.yaml"))


def apps(path: Path) -> list[dict[str, Any]]:
    return list(yaml.safe_load(path.read_text())["applications"])


def test_there_are_dev_and_prod_configs() -> None:
    assert {p.name for p in CONFIGS} >= {"dev.yaml", "prod.yaml"}


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_config_schema_imports_and_args(path: Path) -> None:
    raw = yaml.safe_load(path.read_text())
    ServeDeploySchema.model_validate(raw)  # what `serve run` / `serve deploy` check first
    for app in apps(path):
        assert app["import_path"] == "serve_app.app:build_app"
        args = AppArgs.model_validate(app["args"])
        for name, service in args.services.items():
            module = import_service_module(service.module)
            route = module.build(name, service)  # validates the service's own config
            assert route.endpoints or route.realtime, f"{name} declares no endpoints"
        build_app(app["args"])  # the whole graph binds (no Ray needed)


def test_prod_is_gpu_one_request_per_replica_with_autoscaling() -> None:
    (app,) = apps(next(p for p in CONFIGS if p.name == "prod.yaml"))
    args = AppArgs.model_validate(app["args"])
    sana = args.services["sana"]
    assert sana.deployment["ray_actor_options"]["num_gpus"] == 1
    assert sana.config["device"] == "cuda" and "id" in sana.config["model"]
    options = sana.scaling.deployment_options() if sana.scaling else {}
    assert options["max_ongoing_requests"] == 1
    assert options["autoscaling_config"]["downscale_delay_s"] == 600
    assert options["autoscaling_config"]["max_replicas"] == 10


def test_dev_listens_on_loopback_and_uses_presets() -> None:
    raw = yaml.safe_load(next(p for p in CONFIGS if p.name == "dev.yaml").read_text())
    assert raw["http_options"]["host"] == "127.0.0.1"
    for app in raw["applications"]:
        for service in app["args"]["services"].values():
            sources = [v for v in service["config"].values() if isinstance(v, dict) and ("id" in v or "preset" in v)]
            assert all("preset" in s for s in sources)  # model-free services (proxies) have none


def test_args_are_strict() -> None:
    with pytest.raises(ValueError):
        AppArgs.model_validate({"services": {"x": {"module": "deployments.sana", "confg": {}}}})
    with pytest.raises(ValueError, match="route_prefix"):
        ServiceArgs(module="m", route_prefix="sana")
    with pytest.raises(ValueError, match="no services"):
        build_app({"services": {}})
    with pytest.raises(ValueError, match="build"):
        import_service_module("serve_app.io")


def test_root_mounting_and_path_clashes() -> None:
    behaviours = {"module": "tests.app.fixtures.behaviours", "route_prefix": "/"}
    build_app({"services": {"b": behaviours}})  # /steps and /stats at the root
    with pytest.raises(ValueError, match="needs a path"):
        build_app({"services": {"sana": {"module": "deployments.sana", "route_prefix": "/",
                                         "config": {"model": {"preset": "tiny"}, "sprint_model": {"preset": "tiny"},
                                                    "safety_checker": {"preset": "tiny"}}}}})
    with pytest.raises(ValueError, match="share a path"):
        build_app({"services": {"b": behaviours, "c": behaviours}})


def test_scaling_translates_fal_knobs() -> None:
    opts = ScalingConfig(keep_alive=300, min_concurrency=1, max_concurrency=3, max_multiplexing=10).deployment_options()
    assert opts == {"max_ongoing_requests": 10, "max_queued_requests": 120, "autoscaling_config": {
        "min_replicas": 1, "initial_replicas": 1, "max_replicas": 3, "target_ongoing_requests": 10,
        "downscale_delay_s": 300, "upscale_delay_s": 0.0}}
