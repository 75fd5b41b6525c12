"""Output file models, ImageSize presets, and the error vocabulary's HTTP mapping."""

from __future__ import annotations

import io
import pickle

import pytest
from PIL import Image as PILImage
from pydantic import BaseModel, ValidationError

from serve_app.errors import FieldError, RequestCancelled, ServiceError, to_http, unwrap_remote_error
from serve_app.io import IMAGE_SIZE_PRESETS, File, Image, ImageSize, ImageSizeDims, resolve_image_size


class SizeHolder(BaseModel):
    image_size: ImageSize = ImageSizeDims(width=3840, height=2160)


def test_presets_match_fal() -> None:
    assert IMAGE_SIZE_PRESETS == {
        "square_hd": (1024, 1024), "square": (512, 512), "portrait_4_3": (768, 1024),
        "portrait_16_9": (576, 1024), "landscape_4_3": (1024, 768), "landscape_16_9": (1024, 576),
    }
    assert resolve_image_size(SizeHolder(image_size="portrait_16_9").image_size) == (576, 1024)
    assert resolve_image_size(SizeHolder().image_size) == (3840, 2160)
    assert resolve_image_size(SizeHolder.model_validate({"image_size": {"width": 7, "height": 9}}).image_size) == (7, 9)


@pytest.mark.parametrize("bad", ["huge", {"width": 0, "height": 5}, {"width": 14143, "height": 5},
                                 {"width": 5, "height": 5, "depth": 1}])
def test_bad_image_sizes_are_rejected(bad: object) -> None:
    with pytest.raises(ValidationError) as e:
        SizeHolder.model_validate({"image_size": bad})
    status, detail = to_http(e.value)
    assert status == 422 and all(d["loc"][:2] == ["body", "image_size"] for d in detail)


@pytest.mark.parametrize("fmt,content_type,pil_format", [("jpeg", "image/jpeg", "JPEG"), ("png", "image/png", "PNG")])
def test_image_from_pil(fmt: str, content_type: str, pil_format: str) -> None:
    image = Image.from_pil(PILImage.new("RGB", (40, 30), (200, 10, 10)), fmt)  # type: ignore[arg-type]
    assert (image.width, image.height, image.content_type) == (40, 30, content_type)
    assert image.data is not None and image.file_size == len(image.data)
    assert PILImage.open(io.BytesIO(image.data)).format == pil_format
    wire = image.model_dump(mode="json")
    assert set(wire) == {"url", "content_type", "file_name", "file_size", "width", "height"}
    restored = pickle.loads(pickle.dumps(image))  # crosses Ray with its bytes
    assert restored.data == image.data
    image.mark_stored("http://x/files/a.jpg")
    assert image.url == "http://x/files/a.jpg" and image.data is None


def test_file_from_bytes_names_the_file() -> None:
    f = File.from_bytes(b"abc", "audio/wav")
    assert f.file_name and f.file_name.endswith(".wav") and f.file_size == 3


def test_field_error_shape_survives_pickling() -> None:
    err = pickle.loads(pickle.dumps(FieldError("num_inference_steps", "must be 2", type="value_error")))
    assert to_http(err) == (422, [{"loc": ["body", "num_inference_steps"], "msg": "must be 2", "type": "value_error"}])
    assert to_http(RequestCancelled()) == (499, "Request cancelled by the client.")


def test_unknown_errors_leak_nothing() -> None:
    assert to_http(RuntimeError("db password is hunter2")) == (500, "Internal Server Error")
    assert to_http(ServiceError("boom"))[0] == 500
    assert to_http(TimeoutError())[0] == 504


def test_unwrap_remote_error() -> None:
    class Wrapper(Exception):
        def __init__(self, cause: BaseException) -> None:
            super().__init__(str(cause))
            self.cause = cause

    inner = FieldError("prompt", "empty")
    assert unwrap_remote_error(Wrapper(inner)) is inner
    assert to_http(Wrapper(inner))[0] == 422
