#!/usr/bin/env bash
# Wan 2.1 T2V 1.3B rows (issue 14) and its served-vs-bare case: PyAV comes from .whl-wan
# (bench/device/prepare.sh --wan). About 560 s on 2 x H200.
#   run(kind="nvidia-h200-x2", carry=[".device", ".whl-wan"], timeout_s=600,
#       command="bash .device/run.sh bash bench/device/wan.sh")
set -uo pipefail
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
python3 -m pip install -q --no-deps --no-index --target /tmp/wan-extra .whl-wan/*.whl
export PYTHONPATH="/tmp/wan-extra:$PYTHONPATH"
timeout 540 python3 bench/wan_speed.py --layouts 1 u2 c2 r2 --compile --compiled-only --runs 2 \
  --json "$OUT/wan.json" > "$OUT/wan.log" 2>&1
echo "wan_speed exit: $?"
tail -25 "$OUT/wan.log"
