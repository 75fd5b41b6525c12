"""The HTTP front door: a FastAPI app whose routes come from the services' endpoint specs.

For every endpoint `E` of a service mounted at `/name`: `POST /name<E.path>` (sync JSON),
`POST /name<E.path>/stream` (SSE) and, for realtime endpoints, a WebSocket. Plus the queue
(`/queue/...`), `/files`, `/health`, `/ready`, `/docs` and `/openapi.json`. The ingress talks to the
services only through their deployment handles, and exposes the same calls to Python (`run`,
`stream`). Modules: settings, middleware (request ids), dispatcher (handle calls), routes (sync and
SSE), realtime_routes (WebSockets), files, app (assembly), deployment (the Serve class).
"""

from serve_app.endpoints import ServiceRoute
from serve_app.ingress.app import create_app
from serve_app.ingress.deployment import Ingress
from serve_app.ingress.dispatcher import Dispatcher
from serve_app.ingress.settings import IngressSettings

__all__ = ["Dispatcher", "Ingress", "IngressSettings", "ServiceRoute", "create_app"]
