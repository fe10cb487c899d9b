"""Finds lottery tickets by iterative magnitude pruning with late resetting.

  python -m lth_keras.find_tickets --source=fashion_mnist --flagfile=flags/quick.cfg

Re-running the same command resumes: finished levels are skipped and an
interrupted level continues from its last epoch checkpoint. A thin shell over
lth_keras.lottery.tickets (also lth_keras.find_tickets() in Python); its flags
are the Pruning settings and the common ones (lth_keras/settings.py).
"""

from lth_keras import cli, settings

settings.define_flags([settings.Pruning])


main = cli.protocol_main("find_tickets")


if __name__ == "__main__":
    cli.run(main)
