"""The job state machine: states, allowed transitions, timestamps, logs, and fal's status shapes.

Internally a job is QUEUED -> RUNNING -> SUCCEEDED | FAILED | CANCELLED; a QUEUED job may be
CANCELLED, and a RUNNING job goes back to QUEUED when the ingress replica running it died. fal
shows only three statuses: IN_QUEUE, IN_PROGRESS and COMPLETED (a failure is a COMPLETED job with
`error` / `error_type`, its real status code and body served at the result URL).

Pure code: no Ray, no I/O; every method takes the time it should record.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any


class JobState(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


TERMINAL: frozenset[JobState] = frozenset({JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED})

TRANSITIONS: dict[JobState, frozenset[JobState]] = {
    JobState.QUEUED: frozenset({JobState.RUNNING, JobState.CANCELLED}),
    JobState.RUNNING: frozenset({JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED, JobState.QUEUED}),
    JobState.SUCCEEDED: frozenset(),
    JobState.FAILED: frozenset(),
    JobState.CANCELLED: frozenset(),
}

FAL_STATUS: dict[JobState, str] = {
    JobState.QUEUED: "IN_QUEUE",
    JobState.RUNNING: "IN_PROGRESS",
    JobState.SUCCEEDED: "COMPLETED",
    JobState.FAILED: "COMPLETED",
    JobState.CANCELLED: "COMPLETED",
}

CANCELLED_STATUS = 499
CANCELLED_DETAIL = "Request cancelled by the client."


class InvalidTransition(Exception):
    """A state change the machine does not allow (a bug in the caller, never user input)."""


def log_entry(message: str, now: float, level: str = "INFO", source: str = "user") -> dict[str, Any]:
    """One log line in fal's shape: `{"message", "level", "source", "timestamp"}` (ISO 8601, UTC)."""
    stamp = datetime.fromtimestamp(now, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    return {"message": message, "level": level, "source": source, "timestamp": stamp}


def error_message(status_code: int, detail: Any) -> str:
    """The status's one-line `error`: the detail when it is text, else fal's `Invalid status code: N`."""
    return detail if isinstance(detail, str) and detail else f"Invalid status code: {status_code}"


@dataclass
class Job:
    """One queued request and everything the queue knows about it.

    `payload` is the validated input as JSON; `base_url` is the server root that file URLs use;
    `response_url` is the job's result URL (status and cancel URLs derive from it).
    """

    request_id: str
    service: str
    path: str
    payload: dict[str, Any]
    base_url: str
    response_url: str
    created_at: float
    webhook_url: str | None = None
    user_id: str = "anonymous"
    owner: str = ""  # hash of the API key that submitted it ("" with keys off): only it may see the job
    payload_bytes: int = 0
    result_bytes: int = 0
    state: JobState = JobState.QUEUED
    attempt: int = 0
    gateway_request_id: str = ""
    worker_id: str | None = None
    cancel_requested: bool = False
    started_at: float | None = None
    finished_at: float | None = None
    logs: list[dict[str, Any]] = field(default_factory=list)
    log_total: int = 0
    status_code: int | None = None
    result: Any = None
    error_type: str | None = None
    billable_units: float = 0.0
    inference_time: float | None = None
    webhook_attempts: int = 0
    webhook_done: bool = False

    @property
    def done(self) -> bool:
        return self.state in TERMINAL

    @property
    def status_url(self) -> str:
        return f"{self.response_url}/status"

    @property
    def cancel_url(self) -> str:
        return f"{self.response_url}/cancel"

    def _move(self, to: JobState) -> None:
        if to not in TRANSITIONS[self.state]:
            raise InvalidTransition(f"job {self.request_id}: {self.state} -> {to} is not allowed")
        self.state = to

    def start(self, worker_id: str, gateway_request_id: str, now: float) -> None:
        """QUEUED -> RUNNING on `worker_id`; counts an attempt."""
        self._move(JobState.RUNNING)
        self.attempt += 1
        self.worker_id = worker_id
        self.gateway_request_id = gateway_request_id
        self.started_at = now

    def requeue(self, reason: str, now: float) -> None:
        """RUNNING -> QUEUED after its runner was lost; the next attempt starts from scratch."""
        self._move(JobState.QUEUED)
        self.worker_id = None
        self.started_at = None
        self.add_logs([log_entry(f"{reason}; queued again (attempt {self.attempt + 1})", now, "WARN", "queue")])

    def succeed(self, output: Any, billable_units: float, inference_time: float | None, now: float) -> None:
        """RUNNING -> SUCCEEDED with the endpoint's output JSON."""
        self._move(JobState.SUCCEEDED)
        self._finish(200, output, None, inference_time, now)
        self.billable_units = billable_units

    def fail(self, status_code: int, detail: Any, error_type: str, inference_time: float | None, now: float) -> None:
        """RUNNING -> FAILED: the result URL answers `status_code` with `{"detail": detail}`."""
        self._move(JobState.FAILED)
        self._finish(status_code, detail, error_type, inference_time, now)

    def cancel(self, inference_time: float | None, now: float) -> None:
        """QUEUED or RUNNING -> CANCELLED: the result URL answers 499."""
        self._move(JobState.CANCELLED)
        self._finish(CANCELLED_STATUS, CANCELLED_DETAIL, "request_cancelled", inference_time, now)

    def _finish(self, status_code: int, result: Any, error_type: str | None, inference_time: float | None,
                now: float) -> None:
        self.payload = {}  # never run again: the input's memory goes now, not after `result_ttl_s`
        self.status_code = status_code
        self.result = result
        self.error_type = error_type
        self.inference_time = inference_time
        self.finished_at = now
        self.worker_id = None

    def add_logs(self, entries: list[dict[str, Any]], max_logs: int = 500) -> None:
        """Append log lines, keeping the latest `max_logs` (`log_total` counts all ever added)."""
        if entries:
            self.logs.extend(entries)
            self.log_total += len(entries)
            if len(self.logs) > max_logs:
                del self.logs[: len(self.logs) - max_logs]

    def status_view(self, with_logs: bool, queue_position: int | None = None) -> dict[str, Any]:
        """The status body in fal's shape. The keys fal_client indexes are always present:
        `queue_position` when IN_QUEUE, `logs` (null unless asked for) otherwise."""
        status = FAL_STATUS[self.state]
        body: dict[str, Any] = {
            "status": status,
            "request_id": self.request_id,
            "response_url": self.response_url,
            "status_url": self.status_url,
            "cancel_url": self.cancel_url,
        }
        if status == "IN_QUEUE":
            body["queue_position"] = queue_position if queue_position is not None else 0
            return body
        body["logs"] = list(self.logs) if with_logs else None
        if status == "COMPLETED":
            body["metrics"] = {"inference_time": self.inference_time} if self.inference_time is not None else {}
            failed = self.state != JobState.SUCCEEDED
            body["error"] = error_message(self.status_code or 500, self.result) if failed else None
            body["error_type"] = self.error_type if failed else None
        return body

    def to_record(self) -> dict[str, Any]:
        """A JSON-able snapshot (for the journal)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> Job:
        """Rebuild from `to_record`'s output."""
        data = dict(record)
        data["state"] = JobState(data["state"])
        return cls(**data)
