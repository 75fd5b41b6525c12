"""The served-vs-bare benchmark runs end to end on CPU with tiny presets (`--smoke`), so it can't rot."""

from __future__ import annotations

import json
import os
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
    for case in ("sana", "sana-sprint", "parallel-sdxl x1"):  # the host's share: the bare call in a Ray actor
        row = rows[case]
        assert row["actor"] > 0 and row["actor_nice0"] > 0 and row["again"] > 0
        assert set(row["cpu_ms"]) == {"bare", "actor", "actor@0", "method", "served", "again"}
        assert row["facts"]["here"]["niceness"] == os.getpriority(os.PRIO_PROCESS, 0)
        assert row["facts"]["actor"]["niceness"] >= row["facts"]["here"]["niceness"]  # Ray's workers: 15
    wan = rows["wan"]  # bare pipeline, the service's method in process, and the served request with its MP4
    assert wan["bare"] > 0 and wan["method"] > 0 and wan["served"] > 0
    assert set(wan["parts"]) == {"encode", "download"} and min(wan["parts"].values()) > 0
    assert set(wan["cpu_ms"]) == {"bare", "method", "served"}
    assert wan["what"].startswith("T2V 1.3B, 2 steps, 160x96, 17 frames")
    assert "Served vs bare" in run.stdout
