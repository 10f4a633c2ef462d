"""`kinetics`: a Kinetics CSV (400, 600, 700, 700-2020) as released, with its clips downloaded.

    label,youtube_id,time_start,time_end,split
    abseiling,--07WQ2iBlw,1,11,train

`--input` is the CSV. The clip of a row is
`ROOT/<split>/<youtube_id>_<time_start:06d>_<time_end:06d>.mp4`: ROOT is the CSV's
folder, or its parent when the CSV lies in `annotations/` (the CVDF release:
k400/annotations/train.csv, k400/train/--07WQ2iBlw_000001_000011.mp4). Without a
`split` column the folder is the CSV's name (train.csv: train/). Extra columns
(is_cc) are ignored; a test CSV without `label` gives unlabeled clips.

Clips are already cut to [time_start, time_end], so they are read whole. A clip
that is not there (many have left YouTube) is counted as a failure of the read
stage, like any missing file, and the build goes on.
"""

import math
import os
import re

from impax.datasets import files, registry
from impax.datasets.specs import _csv

HEADER = "label,youtube_id,time_start,time_end,split"


def context(path: str, header: list[bytes], split: str) -> dict:
  columns = _csv.columns(path, header, ("youtube_id", "time_start", "time_end"), HEADER)
  stem = os.path.splitext(path.rstrip("/").rsplit("/", 1)[-1])[0]
  return {"path": path, "columns": columns, "root": registry.corpus_root(path), "stem": stem}


def _seconds(value: str, field: str, number: int) -> int:
  try:
    seconds = float(value)
  except ValueError:
    seconds = -1.0
  # float() reads "nan" and "inf", which int() refuses.
  if not (math.isfinite(seconds) and seconds >= 0 and seconds == int(seconds)):
    raise _csv.LineError(f"line {number}: {field} must be a whole number of seconds, got {value!r}")
  return int(seconds)


def parse(ctx: dict, number: int, raw: bytes) -> registry.Entry | registry.BadEntry | None:
  path, columns = ctx["path"], ctx["columns"]
  try:
    row = _csv.row(number, raw, columns, hint=": quote a label that holds a comma")
    if row is None:
      return None
    value = lambda name: row[columns[name]].strip() if name in columns else ""
    youtube_id = value("youtube_id")
    if not re.fullmatch(r"[A-Za-z0-9_-]+", youtube_id):
      raise _csv.LineError(f"line {number}: youtube_id {youtube_id!r} is not a YouTube id")
    start = _seconds(value("time_start"), "time_start", number)
    end = _seconds(value("time_end"), "time_end", number)
    if end <= start:
      raise _csv.LineError(f"line {number}: time_end ({end}) must be after time_start ({start})")
  except _csv.LineError as e:
    return _csv.bad(path, number, str(e))
  name = f"{youtube_id}_{start:06d}_{end:06d}"
  folder = value("split") or ctx["stem"]
  label = value("label")
  return registry.Entry(
      index=number - 1, source=f"{path}:{number}", id=name,
      media={"video": files.join(ctx["root"], folder, name + ".mp4")},
      labels=(label,) if label else ())


SPEC = registry.register(registry.DatasetSpec(
    name="kinetics", lines=registry.LineFormat(parse=parse, header_lines=1, context=context),
    description="Kinetics CSV (label,youtube_id,time_start,time_end,split); clips in "
                "<split>/<youtube_id>_<start:06d>_<end:06d>.mp4; missing clips are failures."))
