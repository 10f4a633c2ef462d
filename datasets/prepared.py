"""Opens a prepared dataset by its metadata.json and checks it before training.

A prepared dataset is what `impax build` writes: ArrayRecord shards
plus DIR/metadata.json listing every shard of every split. The loader calls

  dataset = prepared.open_dataset(path_or_uri)
  paths = dataset.shard_paths("train")   # absolute local paths, validated

Checks fail loudly with the file they concern, because a silently short or
mismatched shard would otherwise show up only as a skewed training run.
ArrayRecord reads local (or mounted) files only, so a gs:// or s3:// dataset is
first copied to a local cache directory.
"""

import dataclasses
import hashlib
import os

from array_record.python import array_record_module

from impax.datasets import metadata as metadata_lib
from impax.datasets import records

REMOTE_SCHEMES = ("gs://", "s3://")


class DatasetError(ValueError):
  """A prepared dataset that is missing, incomplete or not what metadata.json says."""


class NoDataset(DatasetError):
  """No prepared dataset at the path: no metadata.json."""


@dataclasses.dataclass(frozen=True)
class PreparedDataset:
  root: str  # local directory holding metadata.json and the shards
  metadata: metadata_lib.Metadata

  @property
  def labels(self) -> tuple[str, ...]:
    return self.metadata.labels

  def split(self, name: str) -> metadata_lib.Split:
    if name not in self.metadata.splits:
      raise DatasetError(f"{self.root}/metadata.json has no split {name!r}; it has "
                         f"{sorted(self.metadata.splits)}")
    return self.metadata.splits[name]

  def shard_paths(self, split: str) -> list[str]:
    return [os.path.join(self.root, s.path) for s in self.split(split).shards]

  def num_records(self, split: str) -> int:
    return sum(s.num_records for s in self.split(split).shards)

  @property
  def tokenizer_path(self) -> str | None:
    tokenizer = self.metadata.tokenizer
    return os.path.join(self.root, tokenizer.path) if tokenizer else None


def stage(uri: str, cache_dir: str | None = None) -> str:
  """Copies a remote dataset to a local cache (once) and returns the local directory."""
  from apache_beam.io.filesystems import FileSystems  # heavy import, remote only

  cache_dir = cache_dir or os.path.join(os.path.expanduser("~"), ".cache", "impax", "datasets")
  local = os.path.join(cache_dir, hashlib.sha256(uri.encode()).hexdigest()[:16])
  print(f"impax: ArrayRecord cannot read {uri.split('://')[0]}:// directly; "
        f"staging {uri} to {local}")
  os.makedirs(local, exist_ok=True)
  with FileSystems.open(uri.rstrip("/") + "/metadata.json") as f:
    metadata_bytes = f.read()
  meta = metadata_lib.loads(metadata_bytes, where=f"{uri}/metadata.json")
  names = [s.path for split in meta.splits.values() for s in split.shards]
  if meta.tokenizer:
    names.append(meta.tokenizer.path)
  for name in names:
    target = os.path.join(local, name)
    if os.path.exists(target):
      continue  # a previous run staged it; shard files never change in place
    with FileSystems.open(uri.rstrip("/") + "/" + name) as src, open(target + ".part", "wb") as dst:
      while chunk := src.read(1 << 24):
        dst.write(chunk)
    os.replace(target + ".part", target)
  # metadata last, so an interrupted staging is redone rather than trusted
  with open(os.path.join(local, "metadata.json"), "wb") as f:
    f.write(metadata_bytes)
  return local


def open_dataset(path: str, *, cache_dir: str | None = None, check_counts: bool = True
                 ) -> PreparedDataset:
  """Reads and validates DIR/metadata.json; stages remote URIs first."""
  if path.startswith(REMOTE_SCHEMES):
    path = stage(path, cache_dir)
  meta_path = os.path.join(path, "metadata.json")
  if not os.path.exists(meta_path):
    raise NoDataset(f"{meta_path} does not exist: is {path} a prepared dataset?")
  with open(meta_path, "rb") as f:
    meta = metadata_lib.loads(f.read(), where=meta_path)
  dataset = PreparedDataset(root=path, metadata=meta)
  validate(dataset, check_counts=check_counts)
  return dataset


def validate(dataset: PreparedDataset, *, check_counts: bool = True) -> None:
  meta_path = os.path.join(dataset.root, "metadata.json")
  unknown = sorted(set(dataset.metadata.features) - set(records.FEATURES))
  if unknown:
    raise DatasetError(f"{meta_path} declares unknown feature keys {unknown}; "
                       "this impax cannot decode them")
  verify_hint = (f"run `impax verify {dataset.root}` to check every shard, and the split's "
                 "`impax build` again to rebuild it")
  for split_name, split in dataset.metadata.splits.items():
    for shard in split.shards:
      path = os.path.join(dataset.root, shard.path)
      if not os.path.exists(path):
        raise DatasetError(f"shard {path} of split {split_name!r} listed in {meta_path} is "
                           f"missing: {verify_hint}")
      size = os.path.getsize(path)  # free, and a truncated or appended shard differs
      if size != shard.num_bytes:
        raise DatasetError(f"shard {path} of split {split_name!r} is {size} bytes but "
                           f"{meta_path} says {shard.num_bytes}: {verify_hint}")
      if check_counts:
        try:
          found = count_records(path)
        except RuntimeError as e:  # riegeli's error for a damaged file
          raise DatasetError(f"shard {path} of split {split_name!r} is not a readable "
                             f"ArrayRecord file ({e}): {verify_hint}") from None
        if found != shard.num_records:
          raise DatasetError(f"shard {path} holds {found} records but {meta_path} says "
                             f"{shard.num_records}: {verify_hint}")


def count_records(path: str) -> int:
  reader = array_record_module.ArrayRecordReader(path, "readahead_buffer_size:0")
  try:
    return reader.num_records()
  finally:
    reader.close()
