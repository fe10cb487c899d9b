"""Run README.md as a new user does, from a fresh clone, and time every step.

  python tools/readme_tour.py [--clone=../readme_tour] [--output_dir=outputs/readme_tour]

Clones this checkout's HEAD into --clone (beside ../shared, where CI's clone is, so that
the tour's ../shared/data paths hold), then runs in one bash session inside it, as
README.md gives them: the first set-up command (the main job), one step per `&&` part,
then every line of the five-minute tour's bash block. A step that fails stops the tour
and its output is shown. `tensorboard` is started on a free port and counts as working
once it says where it serves; it is then stopped. Writes every step's wall time, the
commit and the machine to --output_dir/timings.json, prints them as a table, and copies
the records of the runs the tour made (tools/reference_records.py) to --output_dir/runs.

Run it on quiet cores: these are the timings the README and the guide quote. Steps that
install (apt-get, pip) time the network and the package caches as much as the machine.
"""

import argparse
import os
import re
import shlex
import subprocess
import sys
import tempfile

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [REPO, os.path.join(REPO, "tools")]

from lth_keras import artifacts  # noqa: E402
from reference_records import copy_records  # noqa: E402

TENSORBOARD_WAIT_S = 120


def bash_block_after(text, heading):
    """The lines of the first ```bash block after `heading` (a line of README.md)."""
    start = text.index("\n" + heading + "\n")
    match = re.compile(r"```bash\n(.*?)```", re.S).search(text, start)
    if match is None:
        raise ValueError(f"README.md has no bash block after {heading!r}")
    return [line for line in match.group(1).splitlines() if line.strip()]


def _without_comment(line):
    """The command of a line, its trailing `  # ...` comment dropped."""
    return re.sub(r"\s+#\s.*$", "", line).rstrip()


def steps(readme_text):
    """The README's steps in order: the first set-up command split at its `&&`s, then the
    tour's lines."""
    setup = bash_block_after(readme_text, "## Set-up on a fresh machine")[0]
    tour = [_without_comment(line)
            for line in bash_block_after(readme_text, "## A five-minute tour")]
    return [part.strip() for part in setup.split("&&")] + [line for line in tour if line]


def _tensorboard(command):
    """`command` (tensorboard --logdir ...) on a free port, working once it prints its
    address, then stopped."""
    return (f"{command} --port=0 > tensorboard.log 2>&1 & TB=$!; "
            f"for _ in $(seq {TENSORBOARD_WAIT_S}); do grep -q 'http://' tensorboard.log "
            "&& break; sleep 1; done; kill $TB; wait $TB 2>/dev/null; "
            "cat tensorboard.log; grep -q 'http://' tensorboard.log")


def script(commands, timings):
    """A bash script that runs `commands` in one session, appending "<index> <exit status>
    <nanoseconds>" per step to `timings`, and stops at the first that fails."""
    lines = ["set -o pipefail"]
    for i, command in enumerate(commands):
        run = _tensorboard(command) if command.startswith("tensorboard ") else command
        lines += [f"printf '+ %s\\n' {shlex.quote(command)}", "_start=$(date +%s%N)", run,
                  "_rc=$?",
                  f"echo {i} $_rc $(( $(date +%s%N) - _start )) >> {shlex.quote(timings)}",
                  "[ $_rc -eq 0 ] || exit $_rc"]
    return "\n".join(lines) + "\n"


def _new_user_environment():
    """This environment less any virtual environment or PYTHONPATH of this checkout."""
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH")}
    env["PATH"] = os.pathsep.join(p for p in env.get("PATH", "").split(os.pathsep)
                                  if not p.startswith(REPO))
    return env


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clone", default=os.path.join(os.path.dirname(REPO), "readme_tour"),
                        help="where the fresh clone goes (must not exist; beside ../shared)")
    parser.add_argument("--output_dir", default=os.path.join(REPO, "outputs", "readme_tour"))
    options = parser.parse_args(argv)
    if os.path.exists(options.clone):
        sys.exit(f"readme_tour: error: {options.clone} exists; give a new --clone")
    commit = subprocess.check_output(["git", "-C", REPO, "rev-parse", "HEAD"], text=True).strip()
    subprocess.run(["git", "clone", "-q", REPO, options.clone], check=True)
    with open(os.path.join(options.clone, "README.md")) as f:
        commands = steps(f.read())
    with tempfile.TemporaryDirectory() as tmp:
        timings = os.path.join(tmp, "timings")
        with open(os.path.join(tmp, "tour.sh"), "w") as f:
            f.write(script(commands, timings))
        load = os.getloadavg()
        proc = subprocess.run(["bash", os.path.join(tmp, "tour.sh")], cwd=options.clone,
                              env=_new_user_environment())
        done = []
        if os.path.exists(timings):
            with open(timings) as f:
                done = [tuple(map(int, line.split())) for line in f]
    rows = [{"step": i, "command": commands[i], "exit": rc, "seconds": round(ns / 1e9, 1)}
            for i, rc, ns in done]
    record = {"commit": commit, "machine": artifacts.cpu_description(),
              "cores": os.cpu_count(), "load_average": {"start": load,
                                                        "end": os.getloadavg()},
              "finished": proc.returncode == 0, "steps": rows}
    artifacts.write_json(os.path.join(options.output_dir, "timings.json"), record)
    for kind in ("tickets", "transfer"):  # the tour's runs, not the clone's outputs/reference
        if os.path.isdir(os.path.join(options.clone, "outputs", kind)):
            copy_records(os.path.join(options.clone, "outputs", kind),
                         os.path.join(options.output_dir, "runs", kind))
    print("| step | seconds | exit | command |\n|---|---|---|---|")
    for r in rows:
        print(f"| {r['step']} | {r['seconds']} | {r['exit']} | `{r['command'][:100]}` |")
    print(f"{'finished' if proc.returncode == 0 else 'FAILED'}; written: {options.output_dir}")
    return proc.returncode


if __name__ == "__main__":
    sys.exit(main())
