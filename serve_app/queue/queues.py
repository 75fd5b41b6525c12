"""Per-service FIFO queues of request ids and counts of running jobs: the store's bookkeeping of
who waits and who runs, with O(1) push, pop, removal and put-back-at-the-front."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterator


class ServiceQueues:
    """One FIFO of queued request ids per service, and how many of its jobs run."""

    def __init__(self) -> None:
        self._queues: dict[str, OrderedDict[str, None]] = {}
        self._running: dict[str, int] = {}

    def _queue(self, service: str) -> OrderedDict[str, None]:
        queue = self._queues.get(service)
        if queue is None:
            queue = self._queues[service] = OrderedDict()
        return queue

    def length(self, service: str) -> int:
        queue = self._queues.get(service)
        return len(queue) if queue else 0

    def push(self, service: str, request_id: str) -> int:
        """Append; returns the new job's position (jobs ahead of it)."""
        queue = self._queue(service)
        queue[request_id] = None
        return len(queue) - 1

    def push_front(self, service: str, request_id: str) -> None:
        queue = self._queue(service)
        queue[request_id] = None
        queue.move_to_end(request_id, last=False)

    def remove(self, service: str, request_id: str) -> bool:
        queue = self._queue(service)
        if request_id not in queue:
            return False
        del queue[request_id]
        return True

    def position(self, service: str, request_id: str) -> int | None:
        """Jobs ahead of `request_id` (a walk: queues are bounded by `max_queued`)."""
        for index, queued in enumerate(self._queues.get(service, ())):
            if queued == request_id:
                return index
        return None

    def services(self) -> Iterator[str]:
        """Services with queued jobs."""
        return iter([s for s, q in self._queues.items() if q])

    def take(self, service: str, limit: int) -> list[str]:
        """Pop up to `limit` ids from the front and count them as running."""
        queue = self._queue(service)
        taken = [queue.popitem(last=False)[0] for _ in range(min(limit, len(queue)))]
        self._running[service] = self._running.get(service, 0) + len(taken)
        return taken

    def running(self, service: str) -> int:
        return self._running.get(service, 0)

    def add_running(self, service: str, count: int = 1) -> None:
        """Count jobs as running (restored from the journal) or, negative, as no longer running."""
        self._running[service] = max(0, self._running.get(service, 0) + count)

    def counts(self) -> dict[str, dict[str, int]]:
        return {"queued": {s: len(q) for s, q in self._queues.items()}, "running": dict(self._running)}
