"""What an endpoint call knows about its request, on both sides of the handle.

`RequestInfo` crosses from the ingress to the service replica (a Starlette Request can't be
pickled); `RunContext` is what the endpoint method sees: its id, progress reporting, cancellation.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel

from serve_app.errors import RequestCancelled
from serve_app.events import Partial, Progress, StreamEvent
from serve_app.io import Image


@dataclass(frozen=True)
class RequestInfo:
    """Request facts that cross the handle boundary.

    Attributes:
        request_id: the id the client holds (`x-fal-request-id`, the queue's request id).
        route: the endpoint's HTTP path, for logs.
        base_url: the server's public root, for the URLs of files the replica stores.
        caller: the actor that holds the client's connection. When it dies mid-request (a killed
            ingress replica), Ray does not cancel the call it made, so the service replica watches
            it and cancels the orphaned work itself (`Service.stream_endpoint`).
    """

    request_id: str
    route: str = ""
    base_url: str = "http://127.0.0.1:8000/"
    caller: Any = None  # the calling process's Ray actor (the ingress replica, the queue runner), or None

    @staticmethod
    def here() -> Any:
        """The Ray actor this code runs in (for `caller`), or None outside an actor or outside Ray."""
        try:
            import ray

            if not ray.is_initialized():
                return None
            return ray.get_runtime_context().current_actor
        except Exception:  # a driver, not an actor
            return None


class RunContext:
    """What an endpoint method sees of its request: id, progress reporting, cancellation."""

    def __init__(
        self,
        request_id: str = "",
        emit: Callable[[StreamEvent], None] | None = None,
        cancel_event: threading.Event | None = None,
    ) -> None:
        self.request_id = request_id
        self._emit = emit
        self._cancel = cancel_event or threading.Event()
        # Seconds by name of the parts of the call the method chose to time (`time_part`); a sync
        # HTTP response carries them in its `Server-Timing` header beside the framework's own parts.
        self.timings: dict[str, float] = {}

    def time_part(self, name: str, seconds: float) -> None:
        """Record where part of the call's time went (a `Server-Timing` metric name: letters, digits,
        `-` or `_`); a part timed twice adds up."""
        if not name or not all(c.isalnum() or c in "-_" for c in name):
            raise ValueError(f"not a Server-Timing metric name: {name!r}")
        self.timings[name] = self.timings.get(name, 0.0) + seconds

    @property
    def cancelled(self) -> bool:
        """True once the caller has gone away or cancelled."""
        return self._cancel.is_set()

    @property
    def streaming(self) -> bool:
        """True when someone listens to progress (worth rendering previews for)."""
        return self._emit is not None

    def check_cancelled(self) -> None:
        """Raise `RequestCancelled` if the caller is gone."""
        if self.cancelled:
            raise RequestCancelled()

    def emit(self, event: StreamEvent) -> None:
        """Forward a typed event (from a rank, another service); a no-op when nobody listens."""
        if not isinstance(event, (Progress, Partial)):
            raise TypeError(f"not a stream event: {type(event).__name__}")
        if self._emit is not None:
            self._emit(event)

    def progress(self, step: int, total: int, message: str = "", preview: Image | None = None) -> None:
        """Report progress; a no-op when nobody listens."""
        if self._emit is not None:
            self._emit(Progress(step, total, message, preview))

    def partial(self, data: BaseModel, kind: str = "partial") -> None:
        """Send a partial output (stream frame `{"type": kind, **data}`); a no-op when nobody listens."""
        if self._emit is not None:
            self._emit(Partial(data, kind))

    def diffusers_callback(self, total: int, message: str = "denoising") -> Callable[..., dict[str, Any]]:
        """A `callback_on_step_end` that reports each step and stops the pipeline on cancel.

        Cancelling raises `RequestCancelled` out of the pipeline at once (diffusers' own interrupt
        flag would skip the remaining steps but still decode the latents).
        """

        def on_step_end(pipe: Any, step: int, timestep: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
            self.check_cancelled()
            self.progress(step + 1, total, message)
            return {}

        return on_step_end
