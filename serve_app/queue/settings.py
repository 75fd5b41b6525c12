"""Typed configuration of the queue API (`args.ingress.queue` in configs/*.yaml).

Secrets never live here: the config names environment variables (`webhook.secret_env`) whose
values are read by the processes that need them.
"""

from __future__ import annotations

import os

from pydantic import BaseModel, ConfigDict, Field, field_validator

DEFAULT_MAX_RUNNING = 8


class ServiceLimits(BaseModel):
    """Per-service queue limits (all ingress replicas together)."""

    model_config = ConfigDict(extra="forbid")

    max_running: int | None = Field(
        default=None,
        ge=1,
        description="Jobs of this service handed to its deployment handle at once. Unset: the deployment's "
        "capacity (max_replicas x max_ongoing_requests, from its scaling), so a job reads IN_PROGRESS only "
        "when a replica can run it, not while it waits inside Serve.",
    )
    max_queued: int = Field(
        default=10_000,
        ge=1,
        description="Jobs waiting (IN_QUEUE) for this service; a submit beyond it is answered 429.",
    )


class WebhookSettings(BaseModel):
    """How `fal_webhook` callbacks are delivered and signed."""

    model_config = ConfigDict(extra="forbid")

    secret_env: str | None = Field(
        default=None,
        description="Name of the environment variable holding the HMAC-SHA256 signing secret; "
        "unset: webhooks are sent unsigned (no X-Fal-Webhook-Signature header).",
    )
    timeout_s: float = Field(default=15.0, gt=0, description="Timeout of one delivery attempt.")
    max_attempts: int = Field(default=10, ge=1, description="Delivery attempts before giving up.")
    backoff_s: float = Field(default=2.0, gt=0, description="Delay before the first retry; doubles each time.")
    max_backoff_s: float = Field(default=1800.0, gt=0, description="Longest delay between two attempts.")
    allow: list[str] = Field(
        default_factory=list,
        description="Non-public webhook targets to allow anyway: networks (`10.1.0.0/16`, `127.0.0.1`) and host "
        "names (`hooks.internal`, `*.corp.example`). Added to the environment's SERVE_APP_OUTBOUND_ALLOW; by "
        "default only public addresses are reached.",
    )

    def secret(self) -> bytes | None:
        """The signing secret from the environment; raises if the named variable is missing."""
        if self.secret_env is None:
            return None
        value = os.environ.get(self.secret_env)
        if not value:
            raise ValueError(f"queue.webhook.secret_env names {self.secret_env!r}, which is not set")
        return value.encode()


class QueueSettings(BaseModel):
    """The fal-compatible queue in front of every endpoint (see serve_app/queue)."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = Field(default=True, description="Mount the queue routes.")
    route_prefix: str = Field(
        default="/queue",
        description="Where the queue lives under the application's route prefix. Point fal_client at it with "
        "FAL_QUEUE_RUN_HOST=<host:port><route_prefix>.",
    )
    owner_aliases: list[str] = Field(
        default_factory=lambda: ["fal-ai"],
        description="Leading path segments accepted and ignored in endpoint ids, so fal-style ids such as "
        "`fal-ai/my-model` reach the service `my-model`.",
    )
    defaults: ServiceLimits = Field(default_factory=ServiceLimits, description="Limits of every service.")
    services: dict[str, ServiceLimits] = Field(
        default_factory=dict, description="Per-service limits by service name, replacing `defaults`."
    )
    retry_after_s: int = Field(default=2, ge=1, description="Retry-After of a 429 answered when a queue is full.")
    max_attempts: int = Field(
        default=3,
        ge=1,
        description="Runs of one job: a job whose ingress replica died while running it is queued again "
        "(at the front) until this many attempts, then completes with a 503 `runner_disconnected`.",
    )
    worker_lease_s: float = Field(
        default=15.0,
        gt=0,
        description="An ingress replica that has not polled the store for this long is presumed dead; "
        "its running jobs are queued again.",
    )
    progress_interval_s: float = Field(
        default=0.1, gt=0, description="How often a runner sends buffered progress and logs to the store."
    )
    result_ttl_s: float = Field(default=24 * 3600.0, gt=0, description="Finished jobs are forgotten after this.")
    max_logs: int = Field(default=500, ge=1, description="Log lines kept per job (the latest ones).")
    journal_dir: str | None = Field(
        default=None,
        description="Directory for the job journal (survives a restart of the store or the cluster); "
        "null keeps jobs in the store actor's memory only (still survives ingress restarts).",
    )
    journal_fsync: bool = Field(default=False, description="fsync each journal batch (slower, power-loss safe).")
    rpc_timeout_s: float = Field(default=30.0, gt=0, description="Timeout of one call to the store actor.")
    webhook: WebhookSettings = Field(default_factory=WebhookSettings, description="Webhook delivery.")
    max_payload_bytes: int = Field(
        default=16 * 1024 * 1024, ge=1,
        description="Largest input one job may hold (its JSON); larger submissions get a 413: upload big files "
        "with POST /files and pass their URL.")
    max_total_bytes: int = Field(
        default=1024 * 1024 * 1024, ge=1,
        description="Bytes of inputs and results the store holds in all; past it submissions get a 429 until "
        "results expire (`result_ttl_s`). Inputs are dropped as soon as their job completes.")
    capacity: dict[str, int] = Field(
        default_factory=dict,
        description="Filled in by the application builder: each service's max_replicas x max_ongoing_requests, "
        "the default of its `max_running`.")

    @field_validator("route_prefix")
    @classmethod
    def _prefix(cls, value: str) -> str:
        if not value.startswith("/") or value == "/":
            raise ValueError("queue.route_prefix must start with '/' and name a path, e.g. /queue")
        return value.rstrip("/")

    def limits(self, service: str) -> ServiceLimits:
        """The limits that apply to `service`."""
        return self.services.get(service, self.defaults)

    def max_running(self, service: str) -> int:
        """Jobs of `service` run at once: its own setting, else the defaults', else its deployment's
        capacity (8 when unknown)."""
        own = self.services.get(service)
        for value in (own.max_running if own else None, self.defaults.max_running, self.capacity.get(service)):
            if value is not None:
                return value
        return DEFAULT_MAX_RUNNING
