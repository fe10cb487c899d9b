"""How well each ticket search's network learnt its natural source (sources.md/.csv).

A ticket found by a network that has barely trained on its source says little about what
natural images teach; a reader of a transfer result needs to see that the source network
learnt. Per ticket search on a natural source: level 0 (the dense network, which picks
nothing) and the sparsest finished level, validation accuracy (what a bar such as "at
least 60% in every search" is judged on, never test) beside test accuracy.
"""

import json
import math

from lth_keras.analysis.collect import TICKETS
from lth_keras.analysis.tables import MISSING

CSV = ("source", "recipe", "tickets_seed", "model", "image_size", "train_fraction", "levels",
       "level0_val_accuracy", "level0_test_accuracy", "last_level", "last_density",
       "last_val_accuracy", "last_test_accuracy", "path")


def rows(runs, natural):
    """One row per find_tickets run on a natural source with a finished level 0, by source,
    recipe and seed. `recipe` names the settings that tell a source's runs of one recipe
    from its others (a stability grid's runs rewound to another epoch, another preset):
    empty when the source has one."""
    mine = [r for r in runs
            if r.condition == TICKETS and r.dataset in natural and 0 in r.levels]
    out = []
    for run in mine:
        last = max(run.levels)
        siblings = [r.setting for r in mine if r.dataset == run.dataset]
        out.append({"source": run.dataset, "recipe": _differing(run.setting, siblings),
                    "tickets_seed": run.tickets_seed, "model": run.model,
                    "image_size": run.image_size, "train_fraction": run.train_fraction,
                    "levels": len(run.levels),
                    "level0_val_accuracy": run.levels[0].val_accuracy,
                    "level0_test_accuracy": run.levels[0].test_accuracy,
                    "last_level": last, "last_density": run.levels[last].density,
                    "last_val_accuracy": run.levels[last].val_accuracy,
                    "last_test_accuracy": run.levels[last].test_accuracy, "path": run.path})
    return sorted(out, key=lambda r: (r["source"], r["recipe"], r["tickets_seed"]))


def _differing(setting, siblings):
    """'name=value, ...' of the settings in which `setting` differs from another of
    `siblings`."""
    names = sorted({name for other in siblings for name in set(other) | set(setting)
                    if json.dumps(other.get(name)) != json.dumps(setting.get(name))})
    return ", ".join(f"{name}={json.dumps(setting.get(name))}" for name in names)


def markdown(table):
    lines = ["# The source networks: how well each ticket search learnt its source", "",
             "Accuracy (%) of each find_tickets run on a natural source: level 0 (the dense "
             "network) and the sparsest level it finished, validation beside test. A ticket "
             "from a network that has barely learnt its source says little about natural "
             "images.", ""]
    if not table:
        return "\n".join(lines + ["No finished level 0 of a natural source."]) + "\n"
    lines += ["| source | model | tickets seed | level 0 val | level 0 test | last level "
              "(density) | last val | last test |", "|---|---|---:|---:|---:|---|---:|---:|"]
    for r in table:
        recipe = f"; {r['recipe']}" if r["recipe"] else ""
        lines.append(f"| {r['source']} | {r['model']} {r['image_size']} px, "
                     f"{r['train_fraction']:g} of train{recipe} | {r['tickets_seed']} | "
                     f"{_percent(r['level0_val_accuracy'])} | "
                     f"{_percent(r['level0_test_accuracy'])} | {r['last_level']} "
                     f"({r['last_density']:.3f}) | {_percent(r['last_val_accuracy'])} | "
                     f"{_percent(r['last_test_accuracy'])} |")
    for source, recipe in sorted({(r["source"], r["recipe"]) for r in table}):
        mine = [r for r in table if (r["source"], r["recipe"]) == (source, recipe)]
        low = min(mine, key=lambda r: r["level0_val_accuracy"])
        lines += ["", f"{source}{f' ({recipe})' if recipe else ''}: the lowest level-0 "
                      f"validation accuracy of {len(mine)} search(es) is "
                      f"{_percent(low['level0_val_accuracy'])} (tickets seed "
                      f"{low['tickets_seed']})."]
    return "\n".join(lines) + "\n"


def _percent(x):
    return MISSING if x is None or math.isnan(x) else f"{100 * x:.2f}"
