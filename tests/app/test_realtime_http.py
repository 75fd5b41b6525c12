"""Realtime endpoints through Serve: a real WebSocket to the behaviours fixture's echo session,
which runs on the service replica (not the ingress)."""

from __future__ import annotations

import asyncio
import json
import time

import httpx
import msgpack
import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

from tests.app.conftest import FIXTURE_PREFIX

ECHO = f"{FIXTURE_PREFIX}/b/echo"


def ws_url(serve_url: str, path: str) -> str:
    return serve_url.replace("http://", "ws://") + path


def recv_json(ws: ClientConnection) -> dict:  # type: ignore[type-arg]
    frame = ws.recv(timeout=30)
    assert isinstance(frame, str), "a JSON client gets text frames"
    return json.loads(frame)  # type: ignore[no-any-return]


def stats(client: httpx.Client) -> dict[str, int]:
    return client.post(f"{FIXTURE_PREFIX}/b/stats", json={}).json()  # type: ignore[no-any-return]


def test_json_frames_round_trip_on_the_replica(serve_url: str) -> None:
    with connect(ws_url(serve_url, ECHO)) as ws:
        assert recv_json(ws) == {"type": "ready", "session": True}
        for i in range(5):
            ws.send(json.dumps({"type": "ping", "i": i}))
            assert recv_json(ws) == {"type": "echo", "message": {"type": "ping", "i": i}, "encoding": "json"}
        ws.send(json.dumps({"type": "bye"}))
        with pytest.raises(ConnectionClosed) as closed:
            ws.recv(timeout=30)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1000


def test_msgpack_frames_are_answered_in_msgpack(serve_url: str) -> None:
    with connect(ws_url(serve_url, ECHO)) as ws:
        recv_json(ws)  # `ready` goes out before the client spoke: JSON
        ws.send(msgpack.packb({"type": "frame", "data": b"\x00\x01\xff"}))
        frame = ws.recv(timeout=30)
        assert isinstance(frame, bytes)
        assert msgpack.unpackb(frame) == {"type": "echo", "message": {"type": "frame", "data": b"\x00\x01\xff"},
                                          "encoding": "msgpack"}


def test_malformed_frames_get_error_frames_and_the_session_goes_on(serve_url: str) -> None:
    with connect(ws_url(serve_url, ECHO)) as ws:
        recv_json(ws)
        for bad in ("not json", "[1, 2]", "42"):
            ws.send(bad)
            error = recv_json(ws)
            assert error["type"] == "error" and error["error"] == "invalid_message"
        ws.send(msgpack.packb([1, 2]))
        error = msgpack.unpackb(ws.recv(timeout=30))
        assert error["type"] == "error" and error["error"] == "invalid_message"
        ws.send(json.dumps({"type": "error?"}))
        assert recv_json(ws) == {"type": "error", "error": "asked_for_it", "detail": "as requested"}
        ws.send(json.dumps({"type": "still-here"}))
        assert recv_json(ws)["type"] == "echo"


def test_session_errors_become_error_frames_then_a_close(serve_url: str) -> None:
    with connect(ws_url(serve_url, ECHO)) as ws:
        recv_json(ws)
        ws.send(json.dumps({"type": "bad"}))
        error = recv_json(ws)
        assert error["error"] == "value_error"
        assert error["detail"] == [{"loc": ["body", "type"], "msg": "bad is not a message type", "type": "value_error"}]
        with pytest.raises(ConnectionClosed) as closed:
            ws.recv(timeout=30)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1008
    with connect(ws_url(serve_url, ECHO)) as ws:
        recv_json(ws)
        ws.send(json.dumps({"type": "crash"}))
        error = recv_json(ws)
        assert error["error"] == "internal_error" and error["request_id"] and "secret" not in json.dumps(error)
        with pytest.raises(ConnectionClosed) as closed:
            ws.recv(timeout=30)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1011


def test_disconnect_cancels_the_session_on_the_replica(serve_url: str, client: httpx.Client) -> None:
    before = stats(client)
    ws = connect(ws_url(serve_url, ECHO))
    recv_json(ws)
    ws.close()
    deadline = time.time() + 30
    while time.time() < deadline and stats(client)["sessions_cancelled"] == before["sessions_cancelled"]:
        time.sleep(0.2)
    after = stats(client)
    assert after["sessions"] == before["sessions"] + 1
    assert after["sessions_cancelled"] == before["sessions_cancelled"] + 1


@pytest.mark.usefixtures("ray_cluster")
def test_the_callers_board_alone_cancels_a_session_whose_client_is_gone() -> None:
    """Serve's cancel of the stream is best effort; the ingress also posts the cancel on its board,
    and that alone cancels a session that never reads (no Serve cancel here)."""
    import ray

    from serve_app.context import CancelBoard, RequestInfo
    from serve_app.realtime import Attach, RealtimeConnection, serve_session

    board = ray.remote(CancelBoard).options(num_cpus=0).remote()

    async def scenario() -> tuple[bool, bool]:
        cancelled = asyncio.Event()

        async def session(conn: RealtimeConnection, ctx: object) -> None:
            await conn.send({"type": "ready"})
            try:
                await asyncio.sleep(3600)  # streams out, never reads: the inbox's close can't end it
            except asyncio.CancelledError:
                cancelled.set()
                raise

        for session_id, gone in (("still-here", False), ("went-away", True)):
            info = RequestInfo("req-gone", "/test/echo", "http://127.0.0.1", board)
            gen = serve_session(session, session_id, info, caller_check_s=0.2)
            attach = await gen.__anext__()
            assert isinstance(attach, Attach)
            assert await gen.__anext__() == {"type": "ready"}
            if not gone:  # another call's cancel: the session keeps running
                await board.cancel.remote("some other call")
                with pytest.raises(TimeoutError):
                    await asyncio.wait_for(asyncio.shield(cancelled.wait()), 1.0)
                await gen.aclose()
                continue
            await board.cancel.remote(info.call_id)
            with pytest.raises(StopAsyncIteration):  # ends cleanly: nobody is left to get an error
                await asyncio.wait_for(gen.__anext__(), 30)
        closed_within = time.monotonic() + 10  # the session's close is sent without waiting for it
        while await attach.inbox.get.remote("went-away", 0.05) is not None:  # None once closed
            if time.monotonic() > closed_within:
                return cancelled.is_set(), False
        return cancelled.is_set(), True

    cancelled, entry_closed = asyncio.run(scenario())
    assert cancelled
    assert entry_closed  # the replica closed the session's inbox entry


def test_plain_get_is_426_and_the_endpoint_is_documented(client: httpx.Client) -> None:
    r = client.get(ECHO)
    assert r.status_code == 426 and "WebSocket" in r.json()["detail"]
    spec = httpx.get(f"{client.base_url}{FIXTURE_PREFIX}/openapi.json").json()
    assert "get" in spec["paths"]["/b/echo"]
