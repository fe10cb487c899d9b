"""The ticket against its controls, level by level and replicate by replicate, from a grid.

  python tools/controls.py --grid=outputs/fc_lenet --target=fashion_mnist \
      --controls=reinit,random --ranges=8-14,1-14
  python tools/controls.py --grid=outputs/quick_cifar --target=histology_nuclei \
      --source=cifar10_jpeg --seeds=0,1,2,3 --transfer_seeds=0,1 --controls=reinit,random,scratch

For each replicate (tickets seed/transfer seed), a table of test accuracy (%) at every
level of the ticket and of each control, and the ticket's lead over each. The ticket is
its `rewind` transfer (m_L ⊙ θ_k with a fresh head, the grid's `rewind` or, on the
tickets' own data, `target_transfer` condition; --ticket=final for m_L ⊙ θ_i): every
control starts with a fresh head too, so the head is never what differs (the ticket
run's own level would start from θ_k's trained head). A control is the transfer run of
that condition from the same ticket run and transfer seed (scratch: the dense model,
one number for every level). With --transfer_seeds the grid's run names carry -t<seed>.

Then, for each level range, the paired contrast with the ticket search as the unit:
each replicate contributes its mean difference over the range (levels of one search
share one mask sequence, one θ_k and one data order, so they are not replicates), each
search the mean over its transfer seeds, and the mean over searches gets a t-interval
(n - 1 degrees of freedom), its p and the effect detectable at 80% power, "not
estimable" below 5 searches (analysis/statistics.py). Every contrast printed, over
every range and pair, is one exploratory family: p_holm is Holm-adjusted over it (an
untestable one counts), and nothing gets a verdict. Name the range before looking: a
range picked from the table is not even exploratory evidence.
"""

import argparse
import os
import sys

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from lth_keras import lottery  # noqa: E402  (numpy and scipy only: no framework)
from lth_keras.analysis.statistics import (detectable_text, holm,  # noqa: E402
                                           search_difference)
from lth_keras.errors import UserError  # noqa: E402


def _accuracies(run):
    return {level: 100 * run.metrics(level)["test"]["accuracy"]
            for level in run.finished_levels()}


def read(grid, target, source, ticket, controls, seeds, transfer_seeds=None):
    """{(seed, transfer seed): ({line: {level: test accuracy %}}, {level: density})};
    `transfer_seeds` None: the grid has none (run names without -t<seed>, the transfer
    seed is the tickets seed)."""
    out = {}
    for seed in seeds:
        tickets = lottery.TicketRun(os.path.join(grid, "tickets", f"{source}-seed{seed}"))
        density = {level: tickets.metrics(level)["density"]["density"]
                   for level in tickets.finished_levels()}
        for t in (transfer_seeds if transfer_seeds is not None else [seed]):
            suffix = f"-t{t}" if transfer_seeds is not None else ""
            lines = {}
            for line in (ticket, *controls):
                if line == "scratch":  # one dense model: the same number at every level
                    dense = _accuracies(lottery.TransferRun(os.path.join(
                        grid, "transfer", target, f"dense-scratch-seed{seed}{suffix}")))[0]
                    lines[line] = dict.fromkeys(density, dense)
                else:
                    lines[line] = _accuracies(lottery.TransferRun(os.path.join(
                        grid, "transfer", target, f"{source}-{line}-seed{seed}{suffix}")))
            out[(seed, t)] = lines, density
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
    """The SearchDifference of line a minus line b, each replicate's difference averaged
    over `levels`, or None when a replicate lacks one of the levels."""
    means = {}
    for replicate, (lines, _) in data.items():
        if any(level not in lines[a] or level not in lines[b] for level in levels):
            return None
        means[replicate] = float(np.mean([lines[a][level] - lines[b][level]
                                          for level in levels]))
    return search_difference(means, dict.fromkeys(means, 0.0))


def _range(text):
    low, _, high = text.partition("-")
    return list(range(int(low), int(high or low) + 1))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--grid", required=True, help="the grid's --output_dir")
    parser.add_argument("--target", required=True, help="the folder under <grid>/transfer/")
    parser.add_argument("--source", default="fashion_mnist", help="the tickets' dataset label")
    parser.add_argument("--ticket", default="rewind", choices=("rewind", "final"))
    parser.add_argument("--controls", default="reinit,random")
    parser.add_argument("--seeds", default="0,1", help="the tickets seeds (searches)")
    parser.add_argument("--transfer_seeds", default="",
                        help="the grid's --transfer_seeds (its run names end in -t<seed>)")
    parser.add_argument("--ranges", default="", help="level ranges of the contrasts, e.g. 8-14")
    options = parser.parse_args(argv)
    controls = options.controls.split(",")
    seeds = [int(s) for s in options.seeds.split(",")]
    transfer_seeds = ([int(t) for t in options.transfer_seeds.split(",")]
                      if options.transfer_seeds else None)
    try:
        data = read(options.grid, options.target, options.source, options.ticket, controls,
                    seeds, transfer_seeds)
    except UserError as e:
        sys.exit(f"controls: error: {e}")
    ticket = options.ticket
    out = [f"# {ticket} against {', '.join(controls)} on {options.target} "
           f"(test accuracy, %)\n"]
    for (seed, t), (lines, density) in data.items():
        out += [f"## Tickets seed {seed}, transfer seed {t}\n",
                seed_table(lines, density, ticket, controls), ""]
    pairs = [(ticket, c) for c in controls] + [
        (a, b) for i, a in enumerate(controls) for b in controls[i + 1:]
        if "scratch" not in (a, b)]
    ranges = [text for text in options.ranges.split(",") if text]
    found = {(text, a, b): contrast(data, a, b, _range(text))
             for text in ranges for a, b in pairs}
    tested = [key for key, d in found.items() if d is not None]
    adjusted = dict(zip(tested, holm([found[key].p for key in tested])))
    for text in ranges:
        out += [f"## Searches as the unit, mean over levels {text}\n",
                "| contrast | per search | mean | 95% CI | p | p_holm | detectable (80%) |",
                "|---|---|---:|---:|---:|---:|---:|"]
        for a, b in pairs:
            d = found[text, a, b]
            if d is None:
                out.append(f"| {a} − {b} | — (a replicate lacks a level) | | | | | |")
                continue
            per = ", ".join(_signed(m) for m in d.search_means.values())
            ci = "—" if np.isnan(d.ci[0]) else f"[{_signed(d.ci[0])}, {_signed(d.ci[1])}]"
            p, p_holm = ("—" if np.isnan(x) else f"{x:.3f}" for x in (d.p, adjusted[text, a, b]))
            out.append(f"| {a} − {b} | {per} | {_signed(d.mean)} | {ci} | {p} | {p_holm} | "
                       f"{detectable_text(d, scale=1)} |")
        out.append("")
    if tested:
        out.append(f"Exploratory: p_holm is Holm-adjusted over the {len(tested)} contrast(s) "
                   "above, every range and pair; no verdicts.")
    out.append(f"n = {len(seeds)} ticket searches"
               + (f", {len(transfer_seeds)} transfer seeds each" if transfer_seeds else "")
               + ". float32 results differ between machines; "
               "bit-identical reruns need the same machine, software and --deterministic.")
    print("\n".join(out))


if __name__ == "__main__":
    main()
