"""The app's metrics and its one Prometheus scrape target (`GET /metrics` on the ingress).

What a scrape of `/metrics` holds:

- the queue, read from the job store at scrape time (one store per application, so the numbers are
  the whole application's, whatever replica answers): `serve_app_queue_depth{service}` (jobs
  waiting), `serve_app_queue_running_jobs{service}` (jobs handed to the service);
- what Ray exports on every node of the cluster, fetched and merged into one exposition
  (names starting with `ray_serve_` by default): Serve's own metrics such as
  `ray_serve_deployment_request_counter_total{deployment}` and
  `ray_serve_deployment_processing_latency_ms_bucket{deployment}` (per service), and the app's
  metrics recorded through Ray: `ray_serve_app_requests_total{service,endpoint,mode,status}`,
  `ray_serve_app_request_latency_s_bucket{service,endpoint,mode}` (HTTP sync and stream calls)
  and `ray_serve_app_billable_units_total{service,endpoint}` (billing, counted by the dispatcher).

Ray's exporters listen on a random port per node in dev; this route finds them through the GCS, so
Prometheus needs one target only. Ray adds the `ray_` prefix to metrics recorded through it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import httpx
from fastapi import FastAPI
from fastapi.responses import PlainTextResponse
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from serve_app.ingress.settings import MetricsSettings

logger = logging.getLogger("ray.serve")

REQUESTS_METRIC = "serve_app_requests"
LATENCY_METRIC = "serve_app_request_latency_s"
QUEUE_DEPTH_METRIC = "serve_app_queue_depth"
QUEUE_RUNNING_METRIC = "serve_app_queue_running_jobs"
LATENCY_BUCKETS_S = [0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 900]


class RequestMetrics:
    """Counts and times the HTTP calls of the ingress's sync and stream routes (Ray metrics, so every
    ingress replica's numbers reach Ray's exporters). A no-op outside a Ray worker."""

    def __init__(self) -> None:
        self._count: Any = None
        self._latency: Any = None
        try:
            from ray.serve.metrics import Counter, Histogram

            self._count = Counter(REQUESTS_METRIC, description="HTTP calls of the sync and stream routes.",
                                  tag_keys=("service", "endpoint", "mode", "status"))  # type: ignore[arg-type]
            self._latency = Histogram(LATENCY_METRIC, description="Seconds from request to response (sync) or to "
                                      "the end of the stream.", boundaries=LATENCY_BUCKETS_S,
                                      tag_keys=("service", "endpoint", "mode"))  # type: ignore[arg-type]
        except Exception:  # no Ray worker here (unit tests): nothing to export to
            self._count = self._latency = None

    def record(self, service: str, endpoint: str, mode: str, status: int, started: float) -> None:
        """Count one call that ended with `status` and observe its latency since `started` (monotonic)."""
        if self._count is None:
            return
        tags = {"service": service, "endpoint": endpoint, "mode": mode}
        self._count.inc(1, tags={**tags, "status": str(status)})
        self._latency.observe(time.monotonic() - started, tags=tags)


def queue_families(stats: dict[str, Any] | None, services: Iterable[str]) -> list[Metric]:
    """Gauges of the queue from the job store's `stats()` (every known service, 0 when idle)."""
    depth = Metric(QUEUE_DEPTH_METRIC, "Jobs waiting in the service's queue (IN_QUEUE).", "gauge")
    running = Metric(QUEUE_RUNNING_METRIC, "Jobs handed to the service's deployment (IN_PROGRESS).", "gauge")
    queued = (stats or {}).get("queued", {})
    active = (stats or {}).get("running", {})
    for service in sorted({*services, *queued, *active}):
        depth.add_sample(QUEUE_DEPTH_METRIC, {"service": service}, float(queued.get(service, 0)))
        running.add_sample(QUEUE_RUNNING_METRIC, {"service": service}, float(active.get(service, 0)))
    return [depth, running]


def merge_expositions(texts: Iterable[str], prefixes: list[str]) -> list[Metric]:
    """One family per metric name from several Prometheus text expositions (one per node), keeping
    the names that start with one of `prefixes` (all when empty)."""
    families: dict[str, Metric] = {}
    for text in texts:
        for family in text_string_to_metric_families(text):
            if prefixes and not family.name.startswith(tuple(prefixes)):
                continue
            merged = families.setdefault(family.name, Metric(family.name, family.documentation, family.type,
                                                             family.unit))
            merged.samples.extend(family.samples)
    return list(families.values())


class _Families(Collector):
    def __init__(self, families: list[Metric]) -> None:
        self.families = families

    def collect(self) -> Iterable[Metric]:
        return self.families


def render(families: list[Metric]) -> bytes:
    """The Prometheus text exposition of `families`."""
    return generate_latest(_Families(families))  # type: ignore[arg-type]


def _exporter_urls() -> list[str]:
    """Where Ray's metrics exporter of every live node listens (a blocking GCS call)."""
    import ray

    return [f"http://{n['NodeManagerAddress']}:{n['MetricsExportPort']}/metrics"
            for n in ray.nodes() if n.get("Alive") and n.get("MetricsExportPort")]


async def scrape_ray(timeout_s: float) -> list[str]:
    """The expositions of Ray's exporters on every live node (nodes that don't answer are skipped)."""
    urls = await asyncio.wait_for(asyncio.to_thread(_exporter_urls), timeout_s)
    async with httpx.AsyncClient(timeout=timeout_s, trust_env=False) as client:
        responses = await asyncio.gather(*(client.get(url) for url in urls), return_exceptions=True)
    texts = []
    for url, response in zip(urls, responses, strict=True):
        if isinstance(response, httpx.Response) and response.status_code == 200:
            texts.append(response.text)
        else:
            logger.warning("metrics: no answer from Ray's exporter at %s: %s", url, response)
    return texts


async def _store_stats(timeout_s: float) -> dict[str, Any] | None:
    """The job store's counts for this application, or None without a queue (or outside Serve)."""
    try:
        import ray
        from ray import serve

        from serve_app.queue.client import STORE_NAMESPACE, store_actor_name

        app_name = serve.get_replica_context().app_name
        actor = await asyncio.to_thread(ray.get_actor, store_actor_name(app_name), namespace=STORE_NAMESPACE)
        stats: dict[str, Any] = await asyncio.wait_for(actor.stats.remote(), timeout_s)
        return stats
    except Exception as exc:  # no store yet (no job ever queued) or no Serve here
        logger.debug("metrics: no queue stats: %s", exc)
        return None


def add_metrics_route(app: FastAPI, services: list[str], settings: MetricsSettings, queue_enabled: bool) -> None:
    """`GET <settings.path>`: the queue gauges and Ray's metrics, in Prometheus' text format."""

    async def metrics() -> PlainTextResponse:
        timeout = settings.scrape_timeout_s
        stats = await _store_stats(timeout) if queue_enabled else None
        families = queue_families(stats, services) if queue_enabled else []
        if settings.include_ray:
            try:
                families += merge_expositions(await scrape_ray(timeout), settings.ray_prefixes)
            except Exception as exc:  # outside Ray, or the GCS is slow: serve what we have
                logger.warning("metrics: Ray's metrics unavailable: %s", exc)
        return PlainTextResponse(render(families), media_type=CONTENT_TYPE_LATEST)

    app.add_api_route(settings.path, metrics, methods=["GET"], tags=["ops"], response_class=PlainTextResponse,
                      summary="Prometheus metrics of the whole application",
                      description="Queue depth and running jobs per service (from the job store), plus what Ray "
                      "exports on every node: per-service request counts and latencies, the HTTP routes' "
                      "counts and latencies (`ray_serve_app_requests_total`, `ray_serve_app_request_latency_s`), "
                      "billing (`ray_serve_app_billable_units_total`).")
