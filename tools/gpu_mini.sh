#!/usr/bin/env bash
# The one-GPU mini-paper (flags/gpu_mini_grid.cfg) on a GPU machine that has JAX but no
# TensorFlow, no keras and no network (docs/guide.md "Engines and GPUs").
#
#   bash tools/gpu_mini.sh prepare [--tiny]    # here: .gpu_mini/ (data) and .whl/ (wheels)
#   bash tools/gpu_mini.sh run [--tiny] [--out=DIR]   # on the GPU node, with .whl/ and
#                                              # .gpu_mini/ beside the checkout: records in
#                                              # DIR (default $OUT)
#   bash tools/gpu_mini.sh analyze DIR         # here, on what came back:
#                                              # outputs/reference/gpu_mini/
#
# `prepare` downloads the wheels (tools/device_wheels.sh), then runs tools/gpu_mini.py
# prepare; `run` installs the wheels into /tmp/site where keras is missing, then runs
# tools/gpu_mini.py run; `--tiny` runs the same path at CPU size (a dry run).
set -euo pipefail
cd "$(dirname "$0")/.."
source tools/device_wheels.sh

case "${1:-}" in
  prepare)
    shift
    download_wheels
    python3 tools/gpu_mini.py prepare "$@"
    ;;
  run)
    shift
    use_wheels
    export KERAS_BACKEND=jax PYTHONUNBUFFERED=1
    python3 tools/gpu_mini.py run "$@"
    ;;
  analyze)
    shift
    python3 tools/gpu_mini.py analyze "$@"
    ;;
  *)
    echo "usage: bash tools/gpu_mini.sh prepare [--tiny] | run [--tiny] | analyze DIR" >&2
    exit 2
    ;;
esac
