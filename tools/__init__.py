"""impax.tools: the dataset tools, above the format package.

  verify.py   `impax verify DIR [--deep]`: are the files what metadata.json says?
  dedup.py    `impax dedup`: duplicate groups and test-set leaks, from the records' fingerprints
  card.py     `impax card DIR`: a dataset card, one self-contained HTML page
  inspect.py  `impax inspect DIR`: what a dataset holds, one example's frames as PNG

Each reads a prepared dataset as every reader does: metadata.json and shards through
datasets/prepared.py, records through records.Record, files through datasets/files.py.

May import: impax.datasets and impax.tools.
"""
