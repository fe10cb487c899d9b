"""Plans a study from a pilot grid: the ticket searches and transfer seeds per search that
detect a named effect of ticket − scratch with the wanted power, and what they cost.

  python -m lth_keras.plan --runs=outputs/quick_cifar_pilot --effect=2 --design=8x2 \
      --output_dir=outputs/quick_cifar_pilot/plan

Writes plan.md and plan.csv (lth_keras/analysis/planning.py says how). A thin shell over
lth_keras.plan() (lth_keras/api.py); its flags are the Planning settings.
"""

import dataclasses
import os

from lth_keras import cli, settings

settings.define_flags([settings.Planning])


def main(argv):
    cli.no_arguments(argv)
    chosen, _ = settings.from_command_line(settings.PLAN)
    from lth_keras import api
    from lth_keras.lottery import directory

    options = dataclasses.asdict(chosen[settings.Planning])
    output_dir = chosen[settings.Run].output_dir or os.path.join(directory.OUTPUT_ROOT, "plan")
    result = api.plan(options.pop("runs"), output_dir=output_dir, **options)
    print(result.markdown)
    print("wrote:")
    for name in result.files:
        print(f"  {os.path.join(output_dir, name)}")


if __name__ == "__main__":
    cli.run(main)
