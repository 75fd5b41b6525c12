"""Outgrowing one machine: a two-node Ray cluster on loopback, services on the second node writing
their outputs to an S3-compatible store, downloads through the ingress's URLs on the head; and the
local store's start-up error for a replica off the head node.

The cluster is its own (a subprocess: `fixtures/two_nodes.py`), apart from this session's Ray.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_two_node_cluster_with_s3_store() -> None:
    env = {**os.environ, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_USAGE_STATS_ENABLED": "0"}
    run = subprocess.run([sys.executable, str(ROOT / "tests" / "app" / "fixtures" / "two_nodes.py")],
                         capture_output=True, text=True, timeout=900, env=env, cwd=ROOT)
    lines = [line for line in run.stdout.splitlines() if line.startswith("REPORT ")]
    assert run.returncode == 0 and lines, run.stdout[-3000:] + run.stderr[-5000:]
    report = json.loads(lines[-1][len("REPORT "):])
    assert report["ingress_on_head"] is True
    assert report["on_second_node"] == {"sana": True, "kokoro": True}
    for name, download in report["downloads"].items():
        assert download["from_s3"], name
        assert download["status"] == 200 and download["bytes"] == download["file_size"] > 0, (name, download)
    assert report["downloads"]["sana"]["content_type"] == "image/jpeg"
    assert report["downloads"]["kokoro"]["content_type"] == "audio/wav"
    error = report["local_store_error"]
    assert error and "local output store" in error and "kind: s3" in error
