"""`impax inspect DIR`: what a prepared dataset holds, and one example's frames as PNG."""

import io
import json
import os

from impax.pipelines import example_proto, storage


def load_metadata(directory: str) -> dict:
  path = storage.join(directory, "metadata.json")
  if not storage.exists(path):
    raise ValueError(f"{directory} has no metadata.json: is it the output of `impax build`?")
  return json.loads(storage.read(path))


def read_record(directory: str, meta: dict, split: str, index: int) -> bytes:
  """The index-th record of a split, counted across its shards (local datasets)."""
  from array_record.python.array_record_module import ArrayRecordReader
  for shard in meta["splits"][split]["shards"]:
    if index < shard["num_records"]:
      reader = ArrayRecordReader(os.path.join(directory, shard["path"]))
      try:
        return reader.read([index])[0]
      finally:
        reader.close()
    index -= shard["num_records"]
  raise ValueError(f"split {split!r} has {meta['splits'][split]['num_examples']} examples; "
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
  from PIL import Image
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
    print(json.dumps(meta, indent=2, sort_keys=True))
    return 0
  print(f"{meta['name']} {meta['version']} (spec {meta['spec']}, config {meta['config_hash'][:12]}, "
        f"impax {meta['impax_version']})")
  for name, s in meta["splits"].items():
    size = sum(x["num_bytes"] for x in s["shards"])
    print(f"  split {name}: {s['num_examples']} examples, {s['num_failed']} failed, "
          f"{len(s['shards'])} shards, {size / 1e6:.1f} MB, from {s['input']}")
    for modality, positions in s.get("lacking", {}).items():
      print(f"    without {modality}: {len(positions)} examples (tasks that read it skip them)")
    for key, value in s["statistics"].items():
      print(f"    {key}: {json.dumps(value)}")
  tok = meta.get("tokenizer")
  print(f"  labels: {len(meta['labels'])} {meta['labels'][:10]}{' ...' if len(meta['labels']) > 10 else ''}")
  print(f"  tokenizer: {tok['path'] + ', vocabulary ' + str(tok['vocab_size']) if tok else 'none'}")
  for task in meta["tasks"]:
    print(f"  task {task['name']}: {'+'.join(task['modalities'])}, {task['objective']}"
          + (f", prompt {task['prompt']!r}" if task.get("prompt") else ""))
  if example is not None:
    split = split or ("train" if "train" in meta["splits"] else next(iter(meta["splits"])))
    if split not in meta["splits"]:
      raise ValueError(f"{directory} has no split {split!r}; it has {', '.join(meta['splits'])}")
    features = example_proto.parse_example(read_record(directory, meta, split, example))
    print(json.dumps(describe_example(features), indent=2, ensure_ascii=False))
    if frames_to:
      paths = write_pngs(features, frames_to)
      print(f"wrote {len(paths)} PNG(s) to {frames_to}")
  return 0
