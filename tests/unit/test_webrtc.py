"""serve_app.webrtc without Ray: fal's signalling over `LocalConnection` with an aiortc client peer in
this process, media over UDP on 127.0.0.1; the session's lifecycle (no leaked peer connections); the
newest-frame track; ICE settings."""

from __future__ import annotations

import asyncio
import fractions
from collections.abc import Awaitable, Callable
from typing import Any

import numpy as np
import pytest
from aiortc import MediaStreamTrack, RTCPeerConnection, RTCSessionDescription, VideoStreamTrack
from aiortc.contrib.media import MediaBlackhole
from aiortc.jitterbuffer import JitterBuffer
from aiortc.mediastreams import AudioStreamTrack, MediaStreamError
from aiortc.rtp import RtpPacket
from av import VideoFrame

from serve_app.realtime import LocalConnection
from serve_app.webrtc import (
    CandidateInit,
    IceServer,
    LatestFrameTrack,
    MarkerJitterBuffer,
    WebRTCConfig,
    WebRTCSession,
    install_marker_jitter_buffer,
    live_peer_connections,
    parse_candidate,
    restrict_host_addresses,
)

W, H = 320, 240
LOOPBACK = WebRTCConfig(host_addresses=["127.0.0.1"], connect_timeout_s=20)
CANDIDATE = "candidate:1 1 udp 2130706431 127.0.0.1 50000 typ host"


@pytest.fixture(autouse=True)
def loopback_only() -> Any:
    restrict_host_addresses(["127.0.0.1"])  # both peers live in this process
    yield
    restrict_host_addresses(None)


class Pattern(VideoStreamTrack):
    """Grey frames with a white box, paced at 30 fps by aiortc."""

    async def recv(self) -> VideoFrame:
        pts, time_base = await self.next_timestamp()
        image = np.full((H, W, 3), 60, np.uint8)
        image[80:160, 100:220] = 255
        frame = VideoFrame.from_ndarray(image, format="bgr24")
        frame.pts, frame.time_base = pts, time_base
        return frame


async def paint_left_red(frame: VideoFrame) -> VideoFrame:
    image = frame.to_ndarray(format="bgr24")
    image[:, : W // 2] = (0, 0, 255)
    return VideoFrame.from_ndarray(image, format="bgr24")


def video_only(process: Callable[[VideoFrame], Awaitable[VideoFrame]]) -> Callable[[MediaStreamTrack], Any]:
    return lambda track: LatestFrameTrack(track, process) if track.kind == "video" else None


async def next_of_type(conn: LocalConnection, kind: str) -> dict[str, Any]:
    while True:
        message = await conn.client_receive(timeout=10)
        if message["type"] == kind:
            return message


async def connect(conn: LocalConnection, client: RTCPeerConnection, encoding: str = "json") -> None:
    """The client's side of fal's signalling: ready, offer -> answer, end of candidates."""
    assert (await conn.client_receive(timeout=10)) == {"type": "ready"}
    await client.setLocalDescription(await client.createOffer())
    await conn.client_send({"type": "offer", "sdp": client.localDescription.sdp})
    answer = await conn.client_receive(timeout=10)
    assert answer["type"] == "answer" and "a=candidate:" in answer["sdp"]
    assert all(" 127.0.0.1 " in line for line in answer["sdp"].splitlines() if line.startswith("a=candidate:"))
    await client.setRemoteDescription(RTCSessionDescription(sdp=answer["sdp"], type="answer"))
    assert await conn.client_receive(timeout=10) == {"type": "icecandidate", "candidate": None}


async def collect(track: MediaStreamTrack, n: int) -> list[np.ndarray]:
    return [(await asyncio.wait_for(track.recv(), 10)).to_ndarray(format="bgr24") for _ in range(n)]  # type: ignore[union-attr]


def test_offer_answer_and_processed_frames_come_back_then_everything_is_released() -> None:
    async def scenario() -> None:
        conn = LocalConnection()
        session = WebRTCSession(conn, LOOPBACK, on_track=video_only(paint_left_red))
        task = asyncio.ensure_future(session.run())
        client = RTCPeerConnection()
        client.addTrack(Pattern())
        client.addTrack(AudioStreamTrack())  # audio goes to a black hole on the server
        received: asyncio.Future[MediaStreamTrack] = asyncio.get_running_loop().create_future()
        client.on("track", lambda t: received.set_result(t) if t.kind == "video" else None)
        await connect(conn, client)
        frames = await collect(await asyncio.wait_for(received, 10), 30)
        assert live_peer_connections() == 1 and len(session.outgoing) == 1
        left, right = frames[-1][:, : W // 2 - 8], frames[-1][:, W // 2 + 8 :]
        assert left[..., 2].mean() > 200 and left[..., 1].mean() < 60  # painted by the server
        assert right[..., 2].mean() < 150  # untouched: grey and white
        stats = session.outgoing[0].stats  # type: ignore[attr-defined]
        assert stats.sent >= 30 and stats.failed == 0
        await conn.client_close()  # the WebSocket goes away mid-stream
        await asyncio.wait_for(task, 15)
        assert session.end_reason == "client_closed" and live_peer_connections() == 0
        assert session.outgoing[0].readyState == "ended"
        await client.close()

    asyncio.run(scenario())


def test_peer_closing_ends_the_session_and_frees_the_peer() -> None:
    async def scenario() -> None:
        conn = LocalConnection(encoding="msgpack")
        session = WebRTCSession(conn, LOOPBACK, on_track=video_only(paint_left_red))
        task = asyncio.ensure_future(session.run())
        client = RTCPeerConnection()
        client.addTrack(Pattern())
        sink = MediaBlackhole()
        client.on("track", sink.addTrack)
        await connect(conn, client)
        await sink.start()
        for _ in range(100):
            if session.pc is not None and session.pc.connectionState == "connected":
                break
            await asyncio.sleep(0.1)
        await client.close()  # the browser tab goes away; the WebSocket stays open
        await asyncio.wait_for(task, 20)
        assert session.end_reason in ("closed", "failed", "disconnected", "input_ended")
        assert live_peer_connections() == 0
        await sink.stop()

    asyncio.run(scenario())


def test_bad_messages_get_error_frames_and_the_session_goes_on() -> None:
    async def scenario() -> None:
        conn = LocalConnection()
        session = WebRTCSession(conn, LOOPBACK, on_track=video_only(paint_left_red))
        task = asyncio.ensure_future(session.run())
        assert await conn.client_receive() == {"type": "ready"}
        cases: list[tuple[dict[str, Any], str]] = [
            ({"sdp": "x"}, "invalid_message"),
            ({"type": 3}, "invalid_message"),
            ({"type": "dance"}, "unknown_message_type"),
            ({"type": "offer"}, "invalid_offer"),
            ({"type": "offer", "sdp": "v=0\r\nthis is not sdp\r\n"}, "invalid_offer"),
            ({"type": "icecandidate", "candidate": {"candidate": "candidate:garbage", "sdpMid": "0"}},
             "invalid_candidate"),
            ({"type": "icecandidate", "candidate": {"candidate": CANDIDATE}}, "invalid_candidate"),
            ({"type": "icecandidate"}, "invalid_candidate"),
        ]
        for message, error in cases:
            await conn.client_send(message)
            reply = await conn.client_receive()
            assert reply["type"] == "error" and reply["error"] == error, (message, reply)
            assert reply["detail"]
        assert live_peer_connections() == 0  # the rejected offer's peer was closed
        # candidates before the offer are kept; the session still negotiates
        await conn.client_send({"type": "icecandidate", "candidate": {"candidate": CANDIDATE, "sdpMLineIndex": 0}})
        await conn.client_send({"type": "icecandidate", "candidate": None})
        client = RTCPeerConnection()
        client.addTrack(Pattern())
        await client.setLocalDescription(await client.createOffer())
        await conn.client_send({"type": "offer", "sdp": client.localDescription.sdp})
        assert (await conn.client_receive())["type"] == "answer"
        assert (await conn.client_receive())["candidate"] is None
        await conn.client_send({"type": "offer", "sdp": client.localDescription.sdp})
        assert (await conn.client_receive())["error"] == "unexpected_offer"
        await conn.client_close()
        await asyncio.wait_for(task, 15)
        assert live_peer_connections() == 0
        await client.close()

    asyncio.run(scenario())


def test_no_connection_in_time_ends_the_session_with_a_reason() -> None:
    async def scenario() -> None:
        conn = LocalConnection()
        config = WebRTCConfig(host_addresses=["127.0.0.1"], connect_timeout_s=0.3,
                              client_ice_servers=[IceServer(urls=["turn:127.0.0.1:3478"], username="u",
                                                            credential="p")])
        session = WebRTCSession(conn, config, on_track=video_only(paint_left_red))
        await asyncio.wait_for(session.run(), 5)
        assert await conn.client_receive() == {
            "type": "ready", "ice_servers": [{"urls": ["turn:127.0.0.1:3478"], "username": "u", "credential": "p"}]}
        assert (await conn.client_receive())["error"] == "connection_timeout"

    asyncio.run(scenario())


def test_other_message_types_go_to_the_service_handler() -> None:
    async def scenario() -> None:
        conn = LocalConnection()
        seen: list[dict[str, Any]] = []

        async def on_message(message: dict[str, Any]) -> None:
            seen.append(message)

        task = asyncio.ensure_future(WebRTCSession(conn, LOOPBACK, on_track=video_only(paint_left_red),
                                                   on_message=on_message).run())
        await conn.client_receive()
        await conn.client_send({"type": "action", "action": "w i"})
        await conn.client_close()
        await asyncio.wait_for(task, 5)
        assert seen == [{"type": "action", "action": "w i"}]

    asyncio.run(scenario())


class Source(MediaStreamTrack):
    """Frames put in by the test; ends when given None."""

    kind = "video"

    def __init__(self) -> None:
        super().__init__()
        self.queue: asyncio.Queue[VideoFrame | None] = asyncio.Queue()

    def put(self, value: int | None, pts: int = 0) -> None:
        if value is None:
            self.queue.put_nowait(None)
            return
        frame = VideoFrame.from_ndarray(np.full((16, 16, 3), value, np.uint8), format="bgr24")
        frame.pts, frame.time_base = pts, fractions.Fraction(1, 90_000)
        self.queue.put_nowait(frame)

    async def recv(self) -> VideoFrame:
        frame = await self.queue.get()
        if frame is None:
            raise MediaStreamError
        return frame


def test_latest_frame_track_drops_stale_frames_keeps_timestamps_and_passes_errors_through() -> None:
    async def scenario() -> None:
        source = Source()
        calls: list[int] = []

        async def brighten_or_fail(frame: VideoFrame) -> VideoFrame:
            value = int(frame.to_ndarray(format="bgr24")[0, 0, 0])
            calls.append(value)
            if value == 7:
                raise RuntimeError("inference failed")
            return VideoFrame.from_ndarray(np.full((16, 16, 3), value + 100, np.uint8), format="bgr24")

        track = LatestFrameTrack(source, brighten_or_fail)
        source.put(1, pts=3000)
        first = await track.recv()
        assert (first.pts, first.time_base) == (3000, fractions.Fraction(1, 90_000))
        assert first.to_ndarray(format="bgr24")[0, 0, 0] == 101
        for i, value in enumerate((2, 3, 4)):  # three arrive while the sender is busy
            source.put(value, pts=6000 + i)
        await asyncio.sleep(0.05)
        newest = await track.recv()
        assert newest.pts == 6002 and newest.to_ndarray(format="bgr24")[0, 0, 0] == 104
        assert calls == [1, 4] and track.stats.dropped == 2 and track.stats.received == 4
        source.put(7, pts=9000)
        passed = await track.recv()  # the processor raised: the input goes out as it was
        assert passed.pts == 9000 and passed.to_ndarray(format="bgr24")[0, 0, 0] == 7
        assert track.stats.failed == 1 and track.stats.sent == 3
        source.put(None)
        with pytest.raises(MediaStreamError):
            await track.recv()
        assert track.readyState == "ended"

    asyncio.run(scenario())


def test_ice_settings() -> None:
    config = WebRTCConfig(ice_servers=[IceServer(urls=["stun:127.0.0.1:3478"]),
                                       IceServer(urls=["turn:127.0.0.1:3478"], username="u", credential="p")],
                          transport_policy="relay")
    rtc = config.rtc_configuration()
    assert [s.urls for s in rtc.iceServers or []] == [["stun:127.0.0.1:3478"], ["turn:127.0.0.1:3478"]]
    assert rtc.iceTransportPolicy.value == "relay"
    assert WebRTCConfig().rtc_configuration().iceServers == []  # no public STUN by default
    with pytest.raises(ValueError, match="stun:, turn: or turns:"):
        IceServer(urls=["http://127.0.0.1"])
    import aioice.ice

    restrict_host_addresses(["127.0.0.1", "::1"])
    assert aioice.ice.get_host_addresses(use_ipv4=True, use_ipv6=False) == ["127.0.0.1"]
    assert aioice.ice.get_host_addresses(use_ipv4=True, use_ipv6=True) == ["127.0.0.1", "::1"]
    restrict_host_addresses(None)
    assert "127.0.0.1" not in aioice.ice.get_host_addresses(use_ipv4=True, use_ipv6=False)


def test_parse_candidate() -> None:
    candidate = parse_candidate(CandidateInit(candidate=CANDIDATE, sdpMid="0", sdpMLineIndex=0))
    assert candidate is not None and (candidate.ip, candidate.port, candidate.type) == ("127.0.0.1", 50000, "host")
    assert candidate.sdpMid == "0"
    assert parse_candidate(CandidateInit(candidate="", sdpMid="0")) is None  # end of candidates
    with pytest.raises(ValueError):
        parse_candidate(CandidateInit(candidate="candidate:1 1 udp", sdpMid="0"))



def packet(sequence_number: int, timestamp: int, marker: bool, data: bytes) -> RtpPacket:
    p = RtpPacket(payload_type=96, sequence_number=sequence_number, timestamp=timestamp, marker=int(marker))
    p._data = data  # type: ignore[attr-defined]  # what aiortc's receiver stores: the depayloaded bytes
    return p


def test_marker_jitter_buffer_releases_a_frame_at_its_last_packet() -> None:
    def frame() -> list[RtpPacket]:
        return [packet(10, 3000, False, b"a"), packet(11, 3000, False, b"b"), packet(12, 3000, True, b"c")]

    aiortcs = JitterBuffer(capacity=128, is_video=True)
    assert [aiortcs.add(p)[1] for p in frame()] == [None, None, None]  # waits for the next frame's start
    late = aiortcs.add(packet(13, 6000, False, b"d"))[1]
    assert late is not None and late.data == b"abc"

    ours = MarkerJitterBuffer(capacity=128, is_video=True)
    first, second, last = (ours.add(p)[1] for p in frame())
    assert first is None and second is None and last is not None
    assert (last.data, last.timestamp) == (b"abc", 3000)

    gap = MarkerJitterBuffer(capacity=128, is_video=True)
    a, b, c = frame()
    assert gap.add(a)[1] is None and gap.add(c)[1] is None  # b is missing: not complete yet
    done = gap.add(b)[1]
    assert done is not None and done.data == b"abc"
    assert gap.add(packet(13, 6000, False, b"x"))[1] is None  # a frame without a marked end...
    unmarked = gap.add(packet(14, 9000, True, b"y"))[1]
    assert unmarked is not None and unmarked.data == b"x"  # ...comes out when the next one starts


def test_install_marker_jitter_buffer_switches_aiortcs_receivers() -> None:
    import aiortc.rtcrtpreceiver

    install_marker_jitter_buffer()
    assert aiortc.rtcrtpreceiver.JitterBuffer is MarkerJitterBuffer
    install_marker_jitter_buffer(False)
    assert aiortc.rtcrtpreceiver.JitterBuffer is JitterBuffer
