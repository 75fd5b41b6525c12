"""The Matrix-Game realtime service without Ray: fal's protocol over `LocalConnection` with an aiortc
client peer in this process (media over UDP on 127.0.0.1), the tiny preset on CPU.

Actions are checked on what reaches the model (the keyboard/mouse windows `forward_block` receives)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import torch
from aiortc import MediaStreamTrack, RTCPeerConnection, RTCSessionDescription

from deployments.matrix_game.dit import ActionInputs
from deployments.matrix_game.service import MatrixGameConfig, MatrixGameService
from serve_app.models.source import ModelSource
from serve_app.realtime import LocalConnection
from serve_app.service import RunContext
from serve_app.webrtc import install_marker_jitter_buffer, live_peer_connections, restrict_host_addresses
from tests.realtime import run_local_session


@pytest.fixture(scope="module")
def service() -> Iterator[MatrixGameService]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # two shared cores: more threads only slow tiny kernels down
    config = MatrixGameConfig(model=ModelSource(preset="tiny"), modes=["universal"], device="cpu", seed=0,
                              max_latent_frames=12, fps=50, warmup_blocks=1,
                              webrtc={"host_addresses": ["127.0.0.1"], "connect_timeout_s": 60})
    yield MatrixGameService(config)
    restrict_host_addresses(None)  # the service set both for this process
    install_marker_jitter_buffer(False)
    torch.set_num_threads(threads)


@pytest.fixture
def keyboard_seen(service: MatrixGameService, monkeypatch: pytest.MonkeyPatch) -> list[torch.Tensor]:
    """The keyboard windows of every `forward_block` call (the last latent frame's window, newest first)."""
    seen: list[torch.Tensor] = []
    dit = service.models.dits["universal"]
    original = dit.forward_block

    def record(latents: torch.Tensor, cond: torch.Tensor, t: torch.Tensor, actions: ActionInputs, stream: Any) -> Any:
        seen.append(actions.keyboard[0, -1, -1].clone())
        return original(latents, cond, t, actions, stream)

    monkeypatch.setattr(dit, "forward_block", record)
    return seen


async def next_of_type(conn: LocalConnection, kind: str, timeout: float = 60) -> dict[str, Any]:
    while True:
        message = await conn.client_receive(timeout=timeout)
        if message["type"] == kind:
            return message


async def connect(conn: LocalConnection) -> tuple[RTCPeerConnection, asyncio.Future[MediaStreamTrack]]:
    """fal's signalling from the client side: ready, a receive-only video offer, the answer."""
    assert (await conn.client_receive(timeout=30)) == {"type": "ready"}
    client = RTCPeerConnection()
    client.addTransceiver("video", direction="recvonly")
    track: asyncio.Future[MediaStreamTrack] = asyncio.get_running_loop().create_future()
    client.on("track", lambda t: track.set_result(t))
    await client.setLocalDescription(await client.createOffer())
    await conn.client_send({"type": "offer", "sdp": client.localDescription.sdp})
    answer = await next_of_type(conn, "answer")
    await client.setRemoteDescription(RTCSessionDescription(sdp=answer["sdp"], type="answer"))
    return client, track


async def frames(track: MediaStreamTrack, n: int) -> list[np.ndarray]:
    return [(await asyncio.wait_for(track.recv(), 60)).to_ndarray(format="rgb24") for _ in range(n)]  # type: ignore[union-attr]


def run(service: MatrixGameService, body: Any) -> Any:
    return run_local_session(service, body, timeout_s=60)


def test_a_session_streams_frames_takes_actions_and_pauses(service: MatrixGameService,
                                                           keyboard_seen: list[torch.Tensor]) -> None:
    async def body(conn: LocalConnection, task: asyncio.Future[None]) -> dict[str, Any]:
        client, track_future = await connect(conn)
        track = await asyncio.wait_for(track_future, 30)
        first = await frames(track, 3)
        assert first[0].shape == (32, 64, 3)

        await conn.client_send({"type": "action", "action": "w l"})
        await conn.client_send({"type": "action", "action": "jump"})  # malformed: an error frame, nothing else
        error = await next_of_type(conn, "error")
        assert error["error"] == "invalid_action" and "move" in error["detail"]
        world = service.world
        await asyncio.wait_for(_until(lambda: world.action.move == "w"), 10)

        await conn.client_send({"type": "pause", "paused": True})
        assert await next_of_type(conn, "pause") == {"type": "pause", "paused": True}
        await asyncio.sleep(1.0)  # a block in flight may finish
        blocks = world.latent_frames
        await asyncio.sleep(1.5)
        assert world.latent_frames == blocks  # paused: nothing generated, the connection stays
        await conn.client_send({"type": "pause", "paused": False})
        assert await next_of_type(conn, "pause") == {"type": "pause", "paused": False}
        await asyncio.wait_for(_until(lambda: world.latent_frames > blocks), 60)

        # a second client while this one plays: busy, and its socket closes
        other = LocalConnection()
        await service.session(other, RunContext("second"))
        assert (await other.client_receive(timeout=5))["error"] == "busy"

        await client.close()
        await asyncio.wait_for(task, 60)  # the peer went away: the session ends by itself
        return service.stats()

    stats = run(service, body)
    assert stats["busy"] == 0 and stats["live_peer_connections"] == 0 == live_peer_connections()
    assert stats["frames_sent"] >= 3 and stats["busy_rejections"] == 1 and service.world is None
    forward = torch.tensor([1.0, 0.0, 0.0, 0.0])
    assert torch.equal(keyboard_seen[0], torch.zeros(4))  # idle until the action came
    assert any(torch.equal(k, forward) for k in keyboard_seen)  # "w" reached the model


def test_the_stream_ends_with_stream_exhausted(service: MatrixGameService) -> None:
    async def body(conn: LocalConnection, task: asyncio.Future[None]) -> None:
        client, track_future = await connect(conn)
        track = await asyncio.wait_for(track_future, 30)
        received = asyncio.ensure_future(frames(track, 200))
        assert await next_of_type(conn, "stream_exhausted", timeout=120) == {"type": "stream_exhausted"}
        await asyncio.wait_for(task, 60)  # 12 latent frames = 4 blocks, then the session closes
        received.cancel()
        await client.close()

    run(service, body)
    assert service.stats()["busy"] == 0 and live_peer_connections() == 0


def test_signalling_errors_use_fals_names_and_disconnect_frees_the_replica(service: MatrixGameService) -> None:
    async def body(conn: LocalConnection, task: asyncio.Future[None]) -> None:
        assert (await conn.client_receive(timeout=30)) == {"type": "ready"}
        await conn.client_send({"type": "offer", "sdp": "v=0\r\n"})
        assert (await next_of_type(conn, "error"))["error"].startswith("offer_failed:")
        await conn.client_send({"type": "icecandidate", "candidate": {"candidate": "candidate:bad", "sdpMid": "0"}})
        assert (await next_of_type(conn, "error"))["error"].startswith("ice_failed:")
        await conn.client_send({"type": "world", "mode": "templerun"})
        assert (await next_of_type(conn, "error"))["error"] == "invalid_world"  # not loaded here
        await conn.client_send({"type": "pause", "paused": "yes"})
        assert (await next_of_type(conn, "error"))["error"] == "invalid_pause"
        await conn.client_close()
        await asyncio.wait_for(task, 30)

    run(service, body)
    assert service.stats()["busy"] == 0


def test_config_rejects_a_default_mode_that_is_not_loaded() -> None:
    with pytest.raises(ValueError, match="default_mode"):
        MatrixGameConfig(model=ModelSource(preset="tiny"), modes=["gta_drive"])


async def _until(condition: Any) -> None:
    while not condition():
        await asyncio.sleep(0.05)


def test_a_cancel_during_release_still_finishes_it_and_frees_the_replica(service: MatrixGameService,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """Serve cancels the session when the client's socket closes, often while the session is already
    releasing (waiting for the block in flight): the release still completes, and the replica is free."""
    import threading
    import time

    from deployments.matrix_game.producer import BlockProducer

    stopping, stopped = threading.Event(), threading.Event()
    original = BlockProducer.stop

    def slow_stop(self: BlockProducer, timeout: float = 30.0) -> None:
        if not timeout:  # the track's own stop (timeout 0) does not wait: only the release's does
            return original(self, timeout)
        stopping.set()
        time.sleep(1.0)  # a block still in flight
        original(self, timeout)
        stopped.set()

    monkeypatch.setattr(BlockProducer, "stop", slow_stop)

    async def body(conn: LocalConnection, task: asyncio.Future[None]) -> None:
        client, track_future = await connect(conn)
        await frames(await asyncio.wait_for(track_future, 30), 1)
        await client.close()  # the session ends and starts releasing
        await asyncio.wait_for(_until(stopping.is_set), 30)
        task.cancel()  # what Serve does when the client's socket closes
        await asyncio.gather(task, return_exceptions=True)
        assert task.cancelled()

    run(service, body)
    assert stopped.is_set()  # the release was not cut short
    assert service.stats()["busy"] == 0 and service.world is None and live_peer_connections() == 0
