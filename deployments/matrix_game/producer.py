"""Render-ahead for a paced consumer: a producer thread fills a small bounded frame queue.

`BlockProducer` runs `WorldSession.next_block()` in its own thread and queues the frames one by one
in a queue of `max_frames` (fal's demo: 24, two blocks). A full queue blocks the producer, so it
renders at most about one block ahead of what the consumer took. Pausing stops generation (the queue
keeps what it holds); `stop()` ends the thread. The consumer takes frames with `get_frame` (a thread)
or `paced_frames` (asyncio, one frame per 1/fps, what a WebRTC video track's `recv` does).
The end of the stream and a failed block reach the consumer after the frames queued before them.
"""

from __future__ import annotations

import asyncio
import queue
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

import numpy as np

from deployments.matrix_game.session import SessionPaused, StreamExhausted, WorldSession


@dataclass(frozen=True)
class _End:
    error: BaseException | None  # None: the stream is exhausted


class FrameFailed(RuntimeError):
    """Generating a block failed; `__cause__` is the original exception."""


class BlockProducer:
    """Renders blocks of a started `WorldSession` ahead into a bounded frame queue."""

    def __init__(self, session: WorldSession, max_frames: int = 24) -> None:
        if max_frames < 1:
            raise ValueError("max_frames must be at least 1")
        self.session = session
        self._queue: queue.Queue[np.ndarray | _End] = queue.Queue(maxsize=max_frames)
        self._stop = threading.Event()
        self._resume = threading.Event()
        self._resume.set()
        self._thread: threading.Thread | None = None
        self._ended = False
        self.blocks = 0

    def start(self) -> None:
        if self._thread is not None:
            raise RuntimeError("the producer is already started")
        if not self.session.started:
            raise RuntimeError("start() the session first")
        self._thread = threading.Thread(target=self._run, name="matrix-game-producer", daemon=True)
        self._thread.start()

    def pause(self, paused: bool) -> None:
        """Stop (or resume) generating; frames already queued stay queued."""
        self.session.pause(paused)
        if paused:
            self._resume.clear()
        else:
            self._resume.set()

    @property
    def paused(self) -> bool:
        return not self._resume.is_set()

    def stop(self, timeout: float = 30.0) -> None:
        """End the producer thread (waits for a block in flight, up to `timeout`)."""
        self._stop.set()
        self._resume.set()
        if self._thread is not None:
            self._thread.join(timeout)

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def _put(self, item: np.ndarray | _End) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _run(self) -> None:
        while not self._stop.is_set():
            if not self._resume.wait(timeout=0.1):
                continue
            try:
                frames = self.session.next_block()
            except SessionPaused:
                continue
            except StreamExhausted:
                self._put(_End(None))
                return
            except Exception as e:  # handed to the consumer, which reports it
                self._put(_End(e))
                return
            self.blocks += 1
            for frame in frames:
                if not self._put(frame):
                    return

    def get_frame(self, timeout: float | None = None) -> np.ndarray | None:
        """The next frame, or None if none came within `timeout`.

        Raises:
            StreamExhausted: the stream ended and every frame was taken.
            FrameFailed: a block failed (after the frames queued before it).
        """
        if self._ended:
            raise StreamExhausted("the stream ended")
        try:
            item = self._queue.get(timeout=timeout)
        except queue.Empty:
            return None
        if isinstance(item, _End):
            self._ended = True
            if item.error is None:
                raise StreamExhausted("the stream ended")
            raise FrameFailed(f"{type(item.error).__name__}: {item.error}") from item.error
        return item


async def paced_frames(producer: BlockProducer, fps: float = 25.0, poll: float = 0.05) -> AsyncIterator[np.ndarray]:
    """Frames at most `fps` per second; waits (without blocking the loop) while none is ready.

    Ends when the stream is exhausted; raises FrameFailed if a block fails.
    """
    period = 1.0 / fps
    next_at = time.monotonic()
    while True:
        try:
            frame = await asyncio.to_thread(producer.get_frame, poll)
        except StreamExhausted:
            return
        if frame is None:
            next_at = max(next_at, time.monotonic())
            continue
        delay = next_at - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        next_at = max(next_at + period, time.monotonic() - period)
        yield frame
