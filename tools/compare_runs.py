"""Whether two run directories hold the same results: masks, weights and metrics.

  python tools/compare_runs.py RUN_A RUN_B

For two runs of the same command (the same machine, software and --deterministic, say
with the code before and after a change), compares, level by level: every .npz array
file (masks, θ_i, a transfer's weights; θ_0, θ_k and the saved epochs of a ticket run)
by the digest of its arrays, and metrics.json without what measures the machine rather
than the run (seconds, the cost's wall time). Prints one line per file that differs and
a summary; exit status 1 when anything differs or a file is in one run only.
"""

import argparse
import hashlib
import os
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from lth_keras import artifacts  # noqa: E402

# What a level's metrics.json records about the machine's speed, not the run's result.
TIMING_KEYS = {"seconds"}


def arrays_digest(path):
    """A digest of an .npz file's arrays, by name (the file's own bytes vary with zip)."""
    digest = hashlib.sha256()
    for name, array in sorted(artifacts.read_arrays(path).items()):
        digest.update(name.encode())
        digest.update(str(array.dtype).encode() + str(array.shape).encode())
        digest.update(array.tobytes())
    return digest.hexdigest()


def without_timings(value):
    if isinstance(value, dict):
        return {k: without_timings(v) for k, v in value.items() if k not in TIMING_KEYS}
    if isinstance(value, list):
        return [without_timings(v) for v in value]
    return value


def files(run):
    """{relative path: absolute path} of the files compared."""
    found = {}
    for directory, subdirs, names in os.walk(run):
        subdirs[:] = [d for d in subdirs if d != "tensorboard"]
        for name in names:
            if name.endswith(".npz") and name != "checkpoint.npz" or name == "metrics.json":
                path = os.path.join(directory, name)
                found[os.path.relpath(path, run)] = path
    return found


def compare(a, b):
    """(number of files compared, [lines naming what differs])."""
    fa, fb = files(a), files(b)
    problems = [f"only in {a}: {name}" for name in sorted(set(fa) - set(fb))]
    problems += [f"only in {b}: {name}" for name in sorted(set(fb) - set(fa))]
    for name in sorted(set(fa) & set(fb)):
        if name.endswith(".npz"):
            same = arrays_digest(fa[name]) == arrays_digest(fb[name])
        else:
            same = (without_timings(artifacts.read_json(fa[name]))
                    == without_timings(artifacts.read_json(fb[name])))
        if not same:
            problems.append(f"differs: {name}")
    return len(set(fa) & set(fb)), problems


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("a")
    parser.add_argument("b")
    options = parser.parse_args(argv)
    compared, problems = compare(options.a, options.b)
    for line in problems:
        print(line)
    print(f"{compared} files compared: "
          + ("identical (arrays, and metrics but timings)" if not problems
             else f"{len(problems)} differ or are missing"))
    sys.exit(1 if problems else 0)


if __name__ == "__main__":
    main()
