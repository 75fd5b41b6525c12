"""bench/flux_lora_speed.py in its `--smoke` mode (tiny preset, CPU): every case runs, the compiled mode
swaps LoRAs without recompiling, and the table prints. The GPU numbers come from the same code."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_the_benchmark_runs_on_cpu() -> None:
    spec = importlib.util.spec_from_file_location("flux_lora_speed", ROOT / "bench" / "flux_lora_speed.py")
    assert spec is not None and spec.loader is not None
    bench = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("flux_lora_speed", bench)
    spec.loader.exec_module(bench)
    import torch

    torch._dynamo.reset()  # compiled code is cached per process: count the benchmark's compilations only
    eager, compiled = bench.main(["--smoke"])
    for row in (eager, compiled):
        assert row["base_s"] > 0 and row["one_lora_s"] > 0 and row["three_loras_s"] > 0
        assert len(row["cold_load_s"]) == 3 and row["switch_ms"] > 0
    assert eager["bare_s"] > 0 and eager["stats"]["loads"] == 3
    assert compiled["recompiles"] == 0 and compiled["stats"]["compiles"] == 1  # compiled once, at warm-up
    assert compiled["copies"] > 0 and compiled["stats"]["loads"] == 4
