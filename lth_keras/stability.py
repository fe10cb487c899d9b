"""Instability analysis of a ticket run: from which rewind point k does a ticket train
stably to SGD noise (Frankle et al. 2020)?

  python -m lth_keras.find_tickets --flagfile=flags/quick.cfg --save_epochs=2,4 --save_steps=10
  python -m lth_keras.stability --tickets=outputs/tickets/RUN --levels=0,3,6 \
      --rewind_points=0,10it,1,2,4

For each level and k, pairs of copies of m_L ⊙ θ_k (--pairs, 3) train with the ticket
run's recipe, each on a data order of its own, for a fixed budget: from step k to the
step level 0 ended at (--budget), no early stopping. The error barrier along the
straight line between a pair says whether they ended in one basin; the barrier inside
the path and the gap between the ends say where it comes from. Writes stability.md /
.csv / .pairs.csv / .png into the run directory (outputs/stability/<ticket run>/ by
default). Re-running the same command skips finished copies and paths and resumes an
interrupted copy. A thin shell over
lth_keras.lottery.instability and lth_keras.analysis.stability_report (also
lth_keras.stability() in Python); its flags are the Stability settings and the
common ones (lth_keras/settings.py).
"""

from lth_keras import cli, settings

settings.define_flags([settings.Stability])


main = cli.protocol_main("stability")


if __name__ == "__main__":
    cli.run(main)
