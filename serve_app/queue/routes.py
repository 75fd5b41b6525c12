"""The queue's HTTP layer (it only translates; the store and the runner do the work).

Under the application's root, with P = `queue.route_prefix` (default `/queue`):

  POST {P}/<endpoint path>[?fal_webhook=URL]          submit, e.g. POST /queue/my-model/fast
  GET  {P}/<app>/requests/<id>/status[?logs=1]        202 while IN_QUEUE / IN_PROGRESS, 200 COMPLETED
  GET  {P}/<app>/requests/<id>/status/stream          SSE status frames until COMPLETED
  GET  {P}/<app>/requests/<id>                        the output, or the original error status and body
  PUT  {P}/<app>/requests/<id>/cancel                 OK 200 / CANCELLATION_REQUESTED 202 /
                                                      ALREADY_COMPLETED 400 / NOT_FOUND 404

<app> in the URLs that submit returns is the service's prefix (fal: owner/app without the endpoint
sub-path); any <app> is accepted there, since the request id alone names the job. Endpoint ids may
start with an owner alias (`fal-ai/my-model`). Input is validated at submit (422 in fal's shape); errors
the service raises while running (its own 422s included) are served at the result URL.
"""

# No `from __future__ import annotations` here: FastAPI must see the real (local) input models.
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated, Any

import httpx
from fastapi import Body, Depends, FastAPI, Query, Request
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel

from serve_app.auth import ApiKeyAuth, Identity
from serve_app.endpoints import ServiceRoute
from serve_app.errors import unwrap_remote_error
from serve_app.http import BILLING_HEADER, REQUEST_ID_HEADER, error_response, format_units
from serve_app.queue.client import StoreClient, connect_store
from serve_app.queue.dispatch import Dispatch
from serve_app.queue.messages import QueueFull, QueueUnavailable, WatchResult
from serve_app.queue.runner import QueueRunner
from serve_app.queue.schemas import (
    REQUEST_ERRORS,
    SUBMIT_ERRORS,
    CancelResponse,
    ErrorBody,
    QueueStatus,
    SubmitResponse,
)
from serve_app.queue.settings import QueueSettings
from serve_app.queue.state import Job
from serve_app.streaming import SSE_HEADERS, sse_frame, with_heartbeats
from serve_app.urlpolicy import BlockedAddress, UrlPolicy, url_host

logger = logging.getLogger("ray.serve")

CANCEL_CODES = {"OK": 200, "CANCELLATION_REQUESTED": 202, "ALREADY_COMPLETED": 400, "NOT_FOUND": 404}
WATCH_S = 5.0


class _Queue:
    """The store client and runner of this replica, set up by the ASGI lifespan."""

    def __init__(self, dispatcher: Dispatch, settings: QueueSettings, store: StoreClient | None) -> None:
        self.dispatcher = dispatcher
        self.settings = settings
        self._store = store
        self.runner: QueueRunner | None = None

    @property
    def store(self) -> StoreClient:
        if self._store is None:
            raise QueueUnavailable()
        return self._store

    async def start(self) -> None:
        if self._store is None:
            from ray import serve

            try:
                app_name = serve.get_replica_context().app_name
            except Exception:  # not inside a Serve replica: the routes answer 503
                logger.warning("queue: not running inside a Ray Serve replica; the queue routes answer 503")
                return
            self._store = await connect_store(app_name, self.settings)
        self.runner = QueueRunner(self._store, self.dispatcher, self.settings)
        await self.runner.start()

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.stop()


def install_queue_routes(app: FastAPI, dispatcher: Dispatch, settings: QueueSettings,
                         store: StoreClient | None = None, auth: ApiKeyAuth | None = None) -> None:
    """Mount the queue routes for every endpoint and tie the runner to the app's lifespan.

    `store` defaults to the application's store actor (connected at startup). Raises ValueError
    when a service prefix collides with the queue's, or a named secret variable is not set.
    """
    if not settings.enabled:
        return
    prefix = settings.route_prefix
    for route in dispatcher.routes:
        if route.prefix == prefix or route.prefix.startswith(prefix + "/"):
            raise ValueError(f"service {route.name} is mounted at {route.prefix}, inside the queue's {prefix}")
    settings.webhook.secret()  # fail at startup, not at the first webhook
    auth = auth or ApiKeyAuth([])
    queue = _Queue(dispatcher, settings, store)
    _wrap_lifespan(app, queue)
    for route in dispatcher.routes:
        for spec in route.endpoints:
            _add_submit_route(app, queue, auth, route, spec.route(route.prefix), spec.input_model)
    _add_request_routes(app, queue, auth)


def _wrap_lifespan(app: FastAPI, queue: _Queue) -> None:
    original = app.router.lifespan_context

    @asynccontextmanager
    async def lifespan(asgi_app: Any) -> AsyncIterator[Any]:
        async with original(asgi_app) as state:
            await queue.start()
            try:
                yield state
            finally:
                await queue.stop()

    app.router.lifespan_context = lifespan


def _error(exc: BaseException, request_id: str) -> JSONResponse:
    response = error_response(exc, request_id)
    cause = unwrap_remote_error(exc)
    if isinstance(cause, QueueFull):
        response.headers["Retry-After"] = str(cause.retry_after_s)
    elif response.status_code == 503:
        response.headers["Retry-After"] = "1"
    return response


def _webhook_error(url: str, settings: QueueSettings) -> str | None:
    """Why `fal_webhook` can't be used, or None. The host is checked again (resolved) at delivery."""
    try:
        scheme, host = url_host(url)
        if scheme not in ("http", "https"):
            return "must be an http(s) URL"
        UrlPolicy.from_env(settings.webhook.allow).check_literal(host)
    except (ValueError, BlockedAddress, httpx.InvalidURL):
        return "must be an http(s) URL of a public host"
    return None


def _add_submit_route(app: FastAPI, queue: _Queue, auth: ApiKeyAuth, route: ServiceRoute, path: str,
                      input_model: type[BaseModel]) -> None:
    settings = queue.settings

    async def submit(request: Request, body: Annotated[input_model, Body()],  # type: ignore[valid-type]
                     caller: Annotated[Identity, Depends(auth.identity)],
                     fal_webhook: Annotated[str | None, Query(description="URL to POST the result to.")] = None,
                     ) -> JSONResponse:
        request_id = str(uuid.uuid4())
        problem = _webhook_error(fal_webhook, settings) if fal_webhook is not None else None
        if problem is not None:
            detail = [{"loc": ["query", "fal_webhook"], "msg": problem, "type": "value_error"}]
            return JSONResponse({"detail": detail}, status_code=422, headers={REQUEST_ID_HEADER: request_id})
        base_url = queue.dispatcher.base_url(request)
        app_part = route.prefix or f"/{route.name}"  # services mounted at the root: their name
        response_url = f"{base_url.rstrip('/')}{settings.route_prefix}{app_part}/requests/{request_id}"
        payload = _as_json(body)
        job = Job(request_id=request_id, service=route.name, path=path,
                  payload=payload, base_url=base_url, response_url=response_url, created_at=time.time(),
                  webhook_url=fal_webhook, user_id=caller.user_id, owner=caller.owner,
                  payload_bytes=len(json.dumps(payload, separators=(",", ":"))))
        try:
            position = await queue.store.submit(job)
        except Exception as exc:
            return _error(exc, request_id)
        return JSONResponse(
            {"request_id": request_id, "response_url": response_url, "status_url": job.status_url,
             "cancel_url": job.cancel_url, "queue_position": position},
            headers={REQUEST_ID_HEADER: request_id})

    for alias in ["", *(f"/{a.strip('/')}" for a in settings.owner_aliases)]:
        app.add_api_route(
            f"{settings.route_prefix}{alias}{path}", submit, methods=["POST"], response_model=SubmitResponse,
            tags=["queue"], name=f"queue:{alias}{path}", include_in_schema=not alias,
            summary=f"Queue a request to {path}", responses=SUBMIT_ERRORS,
            description="Returns at once with the request id and the status, result and cancel URLs.")


def _as_json(body: BaseModel) -> dict[str, Any]:
    """The validated input as JSON, only the fields the caller set (defaults apply again at run)."""
    return body.model_dump(mode="json", exclude_unset=True)


def _stream_frames(snap: WatchResult, with_logs: bool, last: tuple[Any, ...] | None) -> list[dict[str, Any]]:
    """Status frames for one snapshot: one IN_PROGRESS frame per service event, then the status
    itself when it changed (or carries new logs); COMPLETED always comes last."""
    status = dict(snap.status)
    completed = status["status"] == "COMPLETED"
    if "logs" in status:
        status["logs"] = snap.logs if with_logs else None
    frames: list[dict[str, Any]] = []
    for event in snap.events:
        frame = {k: status[k] for k in ("request_id", "response_url", "status_url", "cancel_url")}
        frame.update(status="IN_PROGRESS", logs=None if frames or not with_logs or completed else snap.logs,
                     event=event)
        frames.append(frame)
    key = (status["status"], status.get("queue_position"))
    if completed or key != last or (with_logs and snap.logs and not frames):
        frames.append(status)
    return frames


def _add_request_routes(app: FastAPI, queue: _Queue, auth: ApiKeyAuth) -> None:
    base = f"{queue.settings.route_prefix}/{{app_id:path}}/requests/{{request_id}}"
    Caller = Annotated[Identity, Depends(auth.identity)]
    not_found = {"detail": "Request not found"}

    @app.get(f"{base}/status", tags=["queue"], response_model=QueueStatus, summary="Status of a queued request",
             responses={202: {"model": QueueStatus, "description": "IN_QUEUE or IN_PROGRESS"}, **REQUEST_ERRORS})
    async def status(request_id: str, app_id: str, caller: Caller, logs: bool = False) -> JSONResponse:
        try:
            body = await queue.store.status(request_id, logs, caller.owner)
        except Exception as exc:
            return _error(exc, request_id)
        if body is None:
            return JSONResponse(not_found, status_code=404)
        return JSONResponse(body, status_code=200 if body["status"] == "COMPLETED" else 202)

    @app.get(f"{base}/status/stream", tags=["queue"], summary="Status changes and progress events (SSE)",
             responses={200: {"content": {"text/event-stream": {}}, "description": "status frames until COMPLETED"},
                        **REQUEST_ERRORS})
    async def status_stream(request_id: str, app_id: str, caller: Caller, logs: bool = False) -> Any:
        owner = caller.owner
        try:
            first = await queue.store.watch(request_id, -1, WATCH_S, 0, 0, logs, owner)
        except Exception as exc:
            return _error(exc, request_id)
        if first is None:
            return JSONResponse(not_found, status_code=404)

        async def frames() -> AsyncIterator[str]:
            snap: WatchResult | None = first
            last: tuple[Any, ...] | None = None
            while snap is not None:
                for frame in _stream_frames(snap, logs, last):
                    yield sse_frame(frame)
                last = (snap.status["status"], snap.status.get("queue_position"))
                if snap.status["status"] == "COMPLETED":
                    return
                snap = await queue.store.watch(request_id, snap.version, WATCH_S, snap.event_seq, snap.log_total,
                                               logs, owner)

        return StreamingResponse(with_heartbeats(frames(), queue.dispatcher.settings.heartbeat_s),
                                 media_type="text/event-stream", headers=SSE_HEADERS)

    @app.get(base, tags=["queue"], summary="Result of a queued request",
             responses={400: {"model": ErrorBody, "description": "Still in progress"},
                        499: {"model": ErrorBody, "description": "Cancelled"},
                        422: {"model": ErrorBody, "description": "The service refused the input"},
                        500: {"model": ErrorBody, "description": "The service failed"},
                        **REQUEST_ERRORS})
    async def result(request_id: str, app_id: str, caller: Caller) -> JSONResponse:
        try:
            view = await queue.store.result(request_id, caller.owner)
        except Exception as exc:
            return _error(exc, request_id)
        if view is None:
            return JSONResponse(not_found, status_code=404)
        if view.done and view.status_code == 200:
            return JSONResponse(view.body, headers={BILLING_HEADER: format_units(view.billable_units),
                                                    REQUEST_ID_HEADER: request_id})
        return JSONResponse({"detail": view.body, "request_id": request_id}, status_code=view.status_code,
                            headers={BILLING_HEADER: "0", REQUEST_ID_HEADER: request_id})

    @app.put(f"{base}/cancel", tags=["queue"], response_model=CancelResponse, summary="Cancel a queued request",
             responses={202: {"model": CancelResponse, "description": "CANCELLATION_REQUESTED"},
                        400: {"model": CancelResponse, "description": "ALREADY_COMPLETED"},
                        404: {"model": CancelResponse, "description": "NOT_FOUND"},
                        **{k: v for k, v in REQUEST_ERRORS.items() if k != 404}})
    async def cancel(request_id: str, app_id: str, caller: Caller) -> JSONResponse:
        try:
            outcome = await queue.store.cancel(request_id, caller.owner)
        except Exception as exc:
            return _error(exc, request_id)
        return JSONResponse({"status": outcome}, status_code=CANCEL_CODES[outcome])
