"""/flux-preprocess from configs/dev.yaml: two gloo ranks on CPU, tiny Flux encoders and tiny BLIP.

ZIPs arrive as data: URLs or as `POST /files` uploads; the output file downloads and decodes with
the trainer's reader (`decode_preprocessed`); the trainer's handle call works too.
"""

from __future__ import annotations

import base64
import io
import json
import zipfile

import httpx
from PIL import Image

from deployments.flux_lora.data import decode_preprocessed
from deployments.flux_lora.preprocess import PreprocessInput, PreprocessOutput

RES = 256


def image_bytes(color: tuple[int, int, int], size: tuple[int, int], fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, format=fmt)
    return buf.getvalue()


def make_zip(members: dict[str, bytes | str]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buf.getvalue()


def data_url(data: bytes) -> str:
    return "data:application/zip;base64," + base64.b64encode(data).decode()


DATASET = make_zip({
    "photos/cat.png": image_bytes((200, 10, 10), (320, 240)),
    "photos/cat.txt": "a red cat on a sofa\n",
    "photos/nested/dog.jpg": image_bytes((10, 200, 10), (200, 300), "JPEG"),
    "z.webp": image_bytes((10, 10, 200), (100, 100), "WEBP"),
    "__MACOSX/photos/._cat.png": b"junk",
    "photos/.DS_Store": b"junk",
    "readme.md": "not an image",
})


def download(client: httpx.Client, body: dict) -> bytes:  # type: ignore[type-arg]
    r = client.get(body["preprocessed_data"]["url"])
    assert r.status_code == 200
    assert len(r.content) == body["preprocessed_data"]["file_size"]
    return r.content


def test_a_zip_as_a_data_url(client: httpx.Client) -> None:
    r = client.post("/flux-preprocess", json={"images_data_url": data_url(DATASET), "trigger_word": "sks",
                                              "resolution": RES})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["num_images"] == 3 and body["message"] == "Preprocessed 3 images with trigger word 'sks'"
    assert body["preprocessed_data"]["file_name"] == "preprocessed.safetensors"
    data = decode_preprocessed(download(client, body))
    assert data.num_images == 3 and data.resolution == RES and data.trigger_word == "sks"
    assert data.captions[0] == "sks a red cat on a sofa"  # photos/cat.png, its sidecar
    assert all(c.startswith("sks ") for c in data.captions)  # the other two: BLIP's (random) words
    assert data.latents.shape == (3, 4, RES // 8, RES // 8)
    assert data.text_embeddings.shape[:2] == (3, 512) and data.pooled_embeddings.shape[0] == 3


def test_one_image_on_two_ranks_and_the_stream(client: httpx.Client) -> None:
    one = make_zip({"only.png": image_bytes((1, 2, 3), (64, 64)), "only.txt": "a dot"})
    with client.stream("POST", "/flux-preprocess/stream",
                       json={"images_data_url": data_url(one), "resolution": RES}) as r:
        assert r.status_code == 200
        events = [json.loads(x[6:]) for x in r.iter_lines() if x.startswith("data: ")]
    assert [e["type"] for e in events[:-1]] == ["progress"] and events[0]["message"] == "encoding"
    body = events[-1]
    assert body["num_images"] == 1
    data = decode_preprocessed(download(client, body))
    assert data.captions == ["ohwx a dot"] and data.latents.shape == (1, 4, RES // 8, RES // 8)


def test_upload_to_files_then_preprocess_by_url(client: httpx.Client) -> None:
    up = client.post("/files?file_name=dataset.zip", content=DATASET, headers={"content-type": "application/zip"})
    assert up.status_code == 200, up.text
    assert up.json()["file_size"] == len(DATASET)
    r = client.post("/flux-preprocess", json={"images_data_url": up.json()["url"], "resolution": RES})
    assert r.status_code == 200, r.text
    assert r.json()["num_images"] == 3


def test_bad_archives_and_urls_are_422_on_images_data_url(client: httpx.Client) -> None:
    for url in (data_url(b"not a zip"), data_url(make_zip({"a.txt": "no images"})), "ftp://example.com/a.zip",
                data_url(make_zip({"bad.png": b"not a png"}))):
        r = client.post("/flux-preprocess", json={"images_data_url": url, "resolution": RES})
        assert r.status_code == 422, r.text
        assert r.json()["detail"][0]["loc"] == ["body", "images_data_url"]
        assert r.headers["x-fal-billable-units"] == "0"
    r = client.post("/flux-preprocess", json={"images_data_url": data_url(DATASET), "resolution": 100})
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "resolution"]


def test_the_trainers_handle_call(serve_url: str) -> None:
    from ray import serve

    handle = serve.get_deployment_handle("flux-preprocess", "default")
    out = handle.preprocess.remote(PreprocessInput(images_data_url=data_url(DATASET), resolution=RES)).result(
        timeout_s=120)
    assert isinstance(out, PreprocessOutput) and out.num_images == 3
    assert out.preprocessed_data.data is not None  # the bytes travel with the object (no URL outside HTTP)
    assert decode_preprocessed(out.preprocessed_data.data).captions[0] == "ohwx a red cat on a sofa"
