"""Draws the paper's figures and tables from find_tickets and transfer run directories.

  python -m lth_keras.analyze --runs=outputs/ --output_dir=outputs/analysis

Writes fig3.png/.pdf, fig4.png/.pdf, table2.md/.csv/.tex, table3.md/.csv/.tex,
levels.md/.csv, density_<run>.png, mask_overlap.csv/.md, and primary.md/.csv when a
primary level is named (the grid's, or --primary_level). Partial results are fine: a level
still running is left out, a missing cell is "—". A malformed run directory is
refused before anything is written. See lth_keras/analysis/tables.py for how
the best level is picked.
"""

import os

from absl import flags

from lth_keras import cli
from lth_keras.analysis.targets import NATURAL_SOURCES

flags.DEFINE_list("runs", None, "Comma list of directories searched for run directories "
                                "(find_tickets and transfer).")
flags.DEFINE_string("density_run", None,
                    "A run directory for the per-layer density plot (default: every "
                    "find_tickets run found).")
flags.DEFINE_list("natural_sources", list(NATURAL_SOURCES),
                  "Datasets that count as natural-image sources; tickets from any other "
                  "dataset are a related (non-natural) source in Fig. 4.")
flags.DEFINE_bool("mask_overlap", True,
                  "Compute the Jaccard overlap of ticket masks (reads every mask.npz).")
flags.DEFINE_string("overlap_levels", "all",
                    "'all' or a comma list of levels at which to compare masks.")
flags.DEFINE_integer("primary_level", None,
                     "The level of the primary result (ticket - scratch, paired, with its CI "
                     "and power). Default: the one the grid named before it ran "
                     "(experiment --primary_level, in its grid.json); none, none.")

FLAGS = flags.FLAGS


def _overlap_levels(text):
    if text.strip() == "all":
        return None
    try:
        return {int(x) for x in text.split(",") if x.strip()}
    except ValueError:
        raise cli.UserError(f"--overlap_levels must be 'all' or a comma list of integers, "
                            f"got {text!r}")


def main(argv):
    if len(argv) > 1:
        raise cli.UserError(f"unexpected arguments: {' '.join(argv[1:])}")
    cli.check(FLAGS.runs, "--runs is required: directories holding run directories")
    levels = _overlap_levels(FLAGS.overlap_levels)

    from lth_keras import api, runs

    output_dir = FLAGS.output_dir or os.path.join(runs.OUTPUT_ROOT, "analysis")
    cli.check(FLAGS.primary_level is None or FLAGS.primary_level >= 1,
              "--primary_level must be a pruned level (>= 1)")
    result = api.analyze(FLAGS.runs, natural_sources=FLAGS.natural_sources,
                         density_run=FLAGS.density_run, mask_overlap=FLAGS.mask_overlap,
                         overlap_levels=levels, output_dir=output_dir,
                         primary_level=FLAGS.primary_level)
    print(result.table2_markdown)
    for note in result.notes:
        print(f"note: {note}")
    print("wrote:")
    for name in result.files:
        print(f"  {os.path.join(output_dir, name)}")


if __name__ == "__main__":
    cli.run(main)
