"""One rank of multi-GPU Wan: every rank runs the same denoising with its share of the sequence
(diffusers' context parallelism over the runner's process group); rank 0 decodes the latents and
encodes the MP4.

Every rank sees every step: the ranks agree on cancellation at every step (`raise_if_cancelled`, no
host sync), so they all leave the denoising loop at the same step (a rank that stopped alone would
leave its peers waiting in the next attention all-to-all).
"""

from __future__ import annotations

import concurrent.futures
import time
from typing import Any

from deployments.wan.engine import EngineSpec, WanEngine, WanJob
from deployments.wan.video import Mp4Options, Mp4Writer
from serve_app.distributed import DistributedWorker


class WanWorker(DistributedWorker):
    """A rank of the Wan service. `setup(spec=EngineSpec dict, fps=..., mp4=Mp4Options dict)`."""

    engine: WanEngine

    def setup(self, spec: dict[str, Any], fps: int = 16, mp4: dict[str, Any] | None = None,  # type: ignore[override]
              **_: Any) -> None:
        engine_spec = EngineSpec.model_validate(spec)
        if engine_spec.world_size != self.world_size:
            layout = (f"cfg_parallel={engine_spec.cfg_parallel}, ulysses={engine_spec.ulysses_degree}, "
                      f"ring={engine_spec.ring_degree}")
            raise ValueError(f"the layout ({layout}) takes {engine_spec.world_size} ranks, but the runner has "
                             f"{self.world_size}")
        self.engine = WanEngine(engine_spec, str(self.device))
        self.fps = fps
        self.mp4 = Mp4Options.model_validate(mp4 or {})
        self.rank_print(f"Wan ready ({engine_spec.model.describe()}, ulysses={engine_spec.ulysses_degree}, "
                        f"ring={engine_spec.ring_degree}) on {self.device}")

    def __call__(self, streaming: bool = False, **payload: Any) -> Any:
        """`payload = {"job": WanJob dict}` → on rank 0 `{"video": mp4 bytes, "width", "height",
        "num_frames", "inference_s", "encode_s"}`; None on other ranks. A cancelled request raises
        `RequestCancelled` on every rank at the same step."""
        job = WanJob.model_validate(payload["job"])
        start = time.perf_counter()

        def on_step(step: int, total: int) -> None:
            self.raise_if_cancelled()
            if streaming:
                self.progress(step, total, "denoising")

        latents = self.engine.denoise(job, on_step)
        if self.rank != 0:
            return None
        return finish(self.engine, latents, start, self.fps, self.mp4)


def finish(engine: WanEngine, latents: Any, start: float, fps: int, mp4: Mp4Options) -> dict[str, Any]:
    """Decode and encode, overlapped: each decoded part goes to the MP4 encoder on a thread while the
    VAE decodes the next. `{"video": mp4 bytes, "width", "height", "num_frames", "inference_s" (since
    `start`, through decoding), "encode_s" (what the encoding added after the last part)}`."""
    with Mp4Writer(fps, mp4) as writer, concurrent.futures.ThreadPoolExecutor(1, "mp4") as encoder:
        pending: concurrent.futures.Future[None] | None = None
        height = width = 0
        for frames in engine.decode_chunks(latents):
            height, width = int(frames.shape[1]), int(frames.shape[2])
            if pending is not None:
                pending.result()  # one part in flight: memory stays one part deep
            pending = encoder.submit(writer.write, frames)
        engine.synchronize()
        inference_s = time.perf_counter() - start
        if pending is not None:
            pending.result()
        video = writer.finish()
    return {"video": video, "width": width, "height": height, "num_frames": writer.frames,
            "inference_s": inference_s, "encode_s": time.perf_counter() - start - inference_s}
