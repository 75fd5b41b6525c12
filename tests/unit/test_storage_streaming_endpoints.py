"""Output store, SSE framing and heartbeats, endpoint declarations."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from pydantic import BaseModel

from serve_app.endpoints import collect_endpoints, endpoint
from serve_app.events import Progress
from serve_app.io import File, Image
from serve_app.service import RequestInfo, RunContext, Service, hosted
from serve_app.storage import DataUrlStorage, DataUrlStore, LocalStorage, LocalStore, make_store, materialize
from serve_app.streaming import HEARTBEAT, sse_frame, with_heartbeats


class Out(BaseModel):
    files: list[File]
    cover: Image | None = None


def test_local_store_writes_and_serves_only_its_keys(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    out = Out(files=[File.from_bytes(b"one", "text/plain", "a.txt"), File.from_bytes(b"two", "image/png")])
    asyncio.run(materialize({"nested": [out]}, store, "http://host:8000/"))
    for f, data in zip(out.files, (b"one", b"two"), strict=True):
        assert f.url.startswith("http://host:8000/files/") and f.data is None
        key = f.url.split("/files/", 1)[1]
        path = store.path_for(key)
        assert path is not None and path.read_bytes() == data
    assert out.files[1].url.endswith(".png")
    for bad in ("../secret", "a" * 32 + "/../x", "nothere", "0" * 32 + ".jpg"):
        assert store.path_for(bad) is None


def test_data_url_store() -> None:
    f = File.from_bytes(b"\x00\x01", "application/octet-stream")
    asyncio.run(materialize(f, DataUrlStore(), "unused"))
    assert f.url == "data:application/octet-stream;base64," + base64.b64encode(b"\x00\x01").decode()


def test_make_store_defaults_to_local(tmp_path: Path) -> None:
    assert isinstance(make_store(LocalStorage(directory=str(tmp_path))), LocalStore)
    assert isinstance(make_store(DataUrlStorage()), DataUrlStore)


def test_sse_frame_and_progress_json() -> None:
    assert sse_frame({"a": 1}) == 'data: {"a":1}\n\n'
    assert Progress(3, 4, "denoising").to_json() == {
        "type": "progress", "step": 3, "total": 4, "progress": 0.75, "message": "denoising"}


def test_heartbeats_fill_silences() -> None:
    async def slow() -> AsyncIterator[str]:
        yield "a"
        await asyncio.sleep(0.35)
        yield "b"

    async def collect() -> list[str]:
        return [x async for x in with_heartbeats(slow(), 0.1)]

    frames = asyncio.run(collect())
    assert frames[0] == "a" and frames[-1] == "b"
    assert 2 <= frames.count(HEARTBEAT) <= 4


class In(BaseModel):
    n: int = 1


class Svc(Service):
    @endpoint("", input=In, output=Out, billing=lambda r: r.n * 2)
    def root(self, request: In, ctx: RunContext) -> Out:
        """Root endpoint."""
        for i in range(request.n):
            ctx.progress(i + 1, request.n)
        return Out(files=[])

    @endpoint("/other", input=In, output=Out, stream=False)
    def other(self, request: In, ctx: RunContext) -> Out:
        return Out(files=[])


def test_collect_endpoints_and_routes() -> None:
    specs = collect_endpoints(Svc)
    assert [(s.method, s.path, s.stream) for s in specs] == [("root", "", True), ("other", "/other", False)]
    assert specs[0].route("/svc") == "/svc" and specs[1].route("/svc") == "/svc/other"
    assert specs[0].billable_units(In(n=3)) == 6 and specs[1].billable_units(In()) == 1
    assert specs[0].summary == "Root endpoint."


def test_duplicate_paths_are_rejected() -> None:
    class Dup(Service):
        @endpoint("/x", input=In, output=Out)
        def a(self, request: In, ctx: RunContext) -> Out: ...

        @endpoint("/x", input=In, output=Out)
        def b(self, request: In, ctx: RunContext) -> Out: ...

    with pytest.raises(ValueError, match="same endpoint path"):
        collect_endpoints(Dup)


def test_stream_endpoint_yields_progress_then_output_and_validates_dicts() -> None:
    async def run() -> list[object]:
        return [x async for x in Svc().stream_endpoint("root", {"n": 3}, _info())]

    items = asyncio.run(run())
    assert [type(x).__name__ for x in items] == ["Progress", "Progress", "Progress", "Output"]
    assert Svc().root({"n": 2}) == Out(files=[])  # direct calls get a context and validation
    with pytest.raises(Exception, match="validation"):
        Svc().root({"n": "many"})


class SyncIn(BaseModel):
    sync_mode: bool = False


class SyncOut(BaseModel):
    image: File


class Stored(Service):
    @endpoint("/img", input=SyncIn, output=SyncOut)
    def img(self, request: SyncIn, ctx: RunContext) -> SyncOut:
        ctx.progress(1, 1, "done", preview=Image.from_bytes(b"preview", "image/png", width=1, height=1))
        return SyncOut(image=File.from_bytes(b"jpeg bytes", "image/jpeg"))


BASE = "http://files.example.test/"  # a URL prefix only: nothing is contacted


def test_sync_mode_returns_the_output_inline_and_stores_nothing(tmp_path: Path) -> None:
    """fal's `sync_mode`: the output's files come back as data URLs, whatever the output store; the
    previews, sent while the work runs, still go to the store."""
    svc = Stored()
    svc._serve_store = LocalStore(tmp_path)

    async def run(body: dict[str, object]) -> list[object]:
        return [x async for x in svc.stream_endpoint("img", body, RequestInfo("r1", base_url=BASE))]

    for body in ({}, {"sync_mode": False}):
        progress, output = asyncio.run(run(body))
        assert output.value.image.url.startswith(f"{BASE}files/")  # type: ignore[attr-defined]
    stored = sorted(tmp_path.iterdir())
    progress, output = asyncio.run(run({"sync_mode": True}))
    assert output.value.image.url == "data:image/jpeg;base64," + base64.b64encode(b"jpeg bytes").decode()  # type: ignore[attr-defined]
    assert progress.preview.url.startswith(f"{BASE}files/")  # type: ignore[attr-defined]
    assert len(sorted(tmp_path.iterdir())) == len(stored) + 1  # the preview only


def _info():  # type: ignore[no-untyped-def]
    from serve_app.service import RequestInfo

    return RequestInfo("r1")


class Chunk(BaseModel):
    index: int
    audio: File


class AsyncSvc(Service):
    concurrency_safe = True

    def __init__(self) -> None:
        self.cancelled = 0

    @endpoint("/wait", input=In, output=Out)
    async def wait(self, request: In, ctx: RunContext) -> Out:
        """Waits on something remote, sending partial outputs."""
        try:
            for i in range(request.n):
                ctx.partial(Chunk(index=i, audio=File.from_bytes(b"x", "audio/wav")), kind="chunk")
                await asyncio.sleep(0.01)
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        return Out(files=[])


def test_async_endpoint_streams_partials_and_runs_directly() -> None:
    async def run() -> list[object]:
        return [x async for x in AsyncSvc().stream_endpoint("wait", {"n": 2}, _info())]

    items = asyncio.run(run())
    assert [type(x).__name__ for x in items] == ["Partial", "Partial", "Output"]
    first = items[0].to_json()  # type: ignore[attr-defined]
    assert first["type"] == "chunk" and first["index"] == 0 and first["audio"]["content_type"] == "audio/wav"
    assert asyncio.run(AsyncSvc().wait({"n": 1})) == Out(files=[])


def test_closing_the_stream_cancels_an_async_endpoint() -> None:
    svc = AsyncSvc()

    async def run() -> None:
        gen = svc.stream_endpoint("wait", {"n": 100}, _info())
        await gen.__anext__()
        await gen.aclose()  # the consumer (client) went away

    asyncio.run(run())
    assert svc.cancelled == 1


class Threaded(Service):
    """Records the thread of its construction, warm-up and every call."""

    def __init__(self, warmup: bool = True) -> None:
        self.threads = {"init": threading.get_ident()}
        self.ran: list[int] = []
        self.release = threading.Event()
        if warmup:
            self.go({"n": 0})  # a direct call, as a service warms up

    @endpoint("/go", input=In, output=Out)
    def go(self, request: In, ctx: RunContext) -> Out:
        self.threads.setdefault("warmup" if request.n == 0 else "call", threading.get_ident())
        assert threading.get_ident() == self.threads["init"], "a call ran off the model thread"
        self.ran.append(request.n)
        if request.n == 1:
            self.release.wait(10)
        return Out(files=[])


def test_a_service_loads_warms_up_and_runs_every_call_on_its_one_model_thread() -> None:
    """The builder's `hosted(cls)` constructs a one-at-a-time service on its model thread, and every
    synchronous call runs there: torch keeps the CUDA device and CUDA graph trees per thread."""
    svc = hosted(Threaded)()
    assert type(svc).__name__ == "Threaded" and isinstance(svc, Threaded)
    assert svc.threads["init"] != threading.get_ident() and svc.threads["warmup"] == svc.threads["init"]

    async def calls() -> None:
        for n in (2, 3, 4):
            assert [type(x).__name__ async for x in svc.stream_endpoint("go", {"n": n}, _info())] == ["Output"]

    asyncio.run(calls())
    assert svc.ran == [0, 2, 3, 4]
    assert svc.on_model_thread(threading.get_ident) == svc.threads["init"]
    assert hosted(AsyncSvc) is AsyncSvc  # concurrency-safe: constructed and run where Serve puts it


def test_a_request_cancelled_while_it_waits_for_the_model_thread_never_runs() -> None:
    svc = hosted(Threaded)(warmup=False)

    async def run() -> float:
        busy = asyncio.ensure_future(_drain(svc.stream_endpoint("go", {"n": 1}, _info())))
        while not svc.ran:
            await asyncio.sleep(0.01)
        waiting = svc.stream_endpoint("go", {"n": 5}, _info())
        nxt = asyncio.ensure_future(waiting.__anext__())
        await asyncio.sleep(0.1)
        nxt.cancel()  # the client went away before its turn
        started = time.perf_counter()
        with contextlib.suppress(asyncio.CancelledError):
            await nxt
        await waiting.aclose()
        gone = time.perf_counter() - started
        svc.release.set()
        await busy
        return gone

    gone = asyncio.run(run())
    assert gone < 1.0  # taken out of the line at once, not after the running call
    assert svc.ran == [1]


async def _drain(items: AsyncIterator[object]) -> list[object]:
    return [x async for x in items]


class Timed(Service):
    @endpoint("/timed", input=In, output=Out)
    def timed(self, request: In, ctx: RunContext) -> Out:
        for _ in range(request.n):
            ctx.time_part("gpu_work", 0.25)
        return Out(files=[])


def test_a_methods_own_parts_join_the_frameworks_timings() -> None:
    """`ctx.time_part`: what the method timed itself rides on the output beside dispatch/run/store (the
    sync route's Server-Timing); a part timed twice adds up; a name Server-Timing can't carry is refused."""

    async def run() -> list[object]:
        return [x async for x in Timed().stream_endpoint("timed", {"n": 2}, _info(), progress=False)]

    (output,) = asyncio.run(run())
    assert output.timings is not None  # type: ignore[attr-defined]
    assert output.timings["gpu_work"] == 0.5  # type: ignore[attr-defined]
    assert {"dispatch", "run", "store"} <= set(output.timings)  # type: ignore[attr-defined]
    ctx = RunContext()
    for bad in ("", "gpu work", "a;b", "x,y"):
        with pytest.raises(ValueError, match="Server-Timing"):
            ctx.time_part(bad, 1.0)
    assert ctx.timings == {}
