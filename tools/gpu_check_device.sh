#!/usr/bin/env bash
# tools/gpu_check.py on a GPU machine that has JAX but no TensorFlow, no keras
# and no network (docs/guide.md "Engines and GPUs").
#
#   bash tools/gpu_check_device.sh prepare          # here: wheels and data into ignored folders
#   bash tools/gpu_check_device.sh run [FLAGS...]   # there, via the device tool, with
#                                                   # carry=[".whl", ".gpu_data"]
#
# `prepare` downloads the keras, namex and optree wheels for that machine's Python 3.12
# into .whl/ and copies histology_nuclei into .gpu_data/ (both git-ignored, about 50 MB).
# `run` installs the wheels into /tmp/site (where keras is missing) and runs gpu_check
# with --output=$OUT, so that its report comes back; extra flags go to gpu_check (e.g.
# --tiny to try it on a CPU first).
set -euo pipefail
cd "$(dirname "$0")/.."
source tools/device_wheels.sh

case "${1:-}" in
  prepare)
    grep -qx '/.gpu_data/' .git/info/exclude 2>/dev/null || echo '/.gpu_data/' >> .git/info/exclude
    download_wheels
    mkdir -p .gpu_data
    cp -r "${DATA_DIR:-../shared/data}/histology_nuclei" .gpu_data/
    du -sh .whl .gpu_data
    ;;
  run)
    shift
    use_wheels
    export KERAS_BACKEND=jax PYTHONUNBUFFERED=1
    python3 tools/gpu_check.py --data_dir=.gpu_data --output="${OUT:-outputs/gpu_check}" "$@"
    ;;
  *)
    echo "usage: bash tools/gpu_check_device.sh prepare | run [gpu_check flags]" >&2
    exit 2
    ;;
esac
