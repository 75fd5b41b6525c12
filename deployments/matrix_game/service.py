"""Matrix-Game 2.0 over WebRTC: `/matrix-game/realtime`, an interactive world driven by keys, as fal's demo.

The WebSocket carries fal's signalling (`ready`, `offer` -> `answer`, `icecandidate`; JSON or msgpack)
and the player's input:
- `{"type": "action", "action": "<move> <look>"}` (move w a s d q, look i j k l u; `"q u"` idle): the
  latest action applies to the next generated block; a malformed one gets an `invalid_action` error
  frame and the session goes on;
- `{"type": "pause", "paused": bool}`: stops (or resumes) generation, not the connection; answered by
  `{"type": "pause", "paused": bool}`;
- ours, optional, before the stream starts: `{"type": "world", "mode": ..., "image_url": ...}` picks a
  loaded mode and a seed image (http(s) or data: URL) instead of the operator's defaults.
The server adds one send-only video track; once the peer connection asks for frames, a producer
thread renders blocks ahead into a small queue and the track paces them (~25 fps). The server sends
`stream_exhausted` when the stream reaches its last latent frame, and errors as fal names them:
`offer_failed:…`, `ice_failed:…`, `frame_failed:<type>:<message>` (the last two end the session).
One GPU session per replica: another client meanwhile gets a `busy` error frame and the socket closes
(Serve's autoscaling adds replicas). The page at `/matrix-game/` is a ready-made client.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field, model_validator

from deployments.matrix_game.configs import HUB_ID, Mode, Preset
from serve_app.endpoints import realtime
from serve_app.models.source import DeviceName, DtypeName, ModelSource, build_or_load, resolve_device, resolve_dtype
from serve_app.realtime import RealtimeConnection
from serve_app.service import RunContext, Service
from serve_app.webrtc import WebRTCConfig, live_peer_connections

logger = logging.getLogger("ray.serve")

STATIC_DIR = Path(__file__).parent / "static"


class MatrixGameConfig(BaseModel):
    """Configuration of the Matrix-Game 2.0 realtime service."""

    model_config = ConfigDict(extra="forbid")

    model: ModelSource = Field(default=ModelSource(id=HUB_ID), description="`id`: the Skywork/Matrix-Game-2.0 "
                               "layout (hub id or local directory); `preset: tiny|full`: random weights.")
    modes: list[Mode] = Field(default=["universal"], min_length=1, description="Modes to load (one DiT each).")
    default_mode: Mode = Field(default="universal", description="Mode of a session that does not pick one.")
    seed_images: dict[Mode, str] = Field(
        default_factory=dict, description="Default seed image per mode: a local file (e.g. the repo's "
        "demo_images/universal/0001.png, as fal's demo uses). Missing: a built-in test pattern.")
    vae_repo: str | None = Field(default=None, description="A diffusers-format Wan 2.1 VAE instead of "
                                 "Wan2.1_VAE.pth (e.g. Wan-AI/Wan2.1-T2V-1.3B-Diffusers).")
    device: DeviceName = Field(default="auto", description="cuda, cpu, or auto.")
    dtype: DtypeName = Field(default="auto", description="Weights and activations (auto: bf16 on CUDA, fp32 on CPU).")
    compile: bool = Field(default=False, description="torch.compile the DiT blocks and the VAE decoder at start.")
    warmup_blocks: int = Field(default=1, ge=0, le=16, description="Blocks rendered at start (4 cover every "
                               "shape a compiled model meets).")
    max_latent_frames: int = Field(default=360, ge=3, le=1020, description="Latent frames per stream (4 video "
                                   "frames each); then `stream_exhausted`. 360 as the published streaming demo.")
    fps: float = Field(default=25.0, gt=0, le=60, description="Most frames per second sent to a client.")
    queue_frames: int = Field(default=24, ge=1, le=240, description="Frames rendered ahead (fal's demo: 24).")
    seed: int | None = Field(default=None, description="Noise seed of every stream (None: random per stream).")
    client_images: bool = Field(default=True, description="Accept `world` messages with an image_url.")
    webrtc: WebRTCConfig = Field(default_factory=WebRTCConfig, description="ICE servers, host addresses, timeouts.")

    @model_validator(mode="after")
    def _default_mode_loaded(self) -> MatrixGameConfig:
        if self.default_mode not in self.modes:
            raise ValueError(f"default_mode {self.default_mode!r} is not in modes {self.modes}")
        return self


def default_seed_image(width: int = 640, height: int = 352) -> Any:
    """The seed image when the operator set none: a sky/ground gradient with a few blocks."""
    import numpy as np
    from PIL import Image

    y = np.linspace(0, 1, height)[:, None, None]
    image = np.where(y < 0.55, [90, 150, 230] * (1 - 0.4 * y), [70, 130, 60] * (0.6 + 0.4 * y))
    image = np.broadcast_to(image, (height, width, 3)).copy()
    for i, x in enumerate(range(width // 8, width, width // 4)):
        image[int(height * 0.35):int(height * 0.6), x:x + width // 10] = [180 - 30 * i, 120, 90 + 40 * i]
    return Image.fromarray(image.astype(np.uint8))


class MatrixGameService(Service):
    """One GPU world session at a time per replica; the models are loaded once."""

    concurrency_safe = True  # sessions run side by side on the event loop; the GPU is guarded by `busy`
    static_dir: ClassVar[Path] = STATIC_DIR

    @classmethod
    def deployment_defaults(cls, config: BaseModel) -> dict[str, Any]:
        """Let a few more sessions reach a replica than it runs, so that they hear `busy` instead of queueing."""
        return {"max_ongoing_requests": 4}

    def __init__(self, config: MatrixGameConfig) -> None:
        from deployments.matrix_game.models import WorldModels, build_world_models, load_world_models

        config.webrtc.apply_to_process()
        self.config = config
        device = resolve_device(config.device)
        dtype = resolve_dtype(config.dtype, device)
        modes = list(dict.fromkeys(config.modes))
        def load(repo: str, kwargs: dict[str, Any]) -> WorldModels:
            return load_world_models(repo, modes, device, dtype, revision=kwargs.get("revision"),
                                     local_files_only=kwargs.get("local_files_only", False), vae_repo=config.vae_repo)

        def preset(name: Preset) -> Callable[[], WorldModels]:
            return lambda: build_world_models(name, modes, device, dtype, seed=config.model.seed)

        self.models = build_or_load(config.model, load=load, presets={"tiny": preset("tiny"), "full": preset("full")})
        if config.compile:
            self.models.compile()
        g = self.models.geometry
        self.seed_images = {m: self._open(config.seed_images[m]) if m in config.seed_images
                            else default_seed_image(g.width, g.height) for m in modes}
        self.busy = False
        self.world: Any = None  # the WorldSession of the running session (tests and stats)
        self.totals = {"sessions": 0, "busy_rejections": 0, "blocks": 0, "frames_sent": 0}
        logger.info("Matrix-Game 2.0 loaded (%s, modes %s) on %s", config.model.describe(), modes, device)
        self._warm_up()

    @staticmethod
    def _open(path: str) -> Any:
        from PIL import Image

        return Image.open(path).convert("RGB")

    def _warm_up(self) -> None:
        from deployments.matrix_game.session import WorldSession

        if self.config.warmup_blocks == 0:
            return
        session = WorldSession(self.models, max_latent_frames=max(3 * self.config.warmup_blocks, 3))
        session.start(self.seed_images[self.config.default_mode], self.config.default_mode, seed=0)
        for _ in range(self.config.warmup_blocks):
            session.next_block()
        session.close()

    @realtime("/realtime", summary="An interactive world over WebRTC, driven by keys (Matrix-Game 2.0)")
    async def session(self, conn: RealtimeConnection, ctx: RunContext) -> None:
        """fal's realtime WebRTC protocol plus `action` and `pause` messages (see the module docstring)."""
        from deployments.matrix_game.protocol import ClientSession
        from deployments.matrix_game.session import WorldSession

        if self.busy:
            self.totals["busy_rejections"] += 1
            await conn.error("busy", detail="this replica is running another world session; retry later")
            return
        self.busy = True
        self.totals["sessions"] += 1
        world = WorldSession(self.models, max_latent_frames=self.config.max_latent_frames)
        self.world = world
        handler = ClientSession(self, conn, world)
        try:
            await handler.run()
        finally:
            # The client leaving cancels this task, often while `release` waits for the block in
            # flight: finish releasing anyway (the next session must have the model to itself), and
            # always free the replica.
            release = asyncio.ensure_future(handler.release())
            try:
                await asyncio.shield(release)
            except asyncio.CancelledError:
                await asyncio.gather(release, return_exceptions=True)
                raise
            finally:
                self.totals["blocks"] += handler.producer.blocks if handler.producer else 0
                self.totals["frames_sent"] += handler.track.frames_sent if handler.track else 0
                self.world = None
                self.busy = False
                logger.info("Matrix-Game session %s ended (%s)", ctx.request_id, handler.end_reason)

    def stats(self) -> dict[str, int]:
        """Sessions and frames of this replica (for tests and operators, through a deployment handle)."""
        return {"busy": int(self.busy), "live_peer_connections": live_peer_connections(), **self.totals}

    def check_health(self) -> None:
        if self.models.device.type == "cuda":
            import torch

            torch.cuda.synchronize()  # raises when the CUDA context is broken


def build(name: str, args: Any) -> Any:
    """Builder: validate the config and bind the deployment (options from its defaults + args)."""
    from serve_app.app import bind_service

    return bind_service(MatrixGameService, MatrixGameConfig.model_validate(args.config), name, args)
