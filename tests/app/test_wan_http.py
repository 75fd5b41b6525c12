"""Wan and any-llm from configs/dev.yaml over HTTP (tiny presets on CPU: 160x96 and 96x160 videos of
81 frames), plus a second application with a Wan on two gloo ranks (Ulysses-2) whose LLM calls fail
(it names a model the any-llm service does not serve): safety fails closed, expansion fails open,
and the two-rank video equals the one-process video."""

from __future__ import annotations

import base64
import io
import json
from collections.abc import Iterator
from typing import Any

import httpx
import numpy as np
import pytest

from deployments.wan.prompts import EXPANSION_SYSTEM_PROMPT, NSFW_MESSAGE, SAFETY_SYSTEM_PROMPT
from tests.app.conftest import load_dev_app

WAN = "/wan/v2.1/1.3b/text-to-video"
RANKS_PREFIX = "/w2"
REQ = {"prompt": "a photo of a cat", "inference_steps": 2, "seed": 3}


def sse_events(response: httpx.Response) -> list[dict[str, Any]]:
    return [json.loads(line[len("data: "):]) for line in response.iter_lines() if line.startswith("data: ")]


def download(client: httpx.Client, url: str) -> bytes:
    if url.startswith("data:"):
        return base64.b64decode(url.split(",", 1)[1])
    r = client.get(url)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "video/mp4"
    return r.content


def decode(data: bytes) -> tuple[Any, np.ndarray]:
    import av

    container = av.open(io.BytesIO(data))
    stream = container.streams.video[0]
    return stream, np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])


@pytest.fixture(scope="module")
def ranks_app(serve_url: str) -> Iterator[str]:
    """Wan as in dev.yaml, but on two gloo ranks (Ulysses-2), asking the dev app's any-llm for a model
    it does not serve: every LLM call fails with a 422."""
    from ray import serve

    from serve_app.app import build_app

    dev = load_dev_app()
    config = {**dev["args"]["services"]["wan"]["config"], "world_size": 2, "warmup_steps": 0,
              "resources": {"use_gpu": False, "num_cpus_per_rank": 0.05, "replica_num_cpus": 0.05, "stop_grace_s": 3},
              "llm": {"app": dev["name"], "service": "any-llm", "model": "not-served", "safety_timeout_s": 20}}
    args = {"ingress": {"storage": {"kind": "data_url"}},
            "ingress_deployment": {"ray_actor_options": {"num_cpus": 0.05}},
            "services": {"wan": {"module": "deployments.wan", "config": config}}}
    serve.run(build_app(args), name="wan_ranks", route_prefix=RANKS_PREFIX)
    yield f"{serve_url}{RANKS_PREFIX}"
    serve.delete("wan_ranks")


def test_wan_returns_an_81_frame_h264_mp4_at_the_dev_size(client: httpx.Client) -> None:
    r = client.post(WAN, json=REQ)
    assert r.status_code == 200, r.text
    body = r.json()
    assert set(body) == {"video", "seed", "prompt"} and body["seed"] == 3 and body["prompt"] is None
    video = body["video"]
    assert (video["width"], video["height"], video["fps"], video["num_frames"]) == (160, 96, 16, 81)
    assert video["content_type"] == "video/mp4" and video["duration"] == pytest.approx(81 / 16)
    data = download(client, video["url"])
    assert len(data) == video["file_size"]
    stream, frames = decode(data)
    assert stream.codec_context.name == "h264" and stream.codec_context.pix_fmt == "yuv420p"
    assert stream.average_rate == 16 and frames.shape == (81, 96, 160, 3)
    assert r.headers["x-fal-billable-units"] == "1"
    portrait = client.post(WAN, json={**REQ, "aspect_ratio": "9:16"}).json()["video"]
    assert (portrait["width"], portrait["height"]) == (96, 160)


def test_stream_sends_a_progress_frame_per_step_then_the_output(client: httpx.Client) -> None:
    with client.stream("POST", f"{WAN}/stream", json={**REQ, "inference_steps": 3}) as r:
        assert r.status_code == 200
        events = sse_events(r)
    assert [(e["step"], e["total"]) for e in events if e.get("type") == "progress"] == [(1, 3), (2, 3), (3, 3)]
    assert "type" not in events[-1] and events[-1]["video"]["num_frames"] == 81


@pytest.mark.parametrize(("patch", "field"), [({"aspect_ratio": "1:1"}, "aspect_ratio"),
                                              ({"inference_steps": 41}, "inference_steps"),
                                              ({"sampler": "euler"}, "sampler"), ({"prompt": None}, "prompt")])
def test_bad_fields_are_422s_naming_the_field(client: httpx.Client, patch: dict[str, Any], field: str) -> None:
    r = client.post(WAN, json={**REQ, **patch})
    assert r.status_code == 422, r.text
    assert r.json()["detail"][0]["loc"][:2] == ["body", field] and r.headers["x-fal-billable-units"] == "0"


def test_any_llm_answers_streams_and_rejects_unknown_models(client: httpx.Client) -> None:
    req = {"prompt": "a dog in the park", "system_prompt": "Describe it.", "max_tokens": 24}
    a, b = client.post("/any-llm", json=req), client.post("/any-llm", json=req)
    assert a.status_code == 200, a.text
    assert a.json() == b.json() and a.json()["partial"] is False and a.json()["error"] is None
    assert a.json()["output"]
    with client.stream("POST", "/any-llm/stream", json=req) as r:
        assert r.status_code == 200
        events = sse_events(r)
    tokens = [e for e in events if e.get("type") == "token"]
    assert tokens and "".join(t["token"] for t in tokens) == a.json()["output"] == events[-1]["output"]
    r = client.post("/any-llm", json={**req, "model": "google/gemini-flash-1.5"})
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "model"]


def ask(client: httpx.Client, prompt: str, system_prompt: str, max_tokens: int) -> str:
    r = client.post("/any-llm", json={"prompt": prompt, "system_prompt": system_prompt, "max_tokens": max_tokens})
    assert r.status_code == 200, r.text
    return str(r.json()["output"])


def test_expansion_and_safety_follow_the_tiny_llm(client: httpx.Client) -> None:
    """The tiny LLM writes gibberish, deterministically: Wan must use exactly what it answers."""
    settings = {"expansion_max_tokens": 256, "safety_max_tokens": 8,
                **load_dev_app()["args"]["services"]["wan"]["config"].get("llm", {})}
    expanded = ask(client, REQ["prompt"], EXPANSION_SYSTEM_PROMPT, settings["expansion_max_tokens"]).strip()
    r = client.post(WAN, json={**REQ, "enable_prompt_expansion": True})
    assert r.status_code == 200, r.text
    assert r.json()["prompt"] == (expanded if expanded and expanded != REQ["prompt"] else None)
    unsafe = "yes" in ask(client, REQ["prompt"], SAFETY_SYSTEM_PROMPT, settings["safety_max_tokens"]).lower()
    r = client.post(WAN, json={**REQ, "enable_safety_checker": True})
    assert r.status_code == (422 if unsafe else 200), r.text


def test_with_a_failing_llm_safety_fails_closed_and_expansion_fails_open(client: httpx.Client,
                                                                        ranks_app: str) -> None:
    r = client.post(f"{ranks_app}{WAN}", json={**REQ, "enable_safety_checker": True})
    assert r.status_code == 422, r.text
    assert r.json()["detail"] == [{"loc": ["body", "prompt"], "msg": NSFW_MESSAGE, "type": "value_error"}]
    r = client.post(f"{ranks_app}{WAN}", json={**REQ, "enable_prompt_expansion": True})
    assert r.status_code == 200, r.text
    assert r.json()["prompt"] is None


def test_two_ulysses_ranks_over_gloo_make_the_one_process_video(client: httpx.Client, ranks_app: str) -> None:
    single = client.post(WAN, json=REQ).json()
    with client.stream("POST", f"{ranks_app}{WAN}/stream", json=REQ) as r:
        assert r.status_code == 200
        events = sse_events(r)
    assert [e["step"] for e in events if e.get("type") == "progress"] == [1, 2]
    split = events[-1]
    assert split["video"]["num_frames"] == 81 and split["seed"] == 3
    _, a = decode(download(client, single["video"]["url"]))
    _, b = decode(download(client, split["video"]["url"]))
    assert a.shape == b.shape == (81, 96, 160, 3)
    assert np.array_equal(a, b)
