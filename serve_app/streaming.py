"""Server-Sent Events framing of a stream (the events themselves are in `events.py`).

A stream is a sequence of `data: <json>` frames: progress events (`{"type": "progress", ...}`), and
finally the endpoint's output JSON, exactly what the sync call returns. SSE comment lines
(`: ping`) keep idle connections open while a long step runs.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

HEARTBEAT = ": ping\n\n"
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no", "Connection": "keep-alive"}


def sse_frame(data: Any) -> str:
    """One SSE `data:` frame holding `data` as compact JSON."""
    return f"data: {json.dumps(data, separators=(',', ':'))}\n\n"


async def with_heartbeats(frames: AsyncIterator[str], interval_s: float) -> AsyncIterator[str]:
    """Yield `frames`, inserting a heartbeat comment whenever none arrived for `interval_s`."""
    it = frames.__aiter__()
    pending: asyncio.Task[str] | None = None
    try:
        while True:
            if pending is None:
                pending = asyncio.ensure_future(it.__anext__())
            done, _ = await asyncio.wait({pending}, timeout=interval_s)
            if not done:
                yield HEARTBEAT
                continue
            try:
                frame = pending.result()
            except StopAsyncIteration:
                return
            finally:
                if done:
                    pending = None
            yield frame
    finally:
        if pending is not None:
            pending.cancel()
        aclose = getattr(it, "aclose", None)
        if aclose is not None:
            await aclose()
