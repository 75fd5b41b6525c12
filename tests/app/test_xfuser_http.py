"""The xFuser service from configs/dev.yaml: its CPU stand-in (plain diffusers on two gloo ranks).

What runs here is the service's real plumbing: the placement group, the ranks, every request on
every rank, the image sent from the last rank (where xfuser decodes) to rank 0, the progress
stream, and the request checks. xfuser itself needs GPUs: tests/gpu/test_xfuser_parity_gpu.py.
"""

from __future__ import annotations

import io
import json

import httpx
import numpy as np
from PIL import Image

REQ = {"prompt": "a photo of a cat", "negative_prompt": "blurry", "height": 128, "width": 192,
       "num_inference_steps": 2, "seed": 11, "output_format": "png"}


def image_of(client: httpx.Client, body: dict) -> Image.Image:  # type: ignore[type-arg]
    r = client.get(body["images"][0]["url"])
    assert r.status_code == 200
    return Image.open(io.BytesIO(r.content))


def local_reference(request: dict) -> np.ndarray:  # type: ignore[type-arg]
    """The same request through the plain pipeline in this process (one rank, no Ray)."""
    import torch

    from deployments.xfuser.worker import EngineSpec, XFuserWorker, build_pipeline

    worker = XFuserWorker(0, 1)
    worker.device = torch.device("cpu")
    worker.spec = EngineSpec(family="sd3", model={"preset": "tiny"}, backend="diffusers", dtype="float32")
    pipe = build_pipeline(worker.spec, "cpu", torch.float32)
    pipe.set_progress_bar_config(disable=True)
    kwargs = worker.pipeline_kwargs(request["prompt"], request["negative_prompt"], request["num_inference_steps"],
                                    7.0, request["height"], request["width"], request["seed"])
    with torch.inference_mode():
        out = pipe(**kwargs).images[0]
    return (out.float().clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()


def test_image_comes_back_from_the_last_rank_and_matches_plain_diffusers(client: httpx.Client) -> None:
    r = client.post("/xfuser", json=REQ)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["seed"] == 11 and body["prompt"] == REQ["prompt"]
    assert body["parallelism"] == "pipefusion=1 ulysses=1 ring=1 cfg=off"
    assert 0 < body["timings"]["inference"] <= body["timings"]["total"]
    img = image_of(client, body)
    assert img.size == (192, 128) and body["images"][0]["content_type"] == "image/png"
    got = np.asarray(img.convert("RGB"), dtype=np.int16)
    want = local_reference(REQ).astype(np.int16)
    assert np.abs(got - want).max() <= 2  # float32 on CPU in two processes: at most rounding apart
    again = image_of(client, client.post("/xfuser", json=REQ).json())
    assert np.array_equal(np.asarray(again), np.asarray(img))
    other = image_of(client, client.post("/xfuser", json={**REQ, "seed": 12}).json())
    assert not np.array_equal(np.asarray(other), np.asarray(img))


def test_defaults_come_from_the_config_and_the_model(client: httpx.Client) -> None:
    r = client.post("/xfuser", json={"prompt": "a dog in the park", "num_inference_steps": 1})
    assert r.status_code == 200, r.text
    body = r.json()
    assert (body["images"][0]["width"], body["images"][0]["height"]) == (256, 256)
    assert body["images"][0]["content_type"] == "image/jpeg" and isinstance(body["seed"], int)


def test_stream_reports_every_step_then_the_output(client: httpx.Client) -> None:
    with client.stream("POST", "/xfuser/stream", json={**REQ, "num_inference_steps": 3}) as r:
        assert r.status_code == 200
        events = [json.loads(x[6:]) for x in r.iter_lines() if x.startswith("data: ")]
    steps = [(e["step"], e["total"]) for e in events if e.get("type") == "progress"]
    assert steps == [(1, 3), (2, 3), (3, 3)]
    assert events[-1]["images"][0]["width"] == 192


def test_bad_sizes_and_fields_are_422s_naming_the_field(client: httpx.Client) -> None:
    r = client.post("/xfuser", json={**REQ, "height": 120})
    assert r.status_code == 422
    detail = r.json()["detail"][0]
    assert detail["loc"] == ["body", "height"] and "multiple of 16" in detail["msg"]
    r = client.post("/xfuser", json={**REQ, "width": 100})
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "width"]
    r = client.post("/xfuser", json={**REQ, "num_inference_steps": 0})
    assert r.status_code == 422 and r.json()["detail"][0]["loc"][-1] == "num_inference_steps"
    r = client.post("/xfuser", json={"negative_prompt": "x"})
    assert r.status_code == 422 and r.json()["detail"][0]["loc"][-1] == "prompt"
    assert client.post("/xfuser", json=REQ).status_code == 200  # and it keeps serving
