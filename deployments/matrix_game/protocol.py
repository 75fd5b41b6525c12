"""One client's Matrix-Game session: fal's signalling, the player's messages, the end of the stream.

`ClientSession` runs a `WebRTCSession` (ready / offer -> answer / candidates) whose peer connection
gets one send-only `WorldTrack`, and handles the other messages:
- `action`: parsed and handed to the `WorldSession` (the next block uses it); malformed -> an
  `invalid_action` error frame;
- `pause`: pauses or resumes the producer, echoed as `{"type": "pause", "paused": bool}`;
- `world` (ours, before the stream starts): another loaded mode and/or a seed image URL.
`FalErrors` renames the WebRTC session's offer/candidate errors to fal's `offer_failed:` /
`ice_failed:`; the track's end becomes `stream_exhausted` or `frame_failed:<type>:<message>`, and
either ends the session.
"""

from __future__ import annotations

import asyncio
import io
from typing import Any

from deployments.matrix_game.configs import Mode
from serve_app.errors import FieldError
from serve_app.realtime import RealtimeConnection
from serve_app.webrtc import WebRTCSession

_FAL_ERRORS = {"invalid_offer": "offer_failed", "invalid_candidate": "ice_failed"}


class FalErrors:
    """The connection as the WebRTC session sees it, with fal's error names for offers and candidates."""

    def __init__(self, conn: RealtimeConnection) -> None:
        self.conn = conn

    async def send(self, message: dict[str, Any]) -> None:
        await self.conn.send(message)

    async def error(self, error: str, **extra: Any) -> None:
        if error in _FAL_ERRORS:
            error = f"{_FAL_ERRORS[error]}:{extra.get('detail', '')}"
        await self.conn.error(error, **extra)

    def __aiter__(self) -> Any:
        return self.conn.__aiter__()


class ClientSession:
    """One client's session: signalling, the world's messages, the track's end."""

    def __init__(self, service: Any, conn: RealtimeConnection, world: Any) -> None:
        from deployments.matrix_game.track import WorldTrack

        self.service, self.conn, self.world = service, conn, world
        cfg = service.config
        self.mode: Mode = cfg.default_mode
        self.image = service.seed_images[cfg.default_mode]
        self.producer: Any = None
        self.track = WorldTrack(self._start, self._end, fps=cfg.fps)
        self.webrtc = WebRTCSession(FalErrors(conn), cfg.webrtc, on_track=lambda track: None,
                                    on_message=self._message, on_peer=self._add_track)
        self.end_reason = ""

    def _add_track(self, pc: Any) -> None:
        pc.addTrack(self.track)

    async def run(self) -> None:
        await self.webrtc.run()
        self.end_reason = self.end_reason or self.webrtc.end_reason or "cancelled"

    async def _start(self) -> Any:
        from deployments.matrix_game.producer import BlockProducer

        await asyncio.to_thread(self.world.start, self.image, self.mode, self.service.config.seed)
        self.producer = BlockProducer(self.world, max_frames=self.service.config.queue_frames)
        self.producer.start()
        return self.producer

    async def _end(self, reason: str, error: BaseException | None) -> None:
        self.end_reason = reason
        if error is None:
            await self.conn.send({"type": reason})
        else:
            await self.conn.error(f"{reason}:{type(error).__name__}:{error}")
        await self.webrtc.close()  # ends `run`: the peer connection closes

    async def _message(self, message: dict[str, Any]) -> None:
        from deployments.matrix_game.actions import ActionError, parse_action_message

        kind = message["type"]
        if kind == "action":
            try:
                self.world.set_action(parse_action_message(message))
            except ActionError as e:
                await self.conn.error("invalid_action", detail=str(e))
        elif kind == "pause":
            paused = message.get("paused")
            if not isinstance(paused, bool):
                await self.conn.error("invalid_pause", detail="'paused' must be true or false")
                return
            if self.producer is not None:
                self.producer.pause(paused)
            else:
                self.world.pause(paused)
            await self.conn.send({"type": "pause", "paused": paused})
        elif kind == "world":
            await self._world(message)
        else:
            await self.conn.error("unknown_message_type", detail=f"unknown message type {kind!r}")

    async def _world(self, message: dict[str, Any]) -> None:
        from PIL import Image, UnidentifiedImageError

        from serve_app.inputs import fetch_url

        if self.producer is not None:
            await self.conn.error("invalid_world", detail="the stream has started; send `world` before the offer")
            return
        mode = message.get("mode", self.mode)
        if mode not in self.service.models.dits:
            await self.conn.error("invalid_world", detail=f"mode must be one of {self.service.models.modes}")
            return
        self.mode, self.image = mode, self.service.seed_images[mode]
        url = message.get("image_url")
        if url is None:
            return
        if not self.service.config.client_images or not isinstance(url, str):
            await self.conn.error("invalid_world", detail="image_url is not accepted here" if isinstance(url, str)
                                  else "image_url must be a string")
            return
        try:
            data = await fetch_url(url, "image_url")
            self.image = Image.open(io.BytesIO(data)).convert("RGB")
        except FieldError as e:
            await self.conn.error("invalid_world", detail=e.message)
        except (UnidentifiedImageError, OSError) as e:
            await self.conn.error("invalid_world", detail=f"image_url is not an image: {e}")

    async def release(self) -> None:
        """Stop generating and wait for the block in flight, so the next session has the GPU to itself."""
        await self.webrtc.close()
        self.track.stop()
        if self.producer is not None:
            await asyncio.to_thread(self.producer.stop, 60.0)
        self.world.close()
