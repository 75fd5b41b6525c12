"""The typed event vocabulary, from a GPU rank to the client.

Work reports what happens with three small types, and every layer dispatches on the type, never
on a dict key:

- `Progress`: `step` of `total` done, with an optional preview image;
- `Partial`: a partial output (an audio chunk, a training status, an upstream queue update);
- `Output`: the final output, always the last item of a stream.

Cancellation and failures are raised (`errors.RequestCancelled`, `ServiceError`s), never sent as
events. On the wire a stream is the events' `to_json()` frames, then the output JSON itself.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel

from serve_app.io import Image


@dataclass
class Progress:
    """`step` of `total` units of work done (denoising steps, chunks, ...)."""

    step: int
    total: int
    message: str = ""
    preview: Image | None = None

    def to_json(self) -> dict[str, Any]:
        """The SSE frame: `{"type": "progress", "step", "total", "progress", "message"[, "preview"]}`."""
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
    """A partial output sent while the work runs. Its frame is `{"type": kind, **data}`; files
    inside `data` are stored like outputs."""

    data: BaseModel
    kind: str = "partial"

    def to_json(self) -> dict[str, Any]:
        return {"type": self.kind, **self.data.model_dump(mode="json")}


@dataclass
class Output:
    """The final output of a call: the last item of every stream.

    `timings` (seconds) says where the replica spent the call: `dispatch` (until the method started
    on its thread), `run` (the method itself) and `store` (storing the output's files). The sync
    HTTP route sends them as a `Server-Timing` header.
    """

    value: BaseModel
    timings: dict[str, float] | None = None

    def to_json(self) -> dict[str, Any]:
        """The output JSON, exactly what the sync call returns."""
        return self.value.model_dump(mode="json")


StreamEvent = Progress | Partial
"""What work reports while it runs."""

StreamItem = Progress | Partial | Output
"""What a stream carries: events, then the output."""
