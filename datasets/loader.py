"""The resolution-bucketed loader: prepared shards -> batches of a small, known set of shapes.

    task = loader.Task(
        "video_text", "demo-output/data/videos", "contrastive", ("video", "text"),
        buckets=(loader.Bucket(video=(8, 64, 64)), loader.Bucket(video=(4, 96, 96))),
        token_budget=8192)
    data = loader.Loader(task, seed=0, patches=loader.Patches(tubelet=(2, 8, 8)))
    data.batch_shapes()      # every shape a batch can have: compile each once
    it = iter(data)
    batch = next(it)         # {"video": uint8 [B, 8, 64, 64, 3], "text": ..., "valid": ...}
    state = it.get_state()   # JSON; it.set_state(state) resumes exactly

How a batch is made (training). Step i draws its bucket from a generator
seeded by (seed, i), weighted by the buckets' weights, so the sequence of
shapes is known without reading any data. A bucket's global batch size comes
from the task's token budget (every batch holds about the same number of patch
tokens), rounded to a multiple of the process count and `batch_multiple`.
Examples come from one endless stream: the records in a Grain global shuffle
that differs per epoch (`MapDataset.range(N).shuffle(seed).repeat()`); step i
takes the stream positions after those of steps 0..i-1, and process p of P
takes its 1/P of them. Each example is decoded and cropped/resized/sampled in
time to the bucket's shape with a generator seeded by (seed, step, position),
so a batch depends on nothing but its step: not on the worker count, not on
what ran before. That makes the batches a Grain `MapDataset` over step
indices, whose iterator state (the next step per worker) is exact resume for
free, with prefetch in a thread (num_workers=0) or in worker processes
(`mp_prefetch`), both at a lower priority than the caller (`nice`).

Evaluation (`train=False`) reads every example of the split once, in order,
with deterministic preprocessing (centre crop, or `eval_crops` crops along the longer
side, and `eval_clips` uniformly spaced clips) at the first bucket's shape; the last
batch is padded and its padding marked invalid.

A task reads only the records that have every modality it needs: a video
without a sound track is never drawn for a video-audio task (the build lists
such records in metadata.json, "lacking"). `Loader.left_out` counts them per
modality. `Task.exclude` names examples never read (a dedup report's leaks or
duplicates, or a list of ids); `Loader.excluded` counts them. A record that fails to decode is not fatal: its slot in the batch is
zeros with `valid` False, and the iterator counts it with its reason.
"""

import collections
import dataclasses
import functools
import math
import multiprocessing
import os
import sys
import threading
from collections.abc import Mapping

import grain
import numpy as np
import sentencepiece as spm

from impax.datasets import decode, exclusions, modalities, prepared
from impax.datasets.modalities import INPUTS

_BLOCK = 1024  # steps drawn together by `draw`


@dataclasses.dataclass(frozen=True)
class Bucket:
  """One input shape of a task. Give the shapes of the modalities the task reads."""
  video: tuple[int, int, int] | None = None  # frames, height, width
  image: tuple[int, int] | None = None  # height, width
  audio_seconds: float | None = None  # waveform / spectrogram window
  weight: float = 1.0  # relative frequency among the task's buckets
  batch_size: int | None = None  # global; default: from the token budget


@dataclasses.dataclass(frozen=True)
class Patches:
  """Patch sizes of the model, for counting tokens (the model's config has them)."""
  tubelet: tuple[int, int, int] = (4, 16, 16)
  spectrogram: tuple[int, int] = (16, 16)
  waveform: int = 256


@dataclasses.dataclass(frozen=True)
class Task:
  """One task of Alternating Gradient Descent: a dataset, what it reads, its loss, its shapes.

  The trainer steps on it and the loader reads it: `Loader(task)` takes the
  training buckets of the `split`, `Loader(task, train=False)` the evaluation
  bucket of the `eval_split`.
  """
  name: str
  dataset: str  # prepared dataset directory (or gs://, s3://: staged locally)
  objective: str  # "contrastive" (between two modalities) or "classification" (of one)
  modalities: tuple[str, ...]  # model inputs, e.g. ("video", "text"); classification: one
  buckets: tuple[Bucket, ...]
  token_budget: int = 4096  # patch tokens per global batch
  text_length: int = 16
  prompt: str | None = None  # text from label names, e.g. "a video of {label}."
  interval: int = 1  # schedule "intervals": runs when the cycle counter is a multiple of it
  weight: float = 1.0  # schedule "random": relative probability per step
  loss_weight: float = 1.0
  drop_token: float = 0.0  # fraction of each non-text modality's tokens dropped in training
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
  t, ph, pw = patches.tubelet
  n = 0
  if "video" in shapes:
    s = shapes["video"]
    n += math.prod(s[:-4]) * max(1, s[-4] // t) * (s[-3] // ph) * (s[-2] // pw)
  if "image" in shapes:
    b, h, w, _ = shapes["image"]
    n += b * (h // ph) * (w // pw)
  if "spectrogram" in shapes:
    b, f, m = shapes["spectrogram"]
    n += b * (f // patches.spectrogram[0]) * (m // patches.spectrogram[1])
  if "waveform" in shapes:
    b, s = shapes["waveform"]
    n += b * (s // patches.waveform)
  return n


def input_shapes(bucket: Bucket, inputs: tuple[str, ...], sample_rate: int = 16000
                 ) -> dict[str, tuple[int, ...]]:
  """Per-example shapes of the video, image and audio inputs of a bucket."""
  out = {}
  if "video" in inputs:
    out["video"] = (*bucket.video, 3)
  if "image" in inputs:
    out["image"] = (*bucket.image, 3)
  if "waveform" in inputs:
    out["waveform"] = (int(round(bucket.audio_seconds * sample_rate)),)
  if "spectrogram" in inputs:
    out["spectrogram"] = (decode.spectrogram_frames(bucket.audio_seconds), decode.MEL_BINS)
  return out


@functools.lru_cache(maxsize=64)
def _block(weights: tuple[float, ...], seed: int, stream: int, block: int) -> np.ndarray:
  p = np.asarray(weights, np.float64)
  return np.random.default_rng([seed, stream, block]).choice(len(p), size=_BLOCK, p=p / p.sum())


def draw(weights: tuple[float, ...], seed: int, stream: int, step: int) -> int:
  """An index drawn by weight for `step`, from a generator seeded by (seed, stream, step's
  block): known for any step without drawing the ones before. The loader draws buckets
  (stream 1), the trainer's "random" schedule tasks (stream 3)."""
  return int(_block(tuple(weights), seed, stream, step // _BLOCK)[step % _BLOCK])


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


@dataclasses.dataclass(frozen=True)
class _Plan:
  """Everything a worker needs to make any batch; pickled to Grain's worker processes."""
  task: Task
  train: bool
  inputs: tuple[str, ...]
  buckets: tuple[Bucket, ...]  # training: the task's; evaluation: its evaluation bucket
  clips: int  # per video: 1 in training, the task's eval_clips in evaluation
  crops: int  # per clip: 1 in training, the task's eval_crops in evaluation
  seed: int
  shard_paths: tuple[str, ...]
  num_records: int  # the task's records: `records` if given, else the split's
  records: np.ndarray | None = dataclasses.field(compare=False)  # split positions; None: all
  num_labels: int
  tokenizer_path: str | None
  batch_sizes: tuple[int, ...]  # global, per bucket
  process_index: int
  process_count: int
  nice: int = 0  # added to the nice value of the threads and processes that make batches

  # -- which bucket and which stream positions a step takes -----------------

  @functools.cached_property
  def _weights(self) -> tuple[float, ...]:
    return tuple(b.weight for b in self.buckets)

  def _block_buckets(self, block: int) -> np.ndarray:
    return _block(self._weights, self.seed, 1, block)

  @functools.cached_property
  def _block_starts(self) -> list[int]:
    return [0]  # stream position of each block's first step; grows on demand

  def bucket_of(self, step: int) -> int:
    if not self.train:
      return 0
    return draw(self._weights, self.seed, 1, step)

  def stream_start(self, step: int) -> int:
    """First stream position of step `step` (global, before the process split)."""
    if not self.train:
      return step * self.batch_sizes[0]
    block, within = divmod(step, _BLOCK)
    starts, sizes = self._block_starts, np.array(self.batch_sizes)
    while len(starts) <= block:
      starts.append(starts[-1] + int(sizes[self._block_buckets(len(starts) - 1)].sum()))
    return starts[block] + int(sizes[self._block_buckets(block)[:within]].sum())

  @functools.cached_property
  def _stream(self):
    return grain.MapDataset.range(self.num_records).shuffle(seed=self.seed).repeat()

  @functools.cached_property
  def _source(self):
    return grain.sources.ArrayRecordDataSource(list(self.shard_paths))

  @functools.cached_property
  def _tokenizer(self):
    return spm.SentencePieceProcessor(model_file=self.tokenizer_path)

  # -- one batch ------------------------------------------------------------

  def shapes(self, bucket_index: int) -> dict[str, tuple[tuple[int, ...], str]]:
    """{key: (per-process shape, dtype)} of a batch of this bucket."""
    b, task, inputs = self.buckets[bucket_index], self.task, self.inputs
    n = self.batch_sizes[bucket_index] // self.process_count
    views = self.clips * self.crops
    clips = () if views == 1 else (views,)
    out = {}
    for key, shape in input_shapes(b, inputs, task.sample_rate).items():
      if key in modalities.VISION:
        out[key] = ((n, *(clips if key == "video" else ()), *shape), "uint8")
      else:
        out[key] = ((n, *shape), "float32")
    if "text" in inputs:
      out["text"] = ((n, task.text_length), "int32")
      out["text_mask"] = ((n, task.text_length), "int32")
    if "label" in inputs:
      out["label"] = ((n, self.num_labels), "float32") if task.multi_label else ((n,), "int32")
    out["valid"] = ((n,), "bool")
    return out

  def __call__(self, step: int) -> tuple[dict, list[str]]:
    """(arrays of step `step` for this process, failure reasons of its examples)."""
    _lower_priority(self.nice)
    bucket_index = self.bucket_of(step)
    shapes = self.shapes(bucket_index)
    batch = {k: np.zeros(shape, dtype) for k, (shape, dtype) in shapes.items()}
    n = shapes["valid"][0][0]
    first = self.stream_start(step) + self.process_index * n
    failures = []
    positions = range(first, first + n if self.train else min(first + n, self.num_records))
    records = [int(self._stream[p]) for p in positions] if self.train else list(positions)
    if self.records is not None:
      records = [int(self.records[r]) for r in records]
    data = self._source.__getitems__(records) if records else []  # one batched read
    for slot, (position, record) in enumerate(zip(positions, records)):
      rng = np.random.default_rng([self.seed, 2, step, position])
      try:
        example = self._example(data[slot], self.buckets[bucket_index], rng)
      except Exception as e:  # noqa: BLE001 - any bad record is counted, never fatal
        failures.append(f"record {record}: {type(e).__name__}: {e}"[:300])
        continue
      for key, value in example.items():
        batch[key][slot] = value
      batch["valid"][slot] = True
    return batch, failures

  def _example(self, record: bytes, bucket: Bucket, rng: np.random.Generator) -> dict:
    task, inputs = self.task, self.inputs
    augment = task.augment if self.train else None
    features = decode.parse(record)
    out, audio_start = {}, None
    if "video" in inputs:
      out["video"], starts = decode.video(features, *bucket.video, augment, rng,
                                          clips=self.clips, crops=self.crops)
      audio_start = starts[0] if len(starts) == 1 else None
    if "image" in inputs:
      out["image"] = decode.image(features, *bucket.image, augment, rng)
    if {"waveform", "spectrogram"} & set(inputs):
      wave = decode.waveform(features, bucket.audio_seconds, augment, rng,
                             start_seconds=audio_start, sample_rate=task.sample_rate)
      if "waveform" in inputs:
        out["waveform"] = wave
      if "spectrogram" in inputs:
        out["spectrogram"] = decode.log_mel(wave, task.sample_rate)
    if "text" in inputs:
      out["text"], out["text_mask"] = decode.pad_tokens(self._text(features, augment, rng),
                                                        task.text_length)
    if "label" in inputs:
      out["label"] = decode.label(features, self.num_labels, task.multi_label)
    return out

  def _text(self, features: dict, augment, rng: np.random.Generator) -> list[int]:
    options = decode.captions(features) if features.get("text/lengths") else []
    if not options and self.task.prompt:
      names = [n.decode() for n in features.get("label/name") or []]
      options = [self._tokenizer.encode(self.task.prompt.format(label=n)) for n in names]
    if not options:
      raise decode.DecodeError("record has no captions and no labels to prompt")
    return options[int(rng.integers(len(options)))] if augment is not None else options[0]


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


class Loader:
  """Batches of one task, from its prepared dataset. Iterate it; see the module docstring."""

  def __init__(self, task: Task, *, train: bool = True, labels: bool = False, seed: int = 0,
               batch_multiple: int = 1, patches: Patches = Patches(), process_index: int = 0,
               process_count: int = 1, num_workers: int | None = None, prefetch: int = 2,
               cache_dir: str | None = None, nice: int | None = None):
    """`train` False: the evaluation pass over `task.eval_split`. `labels`: batches also
    hold each example's label (evaluation's zero-shot). `batch_multiple`: every
    global batch size is a multiple of it (the data-parallel devices).
    `num_workers` and `nice` default to the task's."""
    self.task, self.patches, self.train = task, patches, train
    self.dataset = prepared.open_dataset(task.dataset, cache_dir=cache_dir)
    inputs = task.inputs + (("label",) if labels and "label" not in task.inputs else ())
    buckets = task.buckets if train else (task.eval_bucket or task.buckets[0],)
    split = task.split if train else task.eval_split
    self.inputs, self.buckets, self.split = inputs, buckets, split
    _check(task, inputs, buckets, split, self.dataset)
    if not 0 <= process_index < process_count:
      raise LoaderError(f"process_index {process_index} outside process_count {process_count}")
    multiple = math.lcm(batch_multiple, process_count)
    sizes = []
    for b in buckets:
      size = b.batch_size or task.token_budget / self.tokens_per_example(b)
      sizes.append(max(multiple, int(round(size / multiple)) * multiple))
    records, self.left_out = _usable(task, inputs, split, self.dataset)
    records, self.excluded = _exclude(task, split, self.dataset, records)
    num_records = self.dataset.num_records(split) if records is None else len(records)
    without = "".join(f", {n} without {m}" for m, n in self.left_out.items())
    without += f", {self.excluded} excluded by {task.exclude}" if self.excluded else ""
    if num_records == 0:
      raise LoaderError(f"task {task.name!r}: split {split!r} of {self.dataset.root} has "
                        f"no examples it can read{without}")
    if train and max(sizes) > num_records:
      raise LoaderError(f"task {task.name!r}: a global batch of {max(sizes)} is larger than the "
                        f"{num_records} examples it can read in {self.dataset.root} split "
                        f"{split!r}{without}; lower the token budget")
    self.num_records = num_records  # the records this task reads
    self.num_workers = task.num_workers if num_workers is None else num_workers
    self.prefetch = prefetch
    self._plan = _Plan(
        task=task, train=train, inputs=inputs, buckets=buckets,
        clips=task.eval_clips if not train else 1, crops=task.eval_crops if not train else 1,
        seed=seed,
        shard_paths=tuple(self.dataset.shard_paths(split)), num_records=num_records,
        records=records, num_labels=len(self.dataset.labels),
        tokenizer_path=self.dataset.tokenizer_path, batch_sizes=tuple(sizes),
        process_index=process_index, process_count=process_count,
        nice=task.loader_nice if nice is None else nice)

  def tokens_per_example(self, bucket: Bucket) -> int:
    """Patch tokens one example of `bucket` gives the encoder (text: its full length)."""
    one = {k: (1, *shape) for k, shape in
           input_shapes(bucket, self.inputs, self.task.sample_rate).items()}
    return patch_tokens(one, self.patches) + (self.task.text_length if "text" in self.inputs else 0)

  @property
  def batch_sizes(self) -> tuple[int, ...]:
    """Global batch size of each bucket."""
    return self._plan.batch_sizes

  @property
  def labels(self) -> tuple[str, ...]:
    return self.dataset.labels

  def tokens_per_batch(self, bucket_index: int) -> int:
    """Patch tokens of a global batch of the bucket: what the token budget counts."""
    return self.batch_sizes[bucket_index] * self.tokens_per_example(self.buckets[bucket_index])

  def batch_shapes(self) -> list[dict[str, tuple[tuple[int, ...], str]]]:
    """Every batch shape this process can get, one per bucket (evaluation: the first only)."""
    buckets = range(len(self.buckets)) if self.train else [0]
    return [self._plan.shapes(i) for i in buckets]

  def bucket_of(self, step: int) -> int:
    return self._plan.bucket_of(step)

  @property
  def num_batches(self) -> int:
    """Batches in an evaluation pass; training never ends (sys.maxsize)."""
    if self.train:
      return sys.maxsize
    return -(-self.num_records // self.batch_sizes[0])

  def dataset_of_batches(self) -> grain.IterDataset:
    ds = grain.MapDataset.range(self.num_batches).map(self._plan)
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
