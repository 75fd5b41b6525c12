"""What crosses the boundary between the ingress (routes, runner) and the store actor: small
picklable dataclasses, and the one error the store raises on purpose."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from serve_app.errors import ServiceError


class QueueFull(ServiceError):
    """The service's queue holds `max_queued` jobs: answered 429 with `Retry-After`."""

    status_code = 429
    error_type = "queue_full"

    def __init__(self, service: str = "", retry_after_s: int = 1) -> None:
        super().__init__(f"The queue of {service} is full, retry later.")
        self.retry_after_s = retry_after_s


class PayloadTooLarge(ServiceError):
    """One job's input is over `max_payload_bytes`: 413."""

    status_code = 413
    error_type = "payload_too_large"

    def __init__(self, limit: int = 0) -> None:
        super().__init__(f"The request is larger than the queue's limit of {limit} bytes; upload large files "
                         "with POST /files and pass their URL.")
        self.limit = limit


class QueueUnavailable(ServiceError):
    """The queue has no store to talk to (the app runs outside Serve, or startup failed): 503."""

    status_code = 503
    error_type = "queue_unavailable"

    def __init__(self, message: str = "The queue is not available on this server.") -> None:
        super().__init__(message)


CancelOutcome = Literal["OK", "CANCELLATION_REQUESTED", "ALREADY_COMPLETED", "NOT_FOUND"]


@dataclass(frozen=True)
class Claim:
    """A job handed to a runner: everything needed to run one attempt of it."""

    request_id: str
    gateway_request_id: str
    path: str
    payload: dict[str, Any]
    base_url: str
    attempt: int


@dataclass
class PollResult:
    """New jobs for the polling runner, and ids of its running jobs to cancel."""

    jobs: list[Claim] = field(default_factory=list)
    cancel: list[str] = field(default_factory=list)


@dataclass
class JobUpdate:
    """Progress of a running job: new log lines and stream events (progress / partial JSON)."""

    request_id: str
    gateway_request_id: str
    logs: list[dict[str, Any]] = field(default_factory=list)
    events: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class Outcome:
    """How one attempt ended. `body` is the output JSON (succeeded) or the error detail."""

    request_id: str
    gateway_request_id: str
    kind: Literal["succeeded", "failed", "cancelled", "requeue"]  # requeue: the service shed it, run it later
    body: Any = None
    status_code: int = 200
    error_type: str | None = None
    billable_units: float = 0.0
    inference_time: float | None = None
    update: JobUpdate | None = None


@dataclass(frozen=True)
class ResultView:
    """What the result URL answers: `status_code` and, when done, the body to send."""

    done: bool
    status_code: int
    body: Any
    billable_units: float = 0.0


@dataclass
class WatchResult:
    """A status-stream snapshot: the status body, plus events and logs newer than the caller's marks."""

    version: int
    status: dict[str, Any]
    events: list[dict[str, Any]]
    event_seq: int
    logs: list[dict[str, Any]]
    log_total: int
