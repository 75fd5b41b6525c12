"""`WorldTrack`: the outgoing WebRTC video track of a Matrix-Game session.

The first time the sender asks for a frame the track starts the world (`start()`: seed image, caches,
the render-ahead producer), so generation begins once the peer connection is up, after the answer.
Then each `recv` takes the next frame from the producer's queue, waiting (off the event loop) while
none is ready or the session is paused, and paces frames at `fps` at most. Timestamps follow the wall
clock (90 kHz), so a pause shows as a gap rather than a time warp. When the stream is exhausted or a
block fails, the track calls `on_end(reason, error)` from a separate task and ends.
"""

from __future__ import annotations

import asyncio
import fractions
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from aiortc import MediaStreamTrack
from aiortc.mediastreams import MediaStreamError

from deployments.matrix_game.producer import BlockProducer, FrameFailed
from deployments.matrix_game.session import StreamExhausted

logger = logging.getLogger("ray.serve")

CLOCK_RATE = 90_000
EndHandler = Callable[[str, BaseException | None], Awaitable[None]]


class WorldTrack(MediaStreamTrack):
    """Generated frames, paced, from a producer started on the first `recv`."""

    kind = "video"

    def __init__(self, start: Callable[[], Awaitable[BlockProducer]], on_end: EndHandler, fps: float = 25.0,
                 poll_s: float = 0.1) -> None:
        super().__init__()
        self._start, self._on_end = start, on_end
        self._period, self._poll = 1.0 / fps, poll_s
        self.producer: BlockProducer | None = None
        self.frames_sent = 0
        self._t0 = 0.0
        self._next_at = 0.0
        self._ending: asyncio.Future[None] | None = None

    def _end(self, reason: str, error: BaseException | None) -> MediaStreamError:
        if self._ending is None:
            self._ending = asyncio.ensure_future(self._on_end(reason, error))
        self.stop()
        return MediaStreamError(reason)

    async def recv(self) -> Any:
        from av import VideoFrame

        if self.readyState != "live":
            raise MediaStreamError
        if self.producer is None:
            try:
                self.producer = await self._start()
            except Exception as e:  # the world could not start: the session reports and ends
                logger.exception("starting the world failed")
                raise self._end("frame_failed", e) from e
            self._t0 = self._next_at = time.monotonic()
        frame = None
        while frame is None:
            try:
                frame = await asyncio.to_thread(self.producer.get_frame, self._poll)
            except StreamExhausted as e:
                raise self._end("stream_exhausted", None) from e
            except FrameFailed as e:
                raise self._end("frame_failed", e.__cause__ or e) from e
            if self.readyState != "live":
                raise MediaStreamError
        now = time.monotonic()
        if self._next_at > now:
            await asyncio.sleep(self._next_at - now)
            now = time.monotonic()
        self._next_at = max(self._next_at + self._period, now - self._period)
        out = VideoFrame.from_ndarray(frame, format="rgb24")
        out.pts = round((now - self._t0) * CLOCK_RATE)
        out.time_base = fractions.Fraction(1, CLOCK_RATE)
        self.frames_sent += 1
        return out

    def stop(self) -> None:
        if self.producer is not None:
            self.producer.stop(timeout=0)  # the thread ends after its block in flight
        super().stop()
