"""Parallel SDXL from configs/dev.yaml: two gloo ranks on CPU in the replica's placement group."""

from __future__ import annotations

import io
import json
import time

import httpx
from PIL import Image

REQ = {"prompt": "a photo of a cat", "width": 64, "height": 64, "num_inference_steps": 2, "seed": 7,
       "output_format": "png"}


def grid_of(client: httpx.Client, body: dict) -> Image.Image:  # type: ignore[type-arg]
    r = client.get(body["image"]["url"])
    assert r.status_code == 200
    return Image.open(io.BytesIO(r.content))


def test_one_image_per_rank_in_a_reproducible_grid(client: httpx.Client) -> None:
    a = client.post("/parallel-sdxl", json=REQ)
    assert a.status_code == 200, a.text
    body = a.json()
    assert body["seed"] == 7 and body["num_images"] == 2
    assert (body["image"]["width"], body["image"]["height"]) == (64, 128)  # one column, two rows
    grid = grid_of(client, body)
    top, bottom = grid.crop((0, 0, 64, 64)).tobytes(), grid.crop((0, 64, 64, 128)).tobytes()
    assert top != bottom  # rank 1 used seed + 1
    again = grid_of(client, client.post("/parallel-sdxl", json=REQ).json())
    assert again.tobytes() == grid.tobytes()


def test_stream_sends_preview_grids_then_the_output(client: httpx.Client) -> None:
    with client.stream("POST", "/parallel-sdxl/stream", json={**REQ, "num_inference_steps": 6}) as r:
        assert r.status_code == 200
        events = [json.loads(x[6:]) for x in r.iter_lines() if x.startswith("data: ")]
    previews = [e for e in events if e.get("type") == "progress"]
    assert [e["step"] for e in previews] == [1, 6]  # steps 0 and 5 (every 5), reported 1-based
    assert previews[0]["preview"]["width"] == 64 and previews[0]["preview"]["height"] == 128
    assert client.get(previews[0]["preview"]["url"]).status_code == 200
    assert events[-1]["image"]["height"] == 128


def test_ranks_are_named_actors_and_a_dead_rank_gets_the_replica_replaced(client: httpx.Client) -> None:
    import ray

    def ranks() -> set[str]:
        return {a["name"] for a in ray.util.list_named_actors(all_namespaces=True)
                if a["name"].startswith("SDXLWorker-")}

    before = ranks()
    assert {n.rsplit("-", 1)[1] for n in before} >= {"rank0", "rank1"}
    victim = next(n for n in before if n.endswith("rank1"))
    namespace = next(a["namespace"] for a in ray.util.list_named_actors(all_namespaces=True) if a["name"] == victim)
    ray.kill(ray.get_actor(victim, namespace=namespace))
    started = time.monotonic()
    r = client.post("/parallel-sdxl", json=REQ)
    assert r.status_code == 503, r.text  # fails fast, not a hang
    assert time.monotonic() - started < 30
    deadline = time.monotonic() + 120  # check_health fails, Serve replaces the replica and its ranks
    while time.monotonic() < deadline:
        r = client.post("/parallel-sdxl", json=REQ)
        if r.status_code == 200:
            break
        time.sleep(1)
    assert r.status_code == 200, r.text
    assert victim not in ranks()


def test_bad_sizes_are_422(client: httpx.Client) -> None:
    r = client.post("/parallel-sdxl", json={**REQ, "width": 100})
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "width"]
