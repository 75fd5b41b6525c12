"""What an endpoint call knows about its request, on both sides of the handle.

`RequestInfo` crosses from the ingress to the service replica (a Starlette Request can't be
pickled); `RunContext` is what the endpoint method sees: its id, progress reporting, cancellation.
"""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
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
        caller: the calling process's `CancelBoard` (see `here`), or None. The service replica
            watches it (`Service.stream_endpoint`) and cancels the call's work itself when the caller
            cancelled it but Serve's cancel never arrived, or when the caller died (Ray does not
            cancel the calls of a killed ingress replica).
        call_id: this call's own id, under which the caller posts its cancel (request ids are the
            client's and may repeat).
    """

    request_id: str
    route: str = ""
    base_url: str = "http://127.0.0.1:8000/"
    caller: Any = None  # the calling process's CancelBoard actor (the ingress, a queue runner), or None
    call_id: str = field(default_factory=lambda: uuid.uuid4().hex)

    @staticmethod
    def here() -> Any:
        """This process's `CancelBoard` (for `caller`), started on first use and fate-shared with the
        Ray actor this code runs in; None outside an actor or outside Ray."""
        global _board
        if _board is not None:
            return _board
        try:
            import ray

            if not ray.is_initialized() or ray.get_runtime_context().current_actor is None:
                return None
        except Exception:  # a driver, not an actor
            return None
        _board = start_companion(CancelBoard)
        return _board


def start_companion(cls: type) -> Any:
    """Start a small async actor of `cls` beside this process: on its node, with no CPU reserved,
    owned by this process (so it dies with it)."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    node = ray.get_runtime_context().get_node_id()
    return ray.remote(cls).options(
        num_cpus=0, max_concurrency=1000,
        scheduling_strategy=NodeAffinitySchedulingStrategy(node_id=node, soft=True),
    ).remote()


CANCEL_MEMORY_S = 3600.0  # how long a board remembers a cancel (a lost one is found within seconds)


class CancelBoard:
    """A small async actor beside a process that makes endpoint calls (an ingress replica, a queue
    runner, a service calling another): the calls it cancelled, by `call_id`.

    Serve's cancel of a handle call is best effort (ray-project/ray#52533: a cancelled request can
    still run to its end), so the caller also posts the cancel here, and the service replica, which
    already pings its caller every few seconds, stops the work when it finds its call posted. The
    board is owned by the process that started it and dies with it: a dead board means a dead caller.
    """

    def __init__(self) -> None:
        self._cancelled: dict[str, float] = {}

    async def cancel(self, call_id: str) -> None:
        now = time.monotonic()
        if len(self._cancelled) > 1024:
            self._cancelled = {k: t for k, t in self._cancelled.items() if now - t < CANCEL_MEMORY_S}
        self._cancelled[call_id] = now

    async def cancelled(self, call_id: str) -> bool:
        return call_id in self._cancelled


_board: Any = None
CALLER_PING_TIMEOUT_S = 30.0  # a caller too busy to answer within this is not taken for dead


async def watch_caller(caller: Any, call_id: str, every_s: float) -> str:
    """Poll the caller's board every `every_s` s; return "cancelled" once it posted `call_id`, or
    "orphaned" once it died (its process did).

    Ray does not cancel an actor call, nor a streaming one, when its caller dies: a killed ingress
    replica would leave its in-flight requests running to the end for nobody. And Serve's cancel is
    best effort: a client that hung up could leave its work running too. Only a definite death
    counts (a slow answer or a restarting actor does not).
    """
    from ray.exceptions import ActorDiedError

    while True:
        await asyncio.sleep(every_s)
        try:
            if await asyncio.wait_for(caller.cancelled.remote(call_id), CALLER_PING_TIMEOUT_S):
                return "cancelled"
        except ActorDiedError:
            return "orphaned"
        except Exception:  # busy, unreachable for now, or restarting: look again later
            continue


def cancel_call(response: Any, info: RequestInfo) -> None:
    """Cancel a handle call made with `info`: its Serve response or response generator, and, since
    Serve's cancel is best effort, a post on the caller's board, which the service replica watches."""
    cancel = getattr(response, "cancel", None)
    if callable(cancel):
        cancel()
    if info.caller is not None:
        info.caller.cancel.remote(info.call_id)


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
