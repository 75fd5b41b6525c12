#!/usr/bin/env bash
# Issue 13's speed table in one call (full presets, bf16, 1024², 28 steps, through the service over HTTP):
# each phase's cases are deployed side by side, then timed one at a time; partial results land in $OUT.
#   run(kind="nvidia-h200-x2", carry=[".device"], timeout_s=600,
#       command="bash .device/run.sh bash bench/device/xfuser.sh")
# Flags: c compile, ro reduce-overhead, ma max-autotune-no-cudagraphs, rg regional, qkv fused QKV,
# native diffusers' context parallelism (bench/xfuser_latency.py's docstring has the grammar).
set -uo pipefail
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
timeout 570 python3 bench/xfuser_latency.py --runs 3 --budget-s 480 --cache-dir /tmp/xfuser-cache \
  --phase 1:diffusers@c,1:diffusers@c+qkv \
  --phase 2:u2@c,2:native+u2@c+qkv \
  --phase sd3/2:cfg@c,sd3/2:cfg@c+qkv \
  > "$OUT/xfuser.log" 2>&1
echo "xfuser_latency exit: $?"
tail -30 "$OUT/xfuser.log"
