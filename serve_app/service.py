"""The runtime every service class inherits: endpoint dispatch, threads, progress, cancellation.

Endpoint methods are synchronous (they hold the GPU); `call_endpoint` and `stream_endpoint` run
them in a worker thread so the replica's event loop stays free, turn `ctx.progress(...)` calls into
stream items, and tie a cancelled caller (client disconnect, queue cancel) to `ctx.cancelled`, which
diffusers' step callback reads to interrupt the pipeline at the next step.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel

from serve_app.endpoints import collect_endpoints
from serve_app.errors import RequestCancelled
from serve_app.io import Image
from serve_app.streaming import Partial, Progress, StreamEvent

logger = logging.getLogger("ray.serve")

_DONE = object()


@dataclass(frozen=True)
class RequestInfo:
    """Request facts that cross the handle boundary (a Starlette Request can't be pickled)."""

    request_id: str
    route: str = ""


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

    def progress(self, step: int, total: int, message: str = "", preview: Image | None = None) -> None:
        """Report progress; a no-op when nobody listens."""
        if self._emit is not None:
            self._emit(Progress(step, total, message, preview))

    def partial(self, data: BaseModel, kind: str = "partial") -> None:
        """Send a partial output (stream frame `{"type": kind, **data}`); a no-op when nobody listens."""
        if self._emit is not None:
            self._emit(Partial(data, kind))

    def diffusers_callback(self, total: int, message: str = "denoising") -> Callable[..., dict[str, Any]]:
        """A `callback_on_step_end` that reports each step and interrupts the pipeline on cancel."""

        def on_step_end(pipe: Any, step: int, timestep: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
            if self.cancelled:
                pipe._interrupt = True
            self.progress(step + 1, total, message)
            return {}

        return on_step_end


class Service:
    """Base class of a model service: a plain class; Serve wraps it in the builder.

    Subclasses load their models in `__init__`, declare endpoints with `@endpoint`, and may
    override `check_health`. Set `concurrency_safe = True` when the endpoint methods may run at
    the same time in one replica; otherwise calls are serialised by a lock.
    """

    concurrency_safe: bool = False

    @classmethod
    def deployment_defaults(cls, config: BaseModel) -> dict[str, Any]:
        """`serve.deployment` options this service needs unless the config says otherwise.

        Default: one request at a time per replica (diffusers pipelines are not thread-safe).
        """
        return {"max_ongoing_requests": 1}

    @contextlib.contextmanager
    def _run_guard(self, ctx: RunContext) -> Iterator[None]:
        """Serialise endpoint runs unless the service is concurrency-safe."""
        if self.concurrency_safe:
            yield
            return
        lock = self.__dict__.get("_serve_run_lock") or self.__dict__.setdefault("_serve_run_lock", threading.Lock())
        with lock:
            ctx.check_cancelled()  # cancelled while waiting for the previous request
            yield

    @contextlib.asynccontextmanager
    async def _async_run_guard(self, ctx: RunContext) -> AsyncIterator[None]:
        """The same policy for `async def` endpoints, without blocking the event loop."""
        if self.concurrency_safe:
            yield
            return
        lock = self.__dict__.get("_serve_async_lock") or self.__dict__.setdefault("_serve_async_lock", asyncio.Lock())
        async with lock:
            ctx.check_cancelled()
            yield

    def _endpoint_method(self, method: str) -> Callable[..., Any]:
        if not any(spec.method == method for spec in collect_endpoints(type(self))):
            raise ValueError(f"{type(self).__name__} has no endpoint method {method!r}")
        return getattr(self, method)  # type: ignore[no-any-return]

    async def call_endpoint(self, method: str, request: BaseModel | dict[str, Any], info: RequestInfo) -> BaseModel:
        """Run one endpoint to completion off the event loop and return its output model."""
        async for item in self.stream_endpoint(method, request, info, progress=False):
            if not isinstance(item, (Progress, Partial)):
                return item
        raise RuntimeError("endpoint produced no output")  # pragma: no cover - stream always ends in one

    async def stream_endpoint(
        self,
        method: str,
        request: BaseModel | dict[str, Any],
        info: RequestInfo,
        progress: bool = True,
    ) -> AsyncIterator[StreamEvent | BaseModel]:
        """Yield progress events and partial outputs as the endpoint runs, then its output model.

        Cancelling the consumer (client disconnect) sets the run's cancel flag; a synchronous
        method's worker thread is awaited until it stops, so the next request never races a
        still-running pipeline, and an `async def` method's task is cancelled.
        """
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[Any] = asyncio.Queue()
        cancel = threading.Event()
        fn = self._endpoint_method(method)
        is_async = inspect.iscoroutinefunction(fn)

        def emit(event: StreamEvent) -> None:
            if is_async:
                queue.put_nowait(event)
            else:
                loop.call_soon_threadsafe(queue.put_nowait, event)

        ctx = RunContext(info.request_id, emit if progress else None, cancel)
        future: asyncio.Future[Any] = (
            asyncio.ensure_future(fn(request, ctx)) if is_async else loop.run_in_executor(None, fn, request, ctx)
        )
        future.add_done_callback(lambda _: queue.put_nowait(_DONE))
        try:
            while True:
                item = await queue.get()
                if item is _DONE:
                    break
                yield item
            yield future.result()
        finally:
            if not future.done():
                cancel.set()
                logger.info("request %s cancelled; stopping its work", info.request_id)
                if is_async:
                    future.cancel()
                # Shielded: the work must stop before this replica takes more.
                await asyncio.shield(asyncio.gather(future, return_exceptions=True))

    def check_health(self) -> None:
        """Raise to make Serve replace this replica. Subclasses add real checks."""
