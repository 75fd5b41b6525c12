"""What status streams wait on: a version per job, bumped on every change, with waiters woken on
it (or on a move of their service's queue), and a bounded ring of each job's stream events."""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from typing import Any

MAX_EVENTS = 256
FINISHED_EVENTS = 16


class ChangeFeed:
    """Versions, waiters and event rings of the jobs of one store (one event loop, no locks)."""

    def __init__(self) -> None:
        self._versions: dict[str, int] = {}
        self._waiters: dict[str, asyncio.Event] = {}
        self._queue_waiters: dict[str, set[str]] = {}
        self._events: dict[str, deque[tuple[int, dict[str, Any]]]] = {}

    def version(self, request_id: str) -> int:
        return self._versions.get(request_id, 0)

    def changed(self, request_id: str) -> None:
        """The job changed: new version, waiters woken."""
        self._versions[request_id] = self._versions.get(request_id, 0) + 1
        self._wake(request_id)

    def queue_moved(self, service: str) -> None:
        """Positions in `service`'s queue moved: wake the waiters of its queued jobs."""
        for request_id in self._queue_waiters.pop(service, set()):
            self._wake(request_id)

    def _wake(self, request_id: str) -> None:
        event = self._waiters.pop(request_id, None)
        if event is not None:
            event.set()

    async def wait(self, request_id: str, queued_in: str | None, timeout_s: float) -> None:
        """Return when the job changes (or, if `queued_in` names its service, its queue moves),
        or after `timeout_s`."""
        event = self._waiters.setdefault(request_id, asyncio.Event())
        if queued_in is not None:
            self._queue_waiters.setdefault(queued_in, set()).add(request_id)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(event.wait(), timeout_s)

    def add_events(self, request_id: str, events: list[dict[str, Any]]) -> None:
        ring = self._events.setdefault(request_id, deque(maxlen=MAX_EVENTS))
        seq = ring[-1][0] if ring else 0
        for event in events:
            seq += 1
            ring.append((seq, event))

    def events_after(self, request_id: str, seq: int) -> tuple[list[dict[str, Any]], int]:
        """Events newer than `seq`, and the newest sequence number."""
        ring = self._events.get(request_id, ())
        return [e for s, e in ring if s > seq], (ring[-1][0] if ring else seq)

    def finished(self, request_id: str) -> None:
        """Keep only the last few events: a stream a little behind still gets them."""
        ring = self._events.get(request_id)
        if ring is not None:
            self._events[request_id] = deque(list(ring)[-FINISHED_EVENTS:], maxlen=FINISHED_EVENTS)

    def forget(self, request_id: str) -> None:
        self._versions.pop(request_id, None)
        self._events.pop(request_id, None)
