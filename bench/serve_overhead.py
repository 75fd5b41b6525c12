"""What one request costs the serving layer, beside Ray Serve itself: the fixed part of `served - bare`.

No model runs; each endpoint answers at once, so what is timed is the path (on loopback, one request
at a time, the cases taking turns round by round so the host's drift touches them alike):

  serve 1 hop     a plain Serve FastAPI deployment answering JSON: Ray Serve's own floor (proxy + replica);
  serve 2 hops    a plain FastAPI ingress deployment calling a second deployment through its handle:
                  Serve's floor for this project's shape (an ingress, then the service replica);
  ours            this project's app (`serve_app.app.build_app`: ingress, auth/limits middleware,
                  dispatcher, service replica, output store) with an endpoint that does nothing;
  ours + file     the same endpoint returning a `--file-kib` JPEG-sized file, then downloading it from
                  the returned URL (two requests), as a client of an image service does;
  ours + sync_mode the same with fal's `sync_mode: true`: the file comes inline as a data URI.

For `ours` the replica's `Server-Timing` splits the request: `run`, `store`, the handle call
(`call`) and the ingress route (`ingress`); what is left is Serve's proxy and HTTP.

`--proxy` picks Ray Serve's ingress path, one of bench/proxy_modes.py's (`default`, `haproxy`,
`throughput`, `haproxy+throughput`); every case runs on it, and the output names the process that
accepts on the port.

Usage: python bench/serve_overhead.py [--requests 100] [--file-kib 200] [--proxy MODE] [--json out.json]
"""

# No `from __future__ import annotations`: FastAPI must resolve the plain Serve routes' annotations.

import argparse
import json
import os
import secrets
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from proxy_modes import PROXY_MODES, reexec_from_argv

if __name__ == "__main__":  # before Ray is imported: Serve reads the proxy mode's variables then
    reexec_from_argv()

from fastapi import FastAPI, Request  # module level: FastAPI resolves the routes' annotations here
from pydantic import BaseModel, ConfigDict, Field
from ray import serve

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from serve_app.endpoints import endpoint  # noqa: E402
from serve_app.http import parse_server_timing  # noqa: E402
from serve_app.io import Image  # noqa: E402
from serve_app.service import RunContext, Service  # noqa: E402


class NoopConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")


class NoopInput(BaseModel):
    kib: int = Field(default=0, ge=0, le=65536, description="Size of the file to return (0: none).")
    sync_mode: bool = Field(default=False, description="Return the file inline as a data URI.")


class NoopOutput(BaseModel):
    images: list[Image]


class NoopService(Service):
    """Answers at once, with a file of `kib` KiB when asked (random bytes labelled image/jpeg)."""

    concurrency_safe = True

    def __init__(self, config: NoopConfig) -> None:
        self.config = config
        self.blobs: dict[int, bytes] = {}

    @endpoint("", input=NoopInput, output=NoopOutput, stream=False)
    def noop(self, request: NoopInput, ctx: RunContext) -> NoopOutput:
        """Return no file, or one of `kib` KiB."""
        if not request.kib:
            return NoopOutput(images=[])
        data = self.blobs.setdefault(request.kib, secrets.token_bytes(request.kib * 1024))
        return NoopOutput(images=[Image.from_bytes(data, "image/jpeg", width=1024, height=1024)])


def build(name: str, args: Any) -> Any:
    from serve_app.app import bind_service

    return bind_service(NoopService, NoopConfig.model_validate(args.config), name, args)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


SMALL = {"num_cpus": 0.05}
one_hop_app = FastAPI()
two_hops_app = FastAPI()


@serve.deployment(ray_actor_options=SMALL)
@serve.ingress(one_hop_app)
class OneHop:
    @one_hop_app.post("/x")
    async def x(self, request: Request) -> dict[str, Any]:
        await request.json()
        return {"images": []}


@serve.deployment(ray_actor_options=SMALL)
class Inner:
    def f(self, body: dict[str, Any]) -> dict[str, Any]:
        return {"images": []}


@serve.deployment(ray_actor_options=SMALL)
@serve.ingress(two_hops_app)
class TwoHops:
    def __init__(self, inner: Any) -> None:
        self.inner = inner

    @two_hops_app.post("/x")
    async def x(self, request: Request) -> dict[str, Any]:
        return await self.inner.f.remote(await request.json())  # type: ignore[no-any-return]


def deploy(files: str) -> None:
    """The three apps; the plain Serve ones come from the importable module (pickled by reference,
    so FastAPI can resolve their annotations in the replicas)."""
    import importlib

    from serve_app.app import build_app

    mod = importlib.import_module("bench.serve_overhead")
    serve.run(mod.OneHop.bind(), name="one", route_prefix="/one")
    serve.run(mod.TwoHops.bind(mod.Inner.bind()), name="two", route_prefix="/two")
    ours = {"ingress": {"storage": {"kind": "local", "directory": files}},
            "ingress_deployment": {"ray_actor_options": SMALL},
            "services": {"noop": {"module": "bench.serve_overhead", "deployment": {"ray_actor_options": SMALL}}}}
    serve.run(build_app(ours), name="ours", route_prefix="/ours")


def listener(port: int) -> str:
    """The name of the process that accepts HTTP on `port`: Serve's proxy (a Ray worker) or HAProxy."""
    import psutil

    for conn in psutil.net_connections(kind="tcp"):
        if conn.status == psutil.CONN_LISTEN and conn.laddr and conn.laddr.port == port and conn.pid:
            try:  # HAProxy reloads when an app is deployed: the old process may have just left
                return str(psutil.Process(conn.pid).name())
            except psutil.Error:
                continue
    return "unknown"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=100, help="timed requests per case (after 5 warm-ups)")
    parser.add_argument("--file-kib", type=int, default=200, help="size of the returned file (a 1024² JPEG: ~200)")
    parser.add_argument("--port", type=int, default=0, help="HTTP port on 127.0.0.1 (default: a free one)")
    parser.add_argument("--proxy", choices=sorted(PROXY_MODES), default="default",
                        help="Ray Serve's ingress path (bench/proxy_modes.py)")
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args()
    import httpx
    import ray

    port = args.port or free_port()
    # the workers import this module (its services) from the repository, beside what the environment adds
    pythonpath = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    ray.init(address="local", num_cpus=max(4, os.cpu_count() or 1), include_dashboard=False, log_to_driver=False,
             object_store_memory=200 * 1024**2, runtime_env={"env_vars": {"PYTHONPATH": pythonpath}})
    serve.start(http_options={"host": "127.0.0.1", "port": port},
                logging_config={"log_level": "WARNING", "enable_access_log": False})
    kib = args.file_kib
    cases: dict[str, tuple[str, dict[str, Any]]] = {
        "serve 1 hop": ("/one/x", {}), "serve 2 hops": ("/two/x", {}), "ours": ("/ours/noop", {}),
        f"ours + {kib} KiB file": ("/ours/noop", {"kib": kib}),
        f"ours + {kib} KiB sync_mode": ("/ours/noop", {"kib": kib, "sync_mode": True})}
    times: dict[str, list[float]] = {name: [] for name in cases}
    splits: dict[str, list[dict[str, float]]] = {name: [] for name in cases}
    with tempfile.TemporaryDirectory() as files, httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60) as c:
        deploy(files)
        accepts = listener(port)
        for i in range(args.requests + 5):
            for name, (path, body) in cases.items():
                t = time.perf_counter()
                r = c.post(path, json=body)
                r.raise_for_status()
                for image in r.json()["images"]:
                    if not image["url"].startswith("data:"):
                        c.get(image["url"]).raise_for_status()
                    elif len(image["url"]) < kib * 1024:
                        raise RuntimeError("the inline file is short")
                if i >= 5:
                    times[name].append((time.perf_counter() - t) * 1000)
                    splits[name].append({k: v * 1000 for k, v in  # ms, as the table
                                         parse_server_timing(r.headers.get("server-timing", "")).items()})
    rows = []
    for name in cases:
        row: dict[str, Any] = {"case": name, "ms": statistics.median(times[name])}
        if splits[name] and splits[name][0]:
            for part in ("run", "store", "call", "ingress"):
                row[part] = statistics.median(s[part] for s in splits[name])
        rows.append(row)
    if args.json:
        Path(args.json).write_text(json.dumps({"proxy": args.proxy, "listener": accepts, "rows": rows}, indent=1))
    print(f"\nPer-request cost on loopback, no model, proxy: {args.proxy} ({accepts} accepts); median of "
          f"{args.requests} requests per case, taking turns; ms")
    print(f"{'case':28} {'ms':>7} {'vs 2 hops':>9}  replica run / store / handle call / ingress route")
    two_hops = rows[1]["ms"]
    for row in rows:
        split = (f"{row['run']:.2f} / {row['store']:.2f} / {row['call']:.2f} / {row['ingress']:.2f}"
                 if "run" in row else "")
        print(f"{row['case']:28} {row['ms']:>7.2f} {row['ms'] - two_hops:>+9.2f}  {split}", flush=True)
    serve.shutdown()  # after the table: a run cut short while Serve stops still has it
    ray.shutdown()


if __name__ == "__main__":
    main()
