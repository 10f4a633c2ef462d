"""`impax verify DIR [--deep]`: is a prepared dataset what its metadata.json says?

    report = verify.verify("data/videos", deep=True)
    report.ok, report.problems, print(report.describe())

The fast path checks every shard metadata.json lists: that it exists and has its
recorded size (a listing, no read), then its sha256 (one streaming read, skipped
for a shard whose size is already wrong), and the tokenizer's sha256. --deep also
opens every shard as ArrayRecord, counts its records against metadata.json (per
shard and per split) and parses every record against the feature spec.

Files go through datasets/files.py, so DIR may be local, gs:// or s3://; --deep
copies a remote shard to a local temporary file while hashing it, since
ArrayRecord reads local files only. metadata.json and the shards are read as
every reader reads them (datasets/prepared.py), each record against the feature
spec by records.problem.
"""

import contextlib
import dataclasses
import json
import tempfile
from collections.abc import Iterator, Mapping

from impax.datasets import files, prepared, records
from impax.datasets import metadata as metadata_lib

_BATCH = 64  # records read at a time by --deep


@dataclasses.dataclass(frozen=True)
class Problem:
  """One thing wrong with a dataset: its split, its file (None: the split itself) and what."""
  split: str
  file: str | None  # relative to the dataset's folder
  kind: str  # missing | size | checksum | unreadable | records | record | split
  message: str  # e.g. "size 1200 bytes, metadata.json says 4096"

  def line(self) -> str:
    return f"  {self.split:8s} {self.file or '(split)'}: {self.message}"


@dataclasses.dataclass(frozen=True)
class Report:
  root: str
  deep: bool
  splits: tuple[str, ...]
  shards: int  # shards checked
  num_bytes: int  # their recorded size
  records: int  # records listed in metadata.json (parsed, with deep)
  problems: tuple[Problem, ...]
  unchecked: tuple[str, ...]  # shards metadata.json records no sha256 for

  @property
  def ok(self) -> bool:
    return not self.problems

  def to_json(self) -> dict:
    return {"root": self.root, "ok": self.ok, "deep": self.deep, "splits": list(self.splits),
            "shards": self.shards, "num_bytes": self.num_bytes, "records": self.records,
            "problems": [dataclasses.asdict(p) for p in self.problems],
            "unchecked": list(self.unchecked)}

  def describe(self) -> str:
    checks = "size, sha256" + (", records parsed" if self.deep else "")
    if self.ok:
      lines = [f"OK {self.root}: {len(self.splits)} split(s) ({', '.join(self.splits)}), "
               f"{self.shards} shard(s), {self.records} records, {self.num_bytes / 1e6:.1f} MB "
               f"({checks})"]
    else:
      bad = len({(p.split, p.file) for p in self.problems if p.file})
      lines = [f"FAILED {self.root}: {len(self.problems)} problem(s) in {bad} file(s) "
               f"of {self.shards} shard(s) checked ({checks})"]
      lines += [p.line() for p in self.problems]
      lines.append("  a damaged split is rebuilt by running its `impax build` again")
    if self.unchecked:
      lines.append(f"  {len(self.unchecked)} shard(s) have no recorded sha256 (built by an older "
                   "impax): only their size was checked; rebuild with --overwrite to record it")
    return "\n".join(lines)


def shard_problems(root: str, split_name: str, shards: tuple[metadata_lib.Shard, ...],
                   checksum: bool = True) -> list[Problem]:
  """What is wrong with a split's shards on disk: missing, another size, or (with checksum)
  another sha256. The fast path: hashes only the shards whose size is right."""
  out = []
  found = files.sizes([files.join(root, s.path) for s in shards])
  for shard in shards:
    path = files.join(root, shard.path)
    problem = _size_problem(split_name, shard, found[path])
    if problem is None and checksum and shard.sha256:
      problem = _checksum_problem(split_name, shard, files.sha256(path))
    if problem:
      out.append(problem)
  return out


def _size_problem(split: str, shard: metadata_lib.Shard, size: int | None) -> Problem | None:
  if size is None:
    return Problem(split, shard.path, "missing", "missing")
  if size != shard.num_bytes:
    return Problem(split, shard.path, "size",
                   f"size {size} bytes, metadata.json says {shard.num_bytes}")
  return None


def _checksum_problem(split: str, shard: metadata_lib.Shard, sha256: str) -> Problem | None:
  if sha256 != shard.sha256:
    return Problem(split, shard.path, "checksum",
                   f"checksum mismatch: sha256 {sha256[:16]}..., metadata.json says "
                   f"{shard.sha256[:16]}...")
  return None


def verify(root: str, *, deep: bool = False, split: str | None = None) -> Report:
  """Checks a prepared dataset's files against its metadata.json (see the module's doc).

      import impax
      report = impax.verify("data/videos")               # sizes and listing: seconds
      report = impax.verify("gs://b/k400", deep=True)     # every byte's sha256, every record
      report.problems                                     # each with its split, shard, reason
  """
  meta = prepared.read_metadata(root)
  if meta is None:
    raise ValueError(f"{root} has no metadata.json: is it the output of `impax build`?")
  names = sorted(meta.splits)
  if split is not None:
    if split not in meta.splits:
      raise ValueError(f"{root}/metadata.json has no split {split!r}; it has {names}")
    names = [split]
  problems, unchecked, num_shards, num_bytes, num_records = [], [], 0, 0, 0
  for name in names:
    s = meta.splits[name]
    num_shards += len(s.shards)
    num_bytes += s.num_bytes
    num_records += s.num_examples
    unchecked += [shard.path for shard in s.shards if not shard.sha256]
    listed = sum(shard.num_records for shard in s.shards)
    if listed != s.num_examples:
      problems.append(Problem(name, None, "split", f"its shards list {listed} records, "
                              f"metadata.json's num_examples says {s.num_examples}"))
    if deep:
      problems += _deep_split(root, name, s, meta.features)
    else:
      problems += shard_problems(root, name, s.shards)
  if meta.tokenizer:
    problems += _tokenizer_problems(root, meta.tokenizer)
  return Report(root, deep, tuple(names), num_shards, num_bytes, num_records, tuple(problems),
                tuple(unchecked))


def _tokenizer_problems(root: str, tokenizer: metadata_lib.Tokenizer) -> list[Problem]:
  path = files.join(root, tokenizer.path)
  if not files.exists(path):
    return [Problem("-", tokenizer.path, "missing", "missing")]
  sha256 = files.sha256(path)
  if sha256 != tokenizer.sha256:
    return [Problem("-", tokenizer.path, "checksum", f"checksum mismatch: sha256 "
                    f"{sha256[:16]}..., metadata.json says {tokenizer.sha256[:16]}...")]
  return []


# -- --deep -------------------------------------------------------------------


def _deep_split(root: str, name: str, split: metadata_lib.Split,
                features: Mapping[str, Mapping[str, str]]) -> list[Problem]:
  problems, found_records = [], 0
  found = files.sizes([files.join(root, s.path) for s in split.shards])
  for shard in split.shards:
    path = files.join(root, shard.path)
    size_problem = _size_problem(name, shard, found[path])
    if size_problem and size_problem.kind == "missing":
      problems.append(size_problem)
      continue
    with _local(path) as (local, sha256):
      if size_problem:
        problems.append(size_problem)
      elif shard.sha256 and (wrong := _checksum_problem(name, shard, sha256)):
        problems.append(wrong)
      count, record_problems = _read_records(name, shard, local, features)
    found_records += count
    problems += record_problems
  if found_records != split.num_examples and not any(p.kind in ("missing", "unreadable")
                                                      for p in problems):
    problems.append(Problem(name, None, "split", f"{found_records} records in its shards, "
                            f"metadata.json's num_examples says {split.num_examples}"))
  return problems


@contextlib.contextmanager
def _local(path: str) -> Iterator[tuple[str, str]]:
  """A local path to the file and its sha256; a remote file is copied while hashed."""
  if not files.is_remote(path):
    yield path, files.sha256(path)
    return
  with tempfile.NamedTemporaryFile(suffix=".array_record") as local:
    sha256 = files.sha256(path, copy_to=local)
    local.flush()
    yield local.name, sha256


def _read_records(split: str, shard: metadata_lib.Shard, path: str,
                  features: Mapping[str, Mapping[str, str]]) -> tuple[int, list[Problem]]:
  """(records in the file, problems): its count against metadata.json's, and each record
  parsed against the feature spec (records.problem)."""
  problems, count = [], 0
  try:
    with prepared.open_shard(path) as reader:
      count = reader.num_records()
      if count != shard.num_records:
        problems.append(Problem(split, shard.path, "records",
                                f"{count} records, metadata.json says {shard.num_records}"))
      for start in range(0, count, _BATCH):
        indices = list(range(start, min(count, start + _BATCH)))
        try:
          batch = reader.read(indices)
        except RuntimeError:
          problems.append(_unreadable_record(split, shard, reader, indices))
          break
        for index, data in zip(indices, batch):
          if reason := records.problem(data, features):
            problems.append(Problem(split, shard.path, "record",
                                    f"record {index} does not parse: {reason}"))
  except RuntimeError as e:  # riegeli's, opening a damaged file or closing its damaged tail
    if not problems:
      problems.append(Problem(split, shard.path, "unreadable",
                              f"not a readable ArrayRecord file: {e}"))
  return count, problems


def _unreadable_record(split: str, shard: metadata_lib.Shard, reader,
                       indices: list[int]) -> Problem:
  """The first record of a batch that cannot be read, one at a time."""
  for index in indices:
    try:
      reader.read([index])
    except RuntimeError as e:
      return Problem(split, shard.path, "unreadable", f"record {index} cannot be read: {e}")
  return Problem(split, shard.path, "unreadable",
                 f"records {indices[0]}-{indices[-1]} cannot be read together")


def main(root: str, *, deep: bool = False, split: str | None = None, as_json: bool = False) -> int:
  """`impax verify`: prints the report; 0 when the dataset is intact, else 1."""
  report = verify(root, deep=deep, split=split)
  print(json.dumps(report.to_json(), indent=2) if as_json else report.describe())
  return 0 if report.ok else 1
