"""The served-vs-bare benchmark runs end to end on CPU with tiny presets (`--smoke`), so it can't rot."""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

from tests.app.conftest import free_port

ROOT = Path(__file__).resolve().parents[2]


def test_served_vs_bare_smoke(tmp_path: Path) -> None:
    out = tmp_path / "rows.json"
    env = {**os.environ, "BENCH_PORT": str(free_port()), "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
    run = subprocess.run([sys.executable, str(ROOT / "bench" / "served_vs_bare.py"), "--smoke", "--json", str(out)],
                         capture_output=True, text=True, timeout=1200, env=env, cwd=ROOT)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-5000:]
    rows = {r["case"]: r for r in json.loads(out.read_text())}
    assert set(rows) == {"sana", "sana-sprint", "parallel-sdxl x1", "parallel-sdxl x2", "xfuser 1 GPU",
                         "flux-lora train", "wan"}
    for row in rows.values():
        assert row["bare"] > 0 and (row["served"] or row["method"]) > 0
    assert {"safety", "encode", "store", "download"} <= set(rows["sana-sprint"]["parts"])
    sana = rows["sana"]  # the host's share: the bare call in a Ray actor (on GPUs also Sprint's and SDXL's)
    assert sana["actor"] > 0 and sana["actor_nice0"] > 0
    assert set(sana["cpu_ms"]) == {"actor", "actor@0", "method", "served"} == set(sana["ratios"])
    assert sana["facts"]["here"]["niceness"] == os.getpriority(os.PRIO_PROCESS, 0)
    assert sana["facts"]["actor"]["niceness"] >= sana["facts"]["here"]["niceness"]  # Ray's workers: 15
    # every comparison alternates with a bare call: 4 pairings of one round each (smoke: --runs 1)
    assert len(sana["bare_runs"]) == 4 and sana["bare"] == statistics.median(sana["bare_runs"])
    for case in ("sana-sprint", "parallel-sdxl x1"):
        assert set(rows[case]["ratios"]) == {"method", "served"} and len(rows[case]["bare_runs"]) == 2
    for case in ("sana", "parallel-sdxl x1", "xfuser 1 GPU", "wan"):  # the replica's own split of a request
        split = rows[case]["served_parts"]
        framework = {"dispatch", "run", "store", "handle", "http"}
        assert framework <= set(split), split
        assert split["run"] > 0 and split["http"] > 0 and split["handle"] > -0.005
        assert split["run"] < rows[case]["served"]
        own = {k: v for k, v in split.items() if k not in framework}  # the method's parts, inside its run
        assert all(0 < v <= split["run"] for v in own.values()), split
        if case == "sana":
            assert not own
        elif case != "wan":  # multi-GPU services time their ranks' call (Wan renders in the replica here)
            assert "ranks" in own, split
    sdxl = rows["parallel-sdxl x1"]  # ... and rank 0 its pipeline and grid encoding, in process too
    for split in (sdxl["served_parts"], sdxl["method_parts"]):
        assert {"ranks", "pipe", "grid_encode"} <= set(split), split
        assert split["pipe"] + split["grid_encode"] <= split["ranks"]
    wan = rows["wan"]  # bare pipeline, the service's method in process, and the served request with its MP4
    assert wan["bare"] > 0 and wan["method"] > 0 and wan["served"] > 0
    assert set(wan["parts"]) == {"encode", "download"} and min(wan["parts"].values()) > 0
    assert set(wan["cpu_ms"]) == {"method", "served"} and len(wan["bare_runs"]) == 2
    assert wan["what"].startswith("T2V 1.3B, 2 steps, 160x96, 17 frames")
    assert "Served vs bare" in run.stdout


def test_serve_overhead_runs_and_splits_our_requests(tmp_path: Path) -> None:
    """`bench/serve_overhead.py`: plain Serve's floor beside this project's path, with the replica's split,
    under HAProxy (the README's production ingress: this app's routes, files and `sync_mode` behind it;
    the rest of the suite runs on Serve's default proxy)."""
    out = tmp_path / "overhead.json"
    run = subprocess.run([sys.executable, str(ROOT / "bench" / "serve_overhead.py"), "--requests", "3",
                          "--file-kib", "16", "--port", str(free_port()), "--proxy", "haproxy", "--json", str(out)],
                         capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-5000:]
    result = json.loads(out.read_text())
    rows = {r["case"]: r for r in result["rows"]}
    assert result["proxy"] == "haproxy" and result["listener"] == "haproxy"
    assert list(rows) == ["serve 1 hop", "serve 2 hops", "ours", "ours + 16 KiB file", "ours + 16 KiB sync_mode"]
    for name, row in rows.items():
        assert row["ms"] > 0
        if name.startswith("ours"):  # Server-Timing: each part inside the one around it
            assert 0 <= row["run"] + row["store"] <= row["call"] <= row["ingress"] <= row["ms"]
        else:
            assert "run" not in row
    assert "Per-request cost on loopback" in run.stdout
