"""Readiness from the replicas themselves: each service replica's `check_health`, asked now.

Serve's controller runs health checks every `health_check_period_s` and reports its last verdict;
a multi-GPU replica whose rank died a moment ago still reads HEALTHY until then. Asking each
replica actor directly (a Serve replica answers `check_health` on its own event loop, beside any
running request) reflects the runner's state at once.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

logger = logging.getLogger("ray.serve")

_REPLICA_PREFIX = "SERVE_REPLICA::"
_SERVE_NAMESPACE = "serve"


def _replica_actors(app_name: str) -> list[tuple[str, Any]]:
    """`(deployment, actor handle)` of every replica of `app_name` but the ingress (a blocking GCS
    call: run it in a thread). Replica actors are named `SERVE_REPLICA::<app>#<deployment>#<id>`."""
    import ray

    out = []
    for entry in ray.util.list_named_actors(all_namespaces=True):
        name = entry.get("name", "") if isinstance(entry, dict) else str(entry)
        if entry.get("namespace") != _SERVE_NAMESPACE or not name.startswith(_REPLICA_PREFIX):
            continue
        parts = name[len(_REPLICA_PREFIX):].split("#")
        if len(parts) != 3 or parts[0] != app_name or parts[1] == "Ingress":
            continue
        try:
            out.append((parts[1], ray.get_actor(name, namespace=_SERVE_NAMESPACE)))
        except ValueError:  # gone since the listing
            continue
    return out


async def replica_health(app_name: str, timeout_s: float) -> set[str]:
    """Deployments of `app_name` with a replica whose own health check fails now. A replica that
    does not answer within `timeout_s` (busy, starting) is left to Serve's verdict."""
    replicas = await asyncio.to_thread(_replica_actors, app_name)

    async def check(actor: Any) -> bool:
        try:
            await asyncio.wait_for(actor.check_health.remote(), timeout_s)
        except TimeoutError:
            return True
        except Exception:
            return False
        return True

    results = await asyncio.gather(*(check(actor) for _, actor in replicas))
    failing = {deployment for (deployment, _), ok in zip(replicas, results, strict=True) if not ok}
    if failing:
        logger.warning("readiness: replicas of %s fail their health check now", sorted(failing))
    return failing
