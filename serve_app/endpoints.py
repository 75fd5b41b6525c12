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
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from pydantic import BaseModel

F = TypeVar("F", bound=Callable[..., Any])
BillingFn = Callable[[Any], float]

_ATTR = "__serve_endpoint__"


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

    def route(self, prefix: str) -> str:
        """The full HTTP path under a service prefix (`/sana` + `/sprint`)."""
        return f"{prefix}{self.path}" if self.path not in ("", "/") else prefix

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
) -> Callable[[F], F]:
    """Mark a service method as an HTTP endpoint (see the module docstring)."""
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
                from serve_app.service import RunContext

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
        )
        setattr(wrapper, _ATTR, spec)
        return wrapper  # type: ignore[no-any-return]

    return decorate


def collect_endpoints(cls: type) -> list[EndpointSpec]:
    """Every endpoint a service class declares, in definition order; paths must be unique."""
    specs: list[EndpointSpec] = []
    for klass in reversed(cls.__mro__):
        for value in vars(klass).values():
            spec = getattr(value, _ATTR, None)
            if isinstance(spec, EndpointSpec):
                specs = [s for s in specs if s.method != spec.method] + [spec]
    paths = [s.path for s in specs]
    dupes = {p for p in paths if paths.count(p) > 1}
    if dupes:
        raise ValueError(f"{cls.__name__} declares the same endpoint path twice: {sorted(dupes)}")
    return specs
