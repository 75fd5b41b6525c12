"""Response bodies of the queue routes, for the OpenAPI document (fal's field names)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field


class SubmitResponse(BaseModel):
    request_id: str = Field(description="Stable id of the request (also in `x-fal-request-id`).")
    response_url: str = Field(description="GET: the result.")
    status_url: str = Field(description="GET: the status (`?logs=1` for logs); `/stream` appended: SSE.")
    cancel_url: str = Field(description="PUT: cancel.")
    queue_position: int = Field(description="Requests ahead of this one in its service's queue.")


class QueueStatus(BaseModel):
    status: Literal["IN_QUEUE", "IN_PROGRESS", "COMPLETED"]
    request_id: str
    response_url: str
    status_url: str
    cancel_url: str
    queue_position: int | None = Field(default=None, description="Only while IN_QUEUE.")
    logs: list[dict[str, Any]] | None = Field(default=None, description="With `?logs=1`: message, level, "
                                              "source, timestamp.")
    metrics: dict[str, Any] | None = Field(default=None, description="COMPLETED: `inference_time` in seconds.")
    error: str | None = Field(default=None, description="COMPLETED with a failure: what went wrong.")
    error_type: str | None = Field(default=None, description="COMPLETED with a failure: e.g. `validation_error`, "
                                   "`request_cancelled`, `internal_error`.")


class CancelResponse(BaseModel):
    status: Literal["OK", "CANCELLATION_REQUESTED", "ALREADY_COMPLETED", "NOT_FOUND"] = Field(
        description="OK (removed from the queue, 200), CANCELLATION_REQUESTED (running; asked to stop, 202), "
        "ALREADY_COMPLETED (400), NOT_FOUND (404).")


class ErrorBody(BaseModel):
    detail: Any = Field(description="What went wrong: a message, or fal's list of field errors.")
    request_id: str | None = Field(default=None, description="The request's id.")


REQUEST_ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorBody, "description": "Missing or unknown API key"},
    404: {"model": ErrorBody, "description": "No such request (or another key's)"},
    503: {"model": ErrorBody, "description": "The queue store is unavailable; retry (Retry-After)"},
}
SUBMIT_ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorBody, "description": "Missing or unknown API key"},
    413: {"model": ErrorBody, "description": "The input is larger than the queue's per-job limit"},
    429: {"model": ErrorBody, "description": "The queue is full; retry after Retry-After seconds"},
    503: {"model": ErrorBody, "description": "The queue store is unavailable; retry (Retry-After)"},
}
