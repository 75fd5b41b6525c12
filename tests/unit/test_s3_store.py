"""The S3-compatible output store against a local S3 server (moto) on loopback."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from serve_app.io import File
from serve_app.storage import S3Storage, S3Store, make_store, materialize
from tests.fakes.s3 import LocalS3, local_s3


@pytest.fixture(scope="module")
def s3() -> Iterator[LocalS3]:
    with local_s3() as server:
        yield server


def test_presigned_urls_download_the_bytes_with_their_type(s3: LocalS3) -> None:
    store = make_store(S3Storage(bucket=s3.bucket, endpoint_url=s3.endpoint_url, prefix="out/",
                                 addressing_style="path"))
    assert isinstance(store, S3Store)
    url = asyncio.run(store.put(b"\x89PNG fake", "image/png", "cat.png", "http://unused/"))
    assert url.startswith(f"{s3.endpoint_url}/{s3.bucket}/out/") and "X-Amz-Signature=" in url
    r = httpx.get(url)
    assert r.status_code == 200 and r.content == b"\x89PNG fake"
    assert r.headers["content-type"] == "image/png"
    assert 'filename="cat.png"' in r.headers["content-disposition"]
    unsigned = url.split("?")[0]
    assert httpx.get(unsigned).status_code == 403  # the bucket is private: only the signed URL reads it


def test_files_on_disk_are_uploaded_and_deleted(s3: LocalS3, tmp_path: Path) -> None:
    import json

    import boto3

    public = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Principal": "*", "Action": "s3:GetObject",
                                                      "Resource": f"arn:aws:s3:::{s3.bucket}/public/*"}]}
    boto3.client("s3", endpoint_url=s3.endpoint_url).put_bucket_policy(Bucket=s3.bucket, Policy=json.dumps(public))
    store = make_store(S3Storage(bucket=s3.bucket, endpoint_url=s3.endpoint_url, url_mode="public",
                                 prefix="public/", addressing_style="path"))
    video = tmp_path / "clip.mp4"
    video.write_bytes(b"\x00" * 300_000)
    out = File.from_path(video, "video/mp4")
    asyncio.run(materialize({"video": out}, store, "http://unused/"))
    assert out.url.startswith(f"{s3.endpoint_url}/{s3.bucket}/public/") and out.url.endswith(".mp4")
    assert out.path is None and not video.exists() and out.file_size == 300_000
    assert httpx.get(out.url).content == b"\x00" * 300_000  # a plain URL: the bucket policy allows reads
