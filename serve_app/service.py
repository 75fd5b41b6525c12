"""The runtime every service class inherits: endpoint dispatch, threads, events, outputs, cancellation.

Endpoint methods are synchronous (they hold the GPU); `call_endpoint` and `stream_endpoint` run
them in a worker thread so the replica's event loop stays free, turn `ctx.progress(...)` calls into
typed stream events, store the files of every event and output in the output store from this
replica (their bytes never travel to the ingress), and tie a cancelled caller (client disconnect,
queue cancel) to `ctx.cancelled`, which diffusers' step callback reads to stop the pipeline.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import inspect
import logging
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

from pydantic import BaseModel

from serve_app.context import RequestInfo, RunContext
from serve_app.endpoints import collect_endpoints, collect_realtime
from serve_app.errors import RequestCancelled
from serve_app.events import Output, Partial, Progress, StreamEvent, StreamItem
from serve_app.storage import LocalStorage, OutputStore, StorageConfig, check_local_store_node, make_store, materialize

__all__ = ["RequestInfo", "RunContext", "Service", "runtime_user_config"]

logger = logging.getLogger("ray.serve")

_DONE = object()
_ORPHANED = object()
_RUNTIME_KEY = "serve_app"  # the framework's part of a deployment's user_config
CALLER_CHECK_S = 2.0  # how often a running request checks that its caller is alive
CALLER_PING_TIMEOUT_S = 30.0  # a caller too busy to answer within this is not taken for dead


async def _watch_caller(caller: Any, queue: asyncio.Queue[Any], every_s: float) -> None:
    """Put `_ORPHANED` on `queue` once the actor that made this call has died.

    Ray does not cancel an actor call, nor a streaming one, when its caller dies: a killed ingress
    replica would leave its in-flight requests running to the end for nobody. A ping is an empty
    actor task (`__ray_ready__`); only a definite death counts (a slow answer or a restarting actor
    does not).
    """
    from ray.exceptions import ActorDiedError

    while True:
        await asyncio.sleep(every_s)
        try:
            await asyncio.wait_for(caller.__ray_ready__.remote(), CALLER_PING_TIMEOUT_S)
        except ActorDiedError:
            queue.put_nowait(_ORPHANED)
            return
        except Exception:  # busy, unreachable for now, or restarting: look again later
            continue


def runtime_user_config(storage: StorageConfig) -> dict[str, Any]:
    """The `user_config` the builder gives every service deployment: what the replica needs to know
    about the application (its output store). Serve passes it to `Service.reconfigure`."""
    return {_RUNTIME_KEY: {"storage": storage.model_dump(mode="json")}}


class Service:
    """Base class of a model service: a plain class; Serve wraps it in the builder.

    Subclasses load their models in `__init__`, declare endpoints with `@endpoint` (and realtime
    ones with `@realtime`), and may override `check_health`. Set `concurrency_safe = True` when the
    endpoint methods may run at the same time in one replica; otherwise calls are serialised by a lock.
    A subclass that overrides `reconfigure` calls `super().reconfigure(user_config)`.
    """

    concurrency_safe: bool = False
    caller_check_s: float = CALLER_CHECK_S  # 0: don't watch callers (see `_watch_caller`)
    _serve_store: OutputStore | None = None

    @classmethod
    def deployment_defaults(cls, config: BaseModel) -> dict[str, Any]:
        """`serve.deployment` options this service needs unless the config says otherwise.

        Default: one request at a time per replica (diffusers pipelines are not thread-safe).
        """
        return {"max_ongoing_requests": 1}

    def reconfigure(self, user_config: dict[str, Any]) -> None:
        """Serve calls this after `__init__` (and on config updates): set up the output store."""
        runtime = (user_config or {}).get(_RUNTIME_KEY)
        if runtime is None:
            return
        from pydantic import TypeAdapter

        storage = TypeAdapter(StorageConfig).validate_python(runtime["storage"])
        if isinstance(storage, LocalStorage):
            check_local_store_node(storage, f"service {type(self).__name__}")
        self._serve_store = make_store(storage)

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

    async def _stored(self, item: StreamItem, info: RequestInfo) -> StreamItem:
        """Store the files an item carries (previews, partial outputs, outputs) from this replica."""
        if self._serve_store is not None:
            content = item.preview if isinstance(item, Progress) else item.data if isinstance(item, Partial) \
                else item.value
            if content is not None:
                await materialize(content, self._serve_store, info.base_url)
        return item

    async def call_endpoint(self, method: str, request: BaseModel | dict[str, Any], info: RequestInfo) -> BaseModel:
        """Run one endpoint to completion off the event loop and return its output model."""
        async for item in self.stream_endpoint(method, request, info, progress=False):
            if isinstance(item, Output):
                return item.value
        raise RuntimeError("endpoint produced no output")  # pragma: no cover - stream always ends in one

    async def stream_endpoint(
        self,
        method: str,
        request: BaseModel | dict[str, Any],
        info: RequestInfo,
        progress: bool = True,
        store: bool = True,
    ) -> AsyncIterator[StreamItem]:
        """Yield typed events as the endpoint runs, then `Output(output model)`.

        Files are stored from this replica unless `store` is False (another service that consumes
        the output itself, e.g. the trainer reading the preprocessor's file, gets the bytes).

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
            asyncio.ensure_future(fn(request, ctx)) if is_async
            # The worker thread runs in a copy of this context, so Serve's request id (the client's)
            # stays on the method's log lines.
            else loop.run_in_executor(None, functools.partial(contextvars.copy_context().run, fn, request, ctx))
        )
        future.add_done_callback(lambda _: queue.put_nowait(_DONE))
        watchdog = (asyncio.ensure_future(_watch_caller(info.caller, queue, self.caller_check_s))
                    if info.caller is not None and self.caller_check_s else None)
        try:
            while True:
                item = await queue.get()
                if item is _DONE:
                    break
                if item is _ORPHANED:
                    logger.warning("request %s: its caller (the replica holding the client's connection) died; "
                                   "cancelling the orphaned work", info.request_id)
                    raise RequestCancelled("the caller of this request is gone")
                yield await self._stored(item, info) if store else item
            output = Output(future.result())
            yield await self._stored(output, info) if store else output
        finally:
            if watchdog is not None:
                watchdog.cancel()
            if not future.done():
                cancel.set()
                logger.info("request %s cancelled; stopping its work", info.request_id)
                if is_async:
                    future.cancel()
                # Shielded: the work must stop before this replica takes more.
                await asyncio.shield(asyncio.gather(future, return_exceptions=True))

    async def realtime_session(self, method: str, session_id: str, info: RequestInfo) -> AsyncIterator[Any]:
        """The replica's side of one realtime WebSocket (see `serve_app.realtime`)."""
        from serve_app.realtime import serve_session

        if not any(spec.method == method for spec in collect_realtime(type(self))):
            raise ValueError(f"{type(self).__name__} has no realtime method {method!r}")
        async for item in serve_session(getattr(self, method), session_id, info):
            yield item

    def check_health(self) -> None:
        """Raise to make Serve replace this replica. Subclasses add real checks."""
