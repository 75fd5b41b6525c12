"""The YOLO WebRTC service without Ray: the real ultralytics YOLOv8n (random weights, offline), the
prod loader on a saved `.pt`, and sessions over `LocalConnection` with the Python client's aiortc
peer on 127.0.0.1."""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from deployments.yolo import YoloConfig, YoloService
from deployments.yolo.client import LocalSignaller, stream
from deployments.yolo.detector import Detector, configure_offline, load_yolo
from deployments.yolo.frames import PatternTrack, green_pixels, read_stamp, stamp
from serve_app.errors import Overloaded
from serve_app.models.source import ModelSource
from serve_app.realtime import LocalConnection
from serve_app.service import RunContext
from serve_app.webrtc import install_marker_jitter_buffer, live_peer_connections, restrict_host_addresses
from tests.realtime import run_local_session

YOLOV8N_PARAMETERS = 3_157_200  # ultralytics' summary of yolov8n.yaml (nc=80)


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[Any]]:
    """Record (and refuse) every outbound connection and DNS lookup."""
    attempts: list[Any] = []

    def refuse(*args: Any, **kwargs: Any) -> Any:
        attempts.append(args[1:] if args and isinstance(args[0], socket.socket) else args)
        raise OSError("network disabled in this test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    yield attempts


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[YoloService]:
    restrict_host_addresses(None)
    config = YoloConfig(model=ModelSource(preset="tiny"), device="cpu", confidence=0.0, max_det=5, image_size=320,
                        max_sessions=1, ultralytics_config_dir=str(tmp_path_factory.mktemp("ultralytics")),
                        webrtc={"host_addresses": ["127.0.0.1"], "connect_timeout_s": 30})
    yield YoloService(config)
    restrict_host_addresses(None)  # the service set both for this process
    install_marker_jitter_buffer(False)


def test_presets_build_yolov8n_offline_with_the_switches_set(no_network: list[Any], tmp_path: Path) -> None:
    configure_offline(str(tmp_path))
    model = load_yolo(ModelSource(preset="full", seed=3))
    assert sum(p.numel() for p in model.model.parameters()) == YOLOV8N_PARAMETERS
    import ultralytics.utils

    assert os.environ["YOLO_OFFLINE"] == "1" and os.environ["YOLO_AUTOINSTALL"] == "False"
    assert ultralytics.utils.SETTINGS["sync"] is False and not ultralytics.utils.AUTOINSTALL
    assert no_network == []


def test_prod_loader_reads_a_saved_checkpoint_and_a_missing_one_fails_without_download(
        no_network: list[Any], tmp_path: Path) -> None:
    configure_offline(str(tmp_path))
    built = load_yolo(ModelSource(preset="tiny", seed=1))
    path = tmp_path / "yolov8n.pt"
    built.save(str(path))
    loaded = load_yolo(ModelSource(id=str(path)))
    for (name, a), (_, b) in zip(built.model.state_dict().items(), loaded.model.state_dict().items(), strict=True):
        assert a.shape == b.shape and bool((a.half().float() == b.float()).all()), name  # saved in fp16
    with pytest.raises(FileNotFoundError, match="nothing is downloaded"):
        load_yolo(ModelSource(id=str(tmp_path / "missing" / "yolov8n.pt")))
    assert no_network == []


def test_the_confidence_threshold_decides_whether_boxes_are_drawn(service: YoloService) -> None:
    image = np.full((240, 320, 3), 90, np.uint8)
    image[80:160, 100:220] = 255
    drawn, count = service.detector.annotate(image.copy())
    assert count == 5 and green_pixels(drawn) > 100  # random weights: forced through conf=0
    strict = Detector(service.detector.model, device="cpu", confidence=0.9, iou=0.7, max_det=5, image_size=320,
                      half=False)
    untouched, none = strict.annotate(image.copy())
    assert none == 0 and (untouched == image).all()


def test_frame_tags_round_trip_and_overdrawn_tags_are_rejected() -> None:
    image = np.full((240, 320, 3), 90, np.uint8)
    for index in (0, 1, 4242, 65535, 65536 + 7):
        stamp(image, index)
        assert read_stamp(image) == index % 65536
    image[-16:, 40:80] = (0, 255, 0)  # a label across the strip
    assert read_stamp(image) is None


def run_session(service: YoloService, body: Any) -> Any:
    return run_local_session(service, body, timeout_s=20)


def test_a_session_streams_annotated_frames_back_and_frees_everything(service: YoloService) -> None:
    async def body(conn: LocalConnection, task: asyncio.Future[None]) -> Any:
        report = await stream(LocalSignaller(conn), PatternTrack(320, 240, fps=15), seconds=0, min_frames=8,
                              timeout=60)
        await asyncio.wait_for(task, 20)  # the client left: the session ends by itself
        return report

    before = dict(service.totals)
    report = run_session(service, body)
    assert report.frames_received >= 8 and report.frames_with_boxes >= 8 and report.errors == []
    assert report.fps > 0 and report.frames_sent >= report.frames_received and report.latency_frames >= 4
    stats = service.stats()
    assert stats["active_sessions"] == 0 and stats["live_peer_connections"] == 0 == live_peer_connections()
    assert stats["sessions"] == before["sessions"] + 1 and stats["frames_sent"] >= before["frames_sent"] + 8


def test_inference_errors_pass_frames_through(service: YoloService, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(image: Any) -> Any:
        raise RuntimeError("CUDA error: an illegal memory access")

    monkeypatch.setattr(service.detector, "detect", broken)

    async def body(conn: LocalConnection, task: asyncio.Future[None]) -> Any:
        return await stream(LocalSignaller(conn), PatternTrack(320, 240, fps=15), seconds=0, min_frames=5,
                            timeout=60)

    failed = service.totals["frames_failed"]
    report = run_session(service, body)
    assert report.frames_received >= 5 and report.frames_with_boxes == 0
    assert report.latency_frames >= 3  # unannotated frames keep their tags intact
    assert service.totals["frames_failed"] >= failed + 5


def test_sessions_beyond_the_limit_are_overloaded(service: YoloService) -> None:
    async def body(conn: LocalConnection, task: asyncio.Future[None]) -> Any:
        assert (await conn.client_receive(timeout=10))["type"] == "ready"
        with pytest.raises(Overloaded):
            await service.session(LocalConnection(), RunContext("second"))
        await conn.client_close()  # disconnect before any offer
        await asyncio.wait_for(task, 10)
        return service.stats()

    assert run_session(service, body)["active_sessions"] == 0


def test_deployment_defaults_admit_more_calls_than_sessions() -> None:
    config = YoloConfig(model=ModelSource(preset="tiny"), max_sessions=3)
    assert YoloService.deployment_defaults(config) == {"max_ongoing_requests": 7}
    assert (YoloService.static_dir / "index.html").is_file()


def test_the_command_line_client_streams_a_video_file_over_a_websocket(
        service: YoloService, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`python -m deployments.yolo.client --video ...` against the service behind a WebSocket server
    that bridges to `LocalConnection` (the app's ingress does the same over Serve)."""
    import json
    import threading

    from websockets.asyncio.server import ServerConnection, serve

    from deployments.yolo.client import main

    clip = tmp_path / "clip.y4m"
    with clip.open("wb") as out:
        out.write(b"YUV4MPEG2 W320 H240 F15:1 Ip A1:1 C420jpeg\n")
        for i in range(15):
            luma = np.full((240, 320), 100, np.uint8)
            luma[80:160, 10 + 10 * i : 90 + 10 * i] = 235
            out.write(b"FRAME\n" + luma.tobytes() + np.full(320 * 240 // 2, 128, np.uint8).tobytes())

    async def bridge(ws: ServerConnection) -> None:
        conn = LocalConnection()
        task = asyncio.ensure_future(service.session(conn, RunContext("cli")))

        async def to_client() -> None:
            while True:
                await ws.send(json.dumps(await conn._out.get()))

        pump = asyncio.ensure_future(to_client())
        try:
            async for raw in ws:
                await conn.client_send(json.loads(raw))
        finally:
            await conn.client_close()
            await asyncio.gather(task, return_exceptions=True)
            pump.cancel()

    ready = threading.Event()
    stop: dict[str, Any] = {}

    def server() -> None:
        async def run() -> None:
            async with serve(bridge, "127.0.0.1", 0) as srv:
                stop["port"], stop["loop"], stop["done"] = srv.sockets[0].getsockname()[1], \
                    asyncio.get_running_loop(), asyncio.Event()
                ready.set()
                await stop["done"].wait()

        asyncio.run(run())

    thread = threading.Thread(target=server, daemon=True)
    thread.start()
    assert ready.wait(10)
    try:
        main(["--url", f"ws://127.0.0.1:{stop['port']}/yolo/realtime", "--video", str(clip), "--seconds", "1.5",
              "--encoding", "json", "--json"])
    finally:
        stop["loop"].call_soon_threadsafe(stop["done"].set)
        thread.join(20)
        install_marker_jitter_buffer(False)
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert report["frames_received"] >= 3 and report["frames_with_boxes"] >= 3 and report["errors"] == []
    assert service.stats()["active_sessions"] == 0
