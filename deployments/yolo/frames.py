"""Client-side media for measuring the loop: a synthetic pattern track, frame-index tags that survive
VP8, and a sink that matches returned frames to the moment they were sent.

A tag is a strip of 20 cells (16 bits of frame index, 4 of checksum), each a 16x16 black or white
square along the bottom edge (box labels go above the boxes, so the top edge is where they pile up);
VP8 codes 16x16 macroblocks, so aligned cells survive compression. A strip overdrawn by a label fails
its checksum and that frame's latency is simply not counted.
"""

from __future__ import annotations

import asyncio
import fractions
import time

import numpy as np
from aiortc import MediaStreamTrack
from aiortc.mediastreams import MediaStreamError
from av import VideoFrame

CELL = 16
DATA_BITS, CHECK_BITS = 16, 4
CLOCK = 90_000  # RTP video clock


def _checksum(index: int) -> int:
    return sum((index >> shift) & 0xF for shift in range(0, DATA_BITS, 4)) & 0xF


def stamp(image: np.ndarray, index: int) -> None:
    """Write `index` (mod 2**16) into the bottom strip of a BGR image, in place."""
    index %= 1 << DATA_BITS
    word = index | (_checksum(index) << DATA_BITS)
    top = image.shape[0] - CELL
    image[top:, : CELL * (DATA_BITS + CHECK_BITS)] = 0
    for bit in range(DATA_BITS + CHECK_BITS):
        if word >> bit & 1:
            image[top:, bit * CELL : (bit + 1) * CELL] = 255


def read_stamp(image: np.ndarray) -> int | None:
    """The index in the bottom strip, or None when it does not check out."""
    if image.shape[0] < CELL or image.shape[1] < CELL * (DATA_BITS + CHECK_BITS):
        return None
    quarter, top = CELL // 4, image.shape[0] - CELL
    word = 0
    for bit in range(DATA_BITS + CHECK_BITS):
        cell = image[top + quarter : top + CELL - quarter, bit * CELL + quarter : (bit + 1) * CELL - quarter]
        level = float(cell.mean())
        if 70 < level < 185:  # neither black nor white: overdrawn
            return None
        word |= int(level >= 128) << bit
    index = word & ((1 << DATA_BITS) - 1)
    return index if word >> DATA_BITS == _checksum(index) else None


def green_pixels(image: np.ndarray) -> int:
    """Pixels of the boxes' green (BGR 0,255,0) after video compression; inputs here have none."""
    b, g, r = (image[..., i].astype(np.int16) for i in range(3))
    return int(((g > 160) & (r < 110) & (b < 110)).sum())


class PatternTrack(MediaStreamTrack):
    """A synthetic camera: grey background, a white box moving left to right and a red disc."""

    kind = "video"

    def __init__(self, width: int = 640, height: int = 480, fps: float = 30.0) -> None:
        super().__init__()
        self.width, self.height, self.fps = width, height, fps
        self._count = 0
        self._start: float | None = None

    async def recv(self) -> VideoFrame:
        if self.readyState != "live":
            raise MediaStreamError
        if self._start is None:
            self._start = time.perf_counter()
        due = self._start + self._count / self.fps
        await asyncio.sleep(max(0.0, due - time.perf_counter()))
        image = np.full((self.height, self.width, 3), 90, np.uint8)
        w, h = self.width // 4, self.height // 3
        x = int((self._count * 4) % max(1, self.width - w))
        image[h : 2 * h, x : x + w] = 255
        yy, xx = np.ogrid[: self.height, : self.width]
        cy, cx, radius = self.height * 3 // 4, self.width // 2, self.height // 8
        image[(yy - cy) ** 2 + (xx - cx) ** 2 <= radius**2] = (0, 0, 220)
        frame = VideoFrame.from_ndarray(image, format="bgr24")
        frame.pts, frame.time_base = int(self._count * CLOCK / self.fps), fractions.Fraction(1, CLOCK)
        self._count += 1
        return frame


class TaggedTrack(MediaStreamTrack):
    """Stamps each frame of `source` with its index and notes when it went out."""

    kind = "video"

    def __init__(self, source: MediaStreamTrack) -> None:
        super().__init__()
        self.source = source
        self.sent_at: dict[int, float] = {}
        self.count = 0

    async def recv(self) -> VideoFrame:
        frame = await self.source.recv()
        if not isinstance(frame, VideoFrame):
            raise MediaStreamError
        image = frame.to_ndarray(format="bgr24")
        stamp(image, self.count)
        out = VideoFrame.from_ndarray(image, format="bgr24")
        out.pts, out.time_base = frame.pts, frame.time_base
        self.sent_at[self.count % (1 << DATA_BITS)] = time.perf_counter()
        self.count += 1
        return out

    def stop(self) -> None:
        self.source.stop()
        super().stop()


class FrameSink:
    """Reads the returned track: frame times, matched latencies, frames showing boxes."""

    def __init__(self, sent: TaggedTrack, box_pixels: int = 40) -> None:
        self.sent, self.box_pixels = sent, box_pixels
        self.times: list[float] = []
        self.latencies: list[float] = []
        self.with_boxes = 0
        self.first_frame = asyncio.Event()
        self.last_image: np.ndarray | None = None
        self._task: asyncio.Task[None] | None = None

    def attach(self, track: MediaStreamTrack) -> None:
        if track.kind == "video" and self._task is None:
            self._task = asyncio.ensure_future(self._read(track))

    async def _read(self, track: MediaStreamTrack) -> None:
        try:
            while True:
                frame = await track.recv()
                now = time.perf_counter()
                if not isinstance(frame, VideoFrame):
                    continue
                image = frame.to_ndarray(format="bgr24")
                self.times.append(now)
                index = read_stamp(image)
                if index is not None and index in self.sent.sent_at:
                    self.latencies.append(now - self.sent.sent_at.pop(index))
                if green_pixels(image) >= self.box_pixels:
                    self.with_boxes += 1
                self.last_image = image
                self.first_frame.set()
        except MediaStreamError:
            pass

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
