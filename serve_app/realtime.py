"""Realtime endpoints: a WebSocket whose session runs on one service replica.

fal's realtime apps (a webcam detector, an interactive world) talk over a bidirectional WebSocket:
JSON text frames or msgpack binary frames, each an object with a `type`. Serve's proxy carries the
WebSocket to the ingress; the session itself runs on a service replica, next to the GPU:

- server -> client: the replica's session method is one streaming handle call (`realtime_session`),
  so it stays on one replica for its whole life; what it `send`s is yielded to the ingress, which
  encodes it the way the client last spoke;
- client -> server: a handle call can't be steered to a given replica, so each replica with realtime
  endpoints owns a small inbox actor on its node; the stream's first item is that inbox, the
  ingress puts the client's messages there and the session long-polls it.

A service method sees only `RealtimeConnection` (receive / send / error). `LocalConnection` is the
same interface in memory, for unit tests without Ray.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import AsyncIterator, Callable, Coroutine
from dataclasses import dataclass
from typing import Any, Literal

from serve_app.context import RequestInfo, RunContext, start_companion, watch_caller

logger = logging.getLogger("ray.serve")

Encoding = Literal["json", "msgpack"]
Message = dict[str, Any]
SessionFn = Callable[["RealtimeConnection", RunContext], Coroutine[Any, Any, None]]
POLL_S = 30.0
_CLOSED = object()


class RealtimeClosed(Exception):
    """The client has gone away."""


class RealtimeConnection:
    """What a realtime session method sees: the client's messages in, messages out."""

    session_id: str = ""
    encoding: Encoding = "json"

    async def receive(self) -> Message:
        """The next client message; raises `RealtimeClosed` once the client is gone."""
        raise NotImplementedError

    async def send(self, message: Message) -> None:
        """Send a message (encoded as the client last spoke: JSON text or msgpack binary)."""
        raise NotImplementedError

    async def error(self, error: str, **extra: Any) -> None:
        """Send `{"type": "error", "error": error, **extra}`; the session goes on."""
        await self.send({"type": "error", "error": error, **extra})

    def __aiter__(self) -> AsyncIterator[Message]:
        return self._messages()

    async def _messages(self) -> AsyncIterator[Message]:
        while True:
            try:
                yield await self.receive()
            except RealtimeClosed:
                return


class LocalConnection(RealtimeConnection):
    """An in-memory connection for tests: the test plays the client."""

    def __init__(self, session_id: str = "local", encoding: Encoding = "json") -> None:
        self.session_id = session_id
        self.encoding = encoding
        self._in: asyncio.Queue[Any] = asyncio.Queue()
        self._out: asyncio.Queue[Message] = asyncio.Queue()

    async def receive(self) -> Message:
        item = await self._in.get()
        if item is _CLOSED:
            self._in.put_nowait(_CLOSED)  # every later receive sees the close too
            raise RealtimeClosed()
        return item  # type: ignore[no-any-return]

    async def send(self, message: Message) -> None:
        self._out.put_nowait(message)

    async def client_send(self, message: Message) -> None:
        """The client sends a message."""
        self._in.put_nowait(message)

    async def client_receive(self, timeout: float = 5.0) -> Message:
        """The next message the session sent (TimeoutError when none comes)."""
        return await asyncio.wait_for(self._out.get(), timeout)

    async def client_close(self) -> None:
        """The client disconnects."""
        self._in.put_nowait(_CLOSED)


class RealtimeInbox:
    """An async Ray actor beside a replica: client messages per session, long-polled by the session."""

    def __init__(self) -> None:
        self._queues: dict[str, asyncio.Queue[Any]] = {}

    def open(self, session_id: str) -> None:
        self._queues[session_id] = asyncio.Queue()

    def put(self, session_id: str, encoding: Encoding, message: Message) -> None:
        queue = self._queues.get(session_id)
        if queue is not None:
            queue.put_nowait((encoding, message))

    def close(self, session_id: str) -> None:
        queue = self._queues.pop(session_id, None)
        if queue is not None:
            queue.put_nowait(_CLOSED)

    async def get(self, session_id: str, timeout: float) -> list[tuple[Encoding, Message]] | None:
        """Messages waiting for the session (waits up to `timeout` for the first); None once closed."""
        queue = self._queues.get(session_id)
        if queue is None:
            return None
        try:
            first = await asyncio.wait_for(queue.get(), timeout)
        except TimeoutError:
            return []
        items = [first]
        while not queue.empty():
            items.append(queue.get_nowait())
        if any(item is _CLOSED for item in items):
            self._queues.pop(session_id, None)
            return None
        return items


class InboxConnection(RealtimeConnection):
    """The replica's side of a session: receives from the inbox actor, sends into the stream."""

    def __init__(self, session_id: str, inbox: Any, outgoing: asyncio.Queue[Any]) -> None:
        self.session_id = session_id
        self._inbox = inbox
        self._outgoing = outgoing
        self._buffer: deque[tuple[Encoding, Message]] = deque()
        self._closed = False

    async def receive(self) -> Message:
        while not self._buffer:
            if self._closed:
                raise RealtimeClosed()
            items = await self._inbox.get.remote(self.session_id, POLL_S)
            if items is None:
                self._closed = True
            else:
                self._buffer.extend(items)
        self.encoding, message = self._buffer.popleft()
        return message

    async def send(self, message: Message) -> None:
        self._outgoing.put_nowait(message)


@dataclass(frozen=True)
class Attach:
    """The first item of a realtime stream: where the ingress sends the client's messages."""

    inbox: Any


_inbox: Any = None


def replica_inbox() -> Any:
    """This process's inbox actor, created on first use on the same node (it dies with the replica)."""
    global _inbox
    if _inbox is None:
        _inbox = start_companion(RealtimeInbox)
    return _inbox


async def serve_session(fn: SessionFn, session_id: str, info: RequestInfo,
                        caller_check_s: float = 2.0) -> AsyncIterator[Any]:
    """Run a session method; yield `Attach(inbox)`, then every message it sends.

    The method's exception ends the stream (the ingress turns it into an error frame). When the client
    goes away the method is cancelled: by Serve's cancel of the stream (best effort), else within
    `caller_check_s` by the caller's board (`serve_app.context.watch_caller`), which also catches a
    dead ingress. Either way the stream then ends cleanly.
    """
    inbox = replica_inbox()
    await inbox.open.remote(session_id)
    yield Attach(inbox)
    outgoing: asyncio.Queue[Any] = asyncio.Queue()
    conn = InboxConnection(session_id, inbox, outgoing)
    task = asyncio.ensure_future(fn(conn, RunContext(info.request_id)))
    task.add_done_callback(lambda _: outgoing.put_nowait(_CLOSED))
    why_stopped = ""

    async def watch() -> None:
        nonlocal why_stopped
        why = await watch_caller(info.caller, info.call_id, caller_check_s)
        if not task.done():
            why_stopped = why
            task.cancel()

    watcher = (asyncio.ensure_future(watch()) if info.caller is not None and caller_check_s else None)
    logger.info("realtime session %s started (%s)", info.request_id, info.route)
    try:
        while (item := await outgoing.get()) is not _CLOSED:
            yield item
        if why_stopped:
            logger.info("realtime session %s cancelled: its caller %s", info.request_id,
                        "died" if why_stopped == "orphaned" else "cancelled it")
        else:
            task.result()
    finally:
        if watcher is not None:
            watcher.cancel()
        if not task.done():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        inbox.close.remote(session_id)
        logger.info("realtime session %s ended", info.request_id)
