"""HTTP facts every layer that answers HTTP shares: fal's headers and the JSON error response.

Errors become status codes in `errors.to_http`; this module only puts them in a response. The
ingress and the queue routes both build on it (the queue sits below the ingress, so neither
imports the other).
"""

from __future__ import annotations

import logging
import math

from fastapi.responses import JSONResponse

from serve_app.errors import to_http, unwrap_remote_error

logger = logging.getLogger("ray.serve")

BILLING_HEADER = "x-fal-billable-units"
# Serve's proxy already answers with `x-request-id` (its own id, or the caller's); ours is fal's.
REQUEST_ID_HEADER = "x-fal-request-id"
SERVER_TIMING_HEADER = "Server-Timing"


def server_timing(timings: dict[str, float]) -> str:
    """A `Server-Timing` value (W3C Server Timing: durations in milliseconds) from seconds by name,
    e.g. `run;dur=562.31, store;dur=1.40`. Browsers' developer tools show it per request."""
    return ", ".join(f"{name};dur={seconds * 1000:.2f}" for name, seconds in timings.items())


def parse_server_timing(header: str) -> dict[str, float]:
    """The inverse of `server_timing`: `run;dur=562.31, store;dur=1.40` -> {"run": 0.56231, "store": 0.0014}
    (seconds; entries without a duration are left out)."""
    out: dict[str, float] = {}
    for item in filter(None, (x.strip() for x in header.split(","))):
        name, _, rest = item.partition(";")
        for param in rest.split(";"):
            key, _, value = param.strip().partition("=")
            if key == "dur":
                out[name] = float(value) / 1000
    return out


def format_units(units: float) -> str:
    """`x-fal-billable-units` value: an integer when whole, else the shortest float."""
    return str(int(units)) if float(units).is_integer() else f"{units:g}"


def error_response(exc: BaseException, request_id: str) -> JSONResponse:
    """The JSON error response for any exception (see `errors.to_http`); 5xx are logged."""
    status, detail = to_http(exc)
    if status >= 500:
        logger.error("request %s failed", request_id, exc_info=exc)
    headers = {BILLING_HEADER: "0", REQUEST_ID_HEADER: request_id}
    if status in (429, 503):  # shed, not broken: say when to come back
        headers["Retry-After"] = str(retry_after_s(exc))
    return JSONResponse({"detail": detail, "request_id": request_id}, status_code=status, headers=headers)


def retry_after_s(exc: BaseException) -> int:
    """Seconds a client should wait before retrying an overloaded service (Serve's own hint when it
    gives one, else 1)."""
    cause = unwrap_remote_error(exc)
    for name in ("retry_after_s",):
        value = getattr(cause, name, None) or getattr(exc, name, None)
        if isinstance(value, (int, float)) and value > 0:
            return max(1, math.ceil(value))
    return 1
