"""The Beam graph of a build, steps 1 to 6 (pipelines/build.py tells the whole story).

Every transform gets the Plan (pipelines/plan.py); what an example becomes is
pipelines/example.py's job. The graph only moves entries and results around:
which record lands in which shard depends on the input alone, never on the
runner or the number of workers.
"""

import collections
import concurrent.futures
import contextlib
import dataclasses
import json
import os
import tempfile
import uuid
from collections.abc import Mapping
from typing import Any

import apache_beam as beam
from apache_beam.transforms import window
from array_record.python.array_record_module import ArrayRecordWriter

from impax.datasets import metadata, modalities, registry
from impax.pipelines import config as config_lib
from impax.pipelines import download, example, read, stats, storage, text
from impax.pipelines.plan import Plan, killed_results

# -- 2: dedupe ----------------------------------------------------------------


def _id_key(entry) -> str:
  return entry.id if isinstance(entry, registry.Entry) else f"\x00{entry.index}"


def _dedupe(keyed):
  _, entries = keyed
  good = sorted((e for e in entries if isinstance(e, registry.Entry)), key=lambda e: e.index)
  yield from (e for e in entries if isinstance(e, registry.BadEntry))
  if good:
    yield good[0]
  for e in good[1:]:
    yield registry.BadEntry(e.index, e.source, f"duplicate id {e.id!r}: first used at "
                            f"{good[0].source}", e.id, stage="duplicate")


# -- 3 and 4: what the whole corpus says ------------------------------------
# One pass over the entries gathers everything that needs all of them: the label
# names and the captions (step 3, the vocabularies) and the entries' count and index
# range (step 4, the layout). One global step, not one per question: each of Beam's
# steps costs a local build time to plan and run, and a Flink build a task of its own
# (benchmarks/README.md, issue 15).


def _label_names(entry):
  if isinstance(entry, registry.Entry):
    for label in entry.labels:
      with contextlib.suppress(text.TextError):
        yield text.normalize(label)


def _captions(entry):
  if isinstance(entry, registry.Entry):
    for caption in entry.captions:
      with contextlib.suppress(text.TextError):  # reported when its example is processed
        yield text.normalize(caption)


@dataclasses.dataclass(frozen=True)
class Layout:
  num_shards: int
  max_index: int
  min_index: int = 0  # a spec that selects rows (one fold of a CSV) starts past 0

  def shard_of(self, index: int) -> int:
    return (index - self.min_index) * self.num_shards // (self.max_index - self.min_index + 1)


@dataclasses.dataclass
class _Tally:
  """_CorpusFn's accumulator."""
  count: int = 0
  max_index: int = -1
  min_index: int | None = None
  labels: set[str] = dataclasses.field(default_factory=set)
  captions: collections.Counter = dataclasses.field(default_factory=collections.Counter)


@dataclasses.dataclass(frozen=True)
class Corpus:
  layout: Layout
  labels: list[str]  # sorted, distinct; [] unless gathered
  captions: Mapping[str, int]  # {normalized caption: count}; empty unless gathered


class _CorpusFn(beam.CombineFn):
  """Counts the entries and finds their index range, then sizes the shards; gathers the
  distinct label names and counts the captions, where the plan does not give the
  labels or the tokenizer."""

  def __init__(self, config: config_lib.BuildConfig, labels: bool, captions: bool):
    self.config, self.labels, self.captions = config, labels, captions

  def create_accumulator(self):
    return _Tally()

  def add_input(self, acc, entry):
    acc.count += 1
    acc.max_index = max(acc.max_index, entry.index)
    acc.min_index = entry.index if acc.min_index is None else min(acc.min_index, entry.index)
    if self.labels:
      acc.labels.update(_label_names(entry))
    if self.captions:
      acc.captions.update(_captions(entry))
    return acc

  def merge_accumulators(self, accs):
    merged, *rest = accs
    for acc in rest:
      merged.count += acc.count
      merged.max_index = max(merged.max_index, acc.max_index)
      if acc.min_index is not None:
        merged.min_index = (acc.min_index if merged.min_index is None
                            else min(merged.min_index, acc.min_index))
      merged.labels |= acc.labels
      merged.captions.update(acc.captions)
    return merged

  def extract_output(self, acc):
    num_shards = self.config.num_shards or max(1, -(-acc.count // self.config.shard_size))
    layout = Layout(num_shards=num_shards, max_index=acc.max_index, min_index=acc.min_index or 0)
    return Corpus(layout, sorted(acc.labels), dict(acc.captions))  # corpus_texts sorts them


@dataclasses.dataclass(frozen=True)
class Prepared:
  """What processing an example and writing a shard need of the whole corpus: the
  side input of steps 5 and 6."""
  layout: Layout
  labels: tuple[str, ...]
  tokenizer_model: bytes


def _prepare(corpus: Corpus, plan: Plan) -> Prepared:
  """The vocabularies (the plan's, or learnt from the corpus and saved for step 7) and the layout."""
  storage.patch_beam()  # a Map step: no DoFn.setup runs before it on a worker
  labels = plan.labels
  if labels is None:
    labels = corpus.labels
    storage.write_atomic(storage.join(plan.tmp, "labels.json"), json.dumps(labels).encode())
  model = plan.tokenizer
  if model is None:
    spec = registry.resolve(plan.spec_name, plan.spec_source)
    texts = text.corpus_texts(corpus.captions.items(), labels, sorted(spec.prompts.values()))
    model = (text.train_tokenizer(texts, plan.config.vocab_size, plan.config.tokenizer_type)
             if texts else b"")
    storage.write_atomic(storage.join(plan.tmp, "tokenizer.model"), model)
  return Prepared(corpus.layout, tuple(labels), model)


def _assign(entry, prepared: Prepared, plan: Plan):
  layout = prepared.layout
  shard = layout.shard_of(entry.index)
  if plan.shard_name(shard, layout.num_shards) not in plan.finished:
    yield shard, entry


# -- 5: process ---------------------------------------------------------------
# A record waits for its shard in a temporary file, and its result beside it (a
# resumed build reuses both; pipelines/progress.py counts the results). Creating a
# file can cost a good part of a small example's whole work (benchmarks/README.md,
# issue 28), so on a local disk a bundle appends its records to one file per shard,
# and its results to one log (Plan.result_log), each result saying where its record
# lies. An object store cannot append: there each record and each result is a file of
# its own. Either way the result is written after its record is whole.

MAX_OPEN_SPILLS = 32  # spill files a bundle keeps open; one evicted is reopened to append
# Examples whose URLs download ahead, per download thread: enough to keep every thread busy
# while the first done is processed, and what bounds the bodies a worker holds (an image's in
# memory, a video's or sound's on disk; download.Ahead says how much).
WINDOW_PER_THREAD = 2


@dataclasses.dataclass(frozen=True)
class RecordAt:
  """Where step 5 left an example's serialized record for step 6: `length` bytes at
  `offset` of a spill file (its name in the build's records folder), or, without a
  file, a blob of its own (Plan.record_blob). Every result carries one through the
  shuffle, so it holds a name, not a path."""
  file: str | None = None
  offset: int = 0
  length: int = 0

  def path(self, plan: Plan, index: int) -> str:
    return storage.join(_spill_dir(plan), self.file) if self.file else plan.record_blob(index)


def _spill_dir(plan: Plan) -> str:
  return storage.join(plan.tmp, "records")


class Process(beam.DoFn):
  """Step 5: one example in, its result and where its record is out.

  With download_threads > 1, an example whose media are URLs waits in a window while
  they download on a thread pool (download.Ahead), and is processed once they are done;
  what is left when the bundle ends is processed then. A worker so waits for many
  servers at once rather than one. Which example goes first changes no byte: step 6
  orders a shard's records by index."""

  def __init__(self, plan: Plan):
    self.plan = plan
    self._labels = (None, {})

  def setup(self):
    storage.patch_beam()
    self._spill = storage.is_local(self.plan.tmp)
    self._spills = {}  # shard: its spill file's path, for this bundle
    self._open = collections.OrderedDict()  # shard: open spill file, least recently used first
    threads = self.plan.config.download_threads
    self._ahead = download.Ahead(threads) if threads > 1 else None
    self._window = []  # (shard, entry, prepared, {(url, medium): download future}), oldest first
    self._results = None  # this bundle's result log, open (a local disk)

  def start_bundle(self):
    self._drop_window()  # a failed bundle's, before its retry
    self._close_spills()

  def finish_bundle(self):
    for out in self._drain(most=0):  # before the spill files close
      yield window.GlobalWindows.windowed_value(out)
    self._close_spills()

  def teardown(self):
    self._drop_window()
    if self._ahead:
      self._ahead.close()
    self._close_spills()

  def _drop_window(self):
    for *_, fetches in self._window:
      for future in fetches.values():
        future.cancel()
        download.discard(future)
    self._window.clear()

  def _drain(self, most: int):
    """Processes the window's examples whose downloads are done, oldest first, and waits
    for more until at most `most` are left."""
    while True:
      for waiting in [w for w in self._window if all(f.done() for f in w[3].values())]:
        self._window.remove(waiting)
        yield self._process(*waiting)
      if len(self._window) <= most:
        return
      concurrent.futures.wait([f for w in self._window for f in w[3].values()],
                              return_when=concurrent.futures.FIRST_COMPLETED)

  def _close_spills(self):
    while self._open:
      self._open.popitem()[1].close()
    self._spills.clear()
    if self._results is not None:
      self._results.close()
      self._results = None

  def _keep(self, shard: int, index: int, record: bytes) -> RecordAt:
    """Puts a record where its shard's writer will find it, whole before this returns."""
    if not self._spill:
      storage.write_atomic(self.plan.record_blob(index), record)
      return RecordAt()
    f = self._open.pop(shard, None)
    if f is None:
      if len(self._open) >= MAX_OPEN_SPILLS:
        self._open.popitem(last=False)[1].close()
      if shard in self._spills:
        f = open(self._spills[shard], "ab")
      else:
        path = storage.join(_spill_dir(self.plan), f"{shard:05d}-{uuid.uuid4().hex[:12]}.records")
        os.makedirs(os.path.dirname(path), exist_ok=True)
        f = open(path, "wb")
        self._spills[shard] = path
    self._open[shard] = f
    offset = f.tell()
    f.write(record)
    f.flush()  # on disk (for other processes to read) before the result that points to it
    return RecordAt(os.path.basename(f.name), offset, len(record))

  def process(self, item, prepared: Prepared):
    shard, entry = item
    if isinstance(entry, registry.BadEntry):
      yield shard, (example.Failure.of(entry, entry.stage, entry.error), None)
      return
    stored = self._killed_result(entry.index)
    if stored is not None:  # processed by a build that was killed
      result = example.result_from_json(stored)
      # Without "record": a blob of its own (an object store, or an older impax's build).
      yield shard, (result, RecordAt(**stored.get("record", {}))
                    if isinstance(result, example.Processed) else None)
      return
    urls = [(path, medium) for medium, path in sorted(entry.media.items()) if download.is_url(path)]
    if self._ahead is None or not urls:
      yield self._process(shard, entry, prepared, {})
    else:
      self._window.append((shard, entry, prepared, self._ahead.start(urls, self.plan.config)))
    yield from self._drain(most=WINDOW_PER_THREAD * self.plan.config.download_threads)

  def _process(self, shard: int, entry: registry.Entry, prepared: Prepared, fetches: dict):
    if self._labels[0] is not prepared.labels:
      self._labels = (prepared.labels, {name: i for i, name in enumerate(prepared.labels)})
    with download.taken_from(fetches):
      result, record = example.process_entry(entry, self.plan.config, prepared.tokenizer_model,
                                             self._labels[1], self.plan.media_base)
    at = None if record is None else self._keep(shard, entry.index, record)
    stored = result.to_json()
    if at is not None and at.file:
      stored["record"] = dataclasses.asdict(at)
    self._keep_result(entry.index, json.dumps(stored, sort_keys=True).encode())
    return shard, (result, at)

  def _keep_result(self, index: int, line: bytes):
    """Keeps an example's result for a resumed build, once its record is whole."""
    if not self._spill:
      storage.write_atomic(self.plan.result_blob(index), line)
      return
    if self._results is None:
      path = self.plan.result_log(uuid.uuid4().hex[:12])
      os.makedirs(os.path.dirname(path), exist_ok=True)
      self._results = open(path, "ab")
    self._results.write(line + b"\n")
    self._results.flush()  # on disk before the next example: a killed build keeps it

  def _killed_result(self, index: int) -> dict | None:
    """The result a killed build left for this example: a line of its result logs, or a file
    of its own (an object store, or an older impax's build)."""
    if not self.plan.resuming:
      return None
    line = killed_results(self.plan).get(index)
    if line is not None:
      return json.loads(line)
    path = self.plan.result_blob(index)
    return json.loads(storage.read(path)) if storage.exists(path) else None


def _read_records(written: list[tuple[example.Processed, RecordAt]], plan: Plan):
  """The records, in the order given; each spill file is opened once."""
  files = {}
  try:
    for r, at in written:
      path = at.path(plan, r.index)
      if not at.file:
        yield storage.read(path)
        continue
      if path not in files:
        files[path] = open(path, "rb")
      f = files[path]
      f.seek(at.offset)
      record = f.read(at.length)
      if len(record) != at.length:
        raise OSError(f"{path} ends before the record at {at.offset} (+{at.length})")
      yield record
  finally:
    for f in files.values():
      f.close()


def _remove(paths: set[str]):
  """The shard's temporary record files, once it is published."""
  local = [p for p in paths if storage.is_local(p)]
  for path in local:
    with contextlib.suppress(FileNotFoundError):
      os.remove(path)  # not storage.delete: Beam matches each local path as a pattern
  storage.delete(sorted(paths.difference(local)))


# -- 6: shards ----------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class ShardInfo:
  """A written shard's sidecar: what step 7 merges into metadata.json."""
  shard: int
  path: str  # the shard's file name
  num_records: int
  num_bytes: int
  failures: tuple[example.Failure, ...]
  stats: Mapping[str, Any]  # in stats.py's mergeable form
  composition: metadata.Composition
  media_sha256: tuple[tuple[int, Mapping[str, str]], ...]  # (index, {medium: sha256}) per record
  # {part: positions in the shard of the records without it}, for every part a
  # record can lack (modalities.PARTS); None in a sidecar that predates the field.
  lacking: Mapping[str, tuple[int, ...]] | None
  sha256: str | None = None  # the shard file's; None in a sidecar that predates the field

  def to_json(self) -> dict:
    return {"shard": self.shard, "path": self.path, "num_records": self.num_records,
            "num_bytes": self.num_bytes, "failures": [f.to_json() for f in self.failures],
            "stats": self.stats, "composition": dataclasses.asdict(self.composition),
            "media_sha256": [[i, dict(m)] for i, m in self.media_sha256], "sha256": self.sha256,
            **({"lacking": {k: list(v) for k, v in self.lacking.items()}}
               if self.lacking is not None else {})}

  @classmethod
  def from_json(cls, obj: Mapping) -> "ShardInfo":
    lacking = obj.get("lacking")
    return cls(obj["shard"], obj["path"], obj["num_records"], obj["num_bytes"],
               tuple(example.Failure.from_json(f) for f in obj["failures"]), obj["stats"],
               metadata.Composition(**obj["composition"]),
               tuple((i, m) for i, m in obj["media_sha256"]),
               None if lacking is None else {k: tuple(v) for k, v in lacking.items()},
               sha256=obj.get("sha256"))


class WriteShard(beam.DoFn):
  """Step 6: a shard's records in index order into one ArrayRecord file, then published."""

  def __init__(self, plan: Plan):
    self.plan = plan

  def setup(self):
    storage.patch_beam()

  def process(self, item, prepared: Prepared):
    shard, results = item
    plan, layout = self.plan, prepared.layout
    name = plan.shard_name(shard, layout.num_shards)
    final = storage.join(plan.output, name)
    if name in plan.finished and storage.exists(plan.sidecar(shard)):
      info = ShardInfo.from_json(json.loads(storage.read(plan.sidecar(shard))))
      if info.sha256 is None:  # written by an impax that did not record it
        info = dataclasses.replace(info, sha256=config_lib.file_sha256(final))
        storage.write_atomic(plan.sidecar(shard), json.dumps(info.to_json(), sort_keys=True).encode())
      yield info
      return
    results = sorted((r for r in results if r is not None), key=lambda r: r[0].index)
    written = [(r, at) for r, at in results if isinstance(r, example.Processed)]
    shard_stats, composition = {}, metadata.Composition()
    lacking = {part: [] for part in modalities.PARTS}
    fd, local = tempfile.mkstemp(prefix=f".{name}.", suffix=".partial",
                                 dir=storage.local_dir_for(final))
    os.close(fd)
    try:
      writer = ArrayRecordWriter(local, plan.config.array_record_options())
      with contextlib.closing(_read_records(written, plan)) as records:
        for position, ((r, _), record) in enumerate(zip(written, records)):
          writer.write(record)
          for part in modalities.PARTS:
            if not r.composition.has(part):
              lacking[part].append(position)
          stats.merge(shard_stats, r.stats)
          composition += r.composition
      writer.close()
      os.chmod(local, 0o644)  # mkstemp makes it private; shards are for every reader
      info = ShardInfo(
          shard, name, len(written), os.path.getsize(local),
          tuple(r for r, _ in results if isinstance(r, example.Failure)), shard_stats, composition,
          tuple((r.index, r.media_sha256) for r, _ in written),
          {part: tuple(positions) for part, positions in lacking.items()},
          sha256=config_lib.file_sha256(local))
      # The sidecar lands before the shard: a published shard always has one.
      storage.write_atomic(plan.sidecar(shard), json.dumps(info.to_json(), sort_keys=True).encode())
      storage.publish(local, final)
    finally:
      if os.path.exists(local):
        os.remove(local)
    _remove({at.path(plan, r.index) for r, at in written})
    yield info


# -- the pipeline -------------------------------------------------------------


def build_pipeline(p: beam.Pipeline, plan: Plan):
  entries = (
      p
      | "Read" >> read.ReadEntries(plan.input, plan.spec_name, plan.spec_source, plan.split)
      | "KeyById" >> beam.Map(lambda e: (_id_key(e), e))
      | "GroupById" >> beam.GroupByKey()
      | "Dedupe" >> beam.FlatMap(_dedupe))
  whole = (entries
           | "Corpus" >> beam.CombineGlobally(_CorpusFn(plan.config, labels=plan.labels is None,
                                                        captions=plan.tokenizer is None))
           | "Vocabularies" >> beam.Map(_prepare, plan))
  prepared = beam.pvalue.AsSingleton(whole)
  results = (
      entries
      | "AssignShard" >> beam.FlatMap(_assign, prepared, plan)
      | "Spread" >> beam.Reshuffle()
      | "Process" >> beam.ParDo(Process(plan), prepared))
  # Every shard gets a group, even one whose entries all failed or were skipped.
  markers = whole | "ShardMarkers" >> beam.FlatMap(
      lambda prep: [(s, None) for s in range(prep.layout.num_shards)])
  return (
      (results, markers)
      | "Together" >> beam.Flatten()
      | "GroupByShard" >> beam.GroupByKey()
      | "WriteShard" >> beam.ParDo(WriteShard(plan), prepared))
