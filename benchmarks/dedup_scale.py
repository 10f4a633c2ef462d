"""Near-duplicate search at scale: the multi-index against comparing all pairs, in one run.

    .venv/bin/python benchmarks/dedup_scale.py [--records 100000] [--subset 5000] [--threshold 10]

Random 64-bit fingerprints with planted near copies (1% of the records, each
with up to `threshold` flipped bits), as `impax dedup` groups them: the index
(tools/dedup.py, multi-index hashing and union-find) on all records, and
the all-pairs baseline on a subset, extrapolated by the number of pairs
(n^2 / 2) to the full size. Prints JSON with both times, their ratio, and
whether the index found every planted copy and every pair the baseline found
on the subset (goal: 100,000 records in under 60 s).
"""

import argparse
import json
import os
import time

import numpy as np

from impax.tools import dedup


def fingerprints(n: int, threshold: int, seed: int = 0) -> tuple[dedup.Fingerprints, int]:
  rng = np.random.default_rng(seed)
  hashes = rng.integers(0, 1 << 62, n, dtype=np.int64).astype(np.uint64) * np.uint64(4) \
      + rng.integers(0, 4, n).astype(np.uint64)
  planted = n // 100
  for i in range(planted):  # record n - planted + i is a near copy of record i
    flips = rng.choice(64, rng.integers(0, threshold + 1), replace=False)
    hashes[n - planted + i] = hashes[i] ^ np.uint64(sum(1 << int(b) for b in flips))
  members = [dedup.Member("bench", "train", f"r{i}", i) for i in range(n)]
  return dedup.Fingerprints(members, [f"{i:064x}" for i in range(n)], np.zeros(n, np.int8),
                            hashes, np.arange(n + 1)), planted  # one video hash a record


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--records", type=int, default=100_000)
  parser.add_argument("--subset", type=int, default=5_000)
  parser.add_argument("--threshold", type=int, default=dedup.DEFAULT_THRESHOLD)
  args = parser.parse_args()
  fp, planted = fingerprints(args.records, args.threshold)

  start = time.perf_counter()
  found = dedup.find([fp], args.threshold)
  index_s = time.perf_counter() - start
  group_of = {m.position: k for k, g in enumerate(found.groups) for m in g}
  n = args.records
  missed = sum(group_of.get(i, -1) != group_of.get(n - planted + i, -2) for i in range(planted))

  subset = fp.values[:args.subset]
  start = time.perf_counter()
  brute = dedup.brute_force_pairs(subset, args.threshold)
  brute_subset_s = time.perf_counter() - start
  start = time.perf_counter()
  indexed = dedup.near_pairs(subset, args.threshold)
  index_subset_s = time.perf_counter() - start
  brute_full_s = brute_subset_s * (n * (n - 1)) / (args.subset * (args.subset - 1))
  print(json.dumps({
      "records": n, "threshold": args.threshold, "cpus": os.cpu_count(),
      "index_s": round(index_s, 2),  # fingerprints to groups, all records
      # Random fingerprints within the threshold are groups too (about 50 at 10 bits).
      "groups": len(found.groups), "planted_copies": planted, "planted_missed": missed,
      "subset": args.subset, "brute_force_subset_s": round(brute_subset_s, 2),
      "index_subset_s": round(index_subset_s, 3),
      "subset_pairs_equal": {tuple(p) for p in brute.tolist()} == {tuple(p) for p in indexed.tolist()},
      "brute_force_extrapolated_s": round(brute_full_s, 1),
      "brute_force_over_index": round(brute_full_s / index_s, 1),
  }, indent=2))


if __name__ == "__main__":
  main()
