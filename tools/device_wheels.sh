# Sourced by the device scripts (gpu_check_device.sh, gpu_mini.sh), for a GPU machine
# with JAX and Python 3.12 but no keras and no network: keras (this checkout's version),
# namex and optree travel as wheels in .whl/ (git-ignored).

download_wheels() {  # here
  python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl \
    "keras==$(python3 -c 'import keras; print(keras.__version__)')" namex optree
}

use_wheels() {  # there: installed into /tmp/site where keras is missing
  if ! python3 -c "import keras" 2>/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
      --target /tmp/site .whl/*.whl
  fi
  export PYTHONPATH="/tmp/site:$PWD"
}
