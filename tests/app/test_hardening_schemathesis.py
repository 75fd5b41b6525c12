"""21.12: schemathesis over the dev app's OpenAPI: no 5xx, no response outside the documented
statuses and schemas. Bounded: a few examples per operation, costly fields (sizes, steps, counts)
clamped, or set when a body leaves them to their defaults, so tiny CPU models answer in seconds;
URL fields pointed at one of the app's own files; services that train, render video or call fal's
hosted API left out. Loopback only."""

from __future__ import annotations

import io
import zipfile
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)

# Long-running or external by design: training (minutes on CPU), video and songs, the fal proxy,
# WebRTC pages; and the docs pages themselves.
EXCLUDED = r"^/(queue/)?(flux-train|wan|diffrhythm|any-llm|hunyuan3d|yolo|matrix|docs|redoc|playground)"
CLAMPS = {"width": 128, "height": 128, "num_inference_steps": 2, "num_images": 1, "steps": 2, "resolution": 256,
          "octree_resolution": 16, "max_tokens": 8}
OWN_FILE: dict[str, str] = {}

def costly_defaults(operation: Any) -> dict[str, Any]:
    """Cheap values for the costly fields of an operation's body, to add where a generated body
    leaves them out: their defaults are the published models' (Sana's 3840x2160, SDXL's 1024² at
    20 steps), which cost tiny CPU models seconds to tens of seconds per example."""
    fields: set[str] = set()
    for body in operation.body:
        fields |= set((body.resolved_schema or {}).get("properties", {}))
    cheap = {name: value for name, value in CLAMPS.items() if name in fields}
    if "image_size" in fields:
        cheap["image_size"] = "square"
    return cheap


def clamp(value: Any) -> Any:
    """Costly numbers down to cheap ones; every `*_url` string to one of the app's own files."""
    if isinstance(value, dict):
        out = {}
        for name, item in value.items():
            if name in CLAMPS and isinstance(item, (int, float)) and not isinstance(item, bool) and item > CLAMPS[name]:
                item = CLAMPS[name]
            elif name == "image_size" and isinstance(item, dict):
                item = "square"
            elif name.endswith("_url") and isinstance(item, str) and OWN_FILE:
                item = OWN_FILE["url"]
            out[name] = clamp(item)
        return out
    if isinstance(value, list):
        return [clamp(v) for v in value]
    return value


@pytest.fixture(scope="module")
def dev_openapi(serve_url: str) -> Any:
    from PIL import Image

    png = io.BytesIO()
    Image.new("RGB", (16, 16), (200, 10, 10)).save(png, format="PNG")
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as z:
        z.writestr("a.png", png.getvalue())
    up = httpx.post(f"{serve_url}/files", params={"file_name": "data.zip"}, content=archive.getvalue(),
                    headers={"content-type": "application/zip"}, timeout=60)
    OWN_FILE["url"] = up.json()["url"]
    loaded = schemathesis.openapi.from_url(f"{serve_url}/openapi.json")
    return loaded.exclude(path_regex=EXCLUDED)


CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]
# SSE bodies: schemathesis 4 validates each event object ({"data": "<json text>", "event": ...})
# against the stream's item schema, which describes the decoded `data`; until the stream schemas
# say that (OpenAPI 3.2 `itemSchema` with a `contentSchema`), streams are held to status and 5xx.
STREAM_CHECKS = [not_a_server_error, status_code_conformance]


def test_the_dev_app_honours_its_openapi(dev_openapi: Any, serve_url: str) -> None:
    failures: list[str] = []
    operations = [result.ok() for result in dev_openapi.get_all_operations()]
    assert len(operations) > 20  # every service's sync, stream and queue routes, files, ops

    cheap = {operation.label: costly_defaults(operation) for operation in operations}
    for operation in operations:

        @settings(max_examples=3, deadline=None, derandomize=True, database=None,
                  phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck))
        @given(case=operation.as_strategy())
        def run(case: Any) -> None:
            if isinstance(case.body, dict):
                case.body = {**cheap[case.operation.label], **case.body}
            if isinstance(case.body, (dict, list)):
                case.body = clamp(case.body)
            checks = STREAM_CHECKS if case.operation.path.endswith("/stream") else CHECKS
            case.call_and_validate(base_url=serve_url, timeout=300, checks=checks)

        try:
            run()
        except (KeyboardInterrupt, SystemExit):
            raise
        except BaseException as e:  # one line per failing operation, all reported at once
            failures.append(f"{operation.label}: {type(e).__name__}: {str(e)[:600]}")
    assert not failures, "\n".join(failures)
