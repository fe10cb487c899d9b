"""Prints TF_CONFIG for this Slurm task: one worker per task of the job step, port 23456.

  srun --nodes=2 --ntasks-per-node=1 bash -c \
    'TF_CONFIG=$(python tools/slurm_tf_config.py) python -m lth_keras.find_tickets ... --strategy=multi_worker'
"""

import json
import os
import subprocess
import sys


def main():
    port = int(sys.argv[1]) if len(sys.argv) > 1 else 23456
    try:
        nodes = subprocess.run(["scontrol", "show", "hostnames", os.environ["SLURM_JOB_NODELIST"]],
                               check=True, capture_output=True, text=True).stdout.split()
        task = int(os.environ["SLURM_PROCID"])
        tasks = int(os.environ["SLURM_NTASKS"])
    except (KeyError, OSError, subprocess.CalledProcessError) as e:
        sys.exit(f"slurm_tf_config: not inside a Slurm job step ({e})")
    if tasks != len(nodes):
        sys.exit(f"slurm_tf_config: {tasks} tasks on {len(nodes)} nodes; use one task per node")
    workers = [f"{node}:{port}" for node in nodes]
    print(json.dumps({"cluster": {"worker": workers}, "task": {"type": "worker", "index": task}}))


if __name__ == "__main__":
    main()
