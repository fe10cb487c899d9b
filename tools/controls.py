"""The ticket against its controls, level by level and seed by seed, from a grid's runs.

  python tools/controls.py --grid=outputs/fc_lenet --target=fashion_mnist \
      --ticket=tickets --controls=reinit,random,random_reinit --ranges=8-14,1-14
  python tools/controls.py --grid=outputs/quick_controls --target=histology_nuclei \
      --ticket=rewind --controls=reinit,random,scratch --ranges=1-6

For each ticket seed, a table of test accuracy (%) at every level of the ticket and
of each control, and the ticket's lead over each. The ticket is the ticket run's own
level (--ticket=tickets: Frankle & Carbin's setting, controls trained on the source)
or its fine-tuning on the target (--ticket=rewind); a control is the transfer run of
that condition from the same ticket run (scratch: the dense model, one number for
every level).

Then, for each level range, the paired contrast with the ticket search as the unit:
each search contributes its mean difference over the range (levels of one search
share one mask sequence, one θ_k and one data order, so they are not replicates),
and the mean of those over searches gets a t-interval (n - 1 degrees of freedom),
its p and the effect detectable at 80% power (analysis/statistics.py). Name the
range before looking: a range picked from the table is not a test.
"""

import argparse
import os
import sys

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from lth_keras import lottery  # noqa: E402  (numpy and scipy only: no framework)
from lth_keras.analysis.statistics import paired_difference  # noqa: E402
from lth_keras.errors import UserError  # noqa: E402


def _accuracies(run):
    return {level: 100 * run.metrics(level)["test"]["accuracy"]
            for level in run.finished_levels()}


def read(grid, target, source, ticket, controls, seeds):
    """{seed: ({line: {level: test accuracy %}}, {level: density})}."""
    out = {}
    for seed in seeds:
        tickets = lottery.TicketRun(os.path.join(grid, "tickets", f"{source}-seed{seed}"))
        metrics = {level: tickets.metrics(level) for level in tickets.finished_levels()}
        lines = {}
        for line in (ticket, *controls):
            if line == "tickets":
                lines[line] = {level: 100 * m["test"]["accuracy"] for level, m in metrics.items()}
            elif line == "scratch":  # one dense model: the same number at every level
                dense = _accuracies(lottery.TransferRun(os.path.join(
                    grid, "transfer", target, f"dense-scratch-seed{seed}")))[0]
                lines[line] = dict.fromkeys(metrics, dense)
            else:
                lines[line] = _accuracies(lottery.TransferRun(os.path.join(
                    grid, "transfer", target, f"{source}-{line}-seed{seed}")))
        out[seed] = lines, {level: m["density"]["density"] for level, m in metrics.items()}
    return out


def _signed(value):
    return f"{value:+.2f}".replace("-", "−")


def seed_table(lines, density, ticket, controls):
    head = ["level", "density", ticket, *controls, *(f"{ticket} − {c}" for c in controls)]
    rows = ["| " + " | ".join(head) + " |", "|" + "---:|" * len(head)]
    for level in sorted(density):
        if level not in lines[ticket]:
            continue
        cells = [str(level), f"{density[level]:.4f}", f"{lines[ticket][level]:.2f}"]
        cells += [f"{lines[c][level]:.2f}" if level in lines[c] else "—" for c in controls]
        cells += [_signed(lines[ticket][level] - lines[c][level]) if level in lines[c] else "—"
                  for c in controls]
        rows.append("| " + " | ".join(cells) + " |")
    return "\n".join(rows)


def contrast(data, a, b, levels):
    """({seed: that search's mean of line a minus line b over `levels`}, their
    PairedDifference), or None when a search lacks one of the levels."""
    means = {}
    for seed, (lines, _) in data.items():
        if any(level not in lines[a] or level not in lines[b] for level in levels):
            return None
        means[seed] = float(np.mean([lines[a][level] - lines[b][level] for level in levels]))
    return means, paired_difference(means, dict.fromkeys(means, 0.0))


def _range(text):
    low, _, high = text.partition("-")
    return list(range(int(low), int(high or low) + 1))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--grid", required=True, help="the grid's --output_dir")
    parser.add_argument("--target", required=True, help="the folder under <grid>/transfer/")
    parser.add_argument("--source", default="fashion_mnist", help="the tickets' dataset label")
    parser.add_argument("--ticket", default="tickets", choices=("tickets", "rewind", "final"))
    parser.add_argument("--controls", default="reinit,random")
    parser.add_argument("--seeds", default="0,1")
    parser.add_argument("--ranges", default="", help="level ranges of the contrasts, e.g. 8-14")
    options = parser.parse_args(argv)
    controls = options.controls.split(",")
    seeds = [int(s) for s in options.seeds.split(",")]
    try:
        data = read(options.grid, options.target, options.source, options.ticket, controls,
                    seeds)
    except UserError as e:
        sys.exit(f"controls: error: {e}")
    ticket = options.ticket
    out = [f"# {ticket} against {', '.join(controls)} on {options.target} "
           f"(test accuracy, %)\n"]
    for seed, (lines, density) in data.items():
        out += [f"## Ticket seed {seed}\n", seed_table(lines, density, ticket, controls), ""]
    pairs = [(ticket, c) for c in controls] + [
        (a, b) for i, a in enumerate(controls) for b in controls[i + 1:]
        if "scratch" not in (a, b)]
    for text in filter(None, options.ranges.split(",")):
        levels = _range(text)
        out += [f"## Searches as the unit, mean over levels {text}\n",
                "| contrast | per search | mean | 95% CI | p | detectable (80%) |",
                "|---|---|---:|---:|---:|---:|"]
        for a, b in pairs:
            found = contrast(data, a, b, levels)
            if found is None:
                out.append(f"| {a} − {b} | — (a search lacks a level) | | | | |")
                continue
            means, d = found
            per = ", ".join(_signed(means[seed]) for seed in d.pairs)
            out.append(f"| {a} − {b} | {per} | {_signed(d.mean)} | "
                       f"[{_signed(d.ci[0])}, {_signed(d.ci[1])}] | {d.p:.3f} | {d.mde:.2f} |")
        out.append("")
    out.append(f"n = {len(seeds)} ticket searches. float32 results differ between machines; "
               "bit-identical reruns need the same machine, software and --deterministic.")
    print("\n".join(out))


if __name__ == "__main__":
    main()
