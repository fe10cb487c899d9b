"""Analysis of find_tickets and transfer runs: the paper's figures and tables.

  collect          reads run directories (refusing malformed ones) into RunRecords
  cells            groups runs that differ only by seed; mean ± std over ticket searches
  views            per target dataset and recipe, which cells form which line of Fig. 3 /
                   Fig. 4
  statistics       comparisons with the ticket search as the unit: interval, test, power,
                   variance components, Holm
  primary          the primary result named in advance, and the exploratory contrasts
  planning         the study planner: searches and transfer seeds for a named effect
  tables           Table 2 (best pruned model vs scratch) and Table 3 (its sparsity)
  sources          how well each ticket search's network learnt its natural source
  figures          Fig. 3, Fig. 4 and per-layer density plots
  masks            mask overlap (Jaccard index) between ticket runs
  stability_report the instability analysis's tables, stable k and figure
  report           all of the above as {file name: bytes}, for the analyze binary

Nothing here imports TensorFlow: the analysis reads JSON and .npz files only.
"""
