"""Atomic, verifiable artifact files and run records.

Every artifact is written to a temporary file in the same directory, flushed
and fsynced, then renamed over the target, so a killed run leaves either the
old file or the new one, never half of one. Arrays go to `.npz` (zip: CRC
checked on read), records to JSON.
"""

import contextlib
import datetime
import hashlib
import io
import json
import os
import platform
import sys
import tempfile
import zipfile

import numpy as np

from lth_keras.errors import ArtifactError


@contextlib.contextmanager
def atomic_path(path):
    """Yields a temporary path; renames it to `path` only if the block succeeds."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", suffix=".tmp",
                               dir=directory)
    os.close(fd)
    try:
        # mkstemp makes 0600 files: follow the umask instead, as open() would, so that a
        # shared cluster's group can read the runs.
        os.chmod(tmp, 0o666 & ~_umask())
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        if e.filename in (None, tmp):  # disk full names no file, or the temporary one
            raise OSError(e.errno, e.strerror, path) from e
        raise
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _umask():
    """The process's umask (read by setting it, so set it straight back)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def write_bytes(path, data):
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        f.write(data)


def write_json(path, obj):
    write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True, default=_jsonable) + "\n")
                .encode())


def read_json(path):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError) as e:
        raise ArtifactError(f"cannot read {path}: {e}") from e


def write_arrays(path, arrays):
    """Saves {name: array} as an .npz file, atomically."""
    buffer = io.BytesIO()
    np.savez(buffer, **{k: np.asarray(v) for k, v in arrays.items()})
    write_bytes(path, buffer.getvalue())


def read_arrays(path):
    """Loads an .npz written by write_arrays; any damage raises ArtifactError."""
    try:
        with np.load(path, allow_pickle=False) as data:
            return {k: data[k] for k in data.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, KeyError) as e:
        raise ArtifactError(f"{path} is unreadable or truncated ({e})") from e


def remove_stale_temp_files(directory):
    """Removes the temp files of writers that were killed; call before writing to `directory`."""
    for root, _, files in os.walk(directory):
        for name in files:
            if name.startswith(".") and name.endswith(".tmp"):
                os.remove(os.path.join(root, name))


def remove_tree(path):
    """Deletes a directory so that a crash midway leaves it whole or gone: renamed first."""
    import shutil

    if not os.path.exists(path):
        return
    trash = tempfile.mkdtemp(prefix="." + os.path.basename(path) + ".", suffix=".trash",
                             dir=os.path.dirname(os.path.abspath(path)))
    os.replace(path, os.path.join(trash, "old"))
    shutil.rmtree(trash)


def _jsonable(obj):
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def array_digest(*arrays):
    """sha256 of arrays' dtypes, shapes and bytes: a fingerprint of data or weights."""
    h = hashlib.sha256()
    for a in arrays:
        a = np.ascontiguousarray(a)
        h.update(f"{a.dtype.str}{a.shape}".encode())
        h.update(a.tobytes())
    return h.hexdigest()


# The instruction sets that oneDNN's and XLA's CPU kernels choose their code paths by (a
# virtual machine's model name is often only "Intel Xeon Processor").
CPU_FEATURES = ("sse4_2", "avx", "avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16",
                "avx512_fp16", "amx_tile", "amx_bf16", "amx_int8", "asimd", "sve")


def cpu_description():
    """{"cpu": model name, "cpu_features": the CPU_FEATURES it has} from /proc/cpuinfo
    (Linux), else what Python knows. float32 results differ between processors (their
    convolution kernels round differently), so every run records which one it ran on."""
    model, flags = None, set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                key, value = key.strip(), value.strip()
                if key in ("model name", "Model", "Hardware") and value and model is None:
                    model = value
                elif key in ("flags", "Features") and not flags:
                    flags = set(value.split())
    except OSError:
        pass
    return {"cpu": model or platform.processor() or platform.machine() or "unknown",
            "cpu_features": [name for name in CPU_FEATURES if name in flags]}


def environment_record(runtime):
    """Package versions and machine facts stored with every run; `runtime` (the
    engine's) adds the engine, its framework's versions, the devices and the
    accelerators' models."""
    import absl
    import keras

    from lth_keras.version import __version__

    def version(module):
        return getattr(module, "__version__", "unknown")

    return {
        "lth_keras": __version__,
        "python": sys.version.split()[0],
        "keras": keras.__version__,
        "numpy": np.__version__,
        "absl": version(absl),
        "platform": platform.platform(),
        **cpu_description(),
        "cpu_count": os.cpu_count(),
        **runtime.environment(),
        "time": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
