"""A prepared dataset, read: its metadata.json, its shards and their records.

A prepared dataset is what `impax build` writes: ArrayRecord shards plus
DIR/metadata.json listing every shard of every split. Every reader goes through
here: the loader, the trainer, `impax verify/dedup/card/inspect` and the build's
own resume check.

  dataset = prepared.open_dataset(path_or_uri)   # checked
  dataset.shard_paths("train")                   # the files, in split order
  for position, data in dataset.records("train"): record = records.Record.parse(data)

  meta = prepared.read_metadata(path_or_uri)     # metadata.json alone, or None

Checks fail loudly with the file they concern, because a silently short or
mismatched shard would otherwise show up only as a skewed training run.
A gs:// or s3:// dataset stays where it is: `open_dataset` checks its shards'
sizes in one listing, and its records are read by byte range (datasets/remote.py),
never staged.
"""

import collections
import contextlib
import dataclasses
import os
from collections.abc import Iterator, Sequence

from array_record.python import array_record_module

from impax.datasets import files
from impax.datasets import metadata as metadata_lib
from impax.datasets import records, remote

METADATA = "metadata.json"
READ_BATCH = 256  # records read from a shard at a time


class DatasetError(ValueError):
  """A prepared dataset that is missing, incomplete or not what metadata.json says."""


class NoDataset(DatasetError):
  """No prepared dataset at the path: no metadata.json."""


@dataclasses.dataclass(frozen=True)
class PreparedDataset:
  root: str  # the folder holding metadata.json and the shards (local, or a URI with `load`)
  metadata: metadata_lib.Metadata

  @property
  def labels(self) -> tuple[str, ...]:
    return self.metadata.labels

  def split(self, name: str) -> metadata_lib.Split:
    if name not in self.metadata.splits:
      raise DatasetError(f"{self.root}/metadata.json has no split {name!r}; it has "
                         f"{sorted(self.metadata.splits)}")
    return self.metadata.splits[name]

  def path(self, name: str) -> str:
    """A file of the dataset (a shard, the tokenizer, a failures file) by its name."""
    return files.join(self.root, name)

  def shard_paths(self, split: str) -> list[str]:
    return [self.path(s.path) for s in self.split(split).shards]

  def num_records(self, split: str) -> int:
    return sum(s.num_records for s in self.split(split).shards)

  @property
  def tokenizer_path(self) -> str | None:
    """A local file: a remote dataset's tokenizer is copied once into the cache folder."""
    tokenizer = self.metadata.tokenizer
    if not tokenizer:
      return None
    if remote.is_remote(self.root):
      return remote.local_copy(self.path(tokenizer.path),
                               os.path.join(remote.cache_settings(None, None)[0], "tokenizers"))
    return self.path(tokenizer.path)

  def records(self, split: str, positions: Sequence[int] | None = None
              ) -> Iterator[tuple[int, bytes]]:
    """(split position, record bytes) of every record of a split, in order, or of the given
    sorted positions; one shard open at a time (a remote dataset's by byte range)."""
    if remote.is_remote(self.root):
      source = remote.RemoteSource.open(self.root, self.split(split).shards, cache_limit=0)
      wanted = range(len(source)) if positions is None else list(positions)
      for start in range(0, len(wanted), READ_BATCH):
        batch = list(wanted[start:start + READ_BATCH])
        yield from zip(batch, source.read(batch))
      return
    start, pending = 0, None if positions is None else collections.deque(positions)
    for shard in self.split(split).shards:
      if pending is None:
        mine = None
      else:
        mine = []
        while pending and pending[0] < start + shard.num_records:
          mine.append(pending.popleft() - start)
        if not mine:
          start += shard.num_records
          continue
      for index, data in read_shard(self.path(shard.path), mine):
        yield start + index, data
      start += shard.num_records


def read_metadata(root: str) -> metadata_lib.Metadata | None:
  """DIR/metadata.json (local or a URI), or None when it has none."""
  path = files.join(root, METADATA)
  if not files.exists(path):
    return None
  return metadata_lib.loads(files.read(path), where=path)


def load(root: str) -> PreparedDataset | None:
  """The dataset as metadata.json describes it, where it is, unchecked; None without one."""
  meta = read_metadata(root)
  return None if meta is None else PreparedDataset(root=root, metadata=meta)


def open_dataset(path: str, *, check_counts: bool = True) -> PreparedDataset:
  """Reads and validates DIR/metadata.json. A gs:// or s3:// dataset is opened where it is,
  with the store's standard environment (datasets/remote.py): its shards' sizes are
  checked, their records counted as the loader's record source opens them."""
  if remote.is_remote(path):
    return _open_remote(path.rstrip("/"))
  dataset = load(path)
  if dataset is None:
    raise NoDataset(f"{os.path.join(path, METADATA)} does not exist: is {path} a prepared "
                    "dataset?")
  validate(dataset, check_counts=check_counts)
  return dataset


def _open_remote(uri: str) -> PreparedDataset:
  meta_path = files.join(uri, METADATA)
  try:
    if METADATA not in remote.sizes(uri):
      raise NoDataset(f"{meta_path} does not exist: is {uri} a prepared dataset?")
    dataset = PreparedDataset(root=uri, metadata=metadata_lib.loads(remote.read(meta_path),
                                                                    where=meta_path))
    _check_features(dataset)
    remote.check_sizes(uri, [s for split in dataset.metadata.splits.values()
                             for s in split.shards])
  except remote.RemoteError as e:
    raise DatasetError(str(e)) from None
  return dataset


def _check_features(dataset: PreparedDataset) -> None:
  unknown = sorted(set(dataset.metadata.features) - set(records.FEATURES))
  if unknown:
    raise DatasetError(f"{dataset.path(METADATA)} declares unknown feature keys {unknown}; "
                       "this impax cannot decode them")


def validate(dataset: PreparedDataset, *, check_counts: bool = True) -> None:
  meta_path = dataset.path(METADATA)
  _check_features(dataset)
  verify_hint = (f"run `impax verify {dataset.root}` to check every shard, and the split's "
                 "`impax build` again to rebuild it")
  for split_name, split in dataset.metadata.splits.items():
    for shard in split.shards:
      path = dataset.path(shard.path)
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


# -- shards -------------------------------------------------------------------------


@contextlib.contextmanager
def open_shard(path: str) -> Iterator[array_record_module.ArrayRecordReader]:
  """An ArrayRecord reader of a local shard, closed after. Riegeli raises RuntimeError for a
  damaged file: on opening, reading, or closing (a damaged tail)."""
  reader = array_record_module.ArrayRecordReader(path, "readahead_buffer_size:0")
  try:
    yield reader
  finally:
    reader.close()


def read_shard(path: str, indices: Sequence[int] | None = None) -> Iterator[tuple[int, bytes]]:
  """(index, record bytes) of every record of a local shard, or of the given indices, in
  order, READ_BATCH at a time."""
  with open_shard(path) as reader:
    wanted = range(reader.num_records()) if indices is None else indices
    for start in range(0, len(wanted), READ_BATCH):
      batch = list(wanted[start:start + READ_BATCH])
      yield from zip(batch, reader.read(batch))


def count_records(path: str) -> int:
  with open_shard(path) as reader:
    return reader.num_records()
