"""Flux LoRA training on Ray: the DDP worker on two gloo ranks, then the service from configs/dev.yaml.

Datasets are synthetic files in the preprocessor's format (`synthetic.py`), or a ZIP of images
through the real `/flux-preprocess` service for `/flux-train`.
"""

from __future__ import annotations

import asyncio
import base64
import importlib.util
import io
import json
import math
import sys
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load

from components import flux as presets
from deployments.flux_lora.lora import CHECKPOINT_NAME
from deployments.flux_lora.synthetic import synthetic_preprocessed
from deployments.flux_lora.train_worker import FluxLoRATrainWorker
from serve_app.distributed import DistributedRunner
from serve_app.events import Partial

ROOT = Path(__file__).resolve().parents[2]
TINY = presets.TINY["transformer"]


def data_url(data: bytes, content_type: str = "application/octet-stream") -> str:
    return f"data:{content_type};base64," + base64.b64encode(data).decode()


@pytest.fixture(scope="module")
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    loop = asyncio.new_event_loop()
    yield loop
    loop.close()


@pytest.fixture(scope="module")
def runner(ray_cluster: None, loop: asyncio.AbstractEventLoop) -> Iterator[DistributedRunner]:
    runner = DistributedRunner(FluxLoRATrainWorker, 2, use_gpu=False, num_cpus_per_rank=0.1, stop_grace_s=3.0)
    loop.run_until_complete(runner.start(timeout=120, model={"preset": "tiny"}, warmup_resolution=64))
    yield runner
    loop.run_until_complete(runner.stop())


SMALL = synthetic_preprocessed(TINY, 8, 64)


def test_ddp_keeps_the_ranks_identical_on_disjoint_batches(runner: DistributedRunner,
                                                            loop: asyncio.AbstractEventLoop) -> None:
    payload = {"training_data": SMALL, "steps": 6, "batch_size": 2, "learning_rate": 1e-2, "debug": True}
    result = loop.run_until_complete(runner.invoke(payload, timeout=120))
    ranks = result["debug"]
    assert [r["rank"] for r in ranks] == [0, 1]
    assert ranks[0]["digest"] == ranks[1]["digest"]  # bit-identical adapters after 6 all-reduced steps
    assert not set(ranks[0]["first_indices"]) & set(ranks[1]["first_indices"])
    assert result["num_steps"] == 6 and result["num_images"] == 8
    assert math.isfinite(result["final_loss"]) and result["checkpoint"][:8]  # safetensors bytes
    again = loop.run_until_complete(runner.invoke(payload, timeout=120))  # a job starts from a fresh adapter
    assert again["debug"][0]["digest"] == ranks[0]["digest"]
    first, second = load(result["checkpoint"]), load(again["checkpoint"])  # (metadata key order varies)
    assert first.keys() == second.keys() and all(torch.equal(first[k], second[k]) for k in first)


def test_stream_reports_every_few_steps(runner: DistributedRunner, loop: asyncio.AbstractEventLoop) -> None:
    async def collect() -> list[Any]:
        return [x async for x in runner.stream({"training_data": SMALL, "steps": 7, "batch_size": 2,
                                                "stream_every": 3}, timeout=120)]

    items = loop.run_until_complete(collect())
    assert all(isinstance(i, Partial) and i.kind == "training" for i in items[:-1])  # typed events, rank 0's
    assert [i.data.step for i in items[:-1]] == [1, 3, 6, 7]
    assert items[1].data.progress == "3/7"
    assert set(items[1].to_json()) == {"type", "step", "loss", "avg_loss", "learning_rate", "progress"}
    assert items[-1]["num_steps"] == 7 and "checkpoint" in items[-1]


def test_cancel_mid_training_leaves_the_runner_usable(runner: DistributedRunner,
                                                      loop: asyncio.AbstractEventLoop) -> None:
    async def scenario() -> None:
        stream = runner.stream({"training_data": SMALL, "steps": 100000, "batch_size": 2, "stream_every": 1})
        first = await stream.__anext__()
        assert first.data.step == 1
        await stream.aclose()  # the caller went away: every rank stops at its next step
        assert runner.is_alive()
        task = asyncio.ensure_future(runner.invoke({"training_data": SMALL, "steps": 100000, "batch_size": 2}))
        await asyncio.sleep(1.0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert runner.is_alive()
        done = await runner.invoke({"training_data": SMALL, "steps": 2, "batch_size": 2, "debug": True}, timeout=60)
        assert done["num_steps"] == 2 and done["debug"][0]["digest"] == done["debug"][1]["digest"]

    loop.run_until_complete(scenario())


def test_a_file_for_another_model_is_a_field_error(runner: DistributedRunner, loop: asyncio.AbstractEventLoop) -> None:
    from serve_app.errors import FieldError

    other = synthetic_preprocessed({**TINY, "joint_attention_dim": 48}, 2, 64)
    with pytest.raises(FieldError, match="text embedding width 48, expected 32") as e:
        loop.run_until_complete(runner.invoke({"training_data": other, "steps": 1}, timeout=60))
    assert e.value.field == "training_data_url"
    assert runner.is_alive()


def test_the_benchmark_runs_on_cpu(ray_cluster: None) -> None:
    spec = importlib.util.spec_from_file_location("flux_lora_scaling", ROOT / "bench" / "flux_lora_scaling.py")
    assert spec is not None and spec.loader is not None
    bench = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("flux_lora_scaling", bench)
    spec.loader.exec_module(bench)
    args = bench.parse_args(["--preset", "tiny", "--device", "cpu", "--resolution", "64", "--steps", "2",
                             "--warmup-steps", "1", "--batch-size", "2", "--world-sizes", "1", "2",
                             "--num-cpus-per-rank", "0.1"])
    data = bench.dataset(args)
    rows = [asyncio.run(bench.measure(ws, args, data)) for ws in args.world_sizes]
    table = bench.report(rows, args, "CPU (gloo)")
    assert rows[1].samples_per_s > 0 and "efficiency" in table and len(table.splitlines()) == 4


# ----------------------------------------------------------------------------- HTTP, configs/dev.yaml
RES = 256


def tiny_pipeline_output(checkpoint: bytes | None, tmp_path: Path) -> Any:
    torch.manual_seed(0)
    pipe = presets.build_pipeline("tiny", "cpu", torch.float32)
    if checkpoint is not None:
        (tmp_path / CHECKPOINT_NAME).write_bytes(checkpoint)
        pipe.load_lora_weights(str(tmp_path), weight_name=CHECKPOINT_NAME, adapter_name="trained")
    return pipe("a photo of ohwx", height=64, width=64, num_inference_steps=2, max_sequence_length=16,
                generator=torch.Generator().manual_seed(1), output_type="np").images


def stream_events(client: httpx.Client, path: str, body: dict[str, Any]) -> list[dict[str, Any]]:
    with client.stream("POST", path, json=body, timeout=300) as r:
        assert r.status_code == 200, r.read()
        return [json.loads(x[6:]) for x in r.iter_lines() if x.startswith("data: ")]


def test_train_from_preprocessed_streams_and_returns_a_loadable_lora(client: httpx.Client, tmp_path: Path) -> None:
    body = {"training_data_url": data_url(synthetic_preprocessed(TINY, 8, RES)), "steps": 100, "batch_size": 2,
            "learning_rate": 1e-2}
    events = stream_events(client, "/flux-train-from-preprocessed/stream", body)
    training = [e for e in events[:-1] if e["type"] == "training"]
    steps = [e["step"] for e in training]
    assert steps[0] == 1 and steps[-1] == 100 and max(np.diff(steps)) <= 10
    assert training[-1]["progress"] == "100/100" and training[-1]["learning_rate"] == pytest.approx(1e-2 * 0.01)
    out = events[-1]
    assert out["num_steps"] == 100 and math.isfinite(out["final_loss"]) and "100 steps on 8 images" in out["message"]
    assert out["checkpoint"]["file_name"] == CHECKPOINT_NAME
    r = client.get(out["checkpoint"]["url"])
    assert r.status_code == 200 and len(r.content) == out["checkpoint"]["file_size"]
    base = tiny_pipeline_output(None, tmp_path)
    assert np.abs(tiny_pipeline_output(r.content, tmp_path) - base).max() > 1e-3


def test_bad_training_inputs_are_422(client: httpx.Client) -> None:
    r = client.post("/flux-train-from-preprocessed", json={"training_data_url": data_url(b"not safetensors")})
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "training_data_url"]
    other = synthetic_preprocessed({**TINY, "in_channels": 64}, 2, RES)  # 16 latent channels: FLUX.1-dev's
    r = client.post("/flux-train-from-preprocessed", json={"training_data_url": data_url(other)})
    assert r.status_code == 422 and "latent channels" in r.json()["detail"][0]["msg"]
    r = client.post("/flux-train", json={"images_data_url": data_url(b"not a zip", "application/zip")})
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "images_data_url"], r.text
    for field, value in (("steps", 99), ("resolution", 100), ("lr_scheduler", "sometimes")):
        r = client.post("/flux-train", json={"images_data_url": "data:,", field: value})
        assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", field], r.text


def test_a_disconnected_stream_cancels_the_job(client: httpx.Client) -> None:
    body = {"training_data_url": data_url(synthetic_preprocessed(TINY, 2, RES)), "steps": 10000, "batch_size": 1}
    with client.stream("POST", "/flux-train-from-preprocessed/stream", json=body) as r:
        assert r.status_code == 200
        for line in r.iter_lines():
            if line.startswith("data: ") and json.loads(line[6:]).get("type") == "training":
                break  # leave after the first status: the job must stop, not run 10,000 steps
    r = client.post("/flux-train-from-preprocessed", json={**body, "steps": 100}, timeout=120)
    assert r.status_code == 200, r.text


def image_zip() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for i, color in enumerate([(200, 10, 10), (10, 200, 10), (10, 10, 200)]):
            im = io.BytesIO()
            Image.new("RGB", (96, 80), color).save(im, format="PNG")
            zf.writestr(f"img{i}.png", im.getvalue())
            zf.writestr(f"img{i}.txt", f"a plain square number {i}")
    return buf.getvalue()


def test_flux_train_preprocesses_then_trains(client: httpx.Client, tmp_path: Path) -> None:
    body = {"images_data_url": data_url(image_zip(), "application/zip"), "trigger_word": "sks", "steps": 100,
            "resolution": RES, "batch_size": 2}
    events = stream_events(client, "/flux-train/stream", body)
    kinds = [e.get("type") for e in events[:-1]]
    preprocessed = next(e for e in events if e.get("type") == "preprocessing")
    assert preprocessed["num_images"] == 3 and "sks" in preprocessed["message"]
    assert kinds.index("preprocessing") < kinds.index("training") and kinds.count("training") >= 11
    out = events[-1]
    assert out["num_steps"] == 100 and "on 3 images" in out["message"]
    assert out["loras"] == [{"path": out["checkpoint"]["url"], "scale": 1.0}]  # ready for /flux-lora
    r = client.get(out["checkpoint"]["url"])
    assert r.status_code == 200
    assert np.abs(tiny_pipeline_output(r.content, tmp_path) - tiny_pipeline_output(None, tmp_path)).max() > 1e-3


def test_long_jobs_through_the_queue(client: httpx.Client) -> None:
    body = {"training_data_url": data_url(synthetic_preprocessed(TINY, 4, RES)), "steps": 100, "batch_size": 2}
    submitted = client.post("/queue/flux-train-from-preprocessed", json=body)
    assert submitted.status_code == 200, submitted.text
    with client.stream("GET", submitted.json()["status_url"] + "/stream", timeout=300) as r:
        frames = [json.loads(x[6:]) for x in r.iter_lines() if x.startswith("data: ")]
    assert frames[-1]["status"] == "COMPLETED" and frames[-1].get("error") is None
    steps = [f["event"]["step"] for f in frames if f.get("event", {}).get("type") == "training"]
    assert steps[-1] == 100
    out = client.get(submitted.json()["response_url"]).json()
    assert out["num_steps"] == 100 and client.get(out["checkpoint"]["url"]).status_code == 200
