"""Per target dataset: which cells are the lines of Fig. 3, Fig. 4 and the columns of Table 2.

A target is a dataset that transfers were fine-tuned on, or a non-natural
dataset that tickets were searched on. Its cells are split by architecture
(model and input size) and by recipe (the training settings of settings.RECIPE but
the seed: batch, learning rate and schedule, epochs, patience, precision, BatchNorm),
so a view never mixes models or recipes: every comparison in it is like with like, and
a root that holds two recipes gives one view per recipe, titled by what differs.
Within a view:

  sources          rewind transfers (m_L ⊙ θ_k), one line per ticket source
  target_tickets   find_tickets runs on the target itself, full training set
  reinit           transfers of m_L ⊙ θ'_0 (a fresh initialisation)
  random           random pruning: transfers of r_L ⊙ θ_k, a random mask with the
                   ticket's alive count in every layer (or r_L ⊙ θ'_0, fresh weights)
  final            transfers of m_L ⊙ θ_i(L) (Fig. 4, row 1)
  train_fractions  find_tickets runs on the target with every training-set
                   fraction, when one is below 1 (Fig. 4, row 3)
  scratch          the dense model trained on the target (the baseline)
"""

from __future__ import annotations

import dataclasses

import json

from lth_keras import settings
from lth_keras.analysis.cells import distinct_labels
from lth_keras.analysis.collect import TICKETS, AnalysisError
from lth_keras.datasets import SOURCES, TARGETS

NATURAL_SOURCES = tuple(sorted(SOURCES))  # cifar10, cifar100, fashion_mnist: the paper's order
TARGET_TICKETS = "target tickets"


@dataclasses.dataclass(frozen=True)
class Line:
    label: str
    cell: object  # cells.Cell
    role: str  # scratch, source, target_tickets, reinit, random, final, train_fraction


@dataclasses.dataclass
class TargetView:
    target: str
    model: str
    image_size: int
    title: str
    natural: tuple
    scratch: list = dataclasses.field(default_factory=list)
    sources: list = dataclasses.field(default_factory=list)
    target_tickets: list = dataclasses.field(default_factory=list)
    reinit: list = dataclasses.field(default_factory=list)
    random: list = dataclasses.field(default_factory=list)
    final: list = dataclasses.field(default_factory=list)
    train_fractions: list = dataclasses.field(default_factory=list)
    recipe: str = ""  # the recipe as JSON text: views of two targets compare only when equal

    @property
    def baseline(self):
        """The scratch line beside every comparison: the one with the most seeds."""
        if not self.scratch:
            return None
        return max(self.scratch, key=lambda line: len(line.cell.runs))

    def related_sources(self):
        """Rewind lines whose tickets come from another non-natural dataset (Fig. 4 row 2)."""
        return [line for line in self.sources
                if line.cell.source not in self.natural and line.cell.source != self.target]

    def fig3_lines(self):
        return self.sources + self.target_tickets + self.reinit + self.random


def build_views(cells, natural=NATURAL_SOURCES):
    """TargetViews, the paper's targets first (in Table 1 order), then the others by name."""
    natural = tuple(natural)
    targets = {c.dataset for c in cells
               if c.kind == "transfer" or (c.kind == "find_tickets" and c.dataset not in natural)}
    groups = {}
    for cell in cells:
        if cell.dataset in targets:
            key = (cell.dataset, cell.model, cell.image_size, json.dumps(recipe(cell)))
            groups.setdefault(key, []).append(cell)
    for (target, *_), members in groups.items():
        # Every readable transfer draws its head by one rule; a record of another would be
        # compared with a baseline whose head differs, so it is refused, not mixed.
        heads = {str(c.setting.get("head")) for c in members if c.kind == "transfer"}
        if len(heads) > 1:
            raise AnalysisError(f"{target}: transfers with different head rules "
                                f"({', '.join(sorted(heads))}) under one root: analyse them "
                                "separately")
    order = {name: i for i, name in enumerate(TARGETS)}
    keys = sorted(groups, key=lambda k: (order.get(k[0], len(order)), *k))
    per_target = {}
    for key in keys:
        per_target.setdefault(key[0], []).append(key)

    views = []
    for target, model, size, recipe_text in keys:
        title = _title(target, model, size, recipe_text, per_target[target])
        view = TargetView(target, model, size, title, natural, recipe=recipe_text)
        _fill(view, groups[(target, model, size, recipe_text)])
        views.append(view)
    return views


def recipe(cell):
    """{setting: value} of the training recipe a cell's runs used (settings.RECIPE but the
    seed; defaults where the record leaves a setting out)."""
    defaults = {f.name: f.default for group in settings.FIND_TICKETS
                for f in dataclasses.fields(group)}
    out = {}
    for name in settings.RECIPE:
        if name != "seed":
            value = cell.setting.get(name, defaults[name])
            out[name] = list(value) if isinstance(value, (list, tuple)) else value
    return out


def _title(target, model, size, recipe_text, siblings):
    """The target's name, with the architecture and the recipe settings that tell this view
    from the target's other views."""
    if len(siblings) == 1:
        return target
    parts = []
    if len({(m, s) for _, m, s, _ in siblings}) > 1:
        parts.append(f"{model}, {size}px")
    mine, others = json.loads(recipe_text), [json.loads(k[3]) for k in siblings]
    differing = [name for name in mine if len({json.dumps(o[name]) for o in others}) > 1]
    parts += [f"{name}={_short(mine[name])}" for name in differing]
    return f"{target} ({', '.join(parts)})"


def _short(value):
    if isinstance(value, list):
        return ",".join(map(str, value))
    return f"{value:g}" if isinstance(value, float) else str(value)


def _fill(view, cells):
    def source_order(cell):
        s = cell.source or ""
        return (s not in view.natural, s)

    def lines(role, chosen, label):
        chosen = sorted(chosen, key=source_order)
        labels = distinct_labels(chosen, [label(c) for c in chosen])
        return [Line(text, c, role) for text, c in zip(labels, chosen)]

    def of(condition):
        return [c for c in cells if c.condition == condition]

    view.scratch = lines("scratch", of("scratch"), lambda c: "scratch")
    view.sources = lines("source", of("rewind"), lambda c: (
        c.source if c.source != view.target else f"{c.source} tickets, fine-tuned"))
    view.reinit = lines("reinit", of("reinit"), lambda c: f"reinit ({c.source} tickets)")
    view.random = lines("random", of("random") + of("random_reinit"), lambda c: (
        f"random mask{', fresh weights' if c.condition == 'random_reinit' else ''} "
        f"({c.source} tickets)"))
    view.final = lines("final", of("final"), lambda c: f"{c.source} θ_i (final weights)")
    searched = sorted(of(TICKETS), key=lambda c: c.train_fraction)
    view.target_tickets = lines("target_tickets", [c for c in searched if c.train_fraction >= 1],
                                lambda c: TARGET_TICKETS)
    if any(c.train_fraction < 1 for c in searched):
        view.train_fractions = lines("train_fraction", searched,
                                     lambda c: f"train fraction {c.train_fraction:g}")
        view.train_fractions.sort(key=lambda line: line.cell.train_fraction)
