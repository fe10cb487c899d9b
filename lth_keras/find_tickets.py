"""Finds lottery tickets by iterative magnitude pruning with late resetting.

  python -m lth_keras.find_tickets --source=fashion_mnist --flagfile=flags/quick.cfg

Re-running the same command resumes: finished levels are skipped and an
interrupted level continues from its last epoch checkpoint. A thin shell over
lth_keras.find_tickets() (lth_keras/api.py); its flags are the Pruning settings
(lth_keras/settings.py) and the common ones (lth_keras/cli.py).
"""

from lth_keras import cli, settings

settings.define_flags([settings.Pruning])


def main(argv):
    cli.train(argv, settings.FIND_TICKETS, "run_find_tickets")


if __name__ == "__main__":
    cli.run(main)
