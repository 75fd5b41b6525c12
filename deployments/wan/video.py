"""MP4 encoding of generated frames: H.264 in yuv420p through PyAV (FFmpeg's libraries ship in its
wheels; nothing to install on the host)."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

X264_PRESETS = ("ultrafast", "superfast", "veryfast", "faster", "fast", "medium", "slow", "slower", "veryslow")


class Mp4Options(BaseModel):
    """libx264 settings."""

    model_config = ConfigDict(extra="forbid")

    crf: int = Field(default=18, ge=0, le=51, description="Constant rate factor: 0 lossless, 18 visually "
                     "lossless, 23 x264's default; lower is larger.")
    preset: str = Field(default="medium", pattern="^(" + "|".join(X264_PRESETS) + ")$",
                        description="x264 speed/size trade-off (ultrafast ... veryslow).")


def encode_mp4(frames: Any, fps: int, options: Mp4Options | None = None) -> bytes:
    """Encode `frames` (uint8 array `[F, H, W, 3]`, RGB; H and W even) as an H.264 / yuv420p MP4
    whose index sits at the front (`faststart`: playable while it downloads)."""
    import av
    import numpy as np

    opts = options or Mp4Options()
    frames = np.ascontiguousarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"expected uint8 frames [F, H, W, 3], got {frames.dtype} {list(frames.shape)}")
    _, height, width, _ = frames.shape
    if height % 2 or width % 2:
        raise ValueError(f"yuv420p needs an even width and height, got {width}x{height}")
    # faststart rewrites the file after the last frame, which FFmpeg does by reopening it by name:
    # so a temporary file, not an in-memory buffer.
    with tempfile.TemporaryDirectory(prefix="mp4-") as tmp:
        path = Path(tmp) / "video.mp4"
        with av.open(str(path), mode="w", format="mp4", options={"movflags": "+faststart"}) as container:
            stream: Any = container.add_stream("libx264", rate=fps)
            stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
            stream.options = {"crf": str(opts.crf), "preset": opts.preset}
            for frame in frames:
                container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
            container.mux(stream.encode())  # flush the encoder's delayed frames
        return path.read_bytes()
