#!/usr/bin/env bash
# On this CPU machine, once per session, from anywhere in the checkout: pack what the lent GPU machines
# lack (they have torch, transformers, peft and accelerate, but no Ray, diffusers, xfuser or FastAPI, and
# reach no package registry). Both outputs are git-ignored; carry them in the `run` call.
#   .device/    ../shared/device/bundle.py's archive (Ray Serve, diffusers, xfuser, fal-client, ...) plus
#               this project's own runtime extras (about 45 MiB)
#   .whl-wan/   PyAV's cp312 wheel (H.264 MP4 for Wan); too large for the same carry as .device, so the
#               Wan script installs it on the machine
set -euo pipefail
cd "$(dirname "$0")/../.."
python3 ../shared/device/bundle.py python-multipart==0.0.34 swagger-ui-bundle-v2==5.31.0 fastapi-offline==1.7.7
if [ "${1:-}" = "--wan" ]; then
  rm -rf .whl-wan && mkdir -p .whl-wan
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 -d .whl-wan av==18.1.0
fi
du -sh .device .whl-wan 2>/dev/null || true
