"""Queue API throughput on CPU: submissions per second and status latency, with a no-op service.

Starts a local Ray + Serve, deploys the behaviours fixture service (its `/stats` endpoint does no
work) behind the ingress with the queue, and measures over plain HTTP (no TLS):
  1. submit:  N POST /queue/b/stats from `--concurrency` concurrent clients -> submissions/s;
  2. drain:   time until every job is COMPLETED -> jobs/s run end to end (ingress -> handle -> replica);
  3. status:  GET .../status of finished jobs, one at a time -> p50 / p99 latency, idle;
  4. status under load: the same while another client submits at full speed;
  5. the store actor alone (no HTTP, no runner), and GET /health as the HTTP ceiling.
The load generator runs in this process, on the same cores as the server. Submissions reach the
store in batches (one actor call carries the submissions of the same moment) and finished jobs'
statuses come from the ingress's cache; `--proxy` picks Ray 2.60's ingress path: `default` (the
Python HTTP proxy), `throughput` (RAY_SERVE_THROUGHPUT_OPTIMIZED=1: direct ingress, gRPC between
replicas, frozen GC) or `haproxy` (RAY_SERVE_ENABLE_HA_PROXY=1: HAProxy in front of direct ingress).
Usage: python bench/queue_throughput.py [--jobs 3000] [--concurrency 32] [--status 1000]
                                        [--proxy default|throughput|haproxy]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from proxy_modes import PROXY_MODES, reexec_with

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def submit_all(url: str, jobs: int, concurrency: int) -> tuple[list[str], float]:
    import httpx

    ids: list[str] = []
    counter = iter(range(jobs))
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=60) as http:

        async def worker() -> None:
            for _ in counter:
                r = await http.post("/queue/b/stats", json={})
                r.raise_for_status()
                ids.append(r.json()["request_id"])

        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return ids, time.perf_counter() - start


async def health_rate(url: str, requests: int, concurrency: int) -> float:
    """Requests/s of GET /health: the ceiling of any route through Serve's proxy and the ingress."""
    import httpx

    counter = iter(range(requests))
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=60) as http:

        async def worker() -> None:
            for _ in counter:
                (await http.get("/health")).raise_for_status()

        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return requests / (time.perf_counter() - start)


async def wait_drained(url: str, ids: list[str], timeout_s: float = 600) -> float:
    import httpx

    start = time.perf_counter()
    async with httpx.AsyncClient(base_url=url, timeout=60) as http:
        for request_id in reversed(ids):  # the last submitted finishes (about) last
            while True:
                r = await http.get(f"/queue/b/requests/{request_id}/status")
                if r.status_code == 200:
                    break
                if time.perf_counter() - start > timeout_s:
                    raise TimeoutError("the queue did not drain")
                await asyncio.sleep(0.05)
    return time.perf_counter() - start


async def status_latencies(url: str, ids: list[str], n: int) -> list[float]:
    import httpx

    out = []
    async with httpx.AsyncClient(base_url=url, timeout=60) as http:
        for request_id in random.sample(ids, min(n, len(ids))):
            start = time.perf_counter()
            r = await http.get(f"/queue/b/requests/{request_id}/status")
            out.append(time.perf_counter() - start)
            r.raise_for_status()
    return out


async def status_under_load(url: str, ids: list[str], n: int, jobs: int, concurrency: int) -> list[float]:
    load = asyncio.ensure_future(submit_all(url, jobs, concurrency))
    await asyncio.sleep(0.5)
    latencies = await status_latencies(url, ids, n)
    await load
    return latencies


def store_alone(jobs: int, window: int = 64) -> tuple[float, float, list[float]]:
    """Submissions/s straight into a JobStore actor from this process (no HTTP, no runner), and the
    latency of its status call: the queue core's own capacity."""
    import ray

    from serve_app.queue.settings import QueueSettings
    from serve_app.queue.state import Job
    from serve_app.queue.store import JobStore

    actor: Any = ray.remote(JobStore).options(num_cpus=0).remote(
        QueueSettings(defaults={"max_queued": 10 * jobs}), "bench_direct")  # type: ignore[arg-type]
    ray.get(actor.stats.remote())

    def job(i: int) -> Job:
        return Job(request_id=f"j{i}", service="b", path="/b/stats", payload={}, base_url="http://h/",
                   response_url=f"http://h/queue/b/requests/j{i}", created_at=time.time())

    start = time.perf_counter()
    in_flight: list[Any] = []
    for i in range(jobs):
        in_flight.append(actor.submit.remote(job(i)))
        if len(in_flight) >= window:
            ray.get(in_flight)
            in_flight = []
    ray.get(in_flight)
    rate = jobs / (time.perf_counter() - start)
    start = time.perf_counter()
    batch = [job(jobs + i) for i in range(jobs)]
    ray.get([actor.submit_many.remote(batch[i:i + window]) for i in range(0, jobs, window)])
    batched_rate = jobs / (time.perf_counter() - start)
    latencies = []
    for i in random.sample(range(jobs), min(500, jobs)):
        t = time.perf_counter()
        ray.get(actor.status.remote(f"j{i}"))
        latencies.append(time.perf_counter() - t)
    ray.kill(actor)
    return rate, batched_rate, latencies


def report(name: str, latencies: list[float]) -> None:
    ms = [x * 1000 for x in latencies]
    print(f"{name:<28} p50 {statistics.median(ms):6.2f} ms   p99 {percentile(ms, 0.99):6.2f} ms   "
          f"max {max(ms):6.2f} ms   (n={len(ms)})")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--jobs", type=int, default=3000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--status", type=int, default=1000)
    parser.add_argument("--proxy", choices=sorted(PROXY_MODES), default="default")
    args = parser.parse_args()
    reexec_with(args.proxy)  # Serve's processes read the mode's variables, inherited from this one

    import ray
    from ray import serve

    sys.path.insert(0, str(ROOT))
    from serve_app.app import build_app

    ray.init(address="local", num_cpus=4, include_dashboard=False, object_store_memory=200 * 1024 * 1024,
             _temp_dir=tempfile.mkdtemp(prefix="ray_bench_"), log_to_driver=False,
             runtime_env={"env_vars": {"PYTHONPATH": str(ROOT)}})
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port},
                logging_config={"log_level": "WARNING", "enable_access_log": False})
    app_args: dict[str, Any] = {
        "ingress": {"storage": {"kind": "data_url"},
                    "queue": {"defaults": {"max_running": 64, "max_queued": 1_000_000}}},
        "ingress_deployment": {"ray_actor_options": {"num_cpus": 0.1}},
        "services": {"b": {"module": "tests.app.fixtures.behaviours",
                           "deployment": {"max_ongoing_requests": 64, "ray_actor_options": {"num_cpus": 0.1}}}},
    }
    serve.run(build_app(app_args), name="bench", route_prefix="/")
    url = f"http://127.0.0.1:{port}"
    try:
        asyncio.run(submit_all(url, 200, args.concurrency))  # warm-up: connections, code paths
        asyncio.run(wait_drained(url, []))
        ceiling = asyncio.run(health_rate(url, args.jobs, args.concurrency))
        ids, elapsed = asyncio.run(submit_all(url, args.jobs, args.concurrency))
        drained = asyncio.run(wait_drained(url, ids))
        idle = asyncio.run(status_latencies(url, ids, args.status))
        loaded = asyncio.run(status_under_load(url, ids, args.status // 2, args.jobs, args.concurrency))
        direct_rate, batched_rate, direct_status = store_alone(args.jobs)
        print(f"cpu cores: {os.cpu_count()}   jobs: {args.jobs}   concurrency: {args.concurrency}   "
              f"proxy: {args.proxy}")
        print(f"{'GET /health (ceiling)':<28} {ceiling:8.0f} requests/s")
        print(f"{'submit':<28} {args.jobs / elapsed:8.0f} submissions/s ({elapsed:.2f} s)")
        print(f"{'run to COMPLETED':<28} {args.jobs / (elapsed + drained):8.0f} jobs/s "
              f"(all done {drained:.2f} s after the last submit)")
        print(f"{'store actor alone: submit':<28} {direct_rate:8.0f} submissions/s (from this process, no HTTP)")
        print(f"{'store actor alone: batched':<28} {batched_rate:8.0f} submissions/s (submit_many, 64 a call)")
        report("store actor alone: status", direct_status)
        report("status (idle)", idle)
        report("status (during submits)", loaded)
    finally:
        serve.shutdown()
        ray.shutdown()


if __name__ == "__main__":
    main()
