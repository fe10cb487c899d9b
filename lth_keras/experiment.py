"""Runs the paper's experiment grid: every find_tickets and transfer run it needs.

  python -m lth_keras.experiment --flagfile=flags/quick_grid.cfg --list
  python -m lth_keras.experiment --flagfile=flags/quick_grid.cfg
  python -m lth_keras.experiment --flagfile=flags/paper_grid.cfg --task_index=3 --num_tasks=16

Each run is a child process of its binary (one engine runtime per
process) with its run directory under --output_dir and its log under logs/.
Finished runs are skipped, so re-running resumes the grid. With --num_tasks,
task i runs every num_tasks-th run (SLURM_ARRAY_TASK_ID / SLURM_ARRAY_TASK_COUNT
are the defaults); a transfer whose tickets another task makes waits up to
--wait_for_inputs seconds, then is skipped with a message. Common settings given
here (say --data_dir or --max_epochs=2) go to every run, after its preset so
that they win. A thin shell over lth_keras.grid (also lth_keras.experiment() in Python).
"""

from lth_keras import cli, settings

settings.define_flags([settings.Grid])


def main(argv):
    cli.no_arguments(argv)
    from lth_keras import grid

    chosen, _ = settings.from_command_line(settings.EXPERIMENT)
    grid.experiment(chosen[settings.Grid], chosen[settings.Run], cli.forwarded_values())


if __name__ == "__main__":
    cli.run(main)
