"""The runtime every service class inherits: endpoint dispatch, threads, events, outputs, cancellation.

Endpoint methods are synchronous (they hold the GPU); `call_endpoint` and `stream_endpoint` run
them off the replica's event loop, so it stays free, on the replica's *model thread*: one thread per
replica that also ran the service's `__init__` (loading, compiling, warming up; see `hosted`), because
torch keeps state per thread (the current CUDA device, the CUDA graph trees of `reduce-overhead`
compilation, which fail when replayed from another thread). They turn `ctx.progress(...)` calls into
typed stream events, store the files of every event and output in the output store from this
replica (their bytes never travel to the ingress), and tie a cancelled caller (client disconnect,
queue cancel) to `ctx.cancelled`, which diffusers' step callback reads to stop the pipeline.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import contextvars
import functools
import inspect
import logging
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any, TypeVar

from pydantic import BaseModel

from serve_app.context import RequestInfo, RunContext, watch_caller
from serve_app.endpoints import collect_endpoints, collect_realtime
from serve_app.errors import RequestCancelled
from serve_app.events import Output, Partial, Progress, StreamEvent, StreamItem
from serve_app.storage import (
    DataUrlStore,
    LocalStorage,
    OutputStore,
    StorageConfig,
    check_local_store_node,
    make_store,
    materialize,
)

__all__ = ["RequestInfo", "RunContext", "Service", "hosted", "runtime_user_config"]

logger = logging.getLogger("ray.serve")

_DONE = object()
_ORPHANED = object()
_CANCELLED = object()
_RUNTIME_KEY = "serve_app"  # the framework's part of a deployment's user_config
CALLER_CHECK_S = 2.0  # how often a running request checks that its caller is alive
_thread_owner = threading.local()  # on a model thread: `owner` is the id of the service it runs

S = TypeVar("S", bound="Service")


async def _watch_caller(caller: Any, call_id: str, queue: asyncio.Queue[Any], every_s: float) -> None:
    """Put `_ORPHANED` or `_CANCELLED` on `queue` when `watch_caller` finds the call's caller dead, or
    its cancel posted (see `serve_app.context`)."""
    queue.put_nowait(_ORPHANED if await watch_caller(caller, call_id, every_s) == "orphaned" else _CANCELLED)


def wants_inline_files(request: BaseModel | dict[str, Any]) -> bool:
    """fal's `sync_mode: true`: the output's files come back inside the response as `data:` URLs,
    so the client needs no second request (nothing is stored). Any input model with the field has it."""
    value = request.get("sync_mode") if isinstance(request, dict) else getattr(request, "sync_mode", False)
    return value is True


def _own_thread(owner: int) -> None:
    _thread_owner.owner = owner


def hosted(cls: type[S]) -> type[S]:
    """`cls` as the builder gives it to Serve: a service that runs one request at a time is
    constructed on its model thread, so loading, compiling and warming up happen on the thread that
    then runs every request (a concurrency-safe service is returned as it is)."""
    if cls.concurrency_safe:
        return cls

    def __init__(self: S, *args: Any, **kwargs: Any) -> None:
        self.on_model_thread(cls.__init__, self, *args, **kwargs)

    namespace = {"__init__": __init__, "__module__": cls.__module__, "__qualname__": cls.__qualname__,
                 "__doc__": cls.__doc__}
    return type(cls.__name__, (cls,), namespace)


def runtime_user_config(storage: StorageConfig) -> dict[str, Any]:
    """The `user_config` the builder gives every service deployment: what the replica needs to know
    about the application (its output store). Serve passes it to `Service.reconfigure`."""
    return {_RUNTIME_KEY: {"storage": storage.model_dump(mode="json")}}


class Service:
    """Base class of a model service: a plain class; Serve wraps it in the builder.

    Subclasses load their models in `__init__`, declare endpoints with `@endpoint` (and realtime
    ones with `@realtime`), and may override `check_health`. Set `concurrency_safe = True` when the
    endpoint methods may run at the same time in one replica (on the event loop's thread pool);
    otherwise calls run one at a time, on the replica's model thread, in arrival order.
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

    def _model_thread(self) -> concurrent.futures.ThreadPoolExecutor | None:
        """The one thread that runs this service's model code; None for a concurrency-safe service
        (its synchronous methods share the event loop's pool)."""
        if self.concurrency_safe:
            return None
        pool = self.__dict__.get("_serve_model_thread")
        if pool is None:
            pool = self.__dict__.setdefault("_serve_model_thread", concurrent.futures.ThreadPoolExecutor(
                1, thread_name_prefix=f"{type(self).__name__}-model", initializer=_own_thread, initargs=(id(self),)))
        return pool  # type: ignore[no-any-return]

    def on_model_thread(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Run `fn(*args, **kwargs)` on the model thread and return what it returns (blocking).
        Already on it (or concurrency-safe): a direct call."""
        pool = self._model_thread()
        if pool is None or getattr(_thread_owner, "owner", None) == id(self):
            return fn(*args, **kwargs)
        return pool.submit(fn, *args, **kwargs).result()

    async def to_model_thread(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """`asyncio.to_thread` for an `async def` endpoint's model work: await `fn(*args, **kwargs)`
        run on the model thread (a concurrency-safe service: on the event loop's pool)."""
        call = functools.partial(contextvars.copy_context().run, fn, *args, **kwargs)
        return await asyncio.get_running_loop().run_in_executor(self._model_thread(), call)

    def _endpoint_method(self, method: str) -> Callable[..., Any]:
        if not any(spec.method == method for spec in collect_endpoints(type(self))):
            raise ValueError(f"{type(self).__name__} has no endpoint method {method!r}")
        return getattr(self, method)  # type: ignore[no-any-return]

    async def _stored(self, item: StreamItem, info: RequestInfo, inline: bool = False) -> StreamItem:
        """Store the files an item carries (previews, partial outputs, outputs) from this replica;
        an output `inline` (fal's `sync_mode`) gets `data:` URLs instead."""
        store = DataUrlStore() if inline and isinstance(item, Output) else self._serve_store
        if store is not None:
            content = item.preview if isinstance(item, Progress) else item.data if isinstance(item, Partial) \
                else item.value
            if content is not None:
                await materialize(content, store, info.base_url)
        return item

    async def call_endpoint(self, method: str, request: BaseModel | dict[str, Any], info: RequestInfo) -> BaseModel:
        """Run one endpoint to completion off the event loop and return its output model."""
        return (await self.call_endpoint_timed(method, request, info)).value

    async def call_endpoint_timed(self, method: str, request: BaseModel | dict[str, Any],
                                  info: RequestInfo) -> Output:
        """`call_endpoint`, answered as the `Output` item: the model and where the replica's time went."""
        async for item in self.stream_endpoint(method, request, info, progress=False):
            if isinstance(item, Output):
                return item
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
        marks = {"submitted": time.perf_counter()}

        def timed_run() -> Any:
            marks["started"] = time.perf_counter()
            try:
                return fn(request, ctx)
            finally:
                marks["ended"] = time.perf_counter()

        async def timed_arun() -> Any:
            marks["started"] = time.perf_counter()
            try:
                return await fn(request, ctx)
            finally:
                marks["ended"] = time.perf_counter()

        # The thread runs the method in a copy of this context, so Serve's request id (the client's)
        # stays on the method's log lines. `queued`: the thread's own future, which a request
        # cancelled before its turn takes out of the line.
        queued: concurrent.futures.Future[Any] | None = None
        if is_async:
            future: asyncio.Future[Any] = asyncio.ensure_future(timed_arun())
        elif (pool := self._model_thread()) is not None:
            queued = pool.submit(contextvars.copy_context().run, timed_run)
            future = asyncio.wrap_future(queued)
        else:
            future = loop.run_in_executor(None, functools.partial(contextvars.copy_context().run, timed_run))
        future.add_done_callback(lambda _: queue.put_nowait(_DONE))
        watchdog = (asyncio.ensure_future(_watch_caller(info.caller, info.call_id, queue, self.caller_check_s))
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
                if item is _CANCELLED:
                    logger.warning("request %s: its caller cancelled it but Serve's cancel did not arrive; "
                                   "cancelling the work", info.request_id)
                    raise RequestCancelled("the caller cancelled this request")
                yield await self._stored(item, info) if store else item
            output = Output(future.result())
            if store:
                stored_at = time.perf_counter()
                await self._stored(output, info, inline=wants_inline_files(request))
                marks["stored"] = time.perf_counter() - stored_at
            output.timings = {**ctx.timings, "dispatch": marks["started"] - marks["submitted"],
                              "run": marks["ended"] - marks["started"], "store": marks.get("stored", 0.0)}
            yield output
        finally:
            if watchdog is not None:
                watchdog.cancel()
            if not future.done():
                cancel.set()
                logger.info("request %s cancelled; stopping its work", info.request_id)
                if is_async or (queued is not None and queued.cancel()):  # an unstarted one never runs
                    future.cancel()
                # Shielded: the work must stop before this replica takes more.
                await asyncio.shield(asyncio.gather(future, return_exceptions=True))

    async def realtime_session(self, method: str, session_id: str, info: RequestInfo) -> AsyncIterator[Any]:
        """The replica's side of one realtime WebSocket (see `serve_app.realtime`)."""
        from serve_app.realtime import serve_session

        if not any(spec.method == method for spec in collect_realtime(type(self))):
            raise ValueError(f"{type(self).__name__} has no realtime method {method!r}")
        async for item in serve_session(getattr(self, method), session_id, info, self.caller_check_s):
            yield item

    def check_health(self) -> None:
        """Raise to make Serve replace this replica. Subclasses add real checks."""
