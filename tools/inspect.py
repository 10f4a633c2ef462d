"""`impax inspect DIR`: what a prepared dataset holds, one example's frames as PNG, and where
its card (`impax card`, tools/card.py) is."""

import io
import json
import os

from PIL import Image

from impax.datasets import files, prepared, records
from impax.datasets import metadata as metadata_lib


def load(directory: str) -> prepared.PreparedDataset:
  """The dataset where it is (local or remote), as its metadata.json describes it."""
  dataset = prepared.load(directory)
  if dataset is None:
    raise ValueError(f"{directory} has no metadata.json: is it the output of `impax build`?")
  return dataset


def card_path(directory: str) -> str:
  """Where `impax card DIR` writes the dataset's card."""
  return os.path.join(directory, "card.html")


def card_line(directory: str) -> str:
  """The card's path when it exists, else the command that makes it."""
  if files.is_remote(directory):
    return f"  card: `impax card {directory} --output PATH` writes one"
  path = card_path(directory)
  if os.path.exists(path):
    return f"  card: {path}"
  return f"  card: none yet; `impax card {directory}` writes {path}"


def read_record(dataset: prepared.PreparedDataset, split: str, index: int) -> records.Record:
  """The index-th record of a split, counted across its shards (local datasets)."""
  if not 0 <= index < dataset.num_records(split):
    raise ValueError(f"split {split!r} has {dataset.split(split).num_examples} examples; "
                     "--example is out of range")
  ((_, data),) = dataset.records(split, [index])
  return records.Record.parse(data)


def write_pngs(record: records.Record, out_dir: str) -> list[str]:
  os.makedirs(out_dir, exist_ok=True)
  if record.video:
    images = record.video.frames
  else:
    images = [record.image.encoded] if record.image else []
  paths = []
  for i, data in enumerate(images):
    path = os.path.join(out_dir, f"frame-{i:04d}.png")
    Image.open(io.BytesIO(data)).save(path)
    paths.append(path)
  return paths


def main(directory: str, split: str | None = None, example: int | None = None,
         frames_to: str | None = None, as_json: bool = False) -> int:
  dataset = load(directory)
  meta = dataset.metadata
  if as_json:
    print(metadata_lib.dumps(meta).decode())
    return 0
  print(f"{meta.name} {meta.version} (spec {meta.spec}, config {meta.config_hash[:12]}, "
        f"impax {meta.impax_version})")
  for name, s in meta.splits.items():
    print(f"  split {name}: {s.num_examples} examples, {s.num_failed} failed, "
          f"{len(s.shards)} shards, {s.num_bytes / 1e6:.1f} MB, from {s.input}")
    for part, positions in (s.lacking or {}).items():
      print(f"    without {part}: {len(positions)} examples (tasks that read it skip them)")
    for key, value in s.statistics.items():
      print(f"    {key}: {json.dumps(value)}")
  labels, tok = list(meta.labels), meta.tokenizer
  print(f"  labels: {len(labels)} {labels[:10]}{' ...' if len(labels) > 10 else ''}")
  print(f"  tokenizer: {tok.path + ', vocabulary ' + str(tok.vocab_size) if tok else 'none'}")
  for task in meta.tasks:
    print(f"  task {task.name}: {'+'.join(task.modalities)}, {task.objective}"
          + (f", prompt {task.prompt!r}" if task.prompt else ""))
  print(card_line(directory))
  if example is not None:
    split = split or ("train" if "train" in meta.splits else next(iter(meta.splits)))
    if split not in meta.splits:
      raise ValueError(f"{directory} has no split {split!r}; it has {', '.join(meta.splits)}")
    record = read_record(dataset, split, example)
    print(json.dumps(record.describe(), indent=2, ensure_ascii=False))
    if frames_to:
      paths = write_pngs(record, frames_to)
      print(f"wrote {len(paths)} PNG(s) to {frames_to}")
  return 0
