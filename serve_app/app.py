"""The application builder that every configs/*.yaml imports: `serve_app.app:build_app`.

`args` (typed by `AppArgs`) say which services to mount, each one's module, config and serving
options; the builder binds every service deployment and one ingress that routes to them.
"""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from ray import serve
from ray.serve import Application

from serve_app.endpoints import collect_endpoints
from serve_app.ingress import Ingress, IngressSettings, ServiceRoute
from serve_app.service import Service


class ScalingConfig(BaseModel):
    """fal's scaling knobs, translated to Serve autoscaling."""

    model_config = ConfigDict(extra="forbid")

    keep_alive: float = Field(default=60.0, ge=0, description="Seconds an idle replica stays warm.")
    min_concurrency: int = Field(default=0, ge=0, description="Replicas always up (0 allows scale to zero).")
    max_concurrency: int = Field(default=1, ge=1, description="Most replicas.")
    max_multiplexing: int = Field(default=1, ge=1, description="Requests one replica serves at once.")

    def deployment_options(self) -> dict[str, Any]:
        return {
            "max_ongoing_requests": self.max_multiplexing,
            "autoscaling_config": {
                "min_replicas": self.min_concurrency,
                "initial_replicas": max(1, self.min_concurrency),
                "max_replicas": max(self.max_concurrency, self.min_concurrency),
                "target_ongoing_requests": self.max_multiplexing,
                "downscale_delay_s": self.keep_alive,
                "upscale_delay_s": 0.0,
            },
        }


class ServiceArgs(BaseModel):
    """One mounted service."""

    model_config = ConfigDict(extra="forbid")

    module: str = Field(description="Python module of the service, e.g. `deployments.sana`.")
    route_prefix: str | None = Field(
        default=None,
        description="URL prefix; default `/<service name>`. `/` mounts the endpoints at their own paths "
        "(every endpoint then needs a non-empty path).",
    )
    config: dict[str, Any] = Field(default_factory=dict, description="The service's own config (its *Config).")
    scaling: ScalingConfig | None = Field(default=None, description="fal-style scaling; omit for one replica.")
    deployment: dict[str, Any] = Field(
        default_factory=dict,
        description="Extra `serve.deployment` options (ray_actor_options, health checks, ...); "
        "they override the service's defaults and `scaling`.",
    )

    @field_validator("route_prefix")
    @classmethod
    def _prefix(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith("/"):
            raise ValueError("route_prefix must start with '/', e.g. /sana (or be / for the root)")
        return value.rstrip("/") or "/" if value else value


class AppArgs(BaseModel):
    """The `args` of the application in configs/*.yaml."""

    model_config = ConfigDict(extra="forbid")

    services: dict[str, ServiceArgs] = Field(description="Services to mount, by name.")
    ingress: IngressSettings = Field(default_factory=IngressSettings, description="HTTP front door options.")
    ingress_deployment: dict[str, Any] = Field(
        default_factory=dict, description="Extra `serve.deployment` options of the ingress."
    )


def import_service_module(path: str) -> ModuleType:
    """Import a service module and check it has the builder contract (`build`)."""
    module = importlib.import_module(path)
    if not callable(getattr(module, "build", None)):
        raise ValueError(f"service module {path!r} has no build(name, args) function")
    return module


def bind_service(cls: type[Service], config: BaseModel, name: str, args: ServiceArgs) -> ServiceRoute:
    """Apply `serve.deployment` to a service class with options from its defaults and the config,
    bind it to its config, and describe its routes for the ingress."""
    options: dict[str, Any] = dict(cls.deployment_defaults(config))
    if args.scaling is not None:
        options.update(args.scaling.deployment_options())
    options.update(args.deployment)
    deployment: Any = serve.deployment(cls, name=name, **options)
    prefix = "" if args.route_prefix == "/" else (args.route_prefix or f"/{name}")
    endpoints = collect_endpoints(cls)
    if not prefix and any(not spec.path for spec in endpoints):
        raise ValueError(f"service {name} is mounted at the root, so each of its endpoints needs a path")
    return ServiceRoute(name=name, prefix=prefix, handle=deployment.bind(config), endpoints=endpoints)


def build_app(args: AppArgs | dict[str, Any]) -> Application:
    """Serve application builder: `import_path: serve_app.app:build_app` plus `args`."""
    try:
        app_args = args if isinstance(args, AppArgs) else AppArgs.model_validate(args)
    except ValidationError as e:
        raise ValueError(f"invalid application args: {e}") from e
    if not app_args.services:
        raise ValueError("no services configured: add at least one under args.services")
    routes = []
    for name, service_args in app_args.services.items():
        module = import_service_module(service_args.module)
        routes.append(module.build(name, service_args))
    prefixes = [r.prefix for r in routes if r.prefix]
    if len(set(prefixes)) != len(prefixes):
        raise ValueError(f"two services share a route prefix: {prefixes}")
    paths = [spec.route(r.prefix) for r in routes for spec in r.endpoints]
    clashes = sorted({p for p in paths if paths.count(p) > 1})
    if clashes:
        raise ValueError(f"two endpoints share a path: {clashes}")
    options = {"max_ongoing_requests": 1000, **app_args.ingress_deployment}
    ingress: Any = serve.deployment(Ingress, name="Ingress", **options)
    return ingress.bind(routes, app_args.ingress)  # type: ignore[no-any-return]
