"""The dev.yaml application over HTTP: Sana sync, stream, errors and file downloads."""

from __future__ import annotations

import io
import json
from typing import Any

import httpx
from PIL import Image


def sse_events(response: httpx.Response) -> list[dict[str, Any]]:
    return [json.loads(line[len("data: "):]) for line in response.iter_lines() if line.startswith("data: ")]


def download_image(client: httpx.Client, url: str) -> tuple[Image.Image, httpx.Response]:
    r = client.get(url)
    assert r.status_code == 200, r.text
    return Image.open(io.BytesIO(r.content)), r


def test_sana_square_returns_a_downloadable_512_jpeg(client: httpx.Client) -> None:
    r = client.post("/sana", json={"prompt": "a photo of a cat", "image_size": "square", "num_inference_steps": 2})
    assert r.status_code == 200, r.text
    body = r.json()
    assert set(body) == {"images", "seed", "has_nsfw_concepts", "prompt"}
    assert body["prompt"] == "a photo of a cat" and body["has_nsfw_concepts"] == [False]
    (image,) = body["images"]
    assert (image["width"], image["height"], image["content_type"]) == (512, 512, "image/jpeg")
    pil, download = download_image(client, image["url"])
    assert pil.format == "JPEG" and pil.size == (512, 512)
    assert download.headers["content-type"] == "image/jpeg"
    assert int(image["file_size"]) == len(download.content)
    assert r.headers["x-fal-billable-units"] == "1"
    assert r.headers["x-fal-request-id"] == r.headers["x-request-id"]


def test_sprint_png_with_non_default_steps(client: httpx.Client) -> None:
    r = client.post("/sana/sprint", json={"prompt": "a dog in the park", "image_size": {"width": 640, "height": 480},
                                          "num_inference_steps": 4, "output_format": "png", "num_images": 2,
                                          "seed": 0})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["seed"] == 0  # 0 is a real seed, not "random"
    assert len(body["images"]) == 2
    for image in body["images"]:
        pil, _ = download_image(client, image["url"])
        assert pil.format == "PNG" and pil.size == (640, 480)
    assert r.headers["x-fal-billable-units"] == "2"


def test_same_seed_same_image_and_random_seed_is_returned(client: httpx.Client) -> None:
    req = {"prompt": "a red apple", "image_size": "square", "num_inference_steps": 2, "seed": 1234,
           "output_format": "png"}
    a = client.post("/sana", json=req).json()
    b = client.post("/sana", json=req).json()
    pixels = [download_image(client, x["images"][0]["url"])[0].tobytes() for x in (a, b)]
    assert pixels[0] == pixels[1]
    c = client.post("/sana", json={**req, "seed": None}).json()
    assert isinstance(c["seed"], int) and c["seed"] >= 0


def test_stream_sends_progress_then_the_output(client: httpx.Client) -> None:
    with client.stream("POST", "/sana/stream", json={"prompt": "a photo of a cat", "image_size": "square",
                                                     "num_inference_steps": 3}) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        assert r.headers["cache-control"] == "no-cache" and r.headers["x-accel-buffering"] == "no"
        events = sse_events(r)
    progress = [e for e in events if e.get("type") == "progress"]
    assert [e["step"] for e in progress] == [1, 2, 3] and progress[-1]["progress"] == 1.0
    final = events[-1]
    assert "type" not in final and final["images"][0]["width"] == 512
    pil, _ = download_image(client, final["images"][0]["url"])
    assert pil.size == (512, 512)


def test_field_errors_are_422_naming_the_field(client: httpx.Client) -> None:
    cases = [({"num_images": 9}, "num_images"), ({"image_size": "huge"}, "image_size"),
             ({"num_inference_steps": 0}, "num_inference_steps"), ({"guidance_scale": 21}, "guidance_scale"),
             ({"image_size": {"width": 0, "height": 512}}, "image_size"), ({"prompt": None}, "prompt")]
    for patch, field in cases:
        for path in ("/sana", "/sana/stream"):
            r = client.post(path, json={"prompt": "a cat", **patch})
            assert r.status_code == 422, (patch, r.text)
            detail = r.json()["detail"]
            assert any(d["loc"][:2] == ["body", field] for d in detail), detail
            assert all({"loc", "msg", "type"} <= set(d) for d in detail)
            assert r.headers["x-fal-billable-units"] == "0"
    r = client.post("/sana/sprint", json={"prompt": "a cat", "num_inference_steps": 21})
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "num_inference_steps"]
    r = client.post("/sana", content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 422
    # the service keeps answering afterwards
    assert client.post("/sana", json={"prompt": "a cat", "image_size": "square",
                                      "num_inference_steps": 1}).status_code == 200


def test_unknown_path_is_json_404(client: httpx.Client) -> None:
    r = client.post("/nope", json={})
    assert r.status_code == 404
    assert r.json() == {"detail": "Path /nope not found"}
    assert r.headers["x-fal-billable-units"] == "0"
    assert client.get("/files/0123456789abcdef0123456789abcdef.jpg").status_code == 404
    assert client.get("/files/..%2Fetc%2Fpasswd").status_code == 404


def test_docs_cover_every_endpoint_with_fal_fields(client: httpx.Client) -> None:
    assert client.get("/docs").status_code == 200
    spec = client.get("/openapi.json").json()
    for path in ("/sana", "/sana/stream", "/sana/sprint", "/sana/sprint/stream", "/health", "/ready"):
        assert path in spec["paths"], path
    schemas = spec["components"]["schemas"]
    base, sprint = schemas["TextToImageInput"]["properties"], schemas["SprintInput"]["properties"]
    assert base["num_inference_steps"]["default"] == 18 and base["num_inference_steps"]["maximum"] == 50
    assert sprint["num_inference_steps"]["default"] == 2 and sprint["num_inference_steps"]["maximum"] == 20
    assert base["num_images"]["maximum"] == 4 and base["guidance_scale"]["maximum"] == 20
    assert base["image_size"]["default"] == {"width": 3840, "height": 2160}
    assert base["output_format"]["enum"] == ["jpeg", "png"] or "anyOf" not in base["output_format"]
    assert set(schemas["SanaOutput"]["properties"]) == {"images", "seed", "has_nsfw_concepts", "prompt"}


def test_health_and_ready(client: httpx.Client) -> None:
    assert client.get("/health").json() == {"status": "ok"}
    r = client.get("/ready")
    assert r.status_code == 200, r.text
    assert r.json()["status"] == "ready" and "sana" in r.json()["services"]
