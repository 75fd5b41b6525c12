"""Jobs outlive the ingress: kill the queue app's ingress replica with jobs running and queued;
Serve starts a new one, whose runner picks the queued jobs up, and the running ones (their runner
is gone) are queued again once its lease expires. None is lost."""

from __future__ import annotations

import contextlib
import threading
import time

import httpx
import ray

from tests.app.conftest import QUEUE_APP, QUEUE_KEY


def ingress_replicas() -> list[str]:
    return [a["name"] for a in ray.util.list_named_actors(all_namespaces=True)
            if a["name"].startswith(f"SERVE_REPLICA::{QUEUE_APP}#Ingress#")]


def test_killing_the_ingress_loses_no_job(queue_app: str) -> None:
    auth = {"Authorization": f"Key {QUEUE_KEY}"}
    with httpx.Client(base_url=queue_app, headers=auth, timeout=30) as http:
        ids = [http.post("/queue/b/steps", json={"steps": 20}).json()["request_id"] for _ in range(5)]
        deadline = time.time() + 30
        while http.get(f"/queue/b/requests/{ids[0]}/status").json()["status"] != "IN_PROGRESS":
            assert time.time() < deadline
            time.sleep(0.05)
        statuses = [http.get(f"/queue/b/requests/{i}/status").json()["status"] for i in ids]
        assert statuses.count("IN_QUEUE") >= 2  # max_running is 2

        (old,) = ingress_replicas()
        ray.kill(ray.get_actor(old, namespace="serve"), no_restart=True)

        done: dict[str, dict] = {}
        deadline = time.time() + 120
        while len(done) < len(ids) and time.time() < deadline:
            for request_id in ids:
                if request_id in done:
                    continue
                try:
                    r = http.get(f"/queue/b/requests/{request_id}/status", params={"logs": 1})
                except httpx.HTTPError:
                    continue
                if r.status_code == 200 and r.json()["status"] == "COMPLETED":
                    done[request_id] = r.json()
            time.sleep(0.2)
        assert set(done) == set(ids), f"lost: {set(ids) - set(done)}"
        assert ingress_replicas() and ingress_replicas() != [old]
        for request_id, status in done.items():
            assert status["error"] is None, status
            assert http.get(f"/queue/b/requests/{request_id}").json()["steps_done"] == 20
        retried = [s for s in done.values() if any("queued again" in log["message"] for log in s["logs"])]
        assert retried, "the jobs running at the kill ran again"


def test_work_orphaned_by_a_killed_ingress_is_cancelled(queue_app: str) -> None:
    """Ray does not cancel a call whose caller died: without the service's caller watchdog, a sync
    request whose ingress replica is killed runs to its end for nobody."""
    auth = {"Authorization": f"Key {QUEUE_KEY}"}

    def stats(http: httpx.Client) -> dict[str, int]:
        deadline = time.time() + 60
        while True:  # the new ingress replica may still be starting
            try:
                r = http.post("/b/stats", json={})
                if r.status_code == 200:
                    return r.json()  # type: ignore[no-any-return]
            except httpx.HTTPError:
                pass
            assert time.time() < deadline, "no ingress answered"
            time.sleep(0.2)

    with httpx.Client(base_url=queue_app, headers=auth, timeout=60) as http:
        before = stats(http)
        request = threading.Thread(target=lambda: _post_ignoring_errors(queue_app, auth, {"steps": 400}), daemon=True)
        request.start()  # 400 steps x 0.05 s: 20 s of work
        deadline = time.time() + 30
        while stats(http)["started"] == before["started"]:
            assert time.time() < deadline
            time.sleep(0.1)

        (old,) = ingress_replicas()
        ray.kill(ray.get_actor(old, namespace="serve"), no_restart=True)
        killed = time.time()

        deadline = killed + 15
        while (now := stats(http))["cancelled"] == before["cancelled"]:
            assert time.time() < deadline, f"the orphaned request kept running: {now}"
            time.sleep(0.2)
        assert now["completed"] == before["completed"]
        assert time.time() - killed < 15


def _post_ignoring_errors(base_url: str, headers: dict[str, str], body: dict[str, int]) -> None:
    with contextlib.suppress(httpx.HTTPError), httpx.Client(base_url=base_url, headers=headers, timeout=60) as http:
        http.post("/b/steps", json=body)
