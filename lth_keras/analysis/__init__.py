"""Analysis of find_tickets and transfer runs: the paper's figures and tables.

  collect   reads run directories (refusing malformed ones) into RunRecords
  cells     groups runs that differ only by seed; mean ± std over seeds
  targets   per target dataset, which cells form which line of Fig. 3 / Fig. 4
  tables    Table 2 (best pruned model vs scratch) and Table 3 (its sparsity)
  figures   Fig. 3, Fig. 4 and per-layer density plots
  masks     mask overlap (Jaccard index) between ticket runs
  report    all of the above as {file name: bytes}, for the analyze binary

Nothing here imports TensorFlow: the analysis reads JSON and .npz files only.
"""
