"""Runs inside a network namespace that has only loopback (see test_realtime_pages.py): Ray Serve with
dev.yaml's `yolo` and `matrix-game` services, then Chromium opens each service's page (which loads
the shared `static/realtime.js` signalling): the YOLO page streams a fake camera and shows the
annotated video; the Matrix-Game page receives the generated world, sends a key's action, and pauses
(the server's `pause` reply comes back through the page's own message hook).

Chromium's WebRTC binds a socket on every interface it finds (loopback only with
--allow-loopback-in-peer-connection), so on a machine with a network card it would also send from
that card's address; inside the namespace there is only 127.0.0.1, so every packet stays on loopback.

    python -m tests.browser.realtime_pages_runner --y4m camera.y4m --out result.json --screenshot page.png
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import tests.conftest  # noqa: F401  (Ray on loopback, no auth, no telemetry)
from tests.app.conftest import PYTHONPATH, free_port, load_dev_app
from tests.realtime import service_stats

CHROMIUM = "/usr/bin/chromium"
# Headless, no network chatter (the machine has none to offer), a fake camera fed from a file.
CHROMIUM_FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream",
                  "--allow-loopback-in-peer-connection"]
GREEN_PIXELS_JS = """() => {
  const video = document.getElementById("remote");
  const canvas = document.createElement("canvas");
  canvas.width = video.videoWidth; canvas.height = video.videoHeight;
  if (!canvas.width) return 0;
  const ctx = canvas.getContext("2d");
  ctx.drawImage(video, 0, 0);
  const data = ctx.getImageData(0, 0, canvas.width, canvas.height).data;
  let green = 0;
  for (let i = 0; i < data.length; i += 4) if (data[i + 1] > 160 && data[i] < 110 && data[i + 2] < 110) green++;
  return green;
}"""


def start_serve(temp: str) -> str:
    """Ray and Serve on loopback with dev.yaml's yolo and matrix-game services; returns the base URL."""
    import ray
    from ray import serve

    from serve_app.app import build_app

    ray.init(address="local", num_cpus=2, include_dashboard=False, object_store_memory=100 * 1024 * 1024,
             _temp_dir=temp, runtime_env={"env_vars": {"PYTHONPATH": PYTHONPATH}}, log_to_driver=False)
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port},
                logging_config={"log_level": "WARNING", "enable_access_log": False})
    services = load_dev_app()["args"]["services"]
    args = {"ingress": {"storage": {"kind": "data_url"}},
            "ingress_deployment": {"ray_actor_options": {"num_cpus": 0.05}},
            "services": {name: services[name] for name in ("yolo", "matrix-game")}}
    serve.run(build_app(args), name="default", route_prefix="/")
    return f"http://127.0.0.1:{port}"


def settled_stats(name: str, settled: str) -> dict[str, Any]:
    """The service's stats once `settled` (a stats key) reads 0, or after 30 s."""
    deadline = time.time() + 30
    while True:
        stats = service_stats(name)
        if stats.get(settled) == 0 or time.time() > deadline:
            return stats
        time.sleep(0.5)


async def wait_for(page: Any, name: str, done: str, timeout: float) -> dict[str, Any]:
    """Poll `window[name]` until the JS condition `done(state)` holds or the page records an error."""
    started = time.perf_counter()
    state: dict[str, Any] = {}
    while time.perf_counter() - started < timeout:
        state = await page.evaluate(f"() => ({{...window.{name}}})")
        if state["errors"] or await page.evaluate(f"() => (({done}))(window.{name})"):
            break
        await asyncio.sleep(0.5)
    state["seconds"] = time.perf_counter() - started
    return state


async def drive(base: str, y4m: str, screenshot: str, frames: int, timeout: float) -> dict[str, Any]:
    from playwright.async_api import async_playwright

    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(
            executable_path=CHROMIUM, args=[*CHROMIUM_FLAGS, f"--use-file-for-fake-video-capture={y4m}"])
        try:
            page = await browser.new_page()
            await page.goto(f"{base}/yolo/?autostart")
            yolo = await wait_for(page, "yolo", f"(s) => s.framesShown >= {frames}", timeout)
            yolo["green_pixels"] = await page.evaluate(GREEN_PIXELS_JS)
            await page.screenshot(path=screenshot)
            await page.click("#stop")
            yolo["after_stop"] = await page.evaluate("() => window.yolo.state")

            page = await browser.new_page()
            await page.goto(f"{base}/matrix-game/?autostart")
            world = await wait_for(page, "world", "(s) => s.framesShown >= 3", timeout)
            await page.keyboard.down("w")  # held: the action becomes "w u" and is sent
            world["action"] = await page.evaluate("() => window.world.action")
            await page.keyboard.up("w")
            await page.keyboard.press(" ")  # pause: the server's `pause` reply sets `paused`
            paused = await wait_for(page, "world", "(s) => s.paused", 30)
            world["paused"], world["errors"] = paused["paused"], paused["errors"]
            await page.click("#stop")
            world["after_stop"] = await page.evaluate("() => window.world.state")
            return {"yolo": yolo, "world": world}
        finally:
            await browser.close()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--y4m", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--screenshot", required=True)
    parser.add_argument("--frames", type=int, default=30)
    parser.add_argument("--timeout", type=float, default=180)
    args = parser.parse_args()
    import ray
    from ray import serve

    with tempfile.TemporaryDirectory(prefix="ray-browser-") as temp:
        try:
            base = start_serve(temp)
            result = asyncio.run(drive(base, args.y4m, args.screenshot, args.frames, args.timeout))
            result["yolo"]["server"] = settled_stats("yolo", "active_sessions")
            result["world"]["server"] = settled_stats("matrix-game", "busy")
            Path(args.out).write_text(json.dumps(result))
        finally:
            serve.shutdown()
            ray.shutdown()


if __name__ == "__main__":
    main()
