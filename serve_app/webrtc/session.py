"""The signalling state machine of one WebRTC session and its peer connection's lifecycle.

`WebRTCSession.run` sends `ready`, answers one offer, takes trickled candidates (before the offer
too), and lasts until the client leaves, the peer connection fails, closes or disconnects, or the
input ends; it always closes its peer connection (`live_peer_connections()` counts the open ones).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Literal, Protocol

from aiortc import MediaStreamTrack, RTCIceCandidate, RTCPeerConnection, RTCSessionDescription
from aiortc.contrib.media import MediaBlackhole
from aiortc.sdp import candidate_from_sdp
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from serve_app.webrtc.ice import WebRTCConfig

logger = logging.getLogger("ray.serve")

MAX_EARLY_CANDIDATES = 64  # candidates buffered while no offer has arrived yet
_LIVE_PEERS: set[RTCPeerConnection] = set()


def live_peer_connections() -> int:
    """Peer connections opened by sessions in this process and not closed yet."""
    return len(_LIVE_PEERS)


class SignallingChannel(Protocol):
    """What a session needs of its realtime connection (`serve_app.realtime.RealtimeConnection`)."""

    async def send(self, message: dict[str, Any]) -> None: ...

    async def error(self, error: str, **extra: Any) -> None: ...

    def __aiter__(self) -> AsyncIterator[dict[str, Any]]: ...


class _Message(BaseModel):
    model_config = ConfigDict(extra="ignore")


class OfferMessage(_Message):
    """Client → server: the client's SDP offer."""

    type: Literal["offer"]
    sdp: str = Field(min_length=1, description="The offer's SDP.")


class CandidateInit(_Message):
    """The browser's `RTCIceCandidateInit`."""

    candidate: str = Field(description="`candidate:...` line; empty means end of candidates.")
    sdpMid: str | None = None
    sdpMLineIndex: int | None = None


class IceCandidateMessage(_Message):
    """Either way: one trickled ICE candidate, or `null` for the end of candidates."""

    type: Literal["icecandidate"]
    candidate: CandidateInit | None


TrackHandler = Callable[[MediaStreamTrack], "MediaStreamTrack | None"]
MessageHandler = Callable[[dict[str, Any]], Awaitable[None]]


def parse_candidate(init: CandidateInit) -> RTCIceCandidate | None:
    """An aiortc candidate from the browser's form (`None`: end of candidates). Raises ValueError."""
    if not init.candidate.strip():
        return None
    if init.sdpMid is None and init.sdpMLineIndex is None:
        raise ValueError("a candidate needs sdpMid or sdpMLineIndex")
    line = init.candidate.strip().removeprefix("candidate:")
    if len(line.split()) < 8 or line.split()[6] != "typ":  # aiortc only asserts this
        raise ValueError(f"malformed candidate {init.candidate!r}")
    try:
        candidate = candidate_from_sdp(line)
    except (IndexError, ValueError) as e:
        raise ValueError(f"malformed candidate {init.candidate!r}") from e
    candidate.sdpMid, candidate.sdpMLineIndex = init.sdpMid, init.sdpMLineIndex
    return candidate


class WebRTCSession:
    """One client's peer connection, negotiated over its realtime connection.

    Args:
        conn: the realtime connection (JSON or msgpack frames; the framework encodes).
        config: ICE and timeout settings.
        on_track: called for every incoming track; returns the track to send back, or None to
            discard the input (audio, say).
        on_message: handler of message types other than offer/icecandidate (default: an
            `unknown_message_type` error frame).
        on_peer: called with each new peer connection before the offer is applied (to add
            send-only tracks).
    """

    def __init__(self, conn: SignallingChannel, config: WebRTCConfig, *, on_track: TrackHandler,
                 on_message: MessageHandler | None = None,
                 on_peer: Callable[[RTCPeerConnection], None] | None = None) -> None:
        self.conn, self.config = conn, config
        self._on_track, self._on_message, self._on_peer = on_track, on_message, on_peer
        self.pc: RTCPeerConnection | None = None
        self.outgoing: list[MediaStreamTrack] = []
        self._inputs: list[MediaStreamTrack] = []
        self._early: list[RTCIceCandidate | None] = []
        self._blackhole = MediaBlackhole()
        self._background: set[asyncio.Future[Any]] = set()
        self._connected = asyncio.Event()
        self._ended = asyncio.Event()
        self.end_reason = ""

    async def run(self) -> None:
        """Send `ready`, negotiate, and serve until the session ends; always releases the peer.

        Ends when the client leaves, the peer connection fails, closes or disconnects, every input
        track ends, or no connection is up `connect_timeout_s` after `ready` (an error frame says
        which of the last two).
        """
        ready: dict[str, Any] = {"type": "ready"}
        if self.config.client_ice_servers:
            ready["ice_servers"] = [s.model_dump(exclude_none=True) for s in self.config.client_ice_servers]
        reader = asyncio.ensure_future(self._read())
        ended = asyncio.ensure_future(self._ended.wait())
        watchdog = asyncio.ensure_future(self._watchdog())
        try:
            await self.conn.send(ready)
            await asyncio.wait([reader, ended], return_when=asyncio.FIRST_COMPLETED)
            if reader.done():
                reader.result()  # re-raise what broke the reader
            if self.end_reason in ("failed", "connection_timeout"):
                with contextlib.suppress(Exception):  # the client may be gone already
                    await self.conn.error("connection_failed" if self.end_reason == "failed" else self.end_reason)
        finally:
            for task in (reader, ended, watchdog):
                task.cancel()
            await asyncio.shield(self.close())

    def _finish(self, reason: str) -> None:
        if not self._ended.is_set():
            logger.info("WebRTC session ends: %s", reason)
            self.end_reason = reason
            self._ended.set()

    async def _watchdog(self) -> None:
        try:
            await asyncio.wait_for(self._connected.wait(), self.config.connect_timeout_s)
        except TimeoutError:
            self._finish("connection_timeout")

    async def _read(self) -> None:
        async for message in self.conn:
            kind = message.get("type")
            if kind == "offer":
                await self._offer(message)
            elif kind == "icecandidate":
                await self._candidate(message)
            elif not isinstance(kind, str):
                await self.conn.error("invalid_message", detail="a message needs a string 'type'")
            elif self._on_message is not None:
                await self._on_message(message)
            else:
                await self.conn.error("unknown_message_type", detail=f"unknown message type {kind!r}")
        self._finish("client_closed")

    async def _offer(self, message: dict[str, Any]) -> None:
        try:
            offer = OfferMessage.model_validate(message)
        except ValidationError as e:
            await self.conn.error("invalid_offer", detail=_first_error(e))
            return
        if self.pc is not None:
            await self.conn.error("unexpected_offer", detail="this session is negotiated already")
            return
        if not any(line.startswith("m=") for line in offer.sdp.splitlines()):
            await self.conn.error("invalid_offer", detail="the offer has no media section")
            return
        pc = RTCPeerConnection(self.config.rtc_configuration())
        _LIVE_PEERS.add(pc)
        pc.on("track", lambda track: self._track(pc, track))
        pc.on("connectionstatechange", lambda: self._state(pc))
        try:
            if self._on_peer is not None:
                self._on_peer(pc)
            await pc.setRemoteDescription(RTCSessionDescription(sdp=offer.sdp, type="offer"))
            for candidate in self._early:
                await pc.addIceCandidate(candidate)
            await pc.setLocalDescription(await pc.createAnswer())
        except Exception as e:  # a bad SDP, no common codec: say so, and accept another offer
            logger.info("offer rejected: %s: %s", type(e).__name__, e)
            await self._release(pc)
            for track in self.outgoing:
                track.stop()
            self.outgoing, self._inputs = [], []
            await self.conn.error("invalid_offer", detail=f"{type(e).__name__}: {e}")
            return
        self.pc, self._early = pc, []
        await self.conn.send({"type": "answer", "sdp": pc.localDescription.sdp})
        await self.conn.send({"type": "icecandidate", "candidate": None})  # all ours are in the answer

    async def _candidate(self, message: dict[str, Any]) -> None:
        try:
            init = IceCandidateMessage.model_validate(message).candidate
            candidate = parse_candidate(init) if init is not None else None
        except ValidationError as e:
            await self.conn.error("invalid_candidate", detail=_first_error(e))
            return
        except ValueError as e:
            await self.conn.error("invalid_candidate", detail=str(e))
            return
        if self.pc is None:  # trickled before the offer: keep a few for when it comes
            if len(self._early) >= MAX_EARLY_CANDIDATES:
                await self.conn.error("invalid_candidate", detail="too many candidates before the offer")
            else:
                self._early.append(candidate)
            return
        try:
            await self.pc.addIceCandidate(candidate)
        except ValueError as e:
            await self.conn.error("invalid_candidate", detail=str(e))

    def _track(self, pc: RTCPeerConnection, track: MediaStreamTrack) -> None:
        self._inputs.append(track)
        track.on("ended", self._input_ended)
        outgoing = self._on_track(track)
        if outgoing is None:  # discarded, but drained: aiortc queues unread frames without bound
            self._blackhole.addTrack(track)
            task = asyncio.ensure_future(self._blackhole.start())
            self._background.add(task)
            task.add_done_callback(self._background.discard)
            return
        self.outgoing.append(outgoing)
        pc.addTrack(outgoing)

    def _input_ended(self) -> None:
        if self._inputs and all(t.readyState == "ended" for t in self._inputs):
            self._finish("input_ended")

    def _state(self, pc: RTCPeerConnection) -> None:
        state = pc.connectionState
        if state == "connected":
            self._connected.set()
        elif state in ("failed", "closed", "disconnected"):
            self._finish(state)

    async def close(self) -> None:
        """Stop the tracks and close the peer connection (idempotent)."""
        for track in self.outgoing:
            track.stop()
        await self._blackhole.stop()
        if self.pc is not None:
            await self._release(self.pc)

    async def _release(self, pc: RTCPeerConnection) -> None:
        try:
            await asyncio.wait_for(pc.close(), 10)
        except Exception as e:  # cleanup goes on whatever aiortc says
            logger.warning("closing a peer connection failed: %s", e)
        finally:
            _LIVE_PEERS.discard(pc)


def _first_error(e: ValidationError) -> str:
    err = e.errors()[0]
    where = ".".join(str(p) for p in err["loc"])
    return f"{where}: {err['msg']}" if where else str(err["msg"])
