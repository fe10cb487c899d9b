#!/usr/bin/env bash
# tools/gpu_check.py on the borrowed GPU machine, which has JAX but no TensorFlow, no
# keras and no network (see BUILD_NOTES.md "GPU check").
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

case "${1:-}" in
  prepare)
    grep -qx '/.gpu_data/' .git/info/exclude 2>/dev/null || echo '/.gpu_data/' >> .git/info/exclude
    python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
      --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
      --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl \
      "keras==$(python3 -c 'import keras; print(keras.__version__)')" namex optree
    mkdir -p .gpu_data
    cp -r "${DATA_DIR:-../shared/data}/histology_nuclei" .gpu_data/
    du -sh .whl .gpu_data
    ;;
  run)
    shift
    if ! python3 -c "import keras" 2>/dev/null; then  # the GPU machine has none
      python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl
    fi
    export PYTHONPATH="/tmp/site:$PWD" KERAS_BACKEND=jax PYTHONUNBUFFERED=1
    python3 tools/gpu_check.py --data_dir=.gpu_data --output="${OUT:-outputs/gpu_check}" "$@"
    ;;
  *)
    echo "usage: bash tools/gpu_check_device.sh prepare | run [gpu_check flags]" >&2
    exit 2
    ;;
esac
