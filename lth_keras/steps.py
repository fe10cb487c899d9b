"""A point of training, in steps: "2ep" (two epochs), "150it" (150 steps) or a plain number
of epochs, as open_lth's Step reads them.

Rewind points and training budgets are such points. An epoch is a run's steps_per_epoch
steps (its input plan's, recorded in config.json "input"), so "2ep" and "252it" are one
point when an epoch has 126 steps. A point's label names it in files: whole epochs keep
the two-digit epoch ("02"), others the step count ("040it").
"""

from __future__ import annotations

import re

_POINT = re.compile(r"\s*(\d+)\s*(ep|it)?\s*")


def parse(text, steps_per_epoch):
    """The step count of `text` ("2", "2ep", "150it"); ValueError when it is none."""
    match = _POINT.fullmatch(str(text))
    if not match:
        raise ValueError(f"{text!r} is not a point of training: give epochs (2 or 2ep) or "
                         "steps (150it)")
    count, unit = int(match.group(1)), match.group(2) or "ep"
    return count if unit == "it" else count * int(steps_per_epoch)


def label(steps, steps_per_epoch):
    """The name of a point in files: "02" at a whole epoch, "040it" elsewhere."""
    epochs, rest = divmod(int(steps), int(steps_per_epoch))
    return f"{epochs:02d}" if rest == 0 else f"{int(steps):03d}it"


def text(steps, steps_per_epoch):
    """A point for people: "2 ep" at a whole epoch, "40 it (0.32 ep)" elsewhere."""
    epochs, rest = divmod(int(steps), int(steps_per_epoch))
    if rest == 0:
        return f"{epochs} ep"
    return f"{steps} it ({steps / steps_per_epoch:.2f} ep)"


def check(items):
    """ValueError naming the first item of `items` that is not a point."""
    for item in items:
        parse(item, 1)
