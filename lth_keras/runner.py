"""The one way into the protocols: (protocol kind, typed settings, what was named) to a
finished run.

Every entry point reaches a protocol through `run`: the binaries (python -m
lth_keras.find_tickets, transfer, stability), the Python API (lth_keras.find_tickets, ...),
the grid (in its own process, and in a child process, which is the binary) and the tests.
`run` is the only place that maps a kind to its protocol; each protocol owns the start of
its run (lottery/inputs.py) and the stability kind its report.
"""

from lth_keras import settings

# Each kind's settings groups: what its binary's flags and its API function's options are.
GROUPS = {"find_tickets": settings.FIND_TICKETS, "transfer": settings.TRANSFER,
          "stability": settings.STABILITY}


def run(kind, chosen, given=frozenset(), verbose=True):
    """Runs (or resumes) protocol `kind` with `chosen` ({settings group: object}); `given`
    names the settings given explicitly (a transfer or stability run takes the rest of its
    recipe from its tickets). Returns the run directory (TicketRun, TransferRun or
    StabilityRun), finished; a stability run's report is written into it."""
    if kind == "find_tickets":
        from lth_keras.lottery import tickets

        return tickets.find_tickets(chosen, verbose=verbose)
    if kind == "transfer":
        from lth_keras.lottery import fine_tuning

        return fine_tuning.transfer(chosen, given, verbose=verbose)
    if kind == "stability":
        from lth_keras.lottery import instability

        analysis = instability.stability(chosen, given, verbose=verbose)
        # matplotlib only now: after the settings' checks and the run
        from lth_keras.analysis import stability_report

        stability_report.write_report(analysis, chosen[settings.Stability].threshold)
        return analysis
    raise ValueError(f"unknown protocol {kind!r}; known: {', '.join(GROUPS)}")
