"""How a service declares its HTTP endpoints.

A service method decorated with `@endpoint(...)` becomes `POST /<service><path>` (and
`<path>/stream` when streaming is on) on the ingress. GPU work is a plain synchronous method:

    @endpoint("/sprint", input=SprintInput, output=ImagesOutput, billing=units)
    def sprint(self, request: SprintInput, ctx: RunContext) -> ImagesOutput: ...

It runs in a worker thread of the service replica; `ctx.progress(...)` reports progress (it feeds
the SSE stream), `ctx.partial(...)` sends a partial output (an audio chunk, a preview), and
`ctx.cancelled` says when the caller is gone. Work that only waits (a proxy to another API) can be
an `async def` method instead: it runs on the replica's event loop, and a caller that goes away
cancels it with `asyncio.CancelledError`.

A realtime endpoint is a WebSocket under the service's prefix (`/<service><path>`), for the life of
which one `async def` method runs on one replica (see `serve_app.realtime`):

    @realtime("/realtime")
    async def session(self, conn: RealtimeConnection, ctx: RunContext) -> None: ...
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from pydantic import BaseModel

from serve_app.context import RunContext

F = TypeVar("F", bound=Callable[..., Any])
BillingFn = Callable[[Any], float]
RoutingKeyFn = Callable[[Any], str | None]

_ATTR = "__serve_endpoint__"
_REALTIME_ATTR = "__serve_realtime__"


@dataclass(frozen=True)
class EndpointSpec:
    """One endpoint of a service: what the ingress needs to route, document and bill it."""

    path: str
    method: str
    input_model: type[BaseModel]
    output_model: type[BaseModel]
    billing: BillingFn | None = None
    stream: bool = True
    summary: str = ""
    description: str = ""
    routing_key: RoutingKeyFn | None = None

    def route(self, prefix: str) -> str:
        """The full HTTP path under a service prefix (`/my-model` + `/fast`)."""
        return f"{prefix}{self.path}" if self.path not in ("", "/") else prefix

    def handle_for(self, handle: Any, request: BaseModel) -> Any:
        """The deployment handle to call for `request` (routed by its key, when the endpoint has one)."""
        key = self.routing_key(request) if self.routing_key is not None else None
        return handle.options(multiplexed_model_id=key) if key else handle

    def billable_units(self, request: BaseModel) -> float:
        """Units for `x-fal-billable-units` (1 when the endpoint bills per request)."""
        return float(self.billing(request)) if self.billing else 1.0


def endpoint(
    path: str,
    *,
    input: type[BaseModel],
    output: type[BaseModel],
    billing: BillingFn | None = None,
    stream: bool = True,
    summary: str | None = None,
    routing_key: RoutingKeyFn | None = None,
) -> Callable[[F], F]:
    """Mark a service method as an HTTP endpoint (see the module docstring).

    `routing_key(request)` names what a request needs loaded (e.g. a hash of its LoRA files): calls
    go out with it as Serve's `multiplexed_model_id`, so Serve prefers a replica that already holds
    it (see `serve.multiplexed`). None routes as usual.
    """
    if path and not path.startswith("/"):
        raise ValueError(f"endpoint path must start with '/': {path!r}")

    def decorate(fn: F) -> F:
        doc = inspect.getdoc(fn) or ""

        def prepare(request: Any, ctx: Any) -> tuple[Any, Any]:
            # Also the entry point for direct Python handle calls (`handle.generate.remote(req)`):
            # accept a dict or the model, and supply a context.
            if not isinstance(request, input):
                request = input.model_validate(request.model_dump() if isinstance(request, BaseModel) else request)
            if ctx is None:
                ctx = RunContext()
            return request, ctx

        wrapper: Any
        if inspect.iscoroutinefunction(fn):

            @functools.wraps(fn)
            async def wrapper(self: Any, request: Any, ctx: Any = None) -> Any:
                request, ctx = prepare(request, ctx)
                async with self._async_run_guard(ctx):
                    return await fn(self, request, ctx)

        else:

            @functools.wraps(fn)
            def wrapper(self: Any, request: Any, ctx: Any = None) -> Any:
                request, ctx = prepare(request, ctx)
                with self._run_guard(ctx):
                    return fn(self, request, ctx)

        spec = EndpointSpec(
            path=path.rstrip("/"),
            method=fn.__name__,
            input_model=input,
            output_model=output,
            billing=billing,
            stream=stream,
            summary=summary or (doc.splitlines()[0] if doc else fn.__name__),
            description=doc,
            routing_key=routing_key,
        )
        setattr(wrapper, _ATTR, spec)
        return wrapper  # type: ignore[no-any-return]

    return decorate


@dataclass(frozen=True)
class RealtimeSpec:
    """One realtime (WebSocket) endpoint of a service."""

    path: str
    method: str
    summary: str = ""
    description: str = ""

    def route(self, prefix: str) -> str:
        return f"{prefix}{self.path}"


def realtime(path: str, *, summary: str | None = None) -> Callable[[F], F]:
    """Mark an `async def (self, conn, ctx) -> None` method as a WebSocket endpoint at `path`."""
    if not path.startswith("/") or path == "/":
        raise ValueError(f"realtime path must start with '/' and name the endpoint: {path!r}")

    def decorate(fn: F) -> F:
        if not inspect.iscoroutinefunction(fn):
            raise TypeError(f"realtime endpoint {fn.__name__} must be an async def method")
        doc = inspect.getdoc(fn) or ""
        spec = RealtimeSpec(path=path.rstrip("/"), method=fn.__name__,
                            summary=summary or (doc.splitlines()[0] if doc else fn.__name__), description=doc)
        setattr(fn, _REALTIME_ATTR, spec)
        return fn

    return decorate


def _collect(cls: type, attr: str, kind: type[Any]) -> list[Any]:
    specs: list[Any] = []
    for klass in reversed(cls.__mro__):
        for value in vars(klass).values():
            spec = getattr(value, attr, None)
            if isinstance(spec, kind):
                specs = [s for s in specs if s.method != spec.method] + [spec]
    return specs


def collect_endpoints(cls: type) -> list[EndpointSpec]:
    """Every endpoint a service class declares, in definition order; paths must be unique."""
    specs: list[EndpointSpec] = _collect(cls, _ATTR, EndpointSpec)
    paths = [s.path for s in specs] + [s.path for s in collect_realtime(cls)]
    dupes = {p for p in paths if paths.count(p) > 1}
    if dupes:
        raise ValueError(f"{cls.__name__} declares the same endpoint path twice: {sorted(dupes)}")
    return specs


def collect_realtime(cls: type) -> list[RealtimeSpec]:
    """Every realtime endpoint a service class declares, in definition order."""
    return _collect(cls, _REALTIME_ATTR, RealtimeSpec)


@dataclass
class ServiceRoute:
    """A mounted service: its URL prefix, deployment handle and declared endpoints."""

    name: str
    prefix: str
    handle: Any  # DeploymentHandle
    endpoints: list[EndpointSpec] = field(default_factory=list)
    realtime: list[RealtimeSpec] = field(default_factory=list)
    page_dir: str | None = None  # the service's own web page (its class's `static_dir`), served at prefix/
