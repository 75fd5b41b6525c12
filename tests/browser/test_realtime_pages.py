"""The realtime pages in Chromium (Playwright driving Debian's /usr/bin/chromium, never a downloaded
browser), both on the shared `static/realtime.js` signalling: on the YOLO page a fake camera fed from a
generated grey clip streams to /yolo/realtime through Ray Serve, and the annotated frames arrive with
the model's green boxes (dev.yaml: random weights, `confidence: 0`); the Matrix-Game page receives the
generated world, sends a held key's action and pauses. It all runs in a network namespace with only
loopback (realtime_pages_runner.py says why), started with `unshare -n`; install Chromium with
`apt-get install -y chromium`."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = "/usr/bin/chromium"


def loopback_namespace_works() -> bool:
    if shutil.which("unshare") is None or shutil.which("ip") is None:
        return False
    return subprocess.run(["unshare", "-n", "ip", "link", "set", "lo", "up"], capture_output=True).returncode == 0


pytestmark = [
    pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="needs Debian's chromium: apt-get install -y chromium"),
    pytest.mark.skipif(not loopback_namespace_works(), reason="needs `unshare -n` (root) for a loopback-only network"),
]


def write_y4m(path: Path, width: int = 640, height: int = 480, frames: int = 15) -> None:
    """A grey clip with a white box moving right (YUV 4:2:0; no green anywhere)."""
    with path.open("wb") as out:
        out.write(f"YUV4MPEG2 W{width} H{height} F30:1 Ip A1:1 C420jpeg\n".encode())
        chroma = np.full((height // 2) * (width // 2) * 2, 128, np.uint8).tobytes()
        for i in range(frames):
            luma = np.full((height, width), 110, np.uint8)
            x = 40 + i * 16
            luma[height // 3 : 2 * height // 3, x : x + width // 4] = 235
            out.write(b"FRAME\n" + luma.tobytes() + chroma)


def test_realtime_pages_stream_both_ways(tmp_path: Path) -> None:
    pytest.importorskip("playwright")
    y4m, out, screenshot = tmp_path / "camera.y4m", tmp_path / "result.json", tmp_path / "page.png"
    write_y4m(y4m)
    command = ["unshare", "-n", "sh", "-c", 'ip link set lo up && exec "$@"', "sh", sys.executable, "-m",
               "tests.browser.realtime_pages_runner", "--y4m", str(y4m), "--out", str(out),
               "--screenshot", str(screenshot)]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    run = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0 and out.exists(), run.stdout[-3000:] + run.stderr[-3000:]
    result = json.loads(out.read_text())
    print(f"\npages: {result}")
    yolo, world = result["yolo"], result["world"]
    assert yolo["errors"] == [] and yolo["framesShown"] >= 30, yolo
    assert (yolo["width"], yolo["height"]) == (640, 480)
    assert yolo["green_pixels"] > 200  # the boxes YOLO drew (the camera clip has no green)
    assert yolo["after_stop"] == "stopped" and screenshot.stat().st_size > 0
    assert (yolo["server"]["active_sessions"], yolo["server"]["live_peer_connections"]) == (0, 0)
    assert yolo["server"]["frames_sent"] >= 30

    assert world["errors"] == [] and world["framesShown"] >= 3, world
    assert world["action"] == "w u" and world["paused"] is True  # the server's `pause` reply reached the page
    assert world["after_stop"] == "stopped"
    assert world["server"]["sessions"] == 1 and world["server"]["busy"] == 0
    assert world["server"]["live_peer_connections"] == 0 and world["server"]["frames_sent"] >= 3
