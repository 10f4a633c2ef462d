"""The resolution-bucketed loader: prepared shards -> batches of a small, known set of shapes.

    task = loader.Task(
        "video_text", "demo-output/data/videos", "contrastive", ("video", "text"),
        buckets=(loader.Bucket(video=(8, 64, 64)), loader.Bucket(video=(4, 96, 96))),
        token_budget=8192)
    data = loader.Loader(task, seed=0, patches=loader.Patches(tubelet=(2, 8, 8)))
    data.batch_shapes()      # every shape a batch can have: compile each once
    it = iter(data)
    batch = next(it)         # {"video": uint8 [B, 8, 64, 64, 3], "text": ..., "valid": ...,
                             #  "id": the examples' ids (host-side, never sent to a device)}
    state = it.get_state()   # JSON; it.set_state(state) resumes exactly

A Loader composes three parts, each replaceable alone:
  - a record source (`RecordSource`: how many records a split holds, and the
    bytes of records by position): the prepared dataset's local shards
    (`ShardSource`);
  - the sampler (datasets/sampler.py): which bucket, which records and which
    random seeds each step takes, a pure function of the seed and the step;
  - the reader (datasets/reader.py): record bytes -> the arrays of one example
    at the bucket's shape, on the CPU.

A bucket's global batch size comes from the task's token budget (every batch
holds about the same number of patch tokens, counted with the model's patch
sizes, `Patches`), rounded to a multiple of the process count and
`batch_multiple`. Since a batch depends on nothing but its step (not on the
worker count, not on what ran before), the batches are a Grain `MapDataset`
over step indices, whose iterator state (the next step per worker) is exact
resume for free, with prefetch in a thread (num_workers=0) or in worker
processes (`mp_prefetch`), both at a lower priority than the caller (`nice`).

Evaluation (`train=False`) reads every example of the split once, in order,
with deterministic preprocessing (centre crop, or `eval_crops` crops along the longer
side, and `eval_clips` uniformly spaced clips) at the first bucket's shape; the last
batch is padded and its padding marked invalid.

A task may read several datasets mixed by weight (`Task(dataset={"gs://b/cc3m": 0.8,
"/data/coco": 0.2})`): each example of its stream comes from a dataset drawn by
weight, each dataset in its own global shuffle (datasets/sampler.py). Their
tokenizers, and their labels where the task reads labels, must be the same.

Every batch carries host-side arrays that never go to a device (`HOST_KEYS`):
`id`, each example's id ("" for a padded or failed slot), and, for a mixture,
`dataset`, the index of its dataset in `Loader.roots` (-1 for a padded slot).
They say which examples made a step: the trainer writes them with
`log_batch_ids`.

A task reads only the records that have every modality it needs: a video
without a sound track is never drawn for a video-audio task (the build lists
such records in metadata.json, "lacking"). `Loader.left_out` counts them per
modality. `Task.exclude` names examples never read (a dedup report's leaks or
duplicates, or a list of ids); `Loader.excluded` counts them. A record that
fails to decode is not fatal: its slot in the batch is zeros with `valid`
False, and the iterator counts it with its reason.
"""

import collections
import dataclasses
import functools
import math
import multiprocessing
import os
import sys
import threading
from collections.abc import Mapping, Sequence
from typing import Protocol

import grain
import numpy as np

from impax.datasets import decode, exclusions, modalities, prepared, remote
from impax.datasets.modalities import INPUTS
from impax.datasets.reader import Bucket, Reader, input_shapes
from impax.datasets.sampler import Part, Sampler

HOST_KEYS = ("id", "dataset")  # batch keys that stay on the host: not model inputs


@dataclasses.dataclass(frozen=True)
class Patches:
  """The model's patch sizes (its config has them), for counting the tokens of a batch: give
  those of the inputs the task reads (video and image: `tubelet`, whose last two are an
  image's patch)."""
  tubelet: tuple[int, int, int] | None = None  # frames, height, width
  spectrogram: tuple[int, int] | None = None  # time frames, mel bins
  waveform: int | None = None  # samples


@dataclasses.dataclass(frozen=True)
class Task:
  """What a task reads: a dataset, its inputs, its shapes, their preprocessing.

  `Loader(task)` takes the training buckets of the `split`, `Loader(task,
  train=False)` the evaluation bucket of the `eval_split`. Training adds how
  the task is scheduled and weighted (impax.train.config.Task, which a Loader
  takes as well).
  """
  name: str
  # A prepared dataset's directory or its gs:// or s3:// URI (read where it is); or a mixture
  # of them by sampling weight, {dataset: weight}
  dataset: str | dict[str, float]
  objective: str  # "contrastive" (between two modalities) or "classification" (of one)
  modalities: tuple[str, ...]  # model inputs, e.g. ("video", "text"); classification: one
  buckets: tuple[Bucket, ...]
  token_budget: int = 4096  # patch tokens per global batch
  text_length: int = 16
  prompt: str | None = None  # text from label names, e.g. "a video of {label}."
  split: str = "train"
  eval_split: str | None = "test"  # evaluated by `impax eval` when the dataset has it
  eval_bucket: Bucket | None = None  # default: the first bucket
  eval_clips: int = 1  # evaluation: clips per video, uniformly spaced
  # evaluation: spatial crops per clip along the frame's longer side (3: IMP's 4x3 views
  # with eval_clips=4); embeddings and logits are averaged over clips x crops views
  eval_crops: int = 1
  augment: decode.Augment = decode.Augment()  # training augmentation (crop, flip, jitter)
  multi_label: bool = False
  sample_rate: int = 16000
  num_workers: int = 0  # loader processes for this task
  loader_nice: int = 10  # added to the nice value of its loader thread or processes (Linux)
  # Examples never read: an `impax dedup --json` report (its leaks, or else every
  # duplicate but the first of each group) or a text file of ids, one a line.
  exclude: str | None = None

  @property
  def datasets(self) -> tuple[tuple[str, float], ...]:
    """((dataset, weight), ...): the task's datasets, one of weight 1 unless a mixture."""
    if isinstance(self.dataset, str):
      return ((self.dataset, 1.0),)
    return tuple((str(d), float(w)) for d, w in self.dataset.items())

  @property
  def inputs(self) -> tuple[str, ...]:
    """What a batch holds: the modalities, and the label of a classification."""
    return (*self.modalities, "label") if self.objective == "classification" else self.modalities


class LoaderError(ValueError):
  """A task the loader cannot serve from its dataset, said before anything is read."""


def patch_tokens(shapes: Mapping[str, tuple[int, ...]], patches: Patches) -> int:
  """Encoder tokens of the video, image and audio arrays of a batch, from their shapes
  ({input: shape}; the leading dimensions are examples, and clips in evaluation).
  Text is not counted here: its tokens are its length (the budget) or its mask (a
  batch's real tokens)."""
  def size(name: str, field: str):
    if getattr(patches, field) is None:
      raise LoaderError(f"counting the tokens of {name} needs the model's {field} patch size: "
                        f"Patches({field}=...)")
    return getattr(patches, field)

  n = 0
  if "video" in shapes:
    s, (t, ph, pw) = shapes["video"], size("video", "tubelet")
    n += math.prod(s[:-4]) * max(1, s[-4] // t) * (s[-3] // ph) * (s[-2] // pw)
  if "image" in shapes:
    (b, h, w, _), (_, ph, pw) = shapes["image"], size("image", "tubelet")
    n += b * (h // ph) * (w // pw)
  if "spectrogram" in shapes:
    (b, f, m), (pf, pm) = shapes["spectrogram"], size("spectrogram", "spectrogram")
    n += b * (f // pf) * (m // pm)
  if "waveform" in shapes:
    b, s = shapes["waveform"]
    n += b * (s // size("waveform", "waveform"))
  return n


def _check(task: Task, inputs: tuple[str, ...], buckets: tuple[Bucket, ...], split: str,
           dataset: prepared.PreparedDataset) -> None:
  unknown = set(inputs) - set(INPUTS)
  if unknown:
    raise LoaderError(f"task {task.name!r}: unknown inputs {sorted(unknown)}; choose from {INPUTS}")
  if not buckets:
    raise LoaderError(f"task {task.name!r} declares no buckets")
  composition = dataset.split(split).composition
  for name in inputs:
    part = modalities.NEEDS[name]
    if part in modalities.MEDIA and not composition.has(part):
      raise LoaderError(f"task {task.name!r} reads {name} but split {split!r} of "
                        f"{dataset.root} has no {part}")
  if "text" in inputs and not composition.captions and not task.prompt:
    raise LoaderError(f"task {task.name!r} reads text but {dataset.root} has no captions: "
                      "set a prompt to make text from the labels")
  if ("label" in inputs or task.prompt) and not dataset.labels:
    raise LoaderError(f"task {task.name!r} needs labels but {dataset.root} has none")
  for i, b in enumerate(buckets):
    for name, shape in (("video", b.video), ("image", b.image)):
      if name in inputs and (shape is None or min(shape) < 1):
        raise LoaderError(f"task {task.name!r} bucket {i}: reads {name} but its shape is {shape}")
    if set(modalities.AUDIO) & set(inputs) and not (b.audio_seconds or 0) > 0:
      raise LoaderError(f"task {task.name!r} bucket {i}: reads audio but audio_seconds is "
                        f"{b.audio_seconds}")
    if b.weight <= 0:
      raise LoaderError(f"task {task.name!r} bucket {i}: weight must be positive")


def _usable(task: Task, inputs: tuple[str, ...], split: str, dataset: prepared.PreparedDataset
            ) -> tuple[np.ndarray | None, dict[str, int]]:
  """(split positions of the records with every part the inputs are made from, None if
  all; how many records lack each such part). A dataset built before the build
  listed them gives (None, {}): its records without a part fail to decode and
  are counted."""
  meta = dataset.split(split)
  if meta.lacking is None:
    return None, {}
  n = dataset.num_records(split)

  def missing(part: str) -> np.ndarray:
    if not meta.composition.has(part):
      return np.ones(n, bool)
    out = np.zeros(n, bool)
    out[np.asarray(meta.lacking.get(part, ()), np.int64)] = True
    return out

  keep, left_out = np.ones(n, bool), {}
  for name in inputs:
    part = modalities.NEEDS[name]
    miss = missing(part)
    if name == "text" and task.prompt:
      miss &= missing("labels")  # text from the labels where there is no caption
    if miss.any():
      left_out[part] = int(miss.sum())
    keep &= ~miss
  if keep.all():
    return None, left_out
  return np.flatnonzero(keep), left_out


def _exclude(task: Task, split: str, dataset: prepared.PreparedDataset,
             records: np.ndarray | None) -> tuple[np.ndarray | None, int]:
  """(the usable split positions without those `task.exclude` names, how many it removed)."""
  if not task.exclude:
    return records, 0
  try:
    ids = exclusions.excluded_ids(task.exclude, dataset.root, split)
  except exclusions.ExclusionError as e:
    raise LoaderError(f"task {task.name!r}: {e}") from None
  if not ids:
    return records, 0
  skip = np.array([i in ids for i in exclusions.split_ids(dataset, split)], bool)
  keep = ~skip if records is None else np.isin(np.arange(len(skip)), records) & ~skip
  return np.flatnonzero(keep), int(skip.sum() if records is None else (skip[records]).sum())


class RecordSource(Protocol):
  """The records of one split, by position: what a Loader reads its bytes from. Pickled to
  Grain's worker processes before its first read, so open files lazily."""

  def __len__(self) -> int: ...

  def read(self, positions: Sequence[int]) -> list[bytes]:
    """The serialized records at these split positions, in their order."""


@dataclasses.dataclass(frozen=True)
class ShardSource:
  """A split's records in its local ArrayRecord shards, in shard order (Grain's reader)."""
  paths: tuple[str, ...]

  @functools.cached_property
  def _shards(self) -> grain.sources.ArrayRecordDataSource:
    return grain.sources.ArrayRecordDataSource(list(self.paths))

  def __len__(self) -> int:
    return len(self._shards)

  def read(self, positions: Sequence[int]) -> list[bytes]:
    return self._shards.__getitems__(list(positions)) if positions else []  # one batched read


@dataclasses.dataclass(frozen=True)
class _Batches:
  """Step -> (this process's arrays of the step, failure reasons of its examples): the
  sampler's records, read from the source, decoded by the reader. Pickled to Grain's
  worker processes."""
  sampler: Sampler
  reader: Reader
  sources: tuple[RecordSource, ...]  # of the sampler's parts (the task's datasets)
  buckets: tuple[Bucket, ...]  # training: the task's; evaluation: its evaluation bucket
  nice: int = 0  # added to the nice value of the threads and processes that make batches
  stride: int = 1  # steps between two this process makes (mp_prefetch: worker i makes i::W)
  MEMO_STEPS = 64  # steps whose examples `_examples` remembers (not a field: no annotation)

  def shapes(self, bucket_index: int) -> dict[str, tuple[tuple[int, ...], str]]:
    """{key: (per-process shape, dtype)} of a batch of this bucket."""
    return self.reader.shapes(self.buckets[bucket_index], self.sampler.batch_size(bucket_index))

  def __getstate__(self) -> dict:
    state = dict(self.__dict__)
    state.pop("_examples_memo", None)  # a process's own: its lock does not pickle
    return state

  @functools.cached_property
  def _examples_memo(self) -> tuple[threading.Lock, collections.OrderedDict]:
    return threading.Lock(), collections.OrderedDict()

  def _examples(self, step: int) -> list:
    """The sampler's examples of a step, remembered for the last MEMO_STEPS steps asked:
    a remote source's fetch-ahead asks for a step before it is made (once per dataset of a
    mixture), and drawing them again cost as much as a tenth of a streamed batch."""
    lock, memo = self._examples_memo
    with lock:
      if step in memo:
        return memo[step]
    examples = self.sampler.examples(step)
    with lock:
      memo[step] = examples
      while len(memo) > self.MEMO_STEPS:
        memo.popitem(last=False)
    return examples

  def __call__(self, step: int) -> tuple[dict, list[str]]:
    _lower_priority(self.nice)
    bucket_index = self.sampler.bucket_of(step)
    bucket = self.buckets[bucket_index]
    batch = {k: np.zeros(shape, dtype) for k, (shape, dtype) in self.shapes(bucket_index).items()}
    examples = self._examples(step)
    mixture = len(self.sources) > 1
    data = [b""] * len(examples)
    for d, source in enumerate(self.sources):
      prefetch = getattr(source, "prefetch", None)
      if prefetch is not None:  # a remote source fetches the coming steps' records meanwhile
        prefetch(step, self.stride, lambda later, d=d: [
            e.record for e in self._examples(later) if e.dataset == d])
      slots = [i for i, e in enumerate(examples) if e.dataset == d]
      for i, record in zip(slots, source.read([examples[i].record for i in slots])):
        data[i] = record
    failures, ids = [], [""] * len(batch["valid"])
    for slot, e in enumerate(examples):
      rng = self.sampler.example_rng(step, e.position)
      try:
        example = self.reader.example(data[slot], bucket, rng)
      except Exception as err:  # noqa: BLE001 - any bad record is counted, never fatal
        where = f"dataset {e.dataset} record {e.record}" if mixture else f"record {e.record}"
        failures.append(f"{where}: {type(err).__name__}: {err}"[:300])
        continue
      ids[slot] = example.pop("id")
      for key, value in example.items():
        batch[key][slot] = value
      batch["valid"][slot] = True
    batch["id"] = np.array(ids)
    if mixture:
      batch["dataset"] = np.full(len(ids), -1, np.int32)
      batch["dataset"][:len(examples)] = [e.dataset for e in examples]
    return batch, failures


_priority = threading.local()


def _lower_priority(nice: int) -> None:
  """Adds `nice` to the nice value of the calling thread, once per thread (Linux).

  Batches are made in a prefetch thread or in worker processes beside the
  training step. When both want the same cores (a CPU host, or a GPU host with
  few cores), the kernel then gives the step's threads the cores first and
  the batch maker the idle time between and inside steps, instead of an equal
  share that slows every step. The main thread of the main process is never
  changed: there the caller makes its own batches.
  """
  if not nice or getattr(_priority, "lowered", False) or not sys.platform.startswith("linux"):
    return
  _priority.lowered = True
  if (threading.current_thread() is threading.main_thread()
      and multiprocessing.parent_process() is None):
    return
  try:  # on Linux a thread id names just that thread
    tid = threading.get_native_id()
    os.setpriority(os.PRIO_PROCESS, tid, os.getpriority(os.PRIO_PROCESS, tid) + nice)
  except OSError:
    pass  # not allowed here: batches are made at the same priority


def _without(left_out: Mapping[str, int], excluded: int, task: Task) -> str:
  """`, 3 without audio, 2 excluded by FILE`: what a task's count of records leaves out."""
  out = "".join(f", {n} without {m}" for m, n in left_out.items())
  return out + (f", {excluded} excluded by {task.exclude}" if excluded else "")


def _datasets(task: Task, inputs: tuple[str, ...], split: str, train: bool
              ) -> list[tuple[prepared.PreparedDataset, float]]:
  """The task's datasets opened, with their weights. A mixture's datasets must agree on what
  the reader takes from one: the tokenizer (text), the label names (labels). Evaluation
  reads the datasets of a mixture that hold its split."""
  if not isinstance(task.dataset, str) and not task.dataset:
    raise LoaderError(f"task {task.name!r}: its mixture of datasets is empty")
  out = []
  for root, weight in task.datasets:
    if not weight > 0:
      raise LoaderError(f"task {task.name!r}: dataset {root} has weight {weight}; a mixture's "
                        "weights must be positive")
    out.append((prepared.open_dataset(root), weight))
  if len(out) == 1:
    return out
  if not train:
    held = [(d, w) for d, w in out if split in d.metadata.splits]
    out = held or out[:1]  # none holds it: the first's check says so
  first = out[0][0]
  for dataset, _ in out[1:]:
    if "text" in inputs and _tokenizer(dataset) != _tokenizer(first):
      raise LoaderError(
          f"task {task.name!r} mixes {first.root} and {dataset.root}, tokenized by different "
          f"tokenizers ({_tokenizer(first)[:12]} and {_tokenizer(dataset)[:12]}): build them "
          "with one (`impax build ... --tokenizer PATH`)")
    if ("label" in inputs or task.prompt) and dataset.labels != first.labels:
      raise LoaderError(
          f"task {task.name!r} mixes {first.root} and {dataset.root}, whose label names differ "
          f"({len(first.labels)} and {len(dataset.labels)} labels): a mixture read for labels "
          "needs one label list")
  return out


def _tokenizer(dataset: prepared.PreparedDataset) -> str:
  tokenizer = dataset.metadata.tokenizer
  return tokenizer.sha256 if tokenizer else "none"


class Loader:
  """Batches of one task, from its prepared dataset. Iterate it; see the module docstring.

      import impax
      task = impax.Task("image_text", "data/images", "contrastive", ("image", "text"),
                        buckets=(impax.Bucket(image=(64, 64), batch_size=128),))
      it = iter(impax.Loader(task, seed=0))
      batch = next(it)        # {"image": uint8 [128, 64, 64, 3], "text": ..., "valid": ...}
      state = it.get_state()  # JSON; it.set_state(state) resumes exactly
  """

  def __init__(self, task: Task, *, train: bool = True, labels: bool = False, seed: int = 0,
               batch_multiple: int = 1, patches: Patches | None = None, process_index: int = 0,
               process_count: int = 1, num_workers: int | None = None, prefetch: int = 2,
               cache_dir: str | None = None, cache_limit: int | None = None,
               nice: int | None = None,
               source: RecordSource | None = None):
    """`train` False: the evaluation pass over `task.eval_split`. `labels`: batches also
    hold each example's label (evaluation's zero-shot). `batch_multiple`: every
    global batch size is a multiple of it (the data-parallel devices). `patches`: the
    model's patch sizes, which a bucket's batch size needs unless the bucket gives it.
    `num_workers` and `nice` default to the task's. `source`: the split's records, one
    source per dataset of a mixture (default: the dataset's local shards, `ShardSource`; a gs:// or s3:// dataset's, read
    by byte range, `remote.RemoteSource`, cached on disk within `cache_limit` bytes under
    `cache_dir`: IMPAX_CACHE_LIMIT and IMPAX_CACHE_DIR by default, 0 bytes: memory only)."""
    self.task, self.patches, self.train = task, patches, train
    inputs = task.inputs + (("label",) if labels and "label" not in task.inputs else ())
    buckets = task.buckets if train else (task.eval_bucket or task.buckets[0],)
    split = task.split if train else task.eval_split
    self.inputs, self.buckets, self.split = inputs, buckets, split
    mixture = _datasets(task, inputs, split, train)
    self.datasets = tuple(d for d, _ in mixture)
    self.dataset = self.datasets[0]  # a mixture's first: its tokenizer and labels are all's
    self.roots = tuple(d.root for d in self.datasets)
    for dataset in self.datasets:
      _check(task, inputs, buckets, split, dataset)
    if not 0 <= process_index < process_count:
      raise LoaderError(f"process_index {process_index} outside process_count {process_count}")
    multiple = math.lcm(batch_multiple, process_count)
    sizes = []
    for b in buckets:
      size = b.batch_size or task.token_budget / self.tokens_per_example(b)
      sizes.append(max(multiple, int(round(size / multiple)) * multiple))
    parts, self.left_out, self.excluded = [], collections.Counter(), 0
    for dataset, weight in mixture:
      records, left_out = _usable(task, inputs, split, dataset)
      records, excluded = _exclude(task, split, dataset, records)
      self.left_out.update(left_out)
      self.excluded += excluded
      n = dataset.num_records(split) if records is None else len(records)
      if n == 0 and len(mixture) > 1:
        raise LoaderError(f"task {task.name!r}: split {split!r} of {dataset.root} has no "
                          f"examples it can read{_without(left_out, excluded, task)}")
      parts.append(Part(n, records, weight))
    self.left_out = dict(self.left_out)
    num_records = sum(p.num_records for p in parts)
    without = _without(self.left_out, self.excluded, task)
    where = self.dataset.root if len(mixture) == 1 else f"the {len(mixture)} datasets of its mixture"
    if num_records == 0:
      raise LoaderError(f"task {task.name!r}: split {split!r} of {where} has "
                        f"no examples it can read{without}")
    if train and max(sizes) > num_records:
      raise LoaderError(f"task {task.name!r}: a global batch of {max(sizes)} is larger than the "
                        f"{num_records} examples it can read in {where} split "
                        f"{split!r}{without}; lower the token budget")
    self.num_records = num_records  # the records this task reads, in all its datasets
    self.part_records = tuple(p.num_records for p in parts)  # ... in each
    self.num_workers = task.num_workers if num_workers is None else num_workers
    self.prefetch = prefetch
    self.sampler = Sampler(
        seed=seed, train=train, weights=tuple(b.weight for b in buckets),
        batch_sizes=tuple(sizes), parts=tuple(parts),
        process_index=process_index, process_count=process_count)
    self.reader = Reader(
        inputs=inputs, augment=task.augment if train else None, text_length=task.text_length,
        prompt=task.prompt, multi_label=task.multi_label, sample_rate=task.sample_rate,
        clips=1 if train else task.eval_clips, crops=1 if train else task.eval_crops,
        num_labels=len(self.dataset.labels), tokenizer_path=self.dataset.tokenizer_path)
    if source is not None:
      sources = (source,) if not isinstance(source, Sequence) else tuple(source)
      if len(sources) != len(self.datasets):
        raise LoaderError(f"task {task.name!r}: {len(sources)} record sources for "
                          f"{len(self.datasets)} datasets")
    else:
      sources = tuple(self._source(d, split, cache_dir, cache_limit) for d in self.datasets)
    self.sources, self.source = sources, sources[0]
    self._batches = _Batches(self.sampler, self.reader, self.sources, buckets,
                             nice=task.loader_nice if nice is None else nice,
                             stride=max(1, self.num_workers))

  def _source(self, dataset: prepared.PreparedDataset, split: str, cache_dir: str | None,
              cache_limit: int | None) -> RecordSource:
    if remote.is_remote(dataset.root):
      # a bucket: records by byte range, fetched ahead, cached within `cache_limit` bytes
      # on disk under `cache_dir` (IMPAX_CACHE_LIMIT, IMPAX_CACHE_DIR by default)
      return remote.RemoteSource.open(
          dataset.root, dataset.split(split).shards, cache_dir=cache_dir,
          cache_limit=cache_limit, processes=max(1, self.num_workers))
    return ShardSource(tuple(dataset.shard_paths(split)))

  def tokens_per_example(self, bucket: Bucket) -> int:
    """Patch tokens one example of `bucket` gives the encoder (text: its full length)."""
    one = {k: (1, *shape) for k, shape in
           input_shapes(bucket, self.inputs, self.task.sample_rate).items()}
    if self.patches is None:
      raise LoaderError(f"task {self.task.name!r}: counting tokens needs the model's patch "
                        "sizes: Loader(..., patches=Patches(...)), or give every bucket its "
                        "batch_size")
    return patch_tokens(one, self.patches) + (self.task.text_length if "text" in self.inputs else 0)

  @property
  def batch_sizes(self) -> tuple[int, ...]:
    """Global batch size of each bucket."""
    return self.sampler.batch_sizes

  @property
  def labels(self) -> tuple[str, ...]:
    return self.dataset.labels

  def tokens_per_batch(self, bucket_index: int) -> int:
    """Patch tokens of a global batch of the bucket: what the token budget counts."""
    return self.batch_sizes[bucket_index] * self.tokens_per_example(self.buckets[bucket_index])

  def batch_shapes(self) -> list[dict[str, tuple[tuple[int, ...], str]]]:
    """Every batch shape this process can get, one per bucket (evaluation: the first only)."""
    buckets = range(len(self.buckets)) if self.train else [0]
    return [self._batches.shapes(i) for i in buckets]

  def bucket_of(self, step: int) -> int:
    return self.sampler.bucket_of(step)

  @property
  def num_batches(self) -> int:
    """Batches in an evaluation pass; training never ends (sys.maxsize)."""
    if self.train:
      return sys.maxsize
    return -(-self.num_records // self.batch_sizes[0])

  def dataset_of_batches(self) -> grain.IterDataset:
    ds = grain.MapDataset.range(self.num_batches).map(self._batches)
    if not self.num_workers:
      # In this process: one thread prepares the next batches while the
      # trainer runs its step (decoding in numpy, OpenCV and simplejpeg, and
      # XLA, release the GIL). Its state still counts consumed batches only.
      return ds.to_iter_dataset(grain.ReadOptions(num_threads=1,
                                                  prefetch_buffer_size=self.prefetch))
    ds = ds.to_iter_dataset(grain.ReadOptions(num_threads=0, prefetch_buffer_size=0))
    # Grain reads absl flags in its worker machinery; a program that is not an
    # absl app has not parsed them, so take their defaults.
    from absl import flags
    if not flags.FLAGS.is_parsed():
      flags.FLAGS.mark_as_parsed()
    return ds.mp_prefetch(grain.MultiprocessingOptions(
        num_workers=self.num_workers, per_worker_buffer_size=self.prefetch))

  def __iter__(self) -> "LoaderIterator":
    return LoaderIterator(self.dataset_of_batches())


class LoaderIterator:
  """Yields batches; counts failed records; state is Grain's plus the counts (JSON)."""

  def __init__(self, ds: grain.IterDataset):
    self._it = iter(ds)
    self.failed = 0
    self.failure_reasons = collections.Counter()

  def __iter__(self):
    return self

  def __next__(self) -> dict:
    batch, failures = next(self._it)
    self.failed += len(failures)
    for reason in failures:
      # "record 12: DecodeError: cannot decode a JPEG: ..." -> count by what went wrong
      self.failure_reasons[reason.split(": ", 1)[-1]] += 1
    return batch

  def get_state(self) -> dict:
    return {"grain": self._it.get_state(), "failed": self.failed,
            "failure_reasons": dict(self.failure_reasons)}

  def set_state(self, state: dict) -> None:
    self._it.set_state(state["grain"])
    self.failed = state["failed"]
    self.failure_reasons = collections.Counter(state["failure_reasons"])

  def close(self) -> None:
    close = getattr(self._it, "close", None)
    if close:
      close()
