"""`esc50`: ESC-50's `meta/esc50.csv`, its 2,000 five-second clips in five folds.

    filename,fold,target,category,esc10,src_file,take
    1-100032-A-0.wav,1,0,dog,True,100032,A

`--input` is `ESC-50/meta/esc50.csv`; the clips are `ESC-50/audio/<filename>`.
The label is `category`. The split name picks the folds, for ESC-50's
cross-validation: `--split fold5` builds fold 5 only, `--split fold1234` folds
1 to 4; any other split name builds every fold.
"""

import re

from impax.datasets import files, registry
from impax.datasets.specs import _csv

HEADER = "filename,fold,target,category,esc10,src_file,take"


def folds_of(split: str) -> frozenset[int] | None:
  """The folds a split name selects: fold5 -> {5}, fold1234 -> {1, 2, 3, 4}; else None (all)."""
  if m := re.fullmatch(r"folds?-?([1-9]+)", split):
    return frozenset(int(d) for d in m[1])
  return None


def context(path: str, header: list[bytes], split: str) -> dict:
  columns = _csv.columns(path, header, ("filename", "fold", "category"), HEADER)
  return {"path": path, "columns": columns, "folds": folds_of(split),
          "audio": files.join(registry.corpus_root(path), "audio")}


def parse(ctx: dict, number: int, raw: bytes) -> registry.Entry | registry.BadEntry | None:
  path, columns = ctx["path"], ctx["columns"]
  try:
    row = _csv.row(number, raw, columns)
    if row is None:
      return None
    filename, fold, category = (row[columns[k]].strip() for k in ("filename", "fold", "category"))
    if not (fold.isascii() and fold.isdigit()):  # int() refuses "²", which isdigit() takes
      raise _csv.LineError(f"line {number}: fold must be a fold number (1-5), got {fold!r}")
    if not filename or "/" in filename:
      raise _csv.LineError(f"line {number}: filename must name a file in audio/, got {filename!r}")
    if not category:
      raise _csv.LineError(f"line {number}: category (the label) is empty")
  except _csv.LineError as e:
    return _csv.bad(path, number, str(e))
  if ctx["folds"] is not None and int(fold) not in ctx["folds"]:
    return None
  return registry.Entry(index=number - 1, source=f"{path}:{number}", id=filename,
                        media={"audio": files.join(ctx["audio"], filename)},
                        labels=(category,))


SPEC = registry.register(registry.DatasetSpec(
    name="esc50", lines=registry.LineFormat(parse=parse, header_lines=1, context=context),
    description="ESC-50's meta/esc50.csv; clips in audio/; --split foldN or fold1234 picks folds."))
