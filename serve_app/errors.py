"""One error vocabulary for every service, mapped to HTTP in exactly one place.

Services raise these; the ingress turns them into fal-shaped JSON bodies. Field errors use the
same `{"detail": [{"loc": ["body", field], "msg": ..., "type": ...}]}` shape as FastAPI's request
validation, so clients pin the message to the offending input field.
"""

from __future__ import annotations

from typing import Any


class ServiceError(Exception):
    """Base class: an error with an HTTP status and a JSON-serialisable `detail`."""

    status_code: int = 500
    error_type: str = "internal_error"

    def __init__(self, message: str = "Internal Server Error") -> None:
        super().__init__(message)
        self.message = message

    @property
    def detail(self) -> Any:
        """The value of the response body's `detail` key."""
        return self.message

    def __reduce__(self) -> tuple[Any, ...]:
        # Rebuild from the stored attributes so errors cross Ray's process boundary intact.
        return (_rebuild, (type(self), self.__dict__))


def _rebuild(cls: type[ServiceError], state: dict[str, Any]) -> ServiceError:
    err = cls.__new__(cls)
    Exception.__init__(err, state.get("message", ""))
    err.__dict__.update(state)
    return err


class FieldError(ServiceError):
    """A bad value in one input field (fal's `FieldException`): HTTP 422 naming the field."""

    status_code = 422
    error_type = "value_error"

    def __init__(self, field: str, message: str, type: str = "value_error") -> None:
        super().__init__(message)
        self.field = field
        self.type = type

    @property
    def detail(self) -> list[dict[str, Any]]:
        return [{"loc": ["body", self.field], "msg": self.message, "type": self.type}]


class RequestCancelled(ServiceError):
    """The caller went away or asked to cancel; fal answers 499."""

    status_code = 499
    error_type = "request_cancelled"

    def __init__(self, message: str = "Request cancelled by the client.") -> None:
        super().__init__(message)


class Overloaded(ServiceError):
    """No capacity right now; retry later."""

    status_code = 503
    error_type = "overloaded"

    def __init__(self, message: str = "Service is overloaded, retry later.") -> None:
        super().__init__(message)


class ServiceUnavailable(ServiceError):
    """The service cannot serve as deployed (a missing credential, a disabled dependency): 503."""

    status_code = 503
    error_type = "service_unavailable"

    def __init__(self, message: str = "Service unavailable.") -> None:
        super().__init__(message)


class RequestTimeout(ServiceError):
    """The work did not finish in the time allowed."""

    status_code = 504
    error_type = "request_timeout"

    def __init__(self, message: str = "Request timed out.") -> None:
        super().__init__(message)


class NotFound(ServiceError):
    status_code = 404
    error_type = "not_found"


class UpstreamError(ServiceError):
    """A dependency (another hosted model, a download) failed."""

    status_code = 502
    error_type = "upstream_error"


def unwrap_remote_error(exc: BaseException) -> BaseException:
    """Return the user exception that a Ray task/actor error wraps (or `exc` itself).

    Ray re-raises a remote exception as a `RayTaskError` that also subclasses the original type;
    its `cause` attribute holds the original object with its attributes intact.
    """
    seen = 0
    while hasattr(exc, "cause") and isinstance(exc.cause, BaseException) and seen < 8:
        exc = exc.cause
        seen += 1
    return exc


def _validation_detail(errors: list[Any], prefix: tuple[str, ...]) -> list[dict[str, Any]]:
    """pydantic's error list in FastAPI's JSON form, locations prefixed (e.g. with "body")."""
    out = []
    for err in errors:
        loc = list(err.get("loc", ()))
        if prefix and loc[: len(prefix)] != list(prefix):
            loc = [*prefix, *loc]
        out.append({"loc": loc, "msg": err.get("msg", ""), "type": err.get("type", "value_error")})
    return out


def to_http(exc: BaseException) -> tuple[int, Any]:
    """Map any exception to `(status_code, detail)`: the one place errors become HTTP.

    Unknown exceptions become a plain 500 whose detail leaks nothing of the internals.
    """
    from pydantic import ValidationError
    from starlette.exceptions import HTTPException

    exc = unwrap_remote_error(exc)
    if isinstance(exc, ServiceError):
        return exc.status_code, exc.detail
    if isinstance(exc, ValidationError):
        return 422, _validation_detail(exc.errors(include_url=False), ("body",))
    if isinstance(exc, HTTPException):
        return exc.status_code, exc.detail
    if isinstance(exc, TimeoutError):
        return 504, "Request timed out."
    name = type(exc).__name__
    # Ray Serve's own signals, matched by name so this module does not import Ray.
    if name == "BackPressureError":
        return 503, "Service is overloaded, retry later."
    if name in ("RequestCancelledError", "CancelledError", "TaskCancelledError"):
        return 499, "Request cancelled by the client."
    if name in ("ActorDiedError", "RayActorError", "ActorUnavailableError", "DeploymentUnavailableError"):
        return 503, "The service replica is unavailable, retry later."
    return 500, "Internal Server Error"
