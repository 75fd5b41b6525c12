"""Typed progress events and their Server-Sent Events framing.

A stream is a sequence of `data: <json>` frames: progress events (`{"type": "progress", ...}`), and
finally the endpoint's output JSON, exactly what the sync call returns. SSE comment lines
(`: ping`) keep idle connections open while a long step runs.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel

from serve_app.io import Image

HEARTBEAT = ": ping\n\n"
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no", "Connection": "keep-alive"}


@dataclass
class Progress:
    """`step` of `total` units of work done (denoising steps, chunks, ...)."""

    step: int
    total: int
    message: str = ""
    preview: Image | None = None

    def to_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "type": "progress",
            "step": self.step,
            "total": self.total,
            "progress": round(self.step / self.total, 4) if self.total else 0.0,
            "message": self.message,
        }
        if self.preview is not None:
            body["preview"] = self.preview.model_dump(mode="json")
        return body


@dataclass
class Partial:
    """A partial output sent while the work runs (an audio chunk, an upstream queue update).

    Its SSE frame is `{"type": kind, **data}`; files inside `data` are stored like outputs.
    """

    data: BaseModel
    kind: str = "partial"

    def to_json(self) -> dict[str, Any]:
        return {"type": self.kind, **self.data.model_dump(mode="json")}


StreamEvent = Progress | Partial


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
