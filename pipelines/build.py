"""The build: a raw corpus becomes ArrayRecord shards, metadata.json and a failures list.

Follow one example top to bottom:
  1. Read: the spec's reader turns the input into Entries (a bad line is a BadEntry).
  2. Dedupe: a second entry with an id already seen is a failure.
  3. Vocabularies: the label vocabulary (sorted) and, unless one is given, a
     SentencePiece tokenizer trained on the corpus's captions and label names.
  4. Layout: the number of shards, and each entry's shard from its index, so
     which record lands where depends only on the input, never on the runner.
  5. Process: each example is decoded, tokenized and serialized on its own, in
     parallel, into a temporary blob (its result, with stats, beside it). A
     worker holds one example at a time; a failure is a result, not a crash.
  6. WriteShard: each shard's blobs go into its ArrayRecord file in index order,
     written under a temporary name and published by rename when complete.
  7. The launcher merges the shards' sidecars into metadata.json and
     failures-<split>.jsonl and removes the temporary files.

The temporary files live in OUTPUT/.impax-tmp/<split>/; a killed build leaves
them there, and running the same build again reuses every finished shard and
every processed example.
"""

import contextlib
import dataclasses
import datetime
import glob
import hashlib
import json
import logging
import os
import posixpath
import re
import subprocess
import tempfile
import time

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions

import impax
from impax.datasets import registry
from impax.pipelines import config as config_lib
from impax.pipelines import media, read, records, stats, storage, text
from impax.pipelines.tools import ffmpeg_binary

log = logging.getLogger("impax.build")

TMP_DIR = ".impax-tmp"


class BuildError(Exception):
  """The build cannot start or finish; the message says why and what to do."""


@dataclasses.dataclass(frozen=True)
class Plan:
  """Everything the pipeline's workers need, decided by the launcher."""
  spec_name: str
  spec_source: str | None  # a spec file's text, rebuilt on each worker
  input: str
  output: str
  split: str
  config: config_lib.BuildConfig
  config_hash: str  # of the dataset's config; splits share it
  tokenizer: bytes | None  # a given tokenizer, or the one an earlier split trained
  labels: tuple[str, ...] | None  # a fixed label vocabulary
  finished: frozenset[str] = frozenset()  # names of shards already published
  # Records name their media relative to the corpus's root folder, so the same
  # corpus gives the same bytes wherever it is stored (a disk, gs://, s3://).
  media_base: str = ""

  @property
  def prefix(self) -> str:
    return f"{self.config.name}-{self.split}.array_record"

  def shard_name(self, shard: int, num_shards: int) -> str:
    return f"{self.prefix}-{shard:05d}-of-{num_shards:05d}"

  @property
  def tmp(self) -> str:
    return storage.join(self.output, TMP_DIR, self.split)

  def blob(self, index: int, ext: str) -> str:
    return storage.join(self.tmp, "examples", f"{index:012d}.{ext}")

  def sidecar(self, shard: int) -> str:
    return storage.join(self.tmp, "shards", f"{shard:05d}.json")


@dataclasses.dataclass(frozen=True)
class Layout:
  num_shards: int
  max_index: int
  min_index: int = 0  # a spec that selects rows (one fold of a CSV) starts past 0

  def shard_of(self, index: int) -> int:
    return (index - self.min_index) * self.num_shards // (self.max_index - self.min_index + 1)


# -- 1, 2: entries (1 is pipelines/read.py) --------------------------------


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


# -- 3: vocabularies --------------------------------------------------------


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


def _save_labels(labels: list[str], plan: Plan) -> list[str]:
  storage.write_atomic(storage.join(plan.tmp, "labels.json"), json.dumps(labels).encode())
  return labels


def _train_tokenizer(captions: list[tuple[str, int]], labels: list[str], plan: Plan) -> bytes:
  spec = registry.resolve(plan.spec_name, plan.spec_source)
  texts = text.corpus_texts(captions, labels, sorted(spec.prompts.values()))
  model = text.train_tokenizer(texts, plan.config.vocab_size, plan.config.tokenizer_type) if texts else b""
  storage.write_atomic(storage.join(plan.tmp, "tokenizer.model"), model)
  return model


# -- 4: layout --------------------------------------------------------------


class _LayoutFn(beam.CombineFn):
  """Counts the entries and finds the largest index, then sizes the shards."""

  def __init__(self, config: config_lib.BuildConfig):
    self.config = config

  def create_accumulator(self):
    return 0, -1, None

  def add_input(self, acc, entry):
    low = entry.index if acc[2] is None else min(acc[2], entry.index)
    return acc[0] + 1, max(acc[1], entry.index), low

  def merge_accumulators(self, accs):
    accs = list(accs)
    lows = [a[2] for a in accs if a[2] is not None]
    return sum(a[0] for a in accs), max(a[1] for a in accs), min(lows) if lows else None

  def extract_output(self, acc):
    count, max_index, min_index = acc
    num_shards = self.config.num_shards or max(1, -(-count // self.config.shard_size))
    return Layout(num_shards=num_shards, max_index=max_index, min_index=min_index or 0)


def _assign(entry, layout: Layout, plan: Plan):
  shard = layout.shard_of(entry.index)
  if plan.shard_name(shard, layout.num_shards) not in plan.finished:
    yield shard, entry


# -- 5: process -------------------------------------------------------------


def _failure(entry, stage: str, error: str) -> dict:
  return {"index": entry.index, "id": entry.id, "source": entry.source, "stage": stage,
          "error": error, "media": dict(getattr(entry, "media", {}))}


def relative_source(path: str, base: str) -> str:
  """A media path relative to the corpus root `base`; as given when outside it."""
  base = base.rstrip("/")
  if base and path.startswith(base + "/"):
    return posixpath.normpath(path[len(base) + 1:])
  return path


def process_entry(entry: registry.Entry, config: config_lib.BuildConfig, tokenizer_model: bytes,
                  label_index: dict[str, int], media_base: str = "") -> tuple[dict, bytes | None]:
  """Decodes, tokenizes and serializes one example: (result, record or None)."""
  stage = "text"
  try:
    captions = [text.normalize(c) for c in entry.captions]
    tokens = [text.tokenizer(tokenizer_model).encode(c) for c in captions] if captions else []
    stage = "label"
    labels = []
    for name in entry.labels:
      name = text.normalize(name)
      if name not in label_index:
        raise text.TextError(f"label {name!r} is not in the label vocabulary (set by --labels-file "
                             "or by the split built first into this output)")
      labels.append((label_index[name], name))
    video = audio = image = None
    shas = {}
    with contextlib.ExitStack() as stack:
      for modality in sorted(entry.media):
        path = entry.media[modality]
        stage = "read"
        try:
          local, shas[modality] = stack.enter_context(storage.local_copy(path))
        except OSError as e:
          raise media.MediaError(f"cannot read {path}: {e.strerror or e}") from None
        stage = modality
        try:
          if modality == "video":
            video = media.decode_video(
                local, start=entry.start, end=entry.end, fps=config.video_fps,
                max_frames=config.video_max_frames, short_side=config.video_short_side,
                jpeg_quality=config.jpeg_quality,
                audio_track="ignore" if "audio" in entry.media else config.audio_track,
                sample_rate=config.audio_sample_rate, timeout=config.ffmpeg_timeout,
                threads=config.ffmpeg_threads)
          elif modality == "audio":
            audio = media.decode_audio(
                local, start=entry.start, end=entry.end, sample_rate=config.audio_sample_rate,
                max_seconds=config.audio_max_seconds, timeout=config.ffmpeg_timeout,
                threads=config.ffmpeg_threads)
          else:
            with open(local, "rb") as f:
              image = media.process_image(f.read(), short_side=config.image_short_side,
                                          jpeg_quality=config.jpeg_quality, name=path)
        except media.MediaError as e:
          raise media.MediaError(str(e).replace(local, path)) from None
  except (media.MediaError, text.TextError) as e:
    return _failure(entry, stage, str(e)), None
  except Exception as e:  # one bad example never stops the build
    return _failure(entry, stage, f"{type(e).__name__}: {e}"), None

  track = audio or (video.audio if video else None)
  primary = next(entry.media[m] for m in ("video", "image", "audio") if m in entry.media)
  record = records.serialize(id_=entry.id, source=relative_source(primary, media_base),
                             video=video, audio=track, image=image, captions=captions,
                             tokens=tokens, labels=labels)
  s = {}
  if video:
    stats.add_number(s, "video/seconds", len(video.frames) / video.fps)
    stats.add_number(s, "video/num_frames", len(video.frames))
    stats.add_number(s, "video/fps", video.fps)
    stats.add_category(s, "video/resolution", f"{video.height}x{video.width}")
    if video.source_duration is not None:
      stats.add_number(s, "video/source_seconds", video.source_duration)
  if track:
    stats.add_number(s, "audio/seconds", track.num_samples / track.sample_rate)
  if image:
    stats.add_category(s, "image/resolution", f"{image[1]}x{image[2]}")
  for t in tokens:
    stats.add_number(s, "text/tokens_per_caption", len(t))
  if captions:
    stats.add_number(s, "text/captions_per_example", len(captions))
  if labels:
    stats.add_number(s, "label/labels_per_example", len(labels))
  stats.add_number(s, "record/bytes", len(record))
  composition = {
      "examples": 1, "video": int(video is not None),
      "video_with_audio": int(video is not None and track is not None),
      "audio": int(audio is not None), "image": int(image is not None),
      "captions": int(bool(captions)), "labels": int(bool(labels)),
      "multi_label": int(len(labels) > 1)}
  result = {"index": entry.index, "id": entry.id, "source": entry.source, "media_sha256": shas,
            "stats": s, "composition": composition}
  return result, record


class Process(beam.DoFn):
  """Step 5: one example in, its result out; the record goes to a blob file."""

  def __init__(self, plan: Plan):
    self.plan = plan
    self._labels = (None, {})

  def process(self, item, tokenizer_model: bytes, labels: list[str]):
    shard, entry = item
    if isinstance(entry, registry.BadEntry):
      yield shard, _failure(entry, entry.stage, entry.error)
      return
    result_path = self.plan.blob(entry.index, "json")
    if storage.exists(result_path):  # processed by a build that was killed
      yield shard, json.loads(storage.read(result_path))
      return
    if self._labels[0] is not labels:
      self._labels = (labels, {name: i for i, name in enumerate(labels)})
    result, record = process_entry(entry, self.plan.config, tokenizer_model, self._labels[1],
                                   self.plan.media_base)
    if record is not None:
      storage.write_atomic(self.plan.blob(entry.index, "tfex"), record)
    storage.write_atomic(result_path, json.dumps(result, sort_keys=True).encode())
    yield shard, result


# -- 6: shards --------------------------------------------------------------

# What a record can lack while others of its split have it (a video without a
# sound track, an entry without a caption): metadata lists such records by
# position so that a reader can skip them for the tasks that need the modality.
MODALITIES = ("video", "image", "audio", "captions", "labels")


def _has(composition: dict, modality: str) -> bool:
  if modality == "audio":
    return bool(composition.get("audio") or composition.get("video_with_audio"))
  return bool(composition.get(modality))


def _lacking(infos: list[dict], composition: dict) -> dict | None:
  """{modality: split positions of the records without it}, for the modalities
  some of the split's records have; None if a shard's sidecar predates the field."""
  if any("lacking" not in i for i in infos):
    return None
  out, offset = {}, 0
  for info in infos:
    for m, positions in info["lacking"].items():
      if _has(composition, m) and positions:
        out.setdefault(m, []).extend(offset + p for p in positions)
    offset += info["num_records"]
  return out


class WriteShard(beam.DoFn):
  """Step 6: a shard's records in index order into one ArrayRecord file, then published."""

  def __init__(self, plan: Plan):
    self.plan = plan

  def process(self, item, layout: Layout):
    from array_record.python.array_record_module import ArrayRecordWriter
    shard, results = item
    plan = self.plan
    name = plan.shard_name(shard, layout.num_shards)
    final = storage.join(plan.output, name)
    if name in plan.finished and storage.exists(plan.sidecar(shard)):
      yield json.loads(storage.read(plan.sidecar(shard)))
      return
    results = sorted((r for r in results if r is not None), key=lambda r: r["index"])
    info = {"shard": shard, "path": name, "num_records": 0, "failures": [], "stats": {},
            "composition": {}, "media_sha256": [], "lacking": {m: [] for m in MODALITIES}}
    fd, local = tempfile.mkstemp(prefix=f".{name}.", suffix=".partial",
                                 dir=storage.local_dir_for(final))
    os.close(fd)
    try:
      writer = ArrayRecordWriter(local, plan.config.array_record_options())
      for r in results:
        if "error" in r:
          info["failures"].append(r)
          continue
        writer.write(storage.read(plan.blob(r["index"], "tfex")))
        for m in MODALITIES:
          if not _has(r["composition"], m):
            info["lacking"][m].append(info["num_records"])
        info["num_records"] += 1
        stats.merge(info["stats"], r["stats"])
        for key, n in r["composition"].items():
          info["composition"][key] = info["composition"].get(key, 0) + n
        info["media_sha256"].append([r["index"], r["media_sha256"]])
      writer.close()
      os.chmod(local, 0o644)  # mkstemp makes it private; shards are for every reader
      info["num_bytes"] = os.path.getsize(local)
      # The sidecar lands before the shard: a published shard always has one.
      storage.write_atomic(plan.sidecar(shard), json.dumps(info, sort_keys=True).encode())
      storage.publish(local, final)
    finally:
      if os.path.exists(local):
        os.remove(local)
    storage.delete([plan.blob(r["index"], ext) for r in results if "error" not in r
                    for ext in ("tfex",)])
    yield info


# -- the pipeline -----------------------------------------------------------


def build_pipeline(p: beam.Pipeline, plan: Plan):
  entries = (
      p
      | "Read" >> read.ReadEntries(plan.input, plan.spec_name, plan.spec_source, plan.split)
      | "KeyById" >> beam.Map(lambda e: (_id_key(e), e))
      | "GroupById" >> beam.GroupByKey()
      | "Dedupe" >> beam.FlatMap(_dedupe))

  if plan.labels is None:
    labels = (entries
              | "LabelNames" >> beam.FlatMap(_label_names)
              | "DistinctLabels" >> beam.Distinct()
              | "LabelList" >> beam.combiners.ToList()
              | "SortLabels" >> beam.Map(sorted)
              | "SaveLabels" >> beam.Map(_save_labels, plan))
  else:
    labels = p | "FixedLabels" >> beam.Create([list(plan.labels)])

  if plan.tokenizer is None:
    tokenizer = (entries
                 | "Captions" >> beam.FlatMap(_captions)
                 | "CountCaptions" >> beam.combiners.Count.PerElement()
                 | "CaptionList" >> beam.combiners.ToList()
                 | "TrainTokenizer" >> beam.Map(
                     _train_tokenizer, beam.pvalue.AsSingleton(labels), plan))
  else:
    tokenizer = p | "GivenTokenizer" >> beam.Create([plan.tokenizer])

  layout = entries | "Layout" >> beam.CombineGlobally(_LayoutFn(plan.config))
  layout_side = beam.pvalue.AsSingleton(layout)
  results = (
      entries
      | "AssignShard" >> beam.FlatMap(_assign, layout_side, plan)
      | "Spread" >> beam.Reshuffle()
      | "Process" >> beam.ParDo(Process(plan), beam.pvalue.AsSingleton(tokenizer),
                                beam.pvalue.AsSingleton(labels)))
  # Every shard gets a group, even one whose entries all failed or were skipped.
  markers = layout | "ShardMarkers" >> beam.FlatMap(
      lambda l: [(s, None) for s in range(l.num_shards)])
  return (
      (results, markers)
      | "Together" >> beam.Flatten()
      | "GroupByShard" >> beam.GroupByKey()
      | "WriteShard" >> beam.ParDo(WriteShard(plan), layout_side))


# -- the launcher -----------------------------------------------------------


def pipeline_options(beam_args: list[str], workers: int | None = None) -> PipelineOptions:
  """Beam options from the pass-through args; refuses options Beam does not know.

  `workers` (impax build --workers) becomes the runner's own knob: the
  DirectRunner's processes (default: the CPUs), Dataflow's worker count, Flink's
  parallelism.
  """
  from apache_beam.options.pipeline_options import _BeamArgumentParser
  parser = _BeamArgumentParser(allow_abbrev=False)
  for cls in PipelineOptions.__subclasses__():
    cls._add_argparse_args(parser)
  given, unknown = parser.parse_known_args(beam_args)
  if unknown:
    raise BuildError(f"unknown Beam pipeline option(s): {' '.join(unknown)}")
  args = list(beam_args)
  has = lambda name: any(a == f"--{name}" or a.startswith(f"--{name}=") for a in args)
  runner = given.runner or "DirectRunner"
  if not given.runner:
    args.append("--runner=DirectRunner")
  if "Direct" in runner:
    if not has("direct_running_mode"):
      args.append("--direct_running_mode=multi_processing")
    if not has("direct_num_workers"):
      args.append(f"--direct_num_workers={workers or os.cpu_count() or 1}")
  elif "Dataflow" in runner:
    if not (given.sdk_container_image or given.worker_harness_container_image):
      raise BuildError("Dataflow workers need ffmpeg and impax: build the worker image from "
                       "the Dockerfile, push it, and pass --sdk_container_image=IMAGE")
    if workers and not has("num_workers"):
      args.append(f"--num_workers={workers}")
    if workers and not has("max_num_workers"):
      args.append(f"--max_num_workers={workers}")
  elif "Flink" in runner and workers and not has("parallelism"):
    args.append(f"--parallelism={workers}")
  if not has("default_sdk_harness_log_level"):
    args.append("--default_sdk_harness_log_level=WARNING")
  return PipelineOptions(args)


def input_sha256(path: str) -> str:
  """Content hash of a file input, or of a folder input's listing (names and sizes)."""
  matches = storage.glob(storage.join(path, "**")) if storage.is_dir(path) else []
  if not matches:
    return config_lib.file_sha256(path)
  from apache_beam.io.filesystems import FileSystems
  digest = hashlib.sha256()
  for m in FileSystems.match([storage.join(path, "**")])[0].metadata_list:
    digest.update(f"{os.path.relpath(m.path, path)}\t{m.size_in_bytes}\n".encode())
  return digest.hexdigest()


def _ffmpeg_version() -> str:
  try:
    out = subprocess.run([ffmpeg_binary(), "-version"], capture_output=True, timeout=30).stdout
    return out.decode(errors="replace").splitlines()[0]
  except Exception as e:
    return f"unknown ({e})"


def _dataset_name(output: str) -> str:
  base = os.path.basename(output.rstrip("/")) or "dataset"
  return re.sub(r"[^A-Za-z0-9_.-]", "_", base)


def _read_json(path: str) -> dict | None:
  return json.loads(storage.read(path)) if storage.exists(path) else None


def _split_files(output: str, prefix: str, split: str) -> list[str]:
  return (storage.glob(storage.join(output, f"{prefix}-*"))
          + storage.glob(storage.join(output, f"failures-{split}.jsonl")))


def prepare(spec_name: str, input_path: str, output: str, split: str = "train",
            settings: tuple[dict, ...] = (), overwrite: bool = False,
            beam_args: list[str] = ()) -> tuple[Plan, dict]:
  """Checks everything a build needs before it runs; returns its plan and facts.

  beam_args: the pipeline options `run` will get; their object-store settings
  (e.g. --s3_endpoint_url) apply to the launcher's own reads here.
  """
  if not re.fullmatch(r"[A-Za-z0-9_.-]+", split):
    raise BuildError(f"split name {split!r} may only hold letters, digits, '_', '.' and '-'")
  try:
    spec = registry.get(spec_name)
  except ValueError as e:
    raise BuildError(str(e)) from None
  storage.configure(pipeline_options(list(beam_args)))
  input_is_dir = storage.is_dir(input_path)
  if not (input_is_dir or storage.exists(input_path)):
    raise BuildError(f"input {input_path} does not exist")
  try:
    spec.check_input(input_path, split)
  except ValueError as e:
    raise BuildError(str(e)) from None
  try:
    config = config_lib.resolve(dict(spec.settings), *settings)
  except ValueError as e:
    raise BuildError(str(e)) from None
  config = dataclasses.replace(config, name=config.name or _dataset_name(output))
  fingerprint = config_lib.fingerprint(config, spec.name)
  chash = config_lib.config_hash(fingerprint)
  in_hash = input_sha256(input_path)
  if input_is_dir:
    media_base = input_path.rstrip("/") if "://" in input_path else os.path.abspath(input_path)
  else:
    media_base = registry.corpus_root(input_path)
  plan = Plan(spec.name, spec.source_text, input_path, output, split, config, chash, None, None,
              media_base=media_base)

  meta_path = storage.join(output, "metadata.json")
  meta = _read_json(meta_path)
  state = _read_json(storage.join(plan.tmp, "build.json"))
  up_to_date = False
  if meta and meta["config_hash"] != chash:
    if not overwrite:
      raise BuildError(
          f"{output} holds dataset {meta['name']!r} built with another config (hash "
          f"{meta['config_hash'][:12]}, this build {chash[:12]}): pass --overwrite to replace it, "
          "or build into another output")
    _clear_dataset(output)
    meta = None
  elif meta and split in meta["splits"]:
    same_input = meta["splits"][split]["input_sha256"] == in_hash
    if overwrite or not same_input:
      if not overwrite:
        raise BuildError(f"split {split!r} in {output} was built from another input: pass "
                         "--overwrite to rebuild it")
      _clear_split(plan)
      del meta["splits"][split]
      storage.write_atomic(meta_path, json.dumps(meta, indent=2, sort_keys=True).encode())
    else:
      up_to_date = True
  if not up_to_date and state and state != _build_state(plan, {"input_sha256": in_hash}):
    if not overwrite:
      raise BuildError(f"{output} holds an unfinished build of split {split!r} with another "
                       "config or input: pass --overwrite to discard it")
    _clear_split(plan)
    state = None
  if not up_to_date and not state and storage.glob(storage.join(output, f"{plan.prefix}-*")):
    if not overwrite:
      raise BuildError(f"{output} already holds shards of split {split!r} that no build "
                       "recorded: pass --overwrite to replace them")
    _clear_split(plan)

  tokenizer = labels = None
  if config.tokenizer:
    tokenizer = storage.read(config.tokenizer)
  elif meta and meta.get("tokenizer"):
    tokenizer = storage.read(storage.join(output, meta["tokenizer"]["path"]))
  if config.labels_file:
    try:
      labels = tuple(text.parse_labels_file(storage.read(config.labels_file), config.labels_file))
    except (ValueError, UnicodeDecodeError) as e:
      raise BuildError(f"labels file {config.labels_file}: {e}") from None
  elif meta and meta.get("splits"):
    labels = tuple(meta["labels"])
  finished = frozenset(os.path.basename(p) for p in
                       storage.glob(storage.join(output, f"{plan.prefix}-*-of-*"))
                       if not p.endswith(".partial"))
  plan = dataclasses.replace(plan, tokenizer=tokenizer, labels=labels, finished=finished)
  facts = {"fingerprint": fingerprint, "input_sha256": in_hash, "up_to_date": up_to_date,
           "resumed_shards": len(finished)}
  return plan, facts


def _build_state(plan: Plan, facts: dict) -> dict:
  """What an unfinished build must share with the next run to be resumed."""
  return {"config_hash": plan.config_hash, "input_sha256": facts["input_sha256"],
          "sharding": {k: getattr(plan.config, k) for k in config_lib.SPLIT_FIELDS}}


def _clear_split(plan: Plan):
  storage.delete(_split_files(plan.output, plan.prefix, plan.split))
  storage.delete_tree(plan.tmp)


def _clear_dataset(output: str):
  storage.delete(storage.glob(storage.join(output, "*.array_record-*"))
                 + storage.glob(storage.join(output, "failures-*.jsonl"))
                 + [p for p in (storage.join(output, "metadata.json"),
                                storage.join(output, "tokenizer.model"))])
  storage.delete_tree(storage.join(output, TMP_DIR))


@contextlib.contextmanager
def _worker_logs(quiet: bool):
  """Sends Beam's and its workers' stderr chatter to a file; shows its tail on failure."""
  if not quiet:
    yield
    return
  import sys
  # The launcher relays each worker's warnings; they are noise unless it fails.
  logging.getLogger("apache_beam.runners.portability.local_job_service").setLevel(logging.ERROR)
  fd, path = tempfile.mkstemp(prefix="impax-beam-", suffix=".log")
  sys.stderr.flush()
  saved = os.dup(2)
  os.dup2(fd, 2)
  try:
    yield
  except BaseException:
    os.dup2(saved, 2)
    with open(path, errors="replace") as f:
      tail = f.readlines()[-30:]
    sys.stderr.write("".join(tail) + f"impax: Beam's full log: {path}\n")
    raise
  else:
    os.dup2(saved, 2)
    os.remove(path)
  finally:
    os.close(saved)
    os.close(fd)


def run(plan: Plan, facts: dict, workers: int | None = None, beam_args: list[str] = (),
        quiet: bool = True) -> dict:
  """Runs the pipeline and publishes metadata.json; returns the split's summary.

  quiet: Beam's logs go to a temporary file, shown only if the pipeline fails.
  """
  if facts["up_to_date"]:
    meta = _read_json(storage.join(plan.output, "metadata.json"))
    return {**meta["splits"][plan.split], "split": plan.split, "output": plan.output,
            "skipped": "already built with this config and input"}
  options = pipeline_options(list(beam_args), workers)
  storage.write_atomic(storage.join(plan.tmp, "build.json"), json.dumps(_build_state(plan, facts)).encode())
  start = time.monotonic()
  with _worker_logs(quiet), beam.Pipeline(options=options) as p:
    build_pipeline(p, plan)
  return finalize(plan, facts, seconds=time.monotonic() - start)


def finalize(plan: Plan, facts: dict, seconds: float) -> dict:
  """Step 7: merges the shard sidecars into metadata.json and the failures file."""
  infos = [json.loads(storage.read(p))
           for p in storage.glob(storage.join(plan.tmp, "shards", "*.json"))]
  infos.sort(key=lambda i: i["shard"])
  if [i["shard"] for i in infos] != list(range(len(infos))) or not infos:
    raise BuildError(f"the pipeline finished without writing every shard of {plan.split!r}")
  failures = sorted((f for i in infos for f in i["failures"]), key=lambda f: f["index"])
  failures_name = f"failures-{plan.split}.jsonl"
  storage.write_atomic(storage.join(plan.output, failures_name), "".join(
      json.dumps({k: f[k] for k in ("source", "id", "stage", "error", "media")},
                 ensure_ascii=False) + "\n" for f in failures).encode())

  split_stats, composition = {}, {}
  for info in infos:
    stats.merge(split_stats, info["stats"])
    for key, n in info["composition"].items():
      composition[key] = composition.get(key, 0) + n
  lacking = _lacking(infos, composition)
  media_hashes = sorted(m for i in infos for m in i["media_sha256"])
  by_stage = {}
  for f in failures:
    by_stage[f["stage"]] = by_stage.get(f["stage"], 0) + 1

  tokenizer = plan.tokenizer
  if tokenizer is None:
    tokenizer = storage.read(storage.join(plan.tmp, "tokenizer.model"))
  labels = list(plan.labels) if plan.labels is not None else json.loads(
      storage.read(storage.join(plan.tmp, "labels.json")))
  meta_path = storage.join(plan.output, "metadata.json")
  meta = _read_json(meta_path) or {"splits": {}}
  tokenizer_path = storage.join(plan.output, "tokenizer.model")
  if tokenizer and not storage.exists(tokenizer_path):
    storage.write_atomic(tokenizer_path, tokenizer)

  now = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
  split = {
      "input": plan.input,
      "input_sha256": facts["input_sha256"],
      "media_sha256": hashlib.sha256(json.dumps(media_hashes, sort_keys=True).encode()).hexdigest(),
      "num_examples": sum(i["num_records"] for i in infos),
      "num_failed": len(failures),
      "sharding": {k: getattr(plan.config, k) for k in config_lib.SPLIT_FIELDS},
      "failures": failures_name,
      "failures_by_stage": dict(sorted(by_stage.items())),
      "shards": [{"path": i["path"], "num_records": i["num_records"], "num_bytes": i["num_bytes"]}
                 for i in infos],
      "composition": composition,
      **({"lacking": lacking} if lacking is not None else {}),
      "statistics": stats.summary(split_stats),
      "build_seconds": round(seconds, 3),
      "ffmpeg": _ffmpeg_version(),
      "created": now,
  }
  meta["splits"][plan.split] = split
  total = {}
  for s in meta["splits"].values():
    for key, n in s["composition"].items():
      total[key] = total.get(key, 0) + n
  spec = registry.resolve(plan.spec_name, plan.spec_source)
  tasks = spec.tasks(registry.Composition(**total))
  meta.update({
      "name": plan.config.name,
      "version": plan.config.version,
      "impax_version": impax.__version__,
      "created": now,
      "spec": plan.spec_name,
      "config": facts["fingerprint"]["config"],
      "config_hash": plan.config_hash,
      "fingerprint": facts["fingerprint"],
      "array_record_options": plan.config.array_record_options(),
      "features": records.feature_spec(),
      "labels": labels,
      "tokenizer": {"path": "tokenizer.model",
                    "sha256": hashlib.sha256(tokenizer).hexdigest(),
                    "trained": not plan.config.tokenizer,
                    **text.tokenizer_info(tokenizer)} if tokenizer else None,
      "tasks": [{**dataclasses.asdict(t), "modalities": list(t.modalities),
                 "label_names": "labels" if t.objective == "classification" or t.prompt else None,
                 "tokenizer": "tokenizer.model" if "text" in t.modalities and tokenizer else None}
                for t in tasks],
  })
  storage.write_atomic(meta_path, json.dumps(meta, indent=2, sort_keys=True).encode())
  storage.delete_tree(plan.tmp)
  if storage.is_local(plan.output):  # shards half-written by a killed run that was resumed
    for stale in glob.glob(os.path.join(plan.output, f".{plan.prefix}-*.partial")):
      os.remove(stale)
  with contextlib.suppress(OSError):
    if storage.is_local(plan.output):
      os.rmdir(os.path.join(plan.output, TMP_DIR))
  return {**split, "split": plan.split, "output": plan.output}
