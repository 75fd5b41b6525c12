"""An append-only JSON-lines journal of job records, with group commit, replay and compaction.

Each line is a whole job record (the latest line for a request id wins) or a tombstone
`{"request_id": ..., "deleted": true}`. Writes happen off the event loop in one thread call per
batch: whoever `commit()`s waits for the batch holding its lines, so many concurrent submissions
share one write. A torn last line (a crash mid-write) is skipped on replay.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

logger = logging.getLogger("ray.serve")


def replay(path: Path) -> dict[str, dict[str, Any]]:
    """The live records in a journal file, by request id (empty when there is no file)."""
    records: dict[str, dict[str, Any]] = {}
    if not path.exists():
        return records
    with path.open(encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                logger.warning("queue journal %s: skipping unreadable line %d", path, number)
                continue
            request_id = record.get("request_id")
            if not isinstance(request_id, str):
                continue
            if record.get("deleted"):
                records.pop(request_id, None)
            else:
                records[request_id] = record
    return records


class Journal:
    """Appends records to `path`; `start()` must run inside the event loop that appends."""

    def __init__(self, path: Path, fsync: bool = False) -> None:
        self.path = path
        self.fsync = fsync
        self.lines_written = 0
        self._pending: list[str] = []
        self._batch: asyncio.Future[None] | None = None
        self._in_flight: asyncio.Future[None] | None = None
        self._kick = asyncio.Event()
        self._snapshot: Callable[[], Iterable[dict[str, Any]]] | None = None
        self._task: asyncio.Task[None] | None = None
        path.parent.mkdir(parents=True, exist_ok=True)

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._flush_loop())

    async def close(self) -> None:
        """Write what is pending, then stop the writer."""
        await self.commit()
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)  # our own cancellation still raises
            self._task = None

    def append(self, record: dict[str, Any]) -> None:
        """Queue one record for writing (returns at once; `commit()` waits for the disk)."""
        self._pending.append(json.dumps(record, separators=(",", ":")) + "\n")
        self._kick.set()

    def delete(self, request_id: str) -> None:
        self.append({"request_id": request_id, "deleted": True})

    def request_compaction(self, snapshot: Callable[[], Iterable[dict[str, Any]]]) -> None:
        """Rewrite the file from `snapshot()` (taken on the event loop) after the next batch."""
        self._snapshot = snapshot
        self._kick.set()

    async def commit(self) -> None:
        """Wait until every record appended so far is written."""
        if self._pending:
            if self._batch is None:
                self._batch = asyncio.get_running_loop().create_future()
            await asyncio.shield(self._batch)
        elif self._in_flight is not None:
            await asyncio.shield(self._in_flight)

    async def _flush_loop(self) -> None:
        while True:
            await self._kick.wait()
            self._kick.clear()
            while self._pending:
                lines, self._pending = self._pending, []
                batch, self._batch = self._batch, None
                self._in_flight = batch
                try:
                    await asyncio.to_thread(self._write, lines)
                except Exception as exc:
                    logger.error("queue journal %s: write failed", self.path, exc_info=exc)
                    if batch is not None and not batch.done():
                        batch.set_exception(exc)
                else:
                    if batch is not None and not batch.done():
                        batch.set_result(None)
                finally:
                    self._in_flight = None
            if self._snapshot is not None and not self._pending:
                snapshot, self._snapshot = self._snapshot, None
                lines = [json.dumps(r, separators=(",", ":")) + "\n" for r in snapshot()]
                try:
                    await asyncio.to_thread(self._rewrite, lines)
                except Exception as exc:
                    logger.error("queue journal %s: compaction failed", self.path, exc_info=exc)

    def _write(self, lines: list[str]) -> None:
        with self.path.open("a", encoding="utf-8") as f:
            f.writelines(lines)
            f.flush()
            if self.fsync:
                os.fsync(f.fileno())
        self.lines_written += len(lines)

    def _rewrite(self, lines: list[str]) -> None:
        tmp = self.path.with_suffix(".compact")
        with tmp.open("w", encoding="utf-8") as f:
            f.writelines(lines)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)
        self.lines_written = len(lines)
