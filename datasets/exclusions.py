"""Exclusion lists: the examples of a split that the loader never reads (`Task.exclude`).

    ids = exclusions.excluded_ids("dups.json", dataset.root, "train")
    skip = [i in ids for i in exclusions.split_ids(dataset, "train")]

An exclusion file is either an `impax dedup --json` report (tools/dedup.py
writes it) or a plain list of record ids, one a line. Reading one is part of
the format, so the loader needs nothing of the tools that write them.
"""

import json
import os

from impax.datasets import prepared, records


class ExclusionError(ValueError):
  """An exclusion file that cannot be read; the message says what to do."""


def excluded_ids(path: str, dataset_root: str, split: str) -> set[str]:
  """Ids of `split` of the dataset at `dataset_root` that an exclusion file names.

  A dedup report (JSON): its leaks when it has them, else every member of a
  group but the group's first (one copy of each example stays). Any other
  file: one id per line, for whichever dataset it is given with."""
  try:
    with open(path, encoding="utf-8-sig") as f:
      text = f.read()
  except OSError as e:
    raise ExclusionError(f"exclusion file {path} cannot be read: {e.strerror or e}") from None
  if not path.endswith(".json"):
    return {line.strip() for line in text.splitlines() if line.strip()}
  try:
    obj = json.loads(text)
    if "leaks" in obj:
      members = obj["leaks"]
    else:
      members = [m for g in obj["groups"] for m in g[1:]]
    root = os.path.realpath(dataset_root)
    return {m["id"] for m in members
            if m["split"] == split and os.path.realpath(m["dataset"]) == root}
  except (ValueError, KeyError, TypeError) as e:
    raise ExclusionError(f"exclusion file {path} is not a dedup report (`impax dedup --json`): "
                         f"{type(e).__name__}: {e}") from None


def split_ids(dataset: prepared.PreparedDataset, split: str) -> list[str]:
  """The record ids of a split, by position."""
  return [records.Record.parse(data).id for _, data in dataset.records(split)]
