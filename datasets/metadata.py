"""metadata.json as types: what a prepared dataset holds, written once and read once.

The build (impax.pipelines) assembles a `Metadata` and writes it with `dumps`;
every reader (prepared datasets, the loader, `impax inspect`, the flows, the
trainer) gets one from `loads` and reads fields, never string keys:

    meta = metadata.loads(data, where="out/metadata.json")
    meta.splits["train"].num_examples, meta.labels, meta.tokenizer.vocab_size

The JSON layout is the one impax has always written, so datasets built before
these types load unchanged; a file that lacks a field this version needs is
refused with a message that names the field and says to rebuild.
"""

import dataclasses
import hashlib
import json
from collections.abc import Mapping
from typing import Any

from impax.datasets.build_settings import BuildConfig


class MetadataError(ValueError):
  """A metadata.json this impax cannot read; the message says which field and what to do."""


@dataclasses.dataclass(frozen=True)
class Composition:
  """What a split holds: example counts by medium and annotation."""
  examples: int = 0
  video: int = 0
  video_with_audio: int = 0
  audio: int = 0
  image: int = 0
  captions: int = 0
  labels: int = 0
  multi_label: int = 0

  def __add__(self, other: "Composition") -> "Composition":
    return Composition(**{f.name: getattr(self, f.name) + getattr(other, f.name)
                          for f in dataclasses.fields(self)})

  def has(self, part: str) -> bool:
    """Whether some record has the part (modalities.PARTS); audio is an audio file's
    or a video's sound track."""
    if part == "audio":
      return bool(self.audio or self.video_with_audio)
    return bool(getattr(self, part))


@dataclasses.dataclass(frozen=True)
class TaskInfo:
  """A task the data can serve: the inputs it reads (stored media and text) and its loss."""
  name: str  # e.g. "video_text"
  modalities: tuple[str, ...]  # e.g. ("video", "text"); stored media and "text"
  objective: str  # "contrastive" | "classification"
  prompt: str | None = None  # text from label names, e.g. "a video of {label}."
  multi_label: bool = False


@dataclasses.dataclass(frozen=True)
class Shard:
  path: str  # relative to the dataset's folder
  num_records: int
  num_bytes: int
  sha256: str | None = None  # of the file; None for a shard built before impax recorded it


@dataclasses.dataclass(frozen=True)
class Tokenizer:
  path: str  # relative to the dataset's folder
  sha256: str
  trained: bool  # trained on this corpus (else given with --tokenizer)
  vocab_size: int
  pad_id: int
  unk_id: int
  bos_id: int
  eos_id: int


@dataclasses.dataclass(frozen=True)
class Split:
  input: str
  input_sha256: str
  media_sha256: str
  num_examples: int
  num_failed: int
  sharding: Mapping[str, int]
  failures: str  # the failures file's name, e.g. failures-train.jsonl
  failures_by_stage: Mapping[str, int]
  shards: tuple[Shard, ...]
  composition: Composition
  statistics: Mapping[str, Any]
  build_seconds: float
  ffmpeg: str
  created: str
  # {part: split positions of the records without it}, for the parts some
  # records of the split have; None for a split built before impax listed them.
  lacking: Mapping[str, tuple[int, ...]] | None = None
  # Duplicates within the split, from the records' fingerprints (tools/dedup.py):
  # {"exact_groups": int, "near_groups": int, "records_in_groups": int,
  #  "groups": [[record id, ...], ...] (the first 20)}; None when not computed.
  duplicates: Mapping[str, Any] | None = None
  # {reason: inputs} of the failures of stage download (`HTTP 404`, `redirect loop`), as
  # img2dataset's status table; None for a split without any (or built before impax had it).
  download_failures_by_reason: Mapping[str, int] | None = None

  @property
  def num_bytes(self) -> int:
    return sum(s.num_bytes for s in self.shards)


@dataclasses.dataclass(frozen=True)
class Metadata:
  name: str
  version: str
  impax_version: str
  created: str
  spec: str
  # The build config: metadata.json holds the settings that fix the bytes (BuildConfig.stored);
  # the others (a split's sharding is Split.sharding), and those a file written by an older
  # impax lacks, read back as their defaults.
  config: BuildConfig
  config_hash: str
  fingerprint: Mapping[str, Any]
  array_record_options: str
  features: Mapping[str, Mapping[str, str]]  # records.feature_spec()
  labels: tuple[str, ...]
  tokenizer: Tokenizer | None
  tasks: tuple[TaskInfo, ...]
  splits: Mapping[str, Split]

  def split(self, name: str) -> Split:
    if name not in self.splits:
      raise MetadataError(f"metadata.json of {self.name!r} has no split {name!r}; "
                          f"it has {sorted(self.splits)}")
    return self.splits[name]

  @property
  def content_hash(self) -> str:
    """sha256 of what fixes the records' bytes: the build config and each split's inputs,
    media and shards. Rebuilding the same data gives the same hash; new data, another."""
    content = {"config": self.config_hash, "splits": {
        name: [s.input_sha256, s.media_sha256,
               [[shard.path, shard.sha256 or shard.num_bytes] for shard in s.shards]]
        for name, s in sorted(self.splits.items())}}
    return hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()

  @property
  def composition(self) -> Composition:
    """All splits together."""
    total = Composition()
    for s in self.splits.values():
      total += s.composition
    return total


# -- one writer ---------------------------------------------------------------


def to_json(meta: Metadata) -> dict:
  out = dataclasses.asdict(meta)
  out["config"] = meta.config.stored()
  for split, s in zip(out["splits"].values(), meta.splits.values()):
    if s.lacking is None:
      del split["lacking"]
    else:
      split["lacking"] = {k: list(v) for k, v in s.lacking.items()}
    if s.duplicates is None:
      del split["duplicates"]
    if s.download_failures_by_reason is None:
      del split["download_failures_by_reason"]
    for shard in split["shards"]:
      if shard["sha256"] is None:  # built before impax recorded it: the layout as it was
        del shard["sha256"]
  for task in out["tasks"]:
    task["modalities"] = list(task["modalities"])
  out["labels"] = list(out["labels"])
  return out


def dumps(meta: Metadata) -> bytes:
  return json.dumps(to_json(meta), indent=2, sort_keys=True).encode()


# -- one reader ---------------------------------------------------------------


def loads(data: bytes | str, where: str = "metadata.json") -> Metadata:
  try:
    obj = json.loads(data)
  except ValueError as e:
    raise MetadataError(f"{where} is not JSON ({e}): rebuild the dataset with `impax build`") from e
  return from_json(obj, where)


def from_json(obj: Mapping, where: str = "metadata.json") -> Metadata:
  """A Metadata from its JSON; refuses a file without a field this version needs."""
  read = _Reader(where)
  splits = read.field(obj, "splits", dict)
  tokenizer = obj.get("tokenizer")
  return Metadata(
      **read.fields(obj, Metadata, skip=("config", "labels", "tokenizer", "tasks", "splits")),
      config=BuildConfig(**read.fields(read.field(obj, "config", dict), BuildConfig, "config")),
      labels=tuple(read.field(obj, "labels", list)),
      tokenizer=(Tokenizer(**read.fields(tokenizer, Tokenizer, path="tokenizer"))
                 if tokenizer else None),
      tasks=tuple(
          TaskInfo(**{**read.fields(t, TaskInfo, path=f"tasks[{i}]", skip=("modalities",)),
                      "modalities": tuple(read.field(t, "modalities", list, f"tasks[{i}]"))})
          for i, t in enumerate(read.field(obj, "tasks", list))),
      splits={name: _split(read, s, f"splits.{name}") for name, s in splits.items()})


def _split(read: "_Reader", obj: Mapping, path: str) -> Split:
  lacking = obj.get("lacking")
  return Split(
      **read.fields(obj, Split, path=path, skip=("shards", "composition", "lacking")),
      shards=tuple(Shard(**read.fields(s, Shard, path=f"{path}.shards[{i}]"))
                   for i, s in enumerate(read.field(obj, "shards", list, path))),
      composition=Composition(**read.fields(read.field(obj, "composition", dict, path),
                                            Composition, path=f"{path}.composition",
                                            required=False)),
      lacking=None if lacking is None else {k: tuple(v) for k, v in lacking.items()})


class _Reader:
  """Takes fields out of JSON objects, naming the missing one and what to do."""

  def __init__(self, where: str):
    self.where = where

  def fail(self, what: str):
    raise MetadataError(f"{self.where}: {what}; it was written by another impax version: "
                        "rebuild the dataset with `impax build ... --overwrite`")

  def field(self, obj: Any, key: str, kind: type, path: str = ""):
    where = f"{path}.{key}" if path else key
    if not isinstance(obj, Mapping) or key not in obj:
      self.fail(f"field {where!r} is missing")
    if not isinstance(obj[key], kind):
      self.fail(f"field {where!r} is a {type(obj[key]).__name__}, not a {kind.__name__}")
    return obj[key]

  def fields(self, obj: Any, cls, path: str = "", skip: tuple[str, ...] = (),
             required: bool = True) -> dict:
    """The fields of dataclass `cls` found in `obj` (unknown keys are ignored); with
    `required`, a field without a default that `obj` lacks is refused."""
    if not isinstance(obj, Mapping):
      self.fail(f"{path or 'the file'} is a {type(obj).__name__}, not an object")
    out = {}
    for f in dataclasses.fields(cls):
      if f.name in skip:
        continue
      if f.name in obj:
        out[f.name] = obj[f.name]
      elif required and f.default is dataclasses.MISSING:
        self.fail(f"field {(path + '.' if path else '') + f.name!r} is missing")
    return out
