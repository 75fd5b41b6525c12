"""/yolo/realtime through Ray Serve (the configs/dev.yaml app): an aiortc test peer in this process
signals over the real WebSocket (JSON and msgpack), streams a synthetic 640x480 camera over WebRTC on
127.0.0.1, and gets the frames back with boxes drawn by the real YOLOv8n (random weights; dev.yaml
sets `confidence: 0`, so its best boxes pass the model's own threshold). Also: bad messages, and a
client that vanishes mid-stream."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from typing import Any

import msgpack
import pytest
from aiortc import RTCPeerConnection, RTCSessionDescription

from deployments.yolo.client import WebSocketSignaller, stream
from deployments.yolo.frames import FrameSink, PatternTrack, TaggedTrack
from tests.realtime import loopback_candidates, realtime_url, service_stats


@pytest.fixture(scope="module", autouse=True)
def loopback_peer() -> Iterator[None]:
    with loopback_candidates():  # this process's peer offers loopback candidates only
        yield


@pytest.fixture(scope="module")
def ws_url(serve_url: str) -> str:
    return realtime_url(serve_url, "yolo")


def yolo_stats() -> dict[str, int]:
    return service_stats("yolo")


def wait_until_idle(timeout: float = 30) -> dict[str, int]:
    deadline = time.time() + timeout
    while True:
        stats = yolo_stats()
        if (stats["active_sessions"], stats["live_peer_connections"]) == (0, 0) or time.time() > deadline:
            return stats
        time.sleep(0.5)


class RecordingSignaller(WebSocketSignaller):
    """Notes whether each server frame came as text or binary."""

    frames: list[tuple[str, str]]

    async def receive(self, timeout: float) -> dict[str, Any]:
        raw = await asyncio.wait_for(self.ws.recv(), timeout)
        message = msgpack.unpackb(raw, raw=False) if isinstance(raw, bytes) else json.loads(raw)
        self.frames.append((message["type"], "binary" if isinstance(raw, bytes) else "text"))
        return message  # type: ignore[no-any-return]


@pytest.mark.parametrize("encoding", ["json", "msgpack"])
def test_webcam_stream_comes_back_annotated(ws_url: str, encoding: str) -> None:
    async def run() -> tuple[Any, list[tuple[str, str]]]:
        signaller = await RecordingSignaller.connect(ws_url, encoding)  # type: ignore[arg-type]
        signaller.frames = []  # type: ignore[attr-defined]
        report = await stream(signaller, PatternTrack(640, 480, fps=30), seconds=0, min_frames=30, timeout=120)
        return report, signaller.frames  # type: ignore[attr-defined]

    report, frames = asyncio.run(run())
    print(f"\n{encoding}: {report.summary()}")
    assert report.frames_received >= 30 and report.frames_with_boxes >= 30, report
    assert report.fps > 1.0 and report.latency_frames >= 10 and report.errors == []
    answer_kind = dict(frames)["answer"]
    assert answer_kind == ("binary" if encoding == "msgpack" else "text")  # answered as the client spoke
    assert ("icecandidate", answer_kind) in frames  # the end of the server's candidates
    stats = wait_until_idle()
    assert (stats["active_sessions"], stats["live_peer_connections"]) == (0, 0), stats


def test_bad_messages_get_error_frames_on_a_live_socket(ws_url: str) -> None:
    async def run() -> list[Any]:
        from websockets.asyncio.client import connect

        replies: list[Any] = []
        async with connect(ws_url) as ws:
            replies.append(json.loads(await ws.recv()))
            bad_candidate = {"type": "icecandidate", "candidate": {"candidate": "candidate:x", "sdpMid": "0"}}
            for frame in ("not json", json.dumps([1, 2]), json.dumps({"type": "dance"}), json.dumps({"type": "offer"}),
                          msgpack.packb({"type": "offer", "sdp": "v=0\r\n"}), json.dumps(bad_candidate)):
                await ws.send(frame)
                raw = await asyncio.wait_for(ws.recv(), 30)
                replies.append(msgpack.unpackb(raw) if isinstance(raw, bytes) else json.loads(raw))
        return replies

    ready, *errors = asyncio.run(run())
    assert ready == {"type": "ready"}
    assert [e["type"] for e in errors] == ["error"] * 6
    assert [e["error"] for e in errors] == ["invalid_message", "invalid_message", "unknown_message_type",
                                            "invalid_offer", "invalid_offer", "invalid_candidate"]
    assert wait_until_idle()["active_sessions"] == 0


def test_a_client_vanishing_mid_stream_frees_its_session(ws_url: str) -> None:
    async def run() -> tuple[int, dict[str, int]]:
        signaller = await WebSocketSignaller.connect(ws_url, "msgpack")
        assert (await signaller.receive(60))["type"] == "ready"
        pc = RTCPeerConnection()
        tagged = TaggedTrack(PatternTrack(640, 480, fps=30))
        sink = FrameSink(tagged)
        pc.addTrack(tagged)
        pc.on("track", sink.attach)
        await pc.setLocalDescription(await pc.createOffer())
        await signaller.send({"type": "offer", "sdp": pc.localDescription.sdp})
        answer = await signaller.receive(60)
        await pc.setRemoteDescription(RTCSessionDescription(sdp=answer["sdp"], type="answer"))
        while len(sink.times) < 5:
            await asyncio.sleep(0.1)
        during = await asyncio.to_thread(yolo_stats)
        await signaller.ws.close()  # the socket goes; our peer connection is still up and sending
        stats = await asyncio.to_thread(wait_until_idle)
        received = len(sink.times)
        sink.stop()
        await pc.close()
        return received, {**stats, "active_during": during["active_sessions"]}

    received, stats = asyncio.run(run())
    assert received >= 5 and stats["active_during"] >= 1
    assert (stats["active_sessions"], stats["live_peer_connections"]) == (0, 0), stats
