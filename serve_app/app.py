"""The application builder that every configs/*.yaml imports: `serve_app.app:build_app`.

`args` (typed by `AppArgs`) say which services to mount, each one's module, config and serving
options; the builder binds every service deployment and one ingress that routes to them.
"""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, field_validator
from ray import serve
from ray.serve import Application

from serve_app.endpoints import ServiceRoute, collect_endpoints, collect_realtime
from serve_app.ingress import Ingress, IngressSettings
from serve_app.limits import RequestLimits
from serve_app.service import Service, hosted, runtime_user_config


class ScalingConfig(BaseModel):
    """fal's scaling knobs, translated to Serve autoscaling, plus load shedding: how many requests
    may wait for a replica, and how long one may take."""

    model_config = ConfigDict(extra="forbid")

    keep_alive: float = Field(default=60.0, ge=0, description="Seconds an idle replica stays warm.")
    min_concurrency: int = Field(default=0, ge=0, description="Replicas always up (0 allows scale to zero).")
    max_concurrency: int = Field(default=1, ge=1, description="Most replicas.")
    max_multiplexing: int = Field(default=1, ge=1, description="Requests one replica serves at once (unset: the "
                                  "service's own default, usually 1).")
    max_queued_requests: int | None = Field(
        default=None, ge=1,
        description="Requests that may wait for a replica (Serve's `max_queued_requests`, per caller); past "
        "it a request is answered 503 with Retry-After instead of waiting. Default: 4 x max_concurrency x "
        "max_multiplexing. Queue jobs never wait inside Serve: the queue hands out at most the capacity.")
    request_timeout_s: float | None = Field(
        default=None, gt=0,
        description="Longest a sync or stream call may take in the service, waiting included; past it the "
        "ingress answers 504 and the work is cancelled. Queue jobs are not bounded by it. Default: none "
        "(Serve's `http_options.request_timeout_s` still applies).")

    def deployment_options(self) -> dict[str, Any]:
        queued = self.max_queued_requests or 4 * self.max_concurrency * self.max_multiplexing
        options: dict[str, Any] = {"max_queued_requests": queued}
        if "max_multiplexing" in self.model_fields_set:  # else the service's own default stands
            options["max_ongoing_requests"] = self.max_multiplexing
        if self.min_concurrency >= self.max_concurrency:  # a fixed size: nothing to autoscale
            options["num_replicas"] = self.min_concurrency
            return options
        options["autoscaling_config"] = {
            "min_replicas": self.min_concurrency,
            "initial_replicas": max(1, self.min_concurrency),
            "max_replicas": max(self.max_concurrency, self.min_concurrency),
            "target_ongoing_requests": self.max_multiplexing,
            "downscale_delay_s": self.keep_alive,
            "upscale_delay_s": 0.0,
        }
        return options


def capacity(options: dict[str, Any]) -> int:
    """Requests a deployment runs at once at its largest: max replicas x max_ongoing_requests."""
    replicas = (options.get("autoscaling_config") or {}).get("max_replicas") or options.get("num_replicas") or 1
    ongoing = options.get("max_ongoing_requests") or 5  # Serve's default
    return max(1, int(replicas) if isinstance(replicas, int) else 1) * int(ongoing)


class ServiceArgs(BaseModel):
    """One mounted service."""

    model_config = ConfigDict(extra="forbid")

    module: str = Field(description="Python module of the service, e.g. `deployments.my_model`.")
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
    allocator: Literal["framework", "system"] = Field(
        default="framework",
        description="`framework`: glibc's malloc returns large freed blocks to the OS (a fixed mmap threshold), "
        "so a replica's memory goes back near its baseline after a burst of large requests; `system`: "
        "glibc's defaults.",
    )

    # What the replica must know of the application (its output store); set by `build_app`, given to
    # the deployment as `user_config` (Serve passes it to `Service.reconfigure`).
    _runtime: dict[str, Any] = PrivateAttr(default_factory=dict)
    # What `bind_service` found the deployment can run at once (the queue's default `max_running`).
    _capacity: int | None = PrivateAttr(default=None)

    @field_validator("route_prefix")
    @classmethod
    def _prefix(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith("/"):
            raise ValueError("route_prefix must start with '/', e.g. /my-model (or be / for the root)")
        return value.rstrip("/") or "/" if value else value


class AppArgs(BaseModel):
    """The `args` of the application in configs/*.yaml."""

    model_config = ConfigDict(extra="forbid")

    services: dict[str, ServiceArgs] = Field(description="Services to mount, by name.")
    ingress: IngressSettings = Field(default_factory=IngressSettings, description="HTTP front door options.")
    ingress_deployment: dict[str, Any] = Field(
        default_factory=dict, description="Extra `serve.deployment` options of the ingress."
    )
    limits: RequestLimits = Field(default_factory=RequestLimits, description="Bounds on every request.")


def import_service_module(path: str) -> ModuleType:
    """Import a service module and check it has the builder contract (`build`)."""
    module = importlib.import_module(path)
    if not callable(getattr(module, "build", None)):
        raise ValueError(f"service module {path!r} has no build(name, args) function")
    return module


# glibc raises its mmap threshold after each large free, so later large tensors come from the heap,
# which fragments and never shrinks (a replica grew from 1.0 to 4.2 GB for good). A fixed threshold
# keeps every block of 1 MiB or more in its own mapping, returned to the OS when freed.
ALLOCATOR_ENV = {"MALLOC_MMAP_THRESHOLD_": str(1024 * 1024), "MALLOC_TRIM_THRESHOLD_": str(16 * 1024 * 1024)}


def with_env(actor_options: dict[str, Any], env: dict[str, str]) -> dict[str, Any]:
    """`ray_actor_options` with `env` added under the user's own `runtime_env.env_vars` (theirs win)."""
    runtime_env = dict(actor_options.get("runtime_env") or {})
    runtime_env["env_vars"] = {**env, **(runtime_env.get("env_vars") or {})}
    return {**actor_options, "runtime_env": runtime_env}


def service_options(cls: type[Service], config: BaseModel, args: ServiceArgs) -> dict[str, Any]:
    """The `serve.deployment` options of a service: its defaults, then `scaling`, then `deployment`."""
    options: dict[str, Any] = dict(cls.deployment_defaults(config))
    if args.scaling is not None:
        options.update(args.scaling.deployment_options())
    options.update(args.deployment)
    return options


def bind_service(cls: type[Service], config: BaseModel, name: str, args: ServiceArgs) -> ServiceRoute:
    """Apply `serve.deployment` to a service class with options from its defaults and the config,
    bind it to its config, and describe its routes for the ingress."""
    options = service_options(cls, config, args)
    if args.allocator == "framework":
        options["ray_actor_options"] = with_env(options.get("ray_actor_options") or {}, ALLOCATOR_ENV)
    if args._runtime:
        options["user_config"] = {**(options.get("user_config") or {}), **args._runtime}
    args._capacity = capacity(options)
    deployment: Any = serve.deployment(hosted(cls), name=name, **options)
    prefix = "" if args.route_prefix == "/" else (args.route_prefix or f"/{name}")
    endpoints = collect_endpoints(cls)
    if not prefix and any(not spec.path for spec in endpoints):
        raise ValueError(f"service {name} is mounted at the root, so each of its endpoints needs a path")
    page_dir = getattr(cls, "static_dir", None)
    return ServiceRoute(name=name, prefix=prefix, handle=deployment.bind(config), endpoints=endpoints,
                        realtime=collect_realtime(cls), page_dir=str(page_dir) if page_dir else None)


def build_app(args: AppArgs | dict[str, Any]) -> Application:
    """Serve application builder: `import_path: serve_app.app:build_app` plus `args`."""
    try:
        app_args = args if isinstance(args, AppArgs) else AppArgs.model_validate(args)
    except ValidationError as e:
        raise ValueError(f"invalid application args: {e}") from e
    if not app_args.services:
        raise ValueError("no services configured: add at least one under args.services")
    routes = []
    runtime = runtime_user_config(app_args.ingress.storage)
    timeouts: dict[str, float] = {}
    capacities: dict[str, int] = {}
    for name, service_args in app_args.services.items():
        module = import_service_module(service_args.module)
        service_args._runtime = runtime
        routes.append(module.build(name, service_args))
        if service_args._capacity is not None:
            capacities[name] = service_args._capacity
        if service_args.scaling is not None and service_args.scaling.request_timeout_s is not None:
            timeouts[name] = service_args.scaling.request_timeout_s
    prefixes = [r.prefix for r in routes if r.prefix]
    if len(set(prefixes)) != len(prefixes):
        raise ValueError(f"two services share a route prefix: {prefixes}")
    paths = [spec.route(r.prefix) for r in routes for spec in [*r.endpoints, *r.realtime]]
    clashes = sorted({p for p in paths if paths.count(p) > 1})
    if clashes:
        raise ValueError(f"two endpoints share a path: {clashes}")
    settings = app_args.ingress.model_copy(deep=True)
    settings.queue.capacity = {**capacities, **settings.queue.capacity}
    options = {"max_ongoing_requests": 1000, **app_args.ingress_deployment}
    ingress: Any = serve.deployment(Ingress, name="Ingress", **options)
    return ingress.bind(routes, settings, app_args.limits, timeouts)  # type: ignore[no-any-return]
