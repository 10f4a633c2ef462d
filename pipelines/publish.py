"""Step 7 of the build: the shards' sidecars become metadata.json and failures-<split>.jsonl.

metadata.json is a datasets.metadata.Metadata, read with `metadata.loads` and
written with `metadata.dumps`: the reading side owns its format.
"""

import collections
import contextlib
import datetime
import glob
import hashlib
import importlib.metadata
import json
import logging
import os
import subprocess

from impax.datasets import metadata, prepared, records, registry
from impax.pipelines import example, stats, storage, text
from impax.pipelines.graph import ShardInfo
from impax.pipelines.plan import TMP_DIR, BuildError, Plan, clear_split
from impax.pipelines.tools import ffmpeg_binary
from impax.tools import dedup


def finalize(plan: Plan, seconds: float) -> metadata.Metadata:
  """Merges the shard sidecars into metadata.json and the failures file; removes the
  temporary files. Returns the dataset's metadata, with this split."""
  infos = [ShardInfo.from_json(json.loads(storage.read(p)))
           for p in storage.glob(storage.join(plan.tmp, "shards", "*.json"))]
  infos.sort(key=lambda i: i.shard)
  if [i.shard for i in infos] != list(range(len(infos))) or not infos:
    raise BuildError(f"the pipeline finished without writing every shard of {plan.split!r}")
  failures = sorted((f for i in infos for f in i.failures), key=lambda f: f.index)
  failures_name = f"failures-{plan.split}.jsonl"
  written = sum(i.num_records for i in infos)
  if not written:
    # Nothing to train on is not a dataset: nothing is published, and a rerun (once the
    # inputs are fixed) processes every example again rather than resuming its failures.
    clear_split(plan)
  lines = [f.line() for f in failures]
  storage.write_atomic(storage.join(plan.output, failures_name),
                       "".join(line + "\n" for line in lines).encode())
  if not written:
    if not failures:
      raise NoExamples(f"split {plan.split!r} of {plan.output}: the input {plan.input} holds "
                       "no example; nothing was published")
    raise NoExamples(
        f"split {plan.split!r} of {plan.output}: no example was written, all "
        f"{len(failures)} input(s) failed ({top_reasons([json.loads(x) for x in lines])}); "
        "nothing was published. "
        f"Every failure and its reason: {storage.join(plan.output, failures_name)}")

  tokenizer = plan.tokenizer
  if tokenizer is None:
    tokenizer = storage.read(storage.join(plan.tmp, "tokenizer.model"))
  labels = plan.labels if plan.labels is not None else tuple(json.loads(
      storage.read(storage.join(plan.tmp, "labels.json"))))
  existing = prepared.read_metadata(plan.output)
  tokenizer_path = storage.join(plan.output, "tokenizer.model")
  if tokenizer and not storage.exists(tokenizer_path):
    storage.write_atomic(tokenizer_path, tokenizer)

  now = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
  splits = {**(existing.splits if existing else {}),
            plan.split: _split(plan, infos, failures, failures_name, seconds, now)}
  total = sum((s.composition for s in splits.values()), metadata.Composition())
  spec = registry.resolve(plan.spec_name, plan.spec_source)
  meta = metadata.Metadata(
      name=plan.config.name,
      version=plan.config.version,
      impax_version=importlib.metadata.version("impax"),
      created=now,
      spec=plan.spec_name,
      config=plan.config,
      config_hash=plan.config_hash,
      fingerprint=plan.fingerprint,
      array_record_options=plan.config.array_record_options(),
      features=records.feature_spec(),
      labels=tuple(labels),
      tokenizer=metadata.Tokenizer(
          path="tokenizer.model", sha256=hashlib.sha256(tokenizer).hexdigest(),
          trained=not plan.config.tokenizer, **text.tokenizer_info(tokenizer))
      if tokenizer else None,
      tasks=tuple(spec.tasks(total)),
      splits=splits)
  storage.write_atomic(storage.join(plan.output, "metadata.json"), metadata.dumps(meta))

  storage.delete_tree(plan.tmp)
  if storage.is_local(plan.output):  # shards half-written by a killed run that was resumed
    for stale in glob.glob(os.path.join(plan.output, f".{plan.prefix}-*.partial")):
      os.remove(stale)
  with contextlib.suppress(OSError):
    if storage.is_local(plan.output):
      os.rmdir(os.path.join(plan.output, TMP_DIR))
  return meta


class NoExamples(BuildError):
  """A split in which every input failed (or that had none): nothing to publish."""


def reason(failure: dict) -> str:
  """A failure's error (a line of failures-<split>.jsonl) without what names its input
  (media paths, id, line), so that inputs that failed alike group together."""
  text = failure["error"].split("\n", 1)[0]
  for key, path in failure["media"].items():
    text = text.replace(path, f"<{key}>")
  if failure["id"]:
    text = text.replace(failure["id"], "<id>")
  line = failure["source"].rsplit(":", 1)[-1]
  if line.isdigit():
    text = text.replace(f"line {line}", "line <n>")
  return text if len(text) <= 160 else text[:157] + "..."


def read_failures(path: str) -> list[dict]:
  """The lines of a failures-<split>.jsonl."""
  return [json.loads(line) for line in storage.read(path).decode().splitlines()]


def top_reasons(failures: list[dict], top: int = 3) -> str:
  """The commonest reasons with their counts: 'download: HTTP 404 (20), ...'."""
  counts = collections.Counter(f"{f['stage']}: {reason(f)}" for f in failures)
  text = ", ".join(f"{r} ({n})" for r, n in counts.most_common(top))
  return text + (f" and {len(counts) - top} other reason(s)" if len(counts) > top else "")


def _split(plan: Plan, infos: list[ShardInfo], failures: list[example.Failure], failures_name: str,
           seconds: float, now: str) -> metadata.Split:
  split_stats, composition = {}, metadata.Composition()
  for info in infos:
    stats.merge(split_stats, info.stats)
    composition += info.composition
  media_hashes = sorted((m for i in infos for m in i.media_sha256), key=lambda m: m[0])
  by_stage = collections.Counter(f.stage for f in failures)
  by_reason = collections.Counter(reason(f.to_json()) for f in failures
                                  if f.stage == "download")
  return metadata.Split(
      input=plan.input,
      input_sha256=plan.input_sha256,
      media_sha256=hashlib.sha256(json.dumps(
          [[index, dict(shas)] for index, shas in media_hashes], sort_keys=True).encode()).hexdigest(),
      num_examples=sum(i.num_records for i in infos),
      num_failed=len(failures),
      sharding=plan.sharding,
      failures=failures_name,
      failures_by_stage=dict(sorted(by_stage.items())),
      shards=tuple(metadata.Shard(i.path, i.num_records, i.num_bytes, i.sha256) for i in infos),
      composition=composition,
      statistics=stats.summary(split_stats),
      build_seconds=round(seconds, 3),
      ffmpeg=ffmpeg_version(),
      created=now,
      lacking=_lacking(infos, composition),
      duplicates=_duplicates(plan, infos),
      download_failures_by_reason=dict(sorted(by_reason.items())) if by_reason else None)


def _duplicates(plan: Plan, infos: list[ShardInfo]) -> dict | None:
  """The split's duplicate summary; None when not computed. It is an extra: if it fails,
  the dataset is published without it, since a rerun would resume the finished shards
  only to fail here again."""
  # Shards on an object store are not read back here: `impax dedup` reads a local copy.
  if not plan.config.fingerprints or not storage.is_local(plan.output):
    return None
  try:
    return dedup.split_summary([storage.join(plan.output, i.path) for i in infos], plan.split)
  except Exception as e:  # MemoryError included
    logging.getLogger(__name__).warning(
        "the duplicates of split %r were not summarized (%s: %s); metadata.json is written "
        "without them: `impax dedup %s` finds them", plan.split, type(e).__name__, e, plan.output)
    return None


def _lacking(infos: list[ShardInfo], composition: metadata.Composition
             ) -> dict[str, tuple[int, ...]] | None:
  """{part: split positions of the records without it}, for the parts some of the
  split's records have; None if a shard's sidecar predates the field."""
  if any(i.lacking is None for i in infos):
    return None
  out, offset = {}, 0
  for info in infos:
    for part, positions in info.lacking.items():
      if composition.has(part) and positions:
        out.setdefault(part, []).extend(offset + p for p in positions)
    offset += info.num_records
  return {part: tuple(positions) for part, positions in out.items()}


def ffmpeg_version() -> str:
  try:
    out = subprocess.run([ffmpeg_binary(), "-version"], capture_output=True, timeout=30).stdout
    return out.decode(errors="replace").splitlines()[0]
  except Exception as e:
    return f"unknown ({e})"
