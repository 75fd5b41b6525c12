"""A small fake of fal's queue API over HTTPS on 127.0.0.1, for the Hunyuan3D proxy's tests.

fal-client only speaks https and builds the submit URL from `FAL_QUEUE_RUN_HOST`, so the fake runs
TLS with a throw-away CA made here (`ca_path`, for `SSL_CERT_FILE`). It follows the status, result
and cancel URLs it hands out, as fal's own queue does.

The behaviour of a request is chosen by the file name ending its `input_image_url`:
`user-error.png` (422 on the result, fal's field-error shape), `server-error.png` (500 on the
result), `slow.png` (never completes), anything else succeeds after two queue positions and two
log lines.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from tests.fakes.tls import ThreadedServer, make_certificates

API_KEY = "test-key"
MESH = b"glTF" + bytes(60)  # a GLB's magic, then padding
LOGS = [{"message": "loading image", "level": "INFO", "source": "user", "timestamp": "2026-01-01T00:00:00"},
        {"message": "generating mesh", "level": "INFO", "source": "user", "timestamp": "2026-01-01T00:00:01"}]


@dataclass
class FakeRequest:
    """One submitted request and what happened to it."""

    arguments: dict[str, Any]
    behaviour: str
    polls: int = 0
    cancelled: bool = False


@dataclass
class FalQueueFake:
    """The fake's state; `start()` serves it on a random port in a daemon thread."""

    directory: Path
    requests: dict[str, FakeRequest] = field(default_factory=dict)
    submissions: list[tuple[str, str]] = field(default_factory=list)  # (path, authorization header)
    host: str = ""
    ca_path: Path | None = None
    _server: ThreadedServer | None = None

    @property
    def base_url(self) -> str:
        return f"https://{self.host}"

    def _request_url(self, owner: str, app: str, request_id: str) -> str:
        return f"{self.base_url}/{owner}/{app}/requests/{request_id}"

    async def submit(self, request: Request) -> Response:
        path = request.path_params["path"]
        self.submissions.append((path, request.headers.get("authorization", "")))
        if request.headers.get("authorization") != f"Key {API_KEY}":
            return JSONResponse({"detail": "Unauthorized"}, status_code=401)
        arguments = await request.json()
        behaviour = str(arguments.get("input_image_url", "")).rsplit("/", 1)[-1].removesuffix(".png")
        request_id = uuid.uuid4().hex
        self.requests[request_id] = FakeRequest(arguments, behaviour)
        owner, app = path.split("/")[:2]
        url = self._request_url(owner, app, request_id)
        return JSONResponse({"request_id": request_id, "response_url": url, "status_url": f"{url}/status",
                             "cancel_url": f"{url}/cancel", "queue_position": 2})

    async def status(self, request: Request) -> Response:
        fake = self.requests[request.path_params["request_id"]]
        fake.polls += 1
        url = self._request_url(request.path_params["owner"], request.path_params["app"],
                                request.path_params["request_id"])
        if fake.polls <= 2:
            return JSONResponse({"status": "IN_QUEUE", "queue_position": 2 - fake.polls, "response_url": url},
                                status_code=202)
        logs = LOGS[: fake.polls - 2] if request.query_params.get("logs") in ("1", "true", "True") else None
        if fake.polls <= 4 or fake.behaviour == "slow":
            return JSONResponse({"status": "IN_PROGRESS", "logs": logs, "response_url": url}, status_code=202)
        return JSONResponse({"status": "COMPLETED", "logs": logs, "metrics": {"inference_time": 1.5},
                             "response_url": url})

    async def result(self, request: Request) -> Response:
        fake = self.requests[request.path_params["request_id"]]
        headers = {"x-fal-request-id": request.path_params["request_id"]}
        if fake.behaviour == "user-error":
            detail = [{"loc": ["body", "input_image_url"], "msg": "Could not load the image.",
                       "type": "image_load_error"}]
            return JSONResponse({"detail": detail}, status_code=422, headers=headers)
        if fake.behaviour == "server-error":
            return JSONResponse({"detail": "Internal Server Error"}, status_code=500, headers=headers)
        mesh = {"url": f"{self.base_url}/files/mesh.glb", "content_type": "model/gltf-binary",
                "file_name": "mesh.glb", "file_size": len(MESH)}
        return JSONResponse({"model_mesh": mesh, "seed": fake.arguments.get("seed", 1234)}, headers=headers)

    async def cancel(self, request: Request) -> Response:
        self.requests[request.path_params["request_id"]].cancelled = True
        return JSONResponse({"status": "CANCELLATION_REQUESTED"}, status_code=202)

    async def mesh(self, request: Request) -> Response:
        return Response(MESH, media_type="model/gltf-binary")

    def app(self) -> Starlette:
        base = "/{owner}/{app}/requests/{request_id}"
        return Starlette(routes=[
            Route("/files/mesh.glb", self.mesh, methods=["GET"]),
            Route(f"{base}/status", self.status, methods=["GET"]),
            Route(f"{base}/cancel", self.cancel, methods=["PUT"]),
            Route(base, self.result, methods=["GET"]),
            Route("/{path:path}", self.submit, methods=["POST"]),
        ])

    def start(self) -> FalQueueFake:
        self.ca_path, cert, key = make_certificates(self.directory)
        self._server = ThreadedServer(self.app(), cert, key, name="fal-fake")
        self.host = self._server.host
        self._server.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop()
