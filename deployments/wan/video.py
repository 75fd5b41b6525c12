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
    lookahead: int | None = Field(
        default=10, ge=0, le=250,
        description="x264's rc-lookahead: frames its rate control sees ahead (the medium preset's own: 40). "
                    "The encoder holds that many frames back, so they are encoded after the last frame is "
                    "decoded, on the request's time; 10 keeps that tail short (bench/mp4_overlap.py). "
                    "null: the preset's.")


def encode_mp4(frames: Any, fps: int, options: Mp4Options | None = None) -> bytes:
    """Encode `frames` (uint8 array `[F, H, W, 3]`, RGB; H and W even) as an H.264 / yuv420p MP4
    whose index sits at the front (`faststart`: playable while it downloads)."""
    with Mp4Writer(fps, options) as writer:
        writer.write(frames)
        return writer.finish()


class Mp4Writer:
    """`encode_mp4` in parts: `write(frames)` as many times as there are chunks (uint8 `[f, H, W, 3]`,
    all of one size), then `finish()` for the bytes. Frames written while the caller produces the
    next chunk (the VAE decoding the next latent frame) overlap their encoding with that work."""

    def __init__(self, fps: int, options: Mp4Options | None = None) -> None:
        self.fps = fps
        self.options = options or Mp4Options()
        # faststart rewrites the file after the last frame, which FFmpeg does by reopening it by
        # name: so a temporary file, not an in-memory buffer.
        self._tmp = tempfile.TemporaryDirectory(prefix="mp4-")
        self._path = Path(self._tmp.name) / "video.mp4"
        self._container: Any = None
        self._stream: Any = None
        self.frames = 0

    def __enter__(self) -> Mp4Writer:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def write(self, frames: Any) -> None:
        import av
        import numpy as np

        frames = np.ascontiguousarray(frames)
        if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
            raise ValueError(f"expected uint8 frames [F, H, W, 3], got {frames.dtype} {list(frames.shape)}")
        _, height, width, _ = frames.shape
        if self._stream is None:
            if height % 2 or width % 2:
                raise ValueError(f"yuv420p needs an even width and height, got {width}x{height}")
            self._container = av.open(str(self._path), mode="w", format="mp4", options={"movflags": "+faststart"})
            self._stream = self._container.add_stream("libx264", rate=self.fps)
            self._stream.width, self._stream.height, self._stream.pix_fmt = width, height, "yuv420p"
            options = {"crf": str(self.options.crf), "preset": self.options.preset}
            if self.options.lookahead is not None:
                options["x264-params"] = f"rc-lookahead={self.options.lookahead}"
            self._stream.options = options
        elif (width, height) != (self._stream.width, self._stream.height):
            raise ValueError(f"frames of {width}x{height} in a {self._stream.width}x{self._stream.height} video")
        for frame in frames:
            self._container.mux(self._stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        self.frames += len(frames)

    def finish(self) -> bytes:
        """Flush the encoder's delayed frames, close the file and return it."""
        if self._stream is None:
            raise ValueError("no frames were written")
        self._container.mux(self._stream.encode())
        self._container.close()
        self._container = self._stream = None
        return self._path.read_bytes()

    def close(self) -> None:
        if self._container is not None:
            self._container.close()
            self._container = None
        self._tmp.cleanup()
