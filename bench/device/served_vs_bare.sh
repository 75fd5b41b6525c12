#!/usr/bin/env bash
# Issue 12 in one call: the serving path alone under Serve's ingress paths (no model), then every GPU
# service served vs the bare library (full presets, bf16, 1024²) with HAProxy in front of the ingress.
# About 560 s on one H200 with the defaults (sdxl-n needs 2 GPUs: add it on nvidia-h200-x2).
#   run(kind="nvidia-h200", carry=[".device"], timeout_s=600,
#       command="bash .device/run.sh bash bench/device/served_vs_bare.sh [CASE ...]")
# CASEs default to sprint sana sdxl xfuser train (wan needs PyAV: run it from wan.sh). Environment:
#   OVERHEAD_MODES  serve_overhead.py's --proxy modes, in turn ("default haproxy"; "" for none)
#   SVB_PROXY       served_vs_bare.py's --proxy (haproxy)      SVB_RUNS     its --runs (3)
#   SVB_TIMEOUT     its time limit in s (440)                   SVB_TAG      suffix of its output files
set -uo pipefail
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
cases=${*:-sprint sana sdxl xfuser train}
modes=${OVERHEAD_MODES-default haproxy}
proxy=${SVB_PROXY:-haproxy}
tag=${SVB_TAG:-$proxy}; tag=${tag//+/_}
for mode in $modes; do
  name=overhead-${mode//+/_}
  timeout 100 python3 bench/serve_overhead.py --requests 60 --proxy "$mode" --json "$OUT/$name.json" \
    > "$OUT/$name.log" 2>&1 || echo "serve_overhead --proxy $mode failed (see $name.log)"
done
# shellcheck disable=SC2086
timeout "${SVB_TIMEOUT:-440}" python3 bench/served_vs_bare.py --runs "${SVB_RUNS:-3}" --proxy "$proxy" --cases $cases \
  --json "$OUT/svb-$tag.json" > "$OUT/svb-$tag.log" 2>&1
echo "served_vs_bare --proxy $proxy exit: $?"
for mode in $modes; do tail -6 "$OUT/overhead-${mode//+/_}.log"; done
sed -n '/Served vs bare/,/^CPU probe/p' "$OUT/svb-$tag.log" | tail -16
