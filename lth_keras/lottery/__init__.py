"""The protocol: finding lottery tickets and transferring them (docs/protocol.md).

  directory     a run directory: every path, the record, identity, lock
  levels        the one level loop of every protocol, and the level summaries
  tickets       IMP with late resetting (find_tickets)
  fine_tuning   the transfer conditions: what a transfer takes from its tickets, and
                fine-tuning (transfer)
  instability   the instability analysis: pairs of copies trained from θ_k for a fixed
                budget, the paths between them (stability)
  architecture  the network a run trains, from its record (source, target, a level's)
  inputs        what a run is made of, from its settings: dataset, input plan, engine

Light to import: Keras and the engines load only when a run starts, after its
settings and its ticket run are checked.
"""

from lth_keras.lottery.directory import RunDirectory, TicketRun, TransferRun

__all__ = ["RunDirectory", "TicketRun", "TransferRun"]
