"""Runs inside a network namespace that has only loopback (see test_yolo_page.py): Ray Serve with
dev.yaml's `yolo` service, then Chromium with a fake camera opens the page and streams.

Chromium's WebRTC binds a socket on every interface it finds (loopback only with
--allow-loopback-in-peer-connection), so on a machine with a network card it would also send from
that card's address; inside the namespace there is only 127.0.0.1, so every packet stays on loopback.

    python -m tests.browser.yolo_page_runner --y4m camera.y4m --out result.json --screenshot page.png
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import http.server
import json
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx

import tests.conftest  # noqa: F401  (Ray on loopback, no auth, no telemetry)
from tests.app.conftest import PYTHONPATH, free_port, load_dev_app

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
    """Ray and Serve on loopback with only dev.yaml's yolo service; returns the base URL."""
    import ray
    from ray import serve

    from serve_app.app import build_app

    ray.init(address="local", num_cpus=2, include_dashboard=False, object_store_memory=100 * 1024 * 1024,
             _temp_dir=temp, runtime_env={"env_vars": {"PYTHONPATH": PYTHONPATH}}, log_to_driver=False)
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port},
                logging_config={"log_level": "WARNING", "enable_access_log": False})
    dev = load_dev_app()
    args = {"ingress": {"storage": {"kind": "data_url"}},
            "ingress_deployment": {"ray_actor_options": {"num_cpus": 0.05}},
            "services": {"yolo": dev["args"]["services"]["yolo"]}}
    serve.run(build_app(args), name="default", route_prefix="/")
    return f"http://127.0.0.1:{port}"


def page_url(base: str) -> tuple[str, http.server.ThreadingHTTPServer | None]:
    """The app's own page at /yolo/ when the app serves it; else the same file from a local server,
    pointed at the app's WebSocket."""
    from deployments.yolo import STATIC_DIR

    page = httpx.get(f"{base}/yolo/", timeout=10)
    if page.status_code == 200 and "<video" in page.text:
        return f"{base}/yolo/?autostart", None
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(STATIC_DIR))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", free_port()), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    endpoint = base.replace("http://", "ws://") + "/yolo/realtime"
    return f"http://127.0.0.1:{server.server_port}/index.html?autostart&endpoint={endpoint}", server


async def drive(url: str, y4m: str, screenshot: str, frames: int, timeout: float) -> dict[str, Any]:
    from playwright.async_api import async_playwright

    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(
            executable_path=CHROMIUM, args=[*CHROMIUM_FLAGS, f"--use-file-for-fake-video-capture={y4m}"])
        try:
            page = await browser.new_page()
            await page.goto(url)
            started = time.perf_counter()
            state: dict[str, Any] = {}
            while time.perf_counter() - started < timeout:
                state = await page.evaluate("() => ({...window.yolo})")
                if state["framesShown"] >= frames or state["errors"]:
                    break
                await asyncio.sleep(0.5)
            state["seconds"] = time.perf_counter() - started
            state["green_pixels"] = await page.evaluate(GREEN_PIXELS_JS)
            await page.screenshot(path=screenshot)
            await page.click("#stop")
            state["after_stop"] = (await page.evaluate("() => window.yolo.state"))
            return state
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
            url, server = page_url(base)
            result = asyncio.run(drive(url, args.y4m, args.screenshot, args.frames, args.timeout))
            result["served_by_app"] = server is None
            if server is not None:
                server.shutdown()
            deadline = time.time() + 30
            while time.time() < deadline:
                stats = serve.get_deployment_handle("yolo", app_name="default").stats.remote().result(
                    timeout_s=30)
                if stats["active_sessions"] == 0:
                    break
                time.sleep(0.5)
            result["server"] = stats
            Path(args.out).write_text(json.dumps(result))
        finally:
            serve.shutdown()
            ray.shutdown()


if __name__ == "__main__":
    main()
