"""Hunyuan3D proxy: `/v2/mini/turbo` forwards to fal's hosted `fal-ai/hunyuan3d/v2/mini/turbo`, as
fal's Hunyuan3D demo does, through the official `fal-client` (async API: submit, queue events with
logs, result, cancel).

- The key is read from the environment (`FAL_KEY` by default) at request time, never from a config
  file; without it requests are a 503 and the replica still starts.
- `/stream` relays the upstream queue: `{"type": "queue_update", "status": "IN_QUEUE" |
  "IN_PROGRESS" | "COMPLETED", "queue_position", "logs": [new log lines]}` frames, then the output.
- A caller that goes away cancels the upstream request too.
- The mesh is passed through: `model_mesh.url` is fal's CDN URL, so the GLB never crosses this
  replica (which serves many requests at once) or our store. Set `rehost_mesh: true` to download it
  and serve it from our output store instead (outlives fal's retention; clients reach only us).
- Errors: upstream user errors (4xx) keep their status and fal's `detail`; upstream failures are
  502; exceeding `request_timeout_s` is a 504 (the upstream request is cancelled).
"""

from __future__ import annotations

import asyncio
import logging
import os
from typing import Any, Literal

import fal_client
import httpx
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from serve_app.endpoints import endpoint
from serve_app.errors import Overloaded, RequestTimeout, ServiceError, ServiceUnavailable, UpstreamError
from serve_app.io import File
from serve_app.service import RunContext, Service

logger = logging.getLogger("ray.serve")

GLB = "model/gltf-binary"
QueueStatus = Literal["IN_QUEUE", "IN_PROGRESS", "COMPLETED"]


class Hunyuan3DConfig(BaseModel):
    """Configuration of the Hunyuan3D proxy."""

    model_config = ConfigDict(extra="forbid")

    application: str = Field(default="fal-ai/hunyuan3d/v2/mini/turbo", description="fal endpoint id to call.")
    key_env: str = Field(default="FAL_KEY", description="Environment variable holding the fal API key.")
    request_timeout_s: float = Field(default=600.0, gt=0,
                                     description="Longest wait for the upstream result (queue + run): then 504.")
    http_timeout_s: float = Field(default=60.0, gt=0, description="Timeout of each HTTP call to fal.")
    poll_interval_s: float = Field(default=0.5, gt=0, description="Seconds between upstream status polls.")
    cancel_timeout_s: float = Field(default=10.0, gt=0, description="Longest wait for the upstream cancel call.")
    rehost_mesh: bool = Field(default=False,
                              description="Download the mesh and serve it from our store instead of fal's URL.")
    max_mesh_bytes: int = Field(default=512 * 1024 * 1024, gt=0, description="Largest mesh `rehost_mesh` accepts.")
    max_ongoing_requests: int = Field(default=100, ge=1,
                                      description="Requests one replica waits on at once (it only waits).")


class Hunyuan3DInput(BaseModel):
    """Input of `POST /hunyuan3d/v2/mini/turbo` (fal's fields, defaults and bounds)."""

    input_image_url: str = Field(description="URL of the image to turn into a 3D model.",
                                 examples=["https://example.com/robot.png"],
                                 json_schema_extra={"ui": {"field": "file", "important": True}})
    textured_mesh: bool = Field(default=False,
                                description="Generate a textured mesh (costs three times a white mesh).")
    seed: int | None = Field(default=None, examples=[42],
                             description="Same seed and image give the same mesh; omit for random.")
    num_inference_steps: int = Field(default=50, ge=1, le=50, description="Denoising steps.")
    guidance_scale: float = Field(default=7.5, ge=0.0, le=20.0, description="Guidance scale.")
    octree_resolution: int = Field(default=256, ge=1, le=1024, description="Octree resolution of the mesh.")


class ObjectOutput(BaseModel):
    """Output: the mesh and the seed used."""

    model_mesh: File = Field(description="The generated 3D object (GLB).")
    seed: int = Field(description="The seed used.")


class QueueUpdate(BaseModel):
    """A stream frame (`type: queue_update`): the upstream request's state."""

    status: QueueStatus = Field(description="Upstream queue status.")
    queue_position: int | None = Field(default=None, description="Position in fal's queue while IN_QUEUE.")
    logs: list[dict[str, Any]] = Field(default_factory=list, description="Upstream log entries new since "
                                       "the last update (`message`, `level`, `timestamp`, ...).")
    upstream_request_id: str = Field(description="fal's id of the upstream request.")


class UpstreamUserError(ServiceError):
    """fal rejected the input (4xx): same status, fal's `detail` (a 422 keeps its field locations)."""

    error_type = "upstream_user_error"

    def __init__(self, status_code: int, detail: Any) -> None:
        super().__init__(detail if isinstance(detail, str) else "The upstream model rejected the input.")
        self.status_code = status_code
        self.upstream_detail = detail

    @property
    def detail(self) -> Any:
        return self.upstream_detail


def map_upstream_error(status: int, detail: Any) -> ServiceError:
    """Our error for an upstream HTTP error status."""
    if status in (401, 403):
        return UpstreamError("fal rejected the API key.")
    if status == 429:
        return Overloaded("fal is rate limiting requests, retry later.")
    if status in (408, 504):
        return RequestTimeout("The upstream model timed out.")
    if 400 <= status < 500 and status != 404:
        return UpstreamUserError(status, detail)
    return UpstreamError(f"The upstream model failed (HTTP {status}).")


class Hunyuan3DService(Service):
    """Waits on fal for each request; many requests share one replica."""

    concurrency_safe = True

    @classmethod
    def deployment_defaults(cls, config: BaseModel) -> dict[str, Any]:
        limit = config.max_ongoing_requests if isinstance(config, Hunyuan3DConfig) else 100
        return {"max_ongoing_requests": limit}

    def __init__(self, config: Hunyuan3DConfig) -> None:
        self.config = config
        self._clients: dict[str, fal_client.AsyncClient] = {}
        if not os.environ.get(config.key_env):
            logger.warning("%s is not set: /hunyuan3d requests will answer 503", config.key_env)

    def _client(self) -> fal_client.AsyncClient:
        """fal's async client for the current key (the key may be rotated in the environment)."""
        key = os.environ.get(self.config.key_env)
        if not key:
            raise ServiceUnavailable(f"The Hunyuan3D proxy is not configured: set {self.config.key_env}.")
        if key not in self._clients:
            self._clients = {key: fal_client.AsyncClient(key=key, default_timeout=self.config.http_timeout_s)}
        return self._clients[key]

    @endpoint("/v2/mini/turbo", input=Hunyuan3DInput, output=ObjectOutput)
    async def mini_turbo(self, request: Hunyuan3DInput, ctx: RunContext) -> ObjectOutput:
        """Turn an image into a 3D mesh with Hunyuan3D v2 mini turbo (on fal)."""
        client = self._client()
        handle: fal_client.AsyncRequestHandle | None = None
        try:
            async with asyncio.timeout(self.config.request_timeout_s):
                handle = await client.submit(self.config.application, request.model_dump(exclude_none=True))
                await self._relay_events(handle, ctx)
                result = await handle.get()
                output = self._output(result)
                if self.config.rehost_mesh:
                    output.model_mesh = await self._download(output.model_mesh)
                return output
        except TimeoutError as e:
            await self._cancel_upstream(handle)
            raise RequestTimeout(f"No result from fal within {self.config.request_timeout_s:g} s.") from e
        except asyncio.CancelledError:
            await self._cancel_upstream(handle)
            raise
        except fal_client.FalClientHTTPError as e:
            logger.warning("fal answered %s: %s", e.status_code, e.message)
            raise map_upstream_error(e.status_code, e.message) from e
        except httpx.HTTPError as e:
            raise UpstreamError(f"Could not reach fal ({type(e).__name__}).") from e

    async def _relay_events(self, handle: fal_client.AsyncRequestHandle, ctx: RunContext) -> None:
        """Follow the upstream queue until COMPLETED, streaming changes as `queue_update` frames."""
        seen_logs = 0
        last: tuple[QueueStatus, int | None] | None = None
        async for event in handle.iter_events(with_logs=True, interval=self.config.poll_interval_s):
            status: QueueStatus
            if isinstance(event, fal_client.Queued):
                status, position, logs = "IN_QUEUE", event.position, []
            elif isinstance(event, fal_client.InProgress | fal_client.Completed):
                status = "IN_PROGRESS" if isinstance(event, fal_client.InProgress) else "COMPLETED"
                all_logs = event.logs or []  # fal sends every log line so far with each status
                position, logs, seen_logs = None, all_logs[seen_logs:], max(seen_logs, len(all_logs))
            else:  # a status this client version does not know: nothing to relay
                continue
            if (status, position) != last or logs:
                last = (status, position)
                ctx.partial(QueueUpdate(status=status, queue_position=position, logs=logs,
                                        upstream_request_id=handle.request_id), kind="queue_update")

    @staticmethod
    def _output(result: Any) -> ObjectOutput:
        try:
            return ObjectOutput.model_validate(result)
        except ValidationError as e:
            raise UpstreamError("fal returned an unexpected result.") from e

    async def _download(self, mesh: File) -> File:
        """Fetch the upstream mesh so our store serves it (bounded in time and size)."""
        async with httpx.AsyncClient(timeout=self.config.http_timeout_s, follow_redirects=True) as http, \
                http.stream("GET", mesh.url) as response:
            if response.status_code != 200:
                raise UpstreamError(f"Could not download the mesh (HTTP {response.status_code}).")
            data = bytearray()
            async for part in response.aiter_bytes():
                data += part
                if len(data) > self.config.max_mesh_bytes:
                    raise UpstreamError("The mesh is larger than max_mesh_bytes.")
        return File.from_bytes(bytes(data), mesh.content_type or GLB, mesh.file_name)

    async def _cancel_upstream(self, handle: fal_client.AsyncRequestHandle | None) -> None:
        """Best effort: tell fal to drop the request (bounded; failures only logged)."""
        if handle is None:
            return
        try:
            await asyncio.wait_for(handle.cancel(), timeout=self.config.cancel_timeout_s)
        except Exception as e:  # the caller's error matters more than the cancel's
            logger.warning("could not cancel upstream request %s: %s", handle.request_id, e)


def build(name: str, args: Any) -> Any:
    """Builder: validate the config and bind the deployment (options from its defaults + args)."""
    from serve_app.app import bind_service

    return bind_service(Hunyuan3DService, Hunyuan3DConfig.model_validate(args.config), name, args)
