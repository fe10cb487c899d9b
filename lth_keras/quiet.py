"""The frameworks' start-up noise, filtered from stderr.

Importing TensorFlow and starting its runtime print about seven lines from
native code (absl's C++ logging, so TF_CPP_MIN_LOG_LEVEL does not reach all
of them), among them an E-level "failed call to cuInit" on every machine
without a GPU, which users take for the cause of any later failure. While
the frameworks start, file descriptor 2 goes to a temporary file; the lines
below are dropped and every other line (a real warning) is written back.
"""

import contextlib
import os
import re
import sys
import tempfile

NOISE = [
    r"WARNING: All log messages before absl::InitializeLog\(\) is called are written to STDERR",
    r"[IW]\d{4} .*\] oneDNN custom operations are on",
    r"[IW]\d{4} .*\] Could not find cuda drivers on your machine",
    r"[IW]\d{4} .*\] This TensorFlow binary is optimized to use available CPU instructions",
    r"To enable the following instructions: .* rebuild TensorFlow",
    r"[IW]\d{4} .*\] TF-TRT Warning: Could not find TensorRT",
]
# Without an NVIDIA device, cuInit failing is the expected answer, not an error.
NO_GPU_NOISE = [r"E\d{4} .*\] failed call to cuInit"]


def _noise():
    patterns = NOISE + ([] if os.path.exists("/dev/nvidiactl") else NO_GPU_NOISE)
    return re.compile("|".join(f"(?:{p})" for p in patterns))


@contextlib.contextmanager
def framework_startup():
    """Runs the block with native stderr captured, then writes back all but the noise.

    LTH_KERAS_VERBOSE_STARTUP=1 leaves stderr alone.
    """
    if os.environ.get("LTH_KERAS_VERBOSE_STARTUP") == "1":
        yield
        return
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            noise = _noise()
            kept = [line for line in captured.read().decode(errors="replace").splitlines()
                    if not noise.search(line)]
            if kept:
                print("\n".join(kept), file=sys.stderr, flush=True)
