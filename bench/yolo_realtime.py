"""YOLO over WebRTC: frames per second and added latency per frame at 640x480, against the bare model.

1. Bare: ultralytics' `model.predict` on one 640x480 frame, `--bare-frames` times after a warm-up
   (median ms per frame, and the fps that allows).
2. Loop: the whole realtime loop. A synthetic 30 fps 640x480 camera (`deployments.yolo.client`)
   sends over WebRTC to the YOLO service, which takes the newest frame, detects, draws and sends it
   back; per-frame latency is from encode on the client to decode of the annotated copy on the
   client (frame-index tags, see deployments/yolo/frames.py). By default the service runs in this
   process (signalling over `LocalConnection`, media over UDP on 127.0.0.1); `--url` measures a
   running server instead (`ws://127.0.0.1:8000/yolo/realtime`).
3. Echo: the same loop with the frames sent back untouched (no model): what WebRTC itself costs here
   (VP8 encode and decode both ways, aiortc's jitter buffer and threads).
Added latency = loop p50 - bare median; the model's share of it = loop p50 - echo p50. Client and
server share this machine's cores in-process.
Usage: python bench/yolo_realtime.py [--preset tiny|full] [--device auto] [--seconds 10] [--half]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from typing import Any

import numpy as np


def bare(model: Any, settings: dict[str, Any], frames: int) -> list[float]:
    """Seconds per `model.predict` call on a 640x480 frame with a drawn shape."""
    image = np.full((480, 640, 3), 90, np.uint8)
    image[160:320, 200:360] = 255
    for _ in range(3):
        model.predict(image, **settings)
    times = []
    for _ in range(frames):
        started = time.perf_counter()
        model.predict(image, **settings)
        times.append(time.perf_counter() - started)
    return times


async def loop_in_process(service: Any, seconds: float) -> Any:
    from deployments.yolo.client import LocalSignaller, stream
    from deployments.yolo.frames import PatternTrack
    from serve_app.realtime import LocalConnection
    from serve_app.service import RunContext

    conn = LocalConnection(encoding="msgpack")
    task = asyncio.ensure_future(service.session(conn, RunContext("bench")))
    try:
        return await stream(LocalSignaller(conn), PatternTrack(640, 480, 30.0), seconds=seconds, timeout=120)
    finally:
        await asyncio.wait_for(asyncio.gather(task, return_exceptions=True), 30)


async def loop_echo(seconds: float) -> Any:
    """The loop with a pass-through track instead of the service: WebRTC's own cost."""
    from deployments.yolo.client import LocalSignaller, stream
    from deployments.yolo.frames import PatternTrack
    from serve_app.realtime import LocalConnection
    from serve_app.webrtc import LatestFrameTrack, WebRTCConfig, WebRTCSession

    async def untouched(frame: Any) -> Any:
        return frame

    conn = LocalConnection(encoding="msgpack")
    session = WebRTCSession(conn, WebRTCConfig(host_addresses=["127.0.0.1"]),
                            on_track=lambda t: LatestFrameTrack(t, untouched) if t.kind == "video" else None)
    task = asyncio.ensure_future(session.run())
    try:
        return await stream(LocalSignaller(conn), PatternTrack(640, 480, 30.0), seconds=seconds, timeout=120)
    finally:
        await asyncio.wait_for(asyncio.gather(task, return_exceptions=True), 30)


async def loop_remote(url: str, seconds: float, api_key: str | None) -> Any:
    from deployments.yolo.client import WebSocketSignaller, stream
    from deployments.yolo.frames import PatternTrack

    signaller = await WebSocketSignaller.connect(url, "msgpack", api_key)
    return await stream(signaller, PatternTrack(640, 480, 30.0), seconds=seconds, timeout=120)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--preset", choices=["tiny", "full"], default="tiny")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--image-size", type=int, default=640)
    parser.add_argument("--half", action="store_true", help="fp16 (CUDA)")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--bare-frames", type=int, default=30)
    parser.add_argument("--url", help="measure a running server's /yolo/realtime instead of an in-process one")
    parser.add_argument("--api-key")
    parser.add_argument("--aiortc-jitter", action="store_true",
                        help="keep aiortc's jitter buffer (a frame waits for the next one) on both ends")
    args = parser.parse_args()

    from deployments.yolo import YoloConfig, YoloService
    from serve_app.models.source import ModelSource
    from serve_app.webrtc import WebRTCConfig

    webrtc = WebRTCConfig(host_addresses=["127.0.0.1"], frame_on_marker=not args.aiortc_jitter)
    webrtc.apply_to_process()  # both ends in this process, on loopback
    config = YoloConfig(model=ModelSource(preset=args.preset), device=args.device, image_size=args.image_size,
                        half=args.half, webrtc=webrtc)
    service = YoloService(config)
    settings = service.detector.settings
    times = bare(service.detector.model, settings, args.bare_frames)
    bare_ms = statistics.median(times) * 1000
    print(f"YOLOv8n ({args.preset}, random weights) on {service.device}, imgsz {args.image_size}, "
          f"half={settings['half']}; 640x480 input")
    print(f"bare model.predict: median {bare_ms:.1f} ms/frame (min {min(times) * 1000:.1f}), "
          f"{1000 / bare_ms:.1f} fps possible")
    if args.url:
        report = asyncio.run(loop_remote(args.url, args.seconds, args.api_key))
    else:
        report = asyncio.run(loop_in_process(service, args.seconds))
    print(f"whole loop ({'remote ' + args.url if args.url else 'in-process'}): {report.summary()}")
    print("server stats:", service.stats())
    echo = asyncio.run(loop_echo(args.seconds))
    print(f"echo loop (no model, in-process): {echo.summary()}")
    if report.latency_ms_p50 is not None:
        print(f"added latency per frame (loop p50 - bare median): {report.latency_ms_p50 - bare_ms:.1f} ms")
        if echo.latency_ms_p50 is not None:
            print(f"of which WebRTC itself (echo p50): {echo.latency_ms_p50:.1f} ms; the service beyond WebRTC "
                  f"(loop p50 - echo p50): {report.latency_ms_p50 - echo.latency_ms_p50:.1f} ms")
    print(f"loop fps / min(30, bare fps): {report.fps / min(30.0, 1000 / bare_ms):.2f}")


if __name__ == "__main__":
    main()
