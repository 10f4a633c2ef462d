"""The launcher's decisions before a build runs: the Plan every worker gets, and
whether the output is resumed, left as it is, refused or cleared.

The state machine of an output folder (`prepare`):
  - metadata.json of another config: refused, or with --overwrite the dataset is cleared;
  - the split built from the same input: up to date, nothing to run, if its shards
    are intact (each listed shard exists with its recorded size and, on a local disk,
    its sha256); a damaged split is cleared and rebuilt, with a warning naming the shard;
  - the split built from another input: refused, or with --overwrite the split is cleared;
  - an unfinished build (OUTPUT/.impax-tmp/<split>/build.json) of another config
    or input: refused, or with --overwrite cleared; of this one: resumed;
  - shards of the split that no build recorded: refused, or with --overwrite cleared.
"""

import dataclasses
import hashlib
import json
import logging
import os
import re
import threading
from collections.abc import Mapping
from typing import Any

from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import PipelineOptions

from impax.datasets import metadata, prepared, registry
from impax.pipelines import config as config_lib
from impax.pipelines import lock, storage, text
from impax.tools import verify

TMP_DIR = ".impax-tmp"
RESULT_LOG = ".results"  # Plan.result_log's suffix

logger = logging.getLogger(__name__)


class BuildError(Exception):
  """The build cannot start or finish; the message says why and what to do."""


class Missing(BuildError):
  """An input or a file the build needs does not exist."""


@dataclasses.dataclass(frozen=True)
class Plan:
  """Everything the pipeline's workers need, decided by the launcher."""
  spec_name: str
  spec_source: str | None  # a spec file's text, rebuilt on each worker
  input: str
  output: str
  split: str
  config: config_lib.BuildConfig
  fingerprint: Mapping[str, Any]  # config_lib.fingerprint: what fixes the bytes
  config_hash: str  # of the fingerprint; the dataset's splits share it
  input_sha256: str
  # Records name their media relative to the corpus's root folder, so the same
  # corpus gives the same bytes wherever it is stored (a disk, gs://, s3://).
  media_base: str
  tokenizer: bytes | None = None  # a given tokenizer, or the one an earlier split trained
  labels: tuple[str, ...] | None = None  # a fixed label vocabulary
  finished: frozenset[str] = frozenset()  # names of shards already published
  killed_logs: tuple[str, ...] = ()  # result logs (result_log) a killed build of this one left
  # A killed build of this one left its temporary folder: its examples' results are taken
  # rather than made again. A new build has none to look for (on an object store, a request
  # an example).
  resuming: bool = False
  up_to_date: bool = False  # the split is built with this config and input: nothing to run

  @property
  def resumed_shards(self) -> int:
    return len(self.finished)

  @property
  def sharding(self) -> dict[str, int]:
    return {k: getattr(self.config, k) for k in config_lib.SPLIT_FIELDS}

  @property
  def prefix(self) -> str:
    return f"{self.config.name}-{self.split}.array_record"

  def shard_name(self, shard: int, num_shards: int) -> str:
    return f"{self.prefix}-{shard:05d}-of-{num_shards:05d}"

  @property
  def tmp(self) -> str:
    return storage.join(self.output, TMP_DIR, self.split)

  def record_blob(self, index: int) -> str:
    """An example's serialized record, until its shard is written."""
    return storage.join(self.tmp, "examples", f"{index:012d}.tfex")

  def result_blob(self, index: int) -> str:
    """An example's result (example.Processed or Failure) as JSON, kept for a resumed build:
    on an object store, which cannot append to a result_log."""
    return storage.join(self.tmp, "examples", f"{index:012d}.json")

  def result_log(self, name: str) -> str:
    """A bundle's results on a local disk, a JSON line each, appended as its examples are
    processed, for a resumed build and the progress line: creating a file per result cost
    each example 0.3-0.9 ms of CPU here (benchmarks/README.md). A line cut short by a kill
    is not a result."""
    return storage.join(self.tmp, "examples", f"{name}{RESULT_LOG}")

  def sidecar(self, shard: int) -> str:
    return storage.join(self.tmp, "shards", f"{shard:05d}.json")


def prepare(spec_name: str, input_path: str, output: str, split: str = "train",
            settings: tuple[dict, ...] = (), overwrite: bool = False,
            options: PipelineOptions | None = None) -> Plan:
  """Checks everything a build needs before it runs; returns its plan.

  options: the pipeline options the build will run with; their object-store
  settings (e.g. --s3_endpoint_url) apply to the launcher's own reads here.
  """
  if not re.fullmatch(r"[A-Za-z0-9_.-]+", split):
    raise BuildError(f"split name {split!r} may only hold letters, digits, '_', '.' and '-'")
  try:
    spec = registry.get(spec_name)
  except ValueError as e:
    raise BuildError(str(e)) from None
  storage.configure(options or PipelineOptions([]))
  for path in {input_path, output}:
    if not storage.is_local(path):
      storage.check_store(path)
  input_is_dir = storage.is_dir(input_path)
  if not (input_is_dir or storage.exists(input_path)):
    raise Missing(f"input {input_path} does not exist")
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
  if input_is_dir:
    media_base = input_path.rstrip("/") if "://" in input_path else os.path.abspath(input_path)
  else:
    media_base = registry.corpus_root(input_path)
  plan = Plan(spec.name, spec.source_text, input_path, output, split, config, fingerprint,
              config_lib.config_hash(fingerprint), input_sha256(input_path), media_base)
  with lock.locked(output):  # what follows may clear what another build is writing
    return _settle(plan, overwrite)


def _settle(plan: Plan, overwrite: bool) -> Plan:
  """The output's state machine (see the module's docstring): the plan resumed, up to
  date, or refused; the output cleared where overwrite allows."""
  output, split, config = plan.output, plan.split, plan.config
  meta_path = storage.join(output, "metadata.json")
  try:
    meta = read_metadata(output)
  except metadata.MetadataError as e:
    if not overwrite:
      raise BuildError(str(e)) from None
    _clear_dataset(output)  # replaced, as a dataset of another config is
    meta = None
  state = _read_json(_state_path(plan))
  up_to_date = False
  if meta and meta.config_hash != plan.config_hash:
    if not overwrite:
      raise BuildError(
          f"{output} holds dataset {meta.name!r} built with another config (hash "
          f"{meta.config_hash[:12]}, this build {plan.config_hash[:12]}): pass --overwrite to "
          "replace it, or build into another output")
    _clear_dataset(output)
    meta = state = None
  elif meta and split in meta.splits:
    same_input = meta.splits[split].input_sha256 == plan.input_sha256
    if not same_input and not overwrite:
      raise BuildError(f"split {split!r} in {output} was built from another input: pass "
                       "--overwrite to rebuild it")
    damaged = [] if overwrite else damaged_shards(plan, meta.splits[split])
    if overwrite or damaged:
      if damaged:
        logger.warning("split %r of %s is damaged, rebuilding it: %s", split, output,
                       "; ".join(f"{p.file}: {p.message}" for p in damaged))
      clear_split(plan)
      state = None
      meta = dataclasses.replace(meta, splits={k: v for k, v in meta.splits.items() if k != split})
      storage.write_atomic(meta_path, metadata.dumps(meta))
    else:
      up_to_date = True
  if not up_to_date and state and state != _build_state(plan):
    if not overwrite:
      raise BuildError(f"{output} holds an unfinished build of split {split!r} with another "
                       "config or input: pass --overwrite to discard it")
    clear_split(plan)
    state = None
  if not up_to_date and not state and storage.glob(storage.join(output, f"{plan.prefix}-*")):
    if not overwrite:
      raise BuildError(f"{output} already holds shards of split {split!r} that no build "
                       "recorded: pass --overwrite to replace them")
    clear_split(plan)

  tokenizer = labels = None
  if config.tokenizer:
    tokenizer = storage.read(config.tokenizer)
  elif meta and meta.tokenizer:
    tokenizer = storage.read(storage.join(output, meta.tokenizer.path))
  if config.labels_file:
    try:
      labels = tuple(text.parse_labels_file(storage.read(config.labels_file), config.labels_file))
    except (ValueError, UnicodeDecodeError) as e:
      raise BuildError(f"labels file {config.labels_file}: {e}") from None
  elif meta and meta.splits:
    labels = meta.labels
  # A killed build of this one left its state, which the clearing above has not removed.
  resuming = bool(state) and not up_to_date
  killed_logs = ()
  if resuming and storage.is_local(plan.tmp):
    killed_logs = tuple(os.path.basename(p) for p in
                        storage.glob(storage.join(plan.tmp, "examples", f"*{RESULT_LOG}")))
  return dataclasses.replace(plan, tokenizer=tokenizer, labels=labels,
                             finished=finished_shards(plan), up_to_date=up_to_date,
                             killed_logs=killed_logs, resuming=resuming)


def finished_shards(plan: Plan) -> frozenset[str]:
  """The names of the split's shards published under their final names."""
  return frozenset(os.path.basename(p) for p in
                   storage.glob(storage.join(plan.output, f"{plan.prefix}-*-of-*"))
                   if not p.endswith(".partial"))


def read_metadata(output: str) -> metadata.Metadata | None:
  """The output's metadata.json, or None when it has none: read as every reader reads it."""
  return prepared.read_metadata(output)


def damaged_shards(plan: Plan, built: metadata.Split) -> list[verify.Problem]:
  """The split's shards that are missing or not as recorded. A listing gives every size;
  on a local disk each shard is also hashed (about 1 s per GB here, against the minutes
  a GB takes to build); on an object store that would download the dataset, so only
  sizes are checked there (`impax verify` hashes them)."""
  return verify.shard_problems(plan.output, plan.split, built.shards,
                               checksum=storage.is_local(plan.output))


_killed: dict[tuple, dict[int, bytes]] = {}  # the last killed_results read in this process
_killed_lock = threading.Lock()


def killed_results(plan: Plan) -> dict[int, bytes]:
  """{index: its result's JSON line} of the examples a killed build processed
  (plan.killed_logs), read once per worker process and shared by its threads. A resumed
  build's workers so hold about 0.5 KB per example the killed one processed."""
  if not plan.killed_logs:
    return {}
  key = (plan.tmp, plan.killed_logs)
  with _killed_lock:
    if key not in _killed:
      found = {}
      for name in plan.killed_logs:
        data = storage.read(storage.join(plan.tmp, "examples", name))
        for line in data[:data.rfind(b"\n") + 1].splitlines():
          found[json.loads(line)["index"]] = line
      _killed.clear()
      _killed[key] = found
    return _killed[key]


def mark_started(plan: Plan):
  """Records the build in its temporary folder, so a later run knows whether it may resume it."""
  storage.write_atomic(_state_path(plan), json.dumps(_build_state(plan)).encode())


def input_sha256(path: str) -> str:
  """Content hash of a file input, or of a folder input's listing (names and sizes)."""
  matches = storage.glob(storage.join(path, "**")) if storage.is_dir(path) else []
  if not matches:
    return config_lib.file_sha256(path)
  digest = hashlib.sha256()
  for m in FileSystems.match([storage.join(path, "**")])[0].metadata_list:
    digest.update(f"{os.path.relpath(m.path, path)}\t{m.size_in_bytes}\n".encode())
  return digest.hexdigest()


def _build_state(plan: Plan) -> dict:
  """What an unfinished build must share with the next run to be resumed."""
  return {"config_hash": plan.config_hash, "input_sha256": plan.input_sha256,
          "sharding": plan.sharding}


def _state_path(plan: Plan) -> str:
  return storage.join(plan.tmp, "build.json")


def _dataset_name(output: str) -> str:
  base = os.path.basename(output.rstrip("/")) or "dataset"
  return re.sub(r"[^A-Za-z0-9_.-]", "_", base)


def _read_json(path: str) -> dict | None:
  return json.loads(storage.read(path)) if storage.exists(path) else None


def clear_split(plan: Plan):
  storage.delete(storage.glob(storage.join(plan.output, f"{plan.prefix}-*"))
                 + storage.glob(storage.join(plan.output, f"failures-{plan.split}.jsonl")))
  storage.delete_tree(plan.tmp)


def _clear_dataset(output: str):
  storage.delete(storage.glob(storage.join(output, "*.array_record-*"))
                 + storage.glob(storage.join(output, "failures-*.jsonl"))
                 + [storage.join(output, "metadata.json"), storage.join(output, "tokenizer.model")])
  storage.delete_tree(storage.join(output, TMP_DIR))
