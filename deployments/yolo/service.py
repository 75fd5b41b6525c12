"""YOLO webcam detection over WebRTC: `/yolo/realtime`, as fal's YOLO webcam demo defines it.

The WebSocket carries fal's signalling (`ready`, `offer` -> `answer`, `icecandidate`; JSON or
msgpack); the browser's webcam then streams to this replica over WebRTC. Each time the outgoing
track is asked for a frame it takes the newest webcam frame (stale ones are dropped, so latency does
not build up), runs YOLOv8n, draws labelled boxes and sends the frame back with its input
timestamps. Audio is discarded. The page at `/yolo/` (static/index.html) is a ready-made client.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field

from deployments.yolo.detector import DEMO_WEIGHTS, Detector, configure_offline, load_yolo
from serve_app.endpoints import realtime
from serve_app.errors import Overloaded
from serve_app.models.source import DeviceName, ModelSource, resolve_device
from serve_app.realtime import RealtimeConnection
from serve_app.service import RunContext, Service
from serve_app.webrtc import LatestFrameTrack, WebRTCConfig, WebRTCSession, live_peer_connections

logger = logging.getLogger("ray.serve")

STATIC_DIR = Path(__file__).parent / "static"


class YoloConfig(BaseModel):
    """Configuration of the YOLO WebRTC service."""

    model_config = ConfigDict(extra="forbid")

    model: ModelSource = Field(
        default=ModelSource(id=DEMO_WEIGHTS),
        description="`id`: a local weight file (yolov8n.pt; never downloaded, a missing file stops the start). "
        "`preset: tiny|full`: YOLOv8n from its yaml with seeded random weights.")
    device: DeviceName = Field(default="auto", description="cuda, cpu, or auto.")
    confidence: float = Field(default=0.25, ge=0.0, le=1.0,
                              description="Minimum box score (ultralytics' `conf`); 0 shows every candidate box.")
    iou: float = Field(default=0.7, ge=0.0, le=1.0, description="NMS IoU threshold.")
    max_det: int = Field(default=300, ge=1, le=1000, description="Most boxes per frame.")
    image_size: int = Field(default=640, ge=32, multiple_of=32, description="Inference size (letterboxed).")
    half: bool = Field(default=False, description="fp16 inference (CUDA only).")
    max_sessions: int = Field(default=4, ge=1, description="Concurrent WebRTC sessions per replica; more get "
                              "an `overloaded` error frame.")
    webrtc: WebRTCConfig = Field(default_factory=WebRTCConfig, description="ICE servers, host addresses, timeouts.")
    ultralytics_config_dir: str | None = Field(
        default=None, description="Writable directory for ultralytics' settings (YOLO_CONFIG_DIR); default: "
        "$YOLO_CONFIG_DIR or <tmp>/ultralytics.")
    warmup: bool = Field(default=True, description="Run one 640x480 frame at start, before taking traffic.")


class YoloService(Service):
    """YOLOv8n shared by the sessions of one replica; one peer connection per session."""

    concurrency_safe = True
    static_dir: ClassVar[Path] = STATIC_DIR  # the page the app serves at /<service>/

    @classmethod
    def deployment_defaults(cls, config: BaseModel) -> dict[str, Any]:
        """Sessions are long streaming calls: let Serve hand over more than `max_sessions`, so that the
        extra ones hear `overloaded` instead of waiting in a queue."""
        if not isinstance(config, YoloConfig):
            raise TypeError(f"expected YoloConfig, got {type(config).__name__}")
        return {"max_ongoing_requests": config.max_sessions + 4}

    def __init__(self, config: YoloConfig) -> None:
        import numpy as np

        configure_offline(config.ultralytics_config_dir)
        config.webrtc.apply_to_process()
        self.config = config
        self.device = resolve_device(config.device)
        self.detector = Detector(load_yolo(config.model), device=self.device, confidence=config.confidence,
                                 iou=config.iou, max_det=config.max_det, image_size=config.image_size,
                                 half=config.half)
        self.active_sessions = 0
        self.totals = {"sessions": 0, "frames_sent": 0, "frames_dropped": 0, "frames_failed": 0}
        logger.info("YOLO loaded (%s) on %s", config.model.describe(), self.device)
        if config.warmup:
            self.detector.annotate(np.zeros((480, 640, 3), np.uint8))

    @realtime("/realtime", summary="Webcam object detection over WebRTC (YOLOv8n)")
    async def session(self, conn: RealtimeConnection, ctx: RunContext) -> None:
        """fal's realtime WebRTC protocol: send `{"type": "offer", "sdp"}` (and `icecandidate`s) after
        `ready`; the answer comes back, then the annotated video over WebRTC."""
        if self.active_sessions >= self.config.max_sessions:
            raise Overloaded(f"this replica already runs {self.config.max_sessions} sessions; retry later")
        self.active_sessions += 1
        self.totals["sessions"] += 1
        session = WebRTCSession(conn, self.config.webrtc, on_track=self._track)
        try:
            await session.run()
        finally:
            self.active_sessions -= 1
            for track in session.outgoing:
                if isinstance(track, LatestFrameTrack):
                    self.totals["frames_sent"] += track.stats.sent
                    self.totals["frames_dropped"] += track.stats.dropped
                    self.totals["frames_failed"] += track.stats.failed
            logger.info("YOLO session %s ended (%s)", ctx.request_id, session.end_reason or "cancelled")

    def _track(self, track: Any) -> LatestFrameTrack | None:
        return LatestFrameTrack(track, self._process) if track.kind == "video" else None

    async def _process(self, frame: Any) -> Any:
        return await asyncio.to_thread(self._annotate, frame)

    def _annotate(self, frame: Any) -> Any:
        from av import VideoFrame

        image, _ = self.detector.annotate(frame.to_ndarray(format="bgr24"))
        return VideoFrame.from_ndarray(image, format="bgr24")

    def stats(self) -> dict[str, int]:
        """Sessions and frames of this replica (for tests and operators, through a deployment handle)."""
        return {"active_sessions": self.active_sessions, "live_peer_connections": live_peer_connections(),
                **self.totals}

    def check_health(self) -> None:
        if self.device.startswith("cuda"):
            import torch

            torch.cuda.synchronize()  # raises when the CUDA context is broken


def build(name: str, args: Any) -> Any:
    """Builder: validate the config and bind the deployment (options from its defaults + args)."""
    from serve_app.app import bind_service

    return bind_service(YoloService, YoloConfig.model_validate(args.config), name, args)
