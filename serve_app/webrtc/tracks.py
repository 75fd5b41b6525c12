"""`LatestFrameTrack`: process the newest incoming video frame, drop stale ones, keep timestamps."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from aiortc import MediaStreamTrack
from aiortc.mediastreams import MediaStreamError
from av import VideoFrame

logger = logging.getLogger("ray.serve")

FrameProcessor = Callable[[VideoFrame], Awaitable[VideoFrame]]


@dataclass
class TrackStats:
    """Frame counts of a `LatestFrameTrack`, and the time spent processing."""

    received: int = 0
    sent: int = 0
    dropped: int = 0
    failed: int = 0
    process_s: float = 0.0


class LatestFrameTrack(MediaStreamTrack):
    """A video track that processes the newest frame of `source` each time the sender asks.

    A reader task keeps only the latest input frame (older unread frames are dropped and counted),
    so a slow processor lowers the frame rate instead of building latency. The output keeps the
    input's `pts` and `time_base`. A processor error is logged and the input frame goes out as it
    was. The track ends when the source ends.
    """

    kind = "video"

    def __init__(self, source: MediaStreamTrack, process: FrameProcessor) -> None:
        super().__init__()
        self.source, self._process = source, process
        self.stats = TrackStats()
        self._latest: VideoFrame | None = None
        self._fresh = asyncio.Event()
        self._source_ended = False
        self._reader: asyncio.Task[None] | None = None

    async def _read(self) -> None:
        try:
            while True:
                frame = await self.source.recv()
                if not isinstance(frame, VideoFrame):
                    continue
                self.stats.received += 1
                if self._latest is not None:
                    self.stats.dropped += 1
                self._latest = frame
                self._fresh.set()
        except MediaStreamError:
            pass
        finally:
            self._source_ended = True
            self._fresh.set()

    async def recv(self) -> VideoFrame:
        """The processed newest frame (waits for one the track has not sent yet)."""
        if self.readyState != "live":
            raise MediaStreamError
        if self._reader is None:
            self._reader = asyncio.ensure_future(self._read())
        await self._fresh.wait()
        frame, self._latest = self._latest, None
        self._fresh.clear()
        if frame is None:  # woken by the end of the source
            self.stop()
            raise MediaStreamError
        started = time.perf_counter()
        try:
            out = await self._process(frame)
        except Exception as e:  # pass the frame through: the video goes on
            self.stats.failed += 1
            if self.stats.failed in (1, 10) or self.stats.failed % 1000 == 0:
                logger.exception("frame processing failed (%d so far); sending the frame as is: %s",
                                 self.stats.failed, e)
            out = frame
        self.stats.process_s += time.perf_counter() - started
        out.pts, out.time_base = frame.pts, frame.time_base
        self.stats.sent += 1
        return out

    def stop(self) -> None:
        if self._reader is not None:
            self._reader.cancel()
        super().stop()
