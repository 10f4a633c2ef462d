"""`impax inspect DIR`: what a prepared dataset holds, one example's frames as PNG, and where
its card (`impax card`, datasets/card.py) is."""

import io
import json
import os

from array_record.python.array_record_module import ArrayRecordReader
from PIL import Image

from impax.datasets import metadata as metadata_lib
from impax.datasets import records


def load_metadata(directory: str) -> metadata_lib.Metadata:
  path = os.path.join(directory, "metadata.json")
  if "://" in directory:
    from apache_beam.io.filesystems import FileSystems  # heavy import, remote only
    exists, open_ = FileSystems.exists, FileSystems.open
  else:
    exists, open_ = os.path.exists, lambda p: open(p, "rb")
  if not exists(path):
    raise ValueError(f"{directory} has no metadata.json: is it the output of `impax build`?")
  with open_(path) as f:
    return metadata_lib.loads(f.read(), where=path)


def card_path(directory: str) -> str:
  """Where `impax card DIR` writes the dataset's card."""
  return os.path.join(directory, "card.html")


def card_line(directory: str) -> str:
  """The card's path when it exists, else the command that makes it."""
  if "://" in directory:
    return f"  card: `impax card {directory} --output PATH` writes one"
  path = card_path(directory)
  if os.path.exists(path):
    return f"  card: {path}"
  return f"  card: none yet; `impax card {directory}` writes {path}"


def read_record(directory: str, meta: metadata_lib.Metadata, split: str, index: int) -> bytes:
  """The index-th record of a split, counted across its shards (local datasets)."""
  for shard in meta.splits[split].shards:
    if index < shard.num_records:
      reader = ArrayRecordReader(os.path.join(directory, shard.path))
      try:
        return reader.read([index])[0]
      finally:
        reader.close()
    index -= shard.num_records
  raise ValueError(f"split {split!r} has {meta.splits[split].num_examples} examples; "
                   "--example is out of range")


def describe_example(features: dict) -> dict:
  out = {}
  for key, values in sorted(features.items()):
    if key in ("video/frames",):
      out[key] = f"{len(values)} JPEG frames, {sum(map(len, values))} bytes"
    elif key in ("audio/pcm_s16le", "image/encoded"):
      out[key] = f"{len(values[0])} bytes"
    elif values and isinstance(values[0], bytes):
      out[key] = [v.decode("utf-8", "replace") for v in values]
    else:
      out[key] = values if len(values) != 1 else values[0]
  return out


def write_pngs(features: dict, out_dir: str) -> list[str]:
  os.makedirs(out_dir, exist_ok=True)
  images = features.get("video/frames") or features.get("image/encoded") or []
  paths = []
  for i, data in enumerate(images):
    path = os.path.join(out_dir, f"frame-{i:04d}.png")
    Image.open(io.BytesIO(data)).save(path)
    paths.append(path)
  return paths


def main(directory: str, split: str | None = None, example: int | None = None,
         frames_to: str | None = None, as_json: bool = False) -> int:
  meta = load_metadata(directory)
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
    features = records.parse_example(read_record(directory, meta, split, example))
    print(json.dumps(describe_example(features), indent=2, ensure_ascii=False))
    if frames_to:
      paths = write_pngs(features, frames_to)
      print(f"wrote {len(paths)} PNG(s) to {frames_to}")
  return 0
