"""Memory of a Sana replica (tiny preset, CPU) before, during and after a burst of large requests.

Starts a local Ray + Serve with dev.yaml's Sana service alone, measures the replica process's RSS
(psutil) at rest, sends `--requests` requests of `--size`² x `--images` images one after another,
then reads the RSS right after the burst and after `--idle` seconds. Run it with the framework's
allocator settings (the default) and with `--plain-malloc` (glibc's defaults) to compare.
Usage: python bench/memory_after_burst.py [--requests 6] [--size 2048] [--images 4] [--idle 20]
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def replica_rss_mb(deployment: str) -> float:
    """RSS of the Serve replica process of `deployment` (its title is `ray::ServeReplica:<app>:<name>`)."""
    import psutil

    for proc in psutil.process_iter(["cmdline"]):
        cmdline = " ".join(proc.info.get("cmdline") or [])
        if f"ServeReplica:mem:{deployment}" in cmdline:
            return float(proc.memory_info().rss) / 2**20
    raise RuntimeError(f"no replica process for {deployment}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=6)
    parser.add_argument("--size", type=int, default=2048)
    parser.add_argument("--images", type=int, default=4)
    parser.add_argument("--idle", type=float, default=20.0)
    parser.add_argument("--plain-malloc", action="store_true", help="glibc's defaults, not the framework's")
    args = parser.parse_args()

    import httpx
    import ray
    import yaml
    from ray import serve

    sys.path.insert(0, str(ROOT))
    from serve_app.app import build_app

    dev = yaml.safe_load((ROOT / "configs" / "dev.yaml").read_text())["applications"][0]["args"]
    sana: dict[str, Any] = dev["services"]["sana"]
    if args.plain_malloc:
        sana["allocator"] = "system"
    ray.init(address="local", num_cpus=4, include_dashboard=False, object_store_memory=200 * 1024 * 1024,
             _temp_dir=tempfile.mkdtemp(prefix="ray_mem_"), log_to_driver=False,
             runtime_env={"env_vars": {"PYTHONPATH": str(ROOT)}})
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port},
                logging_config={"log_level": "WARNING", "enable_access_log": False})
    serve.run(build_app({"ingress": {"storage": {"kind": "data_url"}}, "services": {"sana": sana}}),
              name="mem", route_prefix="/")
    url = f"http://127.0.0.1:{port}"
    body = {"prompt": "a photo of a cat", "image_size": {"width": args.size, "height": args.size},
            "num_images": args.images, "num_inference_steps": 1, "enable_safety_checker": False}
    try:
        time.sleep(3)
        baseline = replica_rss_mb("sana")
        peak = baseline
        with httpx.Client(base_url=url, timeout=900) as http:
            for _ in range(args.requests):
                r = http.post("/sana/sprint", json=body)
                r.raise_for_status()
                peak = max(peak, replica_rss_mb("sana"))
        after = replica_rss_mb("sana")
        time.sleep(args.idle)
        idle = replica_rss_mb("sana")
        mode = "glibc defaults" if args.plain_malloc else "framework allocator settings"
        print(f"{mode}: {args.requests} x {args.size}^2 x {args.images} images (data: URLs)")
        print(f"replica RSS MiB: baseline {baseline:.0f}, highest seen {peak:.0f}, right after {after:.0f}, "
              f"after {args.idle:g} s idle {idle:.0f} ({idle - baseline:+.0f} vs baseline)")
    finally:
        serve.shutdown()
        ray.shutdown()


if __name__ == "__main__":
    main()
