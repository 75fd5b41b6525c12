"""Python client of `/yolo/realtime`: streams a video file or a synthetic pattern over WebRTC and
reports the annotated stream's frame rate and per-frame latency.

    python -m deployments.yolo.client --seconds 10                # dev server on 127.0.0.1:8000
    python -m deployments.yolo.client --video clip.mp4 --encoding msgpack \
        --url wss://gpu.example.org/yolo/realtime --api-key "$FAL_KEY" --ice-server turn:turn.example.org:3478 ...

Latency is per frame (see `frames.py`): from the moment a frame is handed to the encoder to the
moment its annotated copy is decoded here, so it covers the whole loop.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from dataclasses import asdict, dataclass
from typing import Any, Literal
from urllib.parse import urlparse

import msgpack
import numpy as np
from aiortc import MediaStreamTrack, RTCPeerConnection, RTCSessionDescription

from deployments.yolo.frames import FrameSink, PatternTrack, TaggedTrack
from serve_app.webrtc import (
    CandidateInit,
    IceServer,
    WebRTCConfig,
    install_marker_jitter_buffer,
    parse_candidate,
    restrict_host_addresses,
)

Encoding = Literal["json", "msgpack"]
LOOPBACK_NAMES = ("127.0.0.1", "localhost", "::1")


class ServerError(RuntimeError):
    """The server answered with an error frame."""


class Signaller:
    """The client's end of the signalling channel."""

    async def send(self, message: dict[str, Any]) -> None:
        raise NotImplementedError

    async def receive(self, timeout: float) -> dict[str, Any]:
        raise NotImplementedError

    async def close(self) -> None:
        """Leave (the server ends the session)."""


class WebSocketSignaller(Signaller):
    """fal's realtime WebSocket: JSON text frames or msgpack binary frames."""

    def __init__(self, ws: Any, encoding: Encoding) -> None:
        self.ws, self.encoding = ws, encoding

    @classmethod
    async def connect(cls, url: str, encoding: Encoding = "json", api_key: str | None = None,
                      timeout: float = 30.0) -> WebSocketSignaller:
        from websockets.asyncio.client import connect

        headers = {"Authorization": f"Key {api_key}"} if api_key else None
        ws = await connect(url, additional_headers=headers, open_timeout=timeout, max_size=2**22)
        return cls(ws, encoding)

    async def send(self, message: dict[str, Any]) -> None:
        await self.ws.send(msgpack.packb(message, use_bin_type=True) if self.encoding == "msgpack"
                           else json.dumps(message))

    async def receive(self, timeout: float) -> dict[str, Any]:
        frame = await asyncio.wait_for(self.ws.recv(), timeout)
        message = msgpack.unpackb(frame, raw=False) if isinstance(frame, bytes) else json.loads(frame)
        if not isinstance(message, dict):
            raise ServerError(f"unexpected frame {message!r}")
        return message

    async def close(self) -> None:
        await self.ws.close()


class LocalSignaller(Signaller):
    """The client side of an in-process `serve_app.realtime.LocalConnection` (tests, benchmarks)."""

    def __init__(self, conn: Any) -> None:
        self.conn = conn

    async def send(self, message: dict[str, Any]) -> None:
        await self.conn.client_send(message)

    async def receive(self, timeout: float) -> dict[str, Any]:
        return await self.conn.client_receive(timeout=timeout)  # type: ignore[no-any-return]

    async def close(self) -> None:
        await self.conn.client_close()


@dataclass
class Report:
    """What one run measured."""

    frames_sent: int
    frames_received: int
    frames_with_boxes: int
    fps: float
    latency_ms_p50: float | None
    latency_ms_p90: float | None
    latency_frames: int
    seconds: float
    setup_s: float
    errors: list[str]

    def summary(self) -> str:
        latency = (f"latency p50 {self.latency_ms_p50:.0f} ms, p90 {self.latency_ms_p90:.0f} ms "
                   f"({self.latency_frames} frames)" if self.latency_ms_p50 is not None else "no latency sample")
        return (f"{self.frames_received} frames back of {self.frames_sent} sent in {self.seconds:.1f} s: "
                f"{self.fps:.1f} fps, {latency}; {self.frames_with_boxes} with boxes; setup {self.setup_s:.2f} s")


def _percentile(values: list[float], q: float) -> float | None:
    return float(np.percentile(values, q)) * 1000 if values else None


async def stream(signaller: Signaller, source: MediaStreamTrack, *, seconds: float = 10.0, min_frames: int = 0,
                 ice_servers: list[IceServer] | None = None, timeout: float = 60.0) -> Report:
    """Negotiate over `signaller`, send `source` for `seconds` after the first annotated frame
    (and until `min_frames` came back), then leave. Raises `ServerError` on an error frame during setup."""
    started = time.perf_counter()
    ready = await signaller.receive(timeout)
    if ready.get("type") != "ready":
        raise ServerError(f"expected ready, got {ready}")
    announced = [IceServer.model_validate(s) for s in ready.get("ice_servers", [])]
    pc = RTCPeerConnection(WebRTCConfig(ice_servers=[*(ice_servers or []), *announced]).rtc_configuration())
    tagged = TaggedTrack(source)
    sink = FrameSink(tagged)
    pc.addTrack(tagged)
    pc.on("track", sink.attach)
    errors: list[str] = []
    try:
        await pc.setLocalDescription(await pc.createOffer())
        await signaller.send({"type": "offer", "sdp": pc.localDescription.sdp})
        while (message := await signaller.receive(timeout))["type"] != "answer":
            if message["type"] == "error":
                raise ServerError(f"{message.get('error')}: {message.get('detail')}")
        await pc.setRemoteDescription(RTCSessionDescription(sdp=message["sdp"], type="answer"))
        listener = asyncio.ensure_future(_listen(signaller, pc, errors))
        await asyncio.wait_for(sink.first_frame.wait(), timeout)
        setup = time.perf_counter() - started
        first = time.perf_counter()
        while time.perf_counter() - first < seconds or len(sink.times) < min_frames:
            if listener.done() or time.perf_counter() - first > max(seconds, timeout):
                break
            await asyncio.sleep(0.05)
        listener.cancel()
    finally:
        sink.stop()
        await pc.close()
        await signaller.close()
    span = sink.times[-1] - sink.times[0] if len(sink.times) > 1 else 0.0
    return Report(frames_sent=tagged.count, frames_received=len(sink.times), frames_with_boxes=sink.with_boxes,
                  fps=(len(sink.times) - 1) / span if span else 0.0,
                  latency_ms_p50=_percentile(sink.latencies, 50), latency_ms_p90=_percentile(sink.latencies, 90),
                  latency_frames=len(sink.latencies), seconds=span, setup_s=setup, errors=errors)


async def _listen(signaller: Signaller, pc: RTCPeerConnection, errors: list[str]) -> None:
    """Server messages after the answer: candidates (aiortc sends only the end), errors."""
    while True:
        try:
            message = await signaller.receive(3600)
        except Exception:  # the server closed the socket: the session is over
            return
        if message.get("type") == "icecandidate":
            init = message.get("candidate")
            await pc.addIceCandidate(parse_candidate(CandidateInit.model_validate(init)) if init else None)
        elif message.get("type") == "error":
            errors.append(f"{message.get('error')}: {message.get('detail', '')}")


def source_track(video: str | None, width: int, height: int, fps: float) -> MediaStreamTrack:
    """A video file's track (decoded by PyAV at its own rate) or the synthetic pattern."""
    if video is None:
        return PatternTrack(width, height, fps)
    from aiortc.contrib.media import MediaPlayer

    player = MediaPlayer(video, loop=True)
    if player.video is None:
        raise SystemExit(f"{video} has no video stream")
    return player.video


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m deployments.yolo.client",
        description="Stream a video file or a synthetic pattern to /yolo/realtime over WebRTC; report fps and latency.")
    parser.add_argument("--url", default="ws://127.0.0.1:8000/yolo/realtime", help="the realtime WebSocket")
    parser.add_argument("--video", help="a video file to stream (default: a synthetic pattern)")
    parser.add_argument("--width", type=int, default=640, help="synthetic pattern width")
    parser.add_argument("--height", type=int, default=480, help="synthetic pattern height")
    parser.add_argument("--fps", type=float, default=30.0, help="synthetic pattern frame rate")
    parser.add_argument("--seconds", type=float, default=10.0, help="how long to stream after the first frame")
    parser.add_argument("--encoding", choices=["json", "msgpack"], default="msgpack", help="signalling frames")
    parser.add_argument("--api-key", help="sent as `Authorization: Key ...`")
    parser.add_argument("--ice-server", action="append", default=[], help="stun:/turn: URL (repeatable)")
    parser.add_argument("--ice-username", help="TURN user name")
    parser.add_argument("--ice-credential", help="TURN password")
    parser.add_argument("--host-address", action="append",
                        help="offer host candidates on this address only (repeatable; default: 127.0.0.1 when "
                        "the URL is on loopback, else every interface)")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    args = parser.parse_args(argv)
    install_marker_jitter_buffer()  # decode a returned frame at its last packet, as browsers do
    if args.host_address:
        restrict_host_addresses(args.host_address)
    elif urlparse(args.url).hostname in LOOPBACK_NAMES:  # aioice skips loopback unless told
        restrict_host_addresses(["127.0.0.1"])
    servers = [IceServer(urls=[u], username=args.ice_username, credential=args.ice_credential)
               for u in args.ice_server]

    async def run() -> Report:
        signaller = await WebSocketSignaller.connect(args.url, args.encoding, args.api_key)
        track = source_track(args.video, args.width, args.height, args.fps)
        return await stream(signaller, track, seconds=args.seconds, ice_servers=servers)

    report = asyncio.run(run())
    print(json.dumps(asdict(report)) if args.json else report.summary())


if __name__ == "__main__":
    main()
