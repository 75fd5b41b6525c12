"""The request id in every log line of a request: the id the client holds (`x-fal-request-id`,
the queue's request id) is made the id of Ray Serve's request context, which Serve stamps on log
records (`request_id`) and carries along every handle call into the service replicas."""

from __future__ import annotations


def bind_request_id(request_id: str, route: str = "") -> None:
    """Make `request_id` the current Serve request's id in this task (and the handle calls it
    makes). A no-op outside Serve."""
    if not request_id:
        return
    try:
        from ray.serve.context import _get_serve_request_context, _set_request_context
    except ImportError:  # pragma: no cover - Ray is a dependency
        return
    if _get_serve_request_context().request_id != request_id:
        _set_request_context(route=route, request_id=request_id)


def current_request_id() -> str:
    """The request id of Serve's current request context ("" outside a request)."""
    try:
        from ray.serve.context import _get_serve_request_context

        return str(_get_serve_request_context().request_id or "")
    except Exception:  # outside a replica
        return ""
