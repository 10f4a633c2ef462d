"""`audioset`: an AudioSet segments CSV, multi-label, with the ontology's label names.

    # Segments csv created Sun Mar  5 10:54:31 2017
    # num_ytids=22160, num_segs=22160, num_unique_labels=527, num_positive_labels=52882
    # YTID, start_seconds, end_seconds, positive_labels
    --PJHxphWEs, 30.000, 40.000, "/m/09x0r,/t/dd00088"

`--input` is the CSV (balanced_train_segments.csv, eval_segments.csv, ...).
Label ids are named by AudioSet's `ontology.json` ([{"id": "/m/09x0r", "name":
"Speech", ...}, ...]) beside the CSV. The clip of a row is
`<CSV's folder>/<CSV's name>/<YTID>_<start_seconds>_<end_seconds>.wav`, the
times as the CSV writes them (balanced_train_segments/--PJHxphWEs_30.000_40.000.wav),
already cut to the segment; a missing clip is a failure of the read stage.
"""

import math
import posixpath

from impax.datasets import files, registry
from impax.datasets.specs import _csv

HEADER = "# YTID, start_seconds, end_seconds, positive_labels"


def context(path: str, header: list[bytes], split: str) -> dict:
  if len(header) < 3 or not header[2].decode("utf-8", "replace").startswith("# YTID"):
    raise ValueError(f"{path}:3: an AudioSet segments CSV starts with three comment lines, the "
                     f"third {HEADER!r}: is this the right file?")
  folder = registry.folder_of(path)
  ontology_path = files.join(folder, "ontology.json")
  try:
    ontology = _csv.load_json(ontology_path)
  except FileNotFoundError:
    raise ValueError(f"AudioSet's label names come from ontology.json: put it beside {path} "
                     "(it is in the audioset/ontology repository)") from None
  if not isinstance(ontology, list) or not all(
      isinstance(c, dict) and isinstance(c.get("id"), str) and isinstance(c.get("name"), str)
      for c in ontology):
    raise ValueError(f"{ontology_path} must be a list of objects with 'id' and 'name' strings")
  stem = posixpath.splitext(path.rstrip("/").rsplit("/", 1)[-1])[0]
  return {"path": path, "names": {c["id"]: c["name"] for c in ontology},
          "clips": files.join(folder, stem)}


def _seconds(value: str, field: str, number: int) -> float:
  try:
    seconds = float(value)
  except ValueError:
    seconds = -1.0
  if not (math.isfinite(seconds) and seconds >= 0):  # float() reads "nan" and "inf"
    raise _csv.LineError(f"line {number}: {field} must be a finite, non-negative number of "
                         f"seconds, got {value!r}")
  return seconds


def parse(ctx: dict, number: int, raw: bytes) -> registry.Entry | registry.BadEntry | None:
  path = ctx["path"]
  try:
    if raw.startswith(b"#") or not raw.strip():
      return None
    row = _csv.fields(number, raw, skipinitialspace=True)
    if len(row) != 4:
      raise _csv.LineError(f"line {number} has {len(row)} fields, expected 4 (YTID, "
                           "start_seconds, end_seconds, \"positive_labels\"): quote the label list")
    ytid, start, end, labels = (f.strip() for f in row)
    if not ytid or "/" in ytid:
      raise _csv.LineError(f"line {number}: YTID {ytid!r} is not a YouTube id")
    if _seconds(end, "end_seconds", number) <= _seconds(start, "start_seconds", number):
      raise _csv.LineError(f"line {number}: end_seconds ({end}) must be after start_seconds ({start})")
    ids = [i.strip() for i in labels.split(",") if i.strip()]
    if not ids:
      raise _csv.LineError(f"line {number}: positive_labels is empty")
    unknown = [i for i in ids if i not in ctx["names"]]
    if unknown:
      raise _csv.LineError(f"line {number}: label id(s) {', '.join(unknown)} are not in "
                           "ontology.json: use the ontology the CSV was released with")
  except _csv.LineError as e:
    return _csv.bad(path, number, str(e))
  name = f"{ytid}_{start}_{end}"
  return registry.Entry(index=number - 1, source=f"{path}:{number}", id=name,
                        media={"audio": files.join(ctx["clips"], name + ".wav")},
                        labels=tuple(ctx["names"][i] for i in ids))


SPEC = registry.register(registry.DatasetSpec(
    name="audioset", lines=registry.LineFormat(parse=parse, header_lines=3, context=context),
    description="AudioSet segments CSV with ontology.json; clips in <csv name>/"
                "<YTID>_<start>_<end>.wav; multi-label."))
