"""Fine-tunes the tickets of a find_tickets run on a target dataset, or trains a control.

  python -m lth_keras.transfer --tickets=outputs/tickets/RUN --target=histology_nuclei
  python -m lth_keras.transfer --tickets=outputs/tickets/RUN --target=artist1 --reinit
  python -m lth_keras.transfer --tickets=outputs/tickets/RUN --target=artist1 --init=final
  python -m lth_keras.transfer --tickets=outputs/tickets/RUN --target=artist1 --scratch

The model and input size are the ticket's. Re-running the same command skips
finished levels and resumes an interrupted one from its last epoch. A thin shell
over lth_keras.lottery.fine_tuning (also lth_keras.transfer() in Python); its flags
are the Transfer settings and the common ones (lth_keras/settings.py).
"""

from lth_keras import cli, settings

settings.define_flags([settings.Transfer])


main = cli.protocol_main("transfer")


if __name__ == "__main__":
    cli.run(main)
