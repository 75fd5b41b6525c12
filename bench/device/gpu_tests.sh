#!/usr/bin/env bash
# Every GPU test (tests/gpu, marker `gpu`): parity of xFuser's layouts, Wan's CFG-parallel, Sana, the
# distributed runner on NCCL. About 450 s on 2 x H200; the 2-GPU rows skip on one GPU.
#   run(kind="nvidia-h200-x2", carry=[".device"], timeout_s=600,
#       command="bash .device/run.sh bash bench/device/gpu_tests.sh")
set -uo pipefail
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
nvidia-smi --query-gpu=name,power.limit,clocks.max.sm --format=csv,noheader | tee "$OUT/gpus.txt"
timeout 560 python3 -m pytest -q -m gpu tests/gpu -p no:cacheprovider --junitxml "$OUT/gpu_tests.xml" \
  > "$OUT/gpu_tests.log" 2>&1
echo "pytest exit: $?"
grep -E "^(PASSED|FAILED|ERROR|SKIPPED)|passed|failed" "$OUT/gpu_tests.log" | tail -25
