"""Draws the paper's figures and tables from find_tickets and transfer run directories.

  python -m lth_keras.analyze --runs=outputs/ --output_dir=outputs/analysis

Writes fig3.png/.pdf, fig4.png/.pdf, table2.md/.csv/.tex, table3.md/.csv/.tex,
levels.md/.csv, sources.md/.csv, density_<run>.png, mask_overlap.csv/.md, and
primary.md/.csv when a primary level is named (the grid's, or --primary_level). Partial
results are fine: a level still running is left out, a missing cell is "—". A malformed
run directory is refused before anything is written. See lth_keras/analysis/tables.py for
how the best level is picked. A thin shell over lth_keras.analyze() (lth_keras/api.py); its
flags are the Analysis settings (lth_keras/settings.py).
"""

import dataclasses
import os

from lth_keras import cli, settings

settings.define_flags([settings.Analysis])


def main(argv):
    cli.no_arguments(argv)
    chosen, _ = settings.from_command_line(settings.ANALYZE)
    from lth_keras import api
    from lth_keras.lottery import directory

    options = dataclasses.asdict(chosen[settings.Analysis])
    output_dir = chosen[settings.Run].output_dir or os.path.join(directory.OUTPUT_ROOT,
                                                                 "analysis")
    result = api.analyze(options.pop("runs"), output_dir=output_dir, **options)
    print(result.table2_markdown)
    for note in result.notes:
        print(f"note: {note}")
    print("wrote:")
    for name in result.files:
        print(f"  {os.path.join(output_dir, name)}")


if __name__ == "__main__":
    cli.run(main)
