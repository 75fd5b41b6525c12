#!/usr/bin/env bash
# Issue 12 in one call: the serving path alone under Serve's ingress paths (no model), then every GPU
# service served vs the bare library (full presets, bf16, 1024²) with HAProxy in front of the ingress.
# About 550 s on one H200 (sdxl-n needs 2 GPUs: add it on nvidia-h200-x2).
#   run(kind="nvidia-h200", carry=[".device"], timeout_s=600,
#       command="bash .device/run.sh bash bench/device/served_vs_bare.sh [CASE ...]")
# CASEs default to sprint sana sdxl xfuser train (wan needs PyAV: run it from wan.sh).
set -uo pipefail
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
cases=${*:-sprint sana sdxl xfuser train}
SVB_PROXY=${SVB_PROXY:-haproxy}
for proxy in default haproxy haproxy+throughput; do
  timeout 60 python3 bench/serve_overhead.py --requests 60 --proxy "$proxy" --json "$OUT/overhead-$proxy.json" \
    > "$OUT/overhead-$proxy.log" 2>&1 || echo "serve_overhead --proxy $proxy failed (see its log)"
done
# shellcheck disable=SC2086
timeout 440 python3 bench/served_vs_bare.py --runs 3 --proxy "$SVB_PROXY" --cases $cases --json "$OUT/svb.json" \
  > "$OUT/svb.log" 2>&1
echo "served_vs_bare exit: $?"
for proxy in default haproxy haproxy+throughput; do tail -6 "$OUT/overhead-$proxy.log"; done
sed -n '/Served vs bare/,$p' "$OUT/svb.log" | tail -30
