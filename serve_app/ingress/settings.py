"""Options of the HTTP front door (`args.ingress` in configs/*.yaml)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, field_validator

from serve_app.queue.settings import QueueSettings
from serve_app.storage import LocalStorage, StorageConfig


class MetricsSettings(BaseModel):
    """The Prometheus scrape target on the ingress (see `serve_app.metrics`)."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = Field(default=True, description="Serve the metrics at `path`.")
    path: str = Field(default="/metrics", description="Route of the scrape target.")
    include_ray: bool = Field(
        default=True,
        description="Add what Ray exports on every node of the cluster (Serve's request counters and latencies, "
        "the app's billing, request and latency metrics), so one target has them all.",
    )
    ray_prefixes: list[str] = Field(
        default_factory=lambda: ["ray_serve_"],
        description="Only Ray metrics whose names start with one of these (an empty list keeps everything).",
    )
    scrape_timeout_s: float = Field(default=5.0, gt=0, description="Longest wait for Ray's exporters and the queue.")

    @field_validator("path")
    @classmethod
    def _path(cls, value: str) -> str:
        if not value.startswith("/") or value == "/":
            raise ValueError("metrics.path must start with '/' and name a path, e.g. /metrics")
        return value.rstrip("/")


class IngressSettings(BaseModel):
    """Options of the HTTP front door."""

    model_config = ConfigDict(extra="forbid")

    public_url: str | None = Field(
        default=None,
        description="Base URL for file links; default: the URL the request came in on "
        "(Python handle calls fall back to http://127.0.0.1:8000).",
    )
    storage: StorageConfig = Field(default_factory=LocalStorage, description="Where outputs are stored (by the "
                                   "replica that makes them): local, s3 or data_url.")
    heartbeat_s: float = Field(default=10.0, gt=0, description="Seconds between SSE heartbeats when idle.")
    title: str = Field(default="Generative model services", description="Title of the OpenAPI document.")
    queue: QueueSettings = Field(default_factory=QueueSettings, description="The fal-compatible queue API.")
    api_key_env: list[str] = Field(
        default_factory=list,
        description="Names of environment variables holding accepted API keys (comma-separated values "
        "allowed); when any is set, every model route (sync, stream, queue, realtime) requires "
        "`Authorization: Key <key>`.",
    )
    max_upload_bytes: int = Field(
        default=512 * 1024 * 1024,
        ge=0,
        description="Largest file `POST /files` accepts (input files such as training ZIPs); 0 turns uploads off.",
    )
    ready_timeout_s: float = Field(default=5.0, gt=0, description="Longest wait for Serve's status in /ready.")
    docs: bool = Field(default=True, description="Serve /docs (Swagger UI) and /redoc from installed packages "
                       "(no CDN), and /openapi.json.")
    playground: bool = Field(default=True, description="Serve the playground page at /playground: a form per "
                             "endpoint, generated from the OpenAPI document.")
    metrics: MetricsSettings = Field(default_factory=MetricsSettings, description="The Prometheus scrape target.")
