"""/matrix-game/realtime through Ray Serve (the configs/dev.yaml app, tiny preset on CPU): an aiortc
test peer in this process signals over the real WebSocket (msgpack, as fal's browser client), gets
the world's frames over WebRTC on 127.0.0.1, sends actions and pauses; a second client hears `busy`;
bad messages get fal's error frames; a client that goes away frees the replica. What actions do to
the model's conditioning is asserted in tests/unit/test_matrix_game_service.py."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from typing import Any

import msgpack
import pytest
from aiortc import MediaStreamTrack, RTCPeerConnection, RTCSessionDescription
from websockets.asyncio.client import ClientConnection, connect

from tests.realtime import loopback_candidates, realtime_url, service_stats


@pytest.fixture(scope="module", autouse=True)
def loopback_peer() -> Iterator[None]:
    with loopback_candidates():  # this process's peer offers loopback candidates only
        yield


@pytest.fixture(scope="module")
def ws_url(serve_url: str) -> str:
    return realtime_url(serve_url, "matrix-game")


def stats() -> dict[str, int]:
    return service_stats("matrix-game")


async def send(ws: ClientConnection, message: dict[str, Any]) -> None:
    await ws.send(msgpack.packb(message))


def decode(frame: str | bytes) -> dict[str, Any]:
    """A server frame: msgpack once the client spoke msgpack; JSON before (e.g. `ready`)."""
    return msgpack.unpackb(frame) if isinstance(frame, bytes) else json.loads(frame)  # type: ignore[no-any-return]


async def receive(ws: ClientConnection, kind: str, timeout: float = 60) -> dict[str, Any]:
    while True:
        message = decode(await asyncio.wait_for(ws.recv(), timeout))
        if message["type"] == kind:
            return message


async def join(ws: ClientConnection) -> tuple[RTCPeerConnection, asyncio.Future[MediaStreamTrack]]:
    client = RTCPeerConnection()
    client.addTransceiver("video", direction="recvonly")
    track: asyncio.Future[MediaStreamTrack] = asyncio.get_running_loop().create_future()
    client.on("track", lambda t: track.set_result(t))
    await client.setLocalDescription(await client.createOffer())
    await send(ws, {"type": "offer", "sdp": client.localDescription.sdp})
    answer = await receive(ws, "answer")
    await client.setRemoteDescription(RTCSessionDescription(sdp=answer["sdp"], type="answer"))
    return client, track


def test_world_streams_takes_actions_pauses_and_refuses_a_second_client(ws_url: str) -> None:
    async def scenario() -> dict[str, Any]:
        async with connect(ws_url) as ws:
            await ws.send(msgpack.packb({"type": "hello"}))  # unknown before anything else: an error frame
            assert (await receive(ws, "error"))["type"] == "error"
            client, track_future = await join(ws)
            track = await asyncio.wait_for(track_future, 60)
            shapes = [(await asyncio.wait_for(track.recv(), 120)).to_ndarray(format="rgb24").shape  # type: ignore[union-attr]
                      for _ in range(3)]
            await send(ws, {"type": "action", "action": "w l"})
            await send(ws, {"type": "action", "action": "jump"})
            bad = await receive(ws, "error")
            await send(ws, {"type": "pause", "paused": True})
            paused = await receive(ws, "pause")
            async with connect(ws_url) as second:  # one world per replica: the second client hears busy
                busy = decode(await asyncio.wait_for(second.recv(), 30))
                if busy["type"] == "ready":  # `ready` may come first
                    busy = decode(await asyncio.wait_for(second.recv(), 30))
            await send(ws, {"type": "pause", "paused": False})
            resumed = await receive(ws, "pause")
            await client.close()
        return {"shapes": shapes, "bad": bad, "paused": paused, "busy": busy, "resumed": resumed}

    out = asyncio.run(scenario())
    assert out["shapes"] == [(32, 64, 3)] * 3  # the tiny preset's frames
    assert out["bad"]["error"] == "invalid_action"
    assert out["paused"] == {"type": "pause", "paused": True} and out["resumed"]["paused"] is False
    assert out["busy"]["type"] == "error" and out["busy"]["error"] == "busy"
    deadline = time.time() + 60
    while (s := stats())["busy"] or s["live_peer_connections"]:
        assert time.time() < deadline, s
        time.sleep(0.5)
    assert s["sessions"] >= 1 and s["busy_rejections"] >= 1 and s["frames_sent"] >= 3


def test_signalling_errors_use_fals_names(ws_url: str) -> None:
    async def scenario() -> list[str]:
        async with connect(ws_url) as ws:
            await send(ws, {"type": "offer", "sdp": "v=0\r\n"})
            first = (await receive(ws, "error"))["error"]
            await send(ws, {"type": "icecandidate", "candidate": {"candidate": "candidate:bad", "sdpMid": "0"}})
            second = (await receive(ws, "error"))["error"]
            return [first, second]

    first, second = asyncio.run(scenario())
    assert first.startswith("offer_failed:") and second.startswith("ice_failed:")
