"""bench/wan_speed.py in its `--smoke` mode (tiny preset, CPU): the one-process rows and a Ulysses-2
and a CFG-parallel layout on two spawned ranks each (gloo) run end to end, so the GPU run's script can't rot."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_the_benchmark_runs_on_cpu_with_a_two_rank_layout(tmp_path: Path) -> None:
    out = tmp_path / "wan.json"
    run = subprocess.run([sys.executable, str(ROOT / "bench" / "wan_speed.py"), "--smoke", "--layouts", "1", "u2", "c2",
                          "--json", str(out)], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    rows = json.loads(out.read_text())["rows"]
    assert set(rows) == {"bare", "method", "encode", "decode", "u2", "c2"}
    assert all(t > 0 for row in rows.values() for t in row["times"])
    assert all(rows[k]["load_s"] > 0 and rows[k]["first_s"] > 0 for k in ("u2", "c2"))
    assert "method / bare" in run.stdout and "u2" in run.stdout


def test_the_mp4_tail_benchmark_runs(tmp_path: Path) -> None:
    """bench/mp4_overlap.py --smoke: every lookahead row has a tail, a size and a PSNR."""
    out = tmp_path / "mp4.json"
    run = subprocess.run([sys.executable, str(ROOT / "bench" / "mp4_overlap.py"), "--smoke", "--lookahead", "40", "10",
                          "none", "--json", str(out)], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    rows = json.loads(out.read_text())["rows"]
    assert set(rows) == {"40", "10", "none"}
    assert all(r["tail_s"] > 0 and r["total_s"] >= r["tail_s"] and r["kib"] > 0 and r["psnr_db"] > 25
               for r in rows.values())
    assert "rc-lookahead" in run.stdout
