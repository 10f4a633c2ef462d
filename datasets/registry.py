"""The registry of dataset specs: how a raw corpus is read and which tasks it yields.

A spec is a name, a reader and a few settings. The reader turns the input a
user points `impax build` at (a manifest, a CSV, a folder) into `Entry`s: one
example each, with its media paths and annotations. Everything after that
(decoding, tokenizing, sharding) is the same pipeline for every corpus, so a
new corpus format is one small reader:

    # my_corpus.py, used as `impax build my_corpus.py --input ...`
    from impax.datasets import registry

    def read(input_path):
      for index, row in enumerate(my_rows(input_path)):
        yield registry.Entry(index=index, source=f"{input_path}:{index + 1}",
                             id=row["key"], media={"video": row["file"]},
                             labels=(row["class"],))

    SPEC = registry.register(registry.DatasetSpec(name="my_corpus", read=read))

A reader yields `BadEntry` for an input record it cannot use (it is counted
and listed in the failures file) and never raises for one bad record. A reader
may take the split being built, `read(path, split)`, when one annotation file
holds several splits or folds.

A corpus of one record per line (a manifest, CSV, TSV) is better declared as a
`LineFormat`: the pipeline then reads the file in byte ranges on many workers,
so no worker holds a corpus of millions of lines:

    SPEC = registry.register(registry.DatasetSpec(
        name="my_tsv", lines=registry.LineFormat(parse=parse_line)))

A corpus stored in independent parts whose sizes are known without reading them
(a Parquet file's row groups: its footer counts their rows) is declared as
`Parts`: the launcher lists the parts, and each is read on a worker of its own.
"""

import dataclasses
import hashlib
import importlib
import importlib.util
import os
import pkgutil
import inspect
import sys
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from impax.datasets import files

from impax.datasets import modalities, specs
from impax.datasets.metadata import Composition, TaskInfo

@dataclasses.dataclass(frozen=True)
class Entry:
  """One raw example, as read from the corpus's annotation files."""
  index: int  # position in the input; orders the examples and assigns shards
  source: str  # where it was read, for messages: "train.jsonl:12"
  id: str
  media: Mapping[str, str]  # "video" | "audio" | "image" -> local path or URI
  start: float | None = None  # clip bounds in seconds
  end: float | None = None
  labels: tuple[str, ...] = ()
  captions: tuple[str, ...] = ()


@dataclasses.dataclass(frozen=True)
class BadEntry:
  """An input record the reader could not use."""
  index: int
  source: str
  error: str
  id: str = ""
  stage: str = "manifest"  # where it failed: manifest, read, duplicate, ...


# Label prompts, per modality; label names go through them into text when a
# corpus has labels but no captions (IMP's zero-shot recipe).
PROMPTS = {
    "video": "a video of {label}.",
    "image": "a photo of {label}.",
    "audio": "the sound of {label}.",
}


def default_tasks(c: Composition) -> list[TaskInfo]:
  """The tasks a corpus yields, from what it holds (most corpora want these)."""
  tasks = []
  multi = c.multi_label > 0
  for modality in modalities.MEDIA:
    if not getattr(c, modality):
      continue
    if c.labels:
      tasks.append(TaskInfo(f"{modality}_classification", (modality,), "classification",
                        multi_label=multi))
    if c.captions:
      tasks.append(TaskInfo(f"{modality}_text", (modality, "text"), "contrastive"))
    elif c.labels:
      tasks.append(TaskInfo(f"{modality}_text", (modality, "text"), "contrastive",
                        prompt=PROMPTS[modality]))
  if c.video_with_audio:
    tasks.append(TaskInfo("video_audio", ("video", "audio"), "contrastive"))
  return tasks


# Folders that official releases keep their annotation files in, beside the media:
# coco/annotations/captions_train2017.json, ESC-50/meta/esc50.csv, k400/annotations/train.csv.
ANNOTATION_FOLDERS = ("annotations", "annotation", "meta")


def folder_of(path: str) -> str:
  """The folder holding a file, local or a URI."""
  if "://" in path:
    return path.rstrip("/").rsplit("/", 1)[0]
  return os.path.dirname(os.path.abspath(path))


def corpus_root(path: str) -> str:
  """The folder a corpus's media lie under: the annotation file's folder, or its
  parent when that folder is one of ANNOTATION_FOLDERS."""
  folder = folder_of(path)
  if folder.rstrip("/").rsplit("/", 1)[-1] in ANNOTATION_FOLDERS:
    return folder_of(folder)
  return folder


def _path_context(path: str, header: list[bytes], split: str) -> str:
  return path


@dataclasses.dataclass(frozen=True)
class LineFormat:
  """A corpus file of one record per line, read in byte ranges in parallel."""
  # (context, line number from 1, the line's bytes with its newline) -> an Entry,
  # a BadEntry, or None for a line that holds no example (blank, a comment).
  # Entry.index must be the line number - 1.
  parse: Callable[[Any, int, bytes], "Entry | BadEntry | None"]
  header_lines: int = 0  # leading lines given to `context`, never to `parse`
  # (input path, its header lines, split) -> what `parse` gets (default: the
  # path). Raises ValueError naming the file, line and what to do when the file
  # is not in this format; the build is then refused before anything runs.
  context: Callable[[str, list[bytes], str], Any] = _path_context

  def entry(self, context: Any, path: str, number: int, raw: bytes) -> "Entry | BadEntry | None":
    """`parse`, with any error it raises on a line a BadEntry naming that line: a line
    no parser foresaw (JSON nested past Python's recursion limit, a CSV field past the
    csv module's limit) fails alone, as a bad line should, not the whole build."""
    try:
      return self.parse(context, number, raw)
    except RecursionError:
      return BadEntry(number - 1, f"{path}:{number}",
                      f"line {number} is nested too deeply to parse (past Python's recursion "
                      "limit): write it flat")
    except Exception as e:
      return BadEntry(number - 1, f"{path}:{number}",
                      f"line {number} could not be parsed: {type(e).__name__}: {e}")


BOM = b"\xef\xbb\xbf"  # UTF-8's byte-order mark


def without_bom(number: int, raw: bytes) -> bytes:
  """A line as a parser sees it: line 1 loses the byte-order mark that spreadsheet
  tools and PowerShell write at the start of a UTF-8 file. A CRLF line end is left
  to the parser, which strips whitespace around a line."""
  return raw[len(BOM):] if number == 1 and raw.startswith(BOM) else raw


def read_lines(path: str):
  """Yields (line number, raw bytes) of a text file, local or remote, decompressed by its
  name (.gz, .bz2, ...)."""
  with files.open(path, decompress=True) as f:
    for number, line in enumerate(iter(f.readline, b""), 1):
      yield number, without_bom(number, line)


def _line_reader(fmt: LineFormat):
  """The sequential reader of a line format: every line of the file, in order."""
  def read(path: str, split: str = "train"):
    header, context = [], None
    for number, raw in read_lines(path):
      if number <= fmt.header_lines:
        header.append(raw)
        continue
      if context is None:
        context = fmt.context(path, header, split)
      if (entry := fmt.entry(context, path, number, raw)) is not None:
        yield entry
  return read


@dataclasses.dataclass(frozen=True)
class Parts:
  """A corpus read in independent parts (a Parquet file's row groups), one worker each.

  `find` runs once, in the launcher, and reads only what says how many records each part
  holds (Parquet footers); from those counts every part's first index is known before any
  part is read, so the entries' order is the input's whatever reads them."""
  # (input path, split) -> [(part, its record count)] in the input's order; a part is a
  # small picklable value (a file and a row group). Raises ValueError naming what to do
  # when the input is not in this format: the build is then refused before it runs.
  find: Callable[[str, str], list[tuple[Any, int]]]
  # (input path, part, first index, split) -> the part's Entries and BadEntries; the
  # record at position k of the part has index first + k.
  read: Callable[[str, Any, int, str], Iterator["Entry | BadEntry"]]


def _parts_reader(parts: Parts):
  """The sequential reader of a corpus in parts: every part, in order."""
  def read(path: str, split: str = "train"):
    first = 0
    for part, count in parts.find(path, split):
      yield from parts.read(path, part, first, split)
      first += count
  return read


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
  """How a corpus is read (`read`, `lines` or `parts`), processed (`settings`) and trained
  on (`tasks`)."""
  name: str
  # path -> Entries, or (path, split) -> Entries; made from `lines` or `parts` when not given.
  read: Callable[..., Iterator[Entry | BadEntry]] | None = None
  description: str = ""
  lines: LineFormat | None = None
  parts: Parts | None = None
  # (input path, split) -> None, or raises ValueError naming what is wrong with the
  # input as a whole (a missing column, not this format); called before a build
  # runs. Line formats check their header through `lines.context`.
  check: Callable[[str, str], None] | None = None
  # Processing settings that differ from the pipeline's defaults for this
  # corpus, by BuildConfig field name, e.g. {"audio_track": "required"}.
  settings: Mapping[str, object] = dataclasses.field(default_factory=dict)
  tasks: Callable[[Composition], list[TaskInfo]] = default_tasks
  prompts: Mapping[str, str] = dataclasses.field(default_factory=lambda: dict(PROMPTS))
  # The spec file's source text when it was loaded from a file, so that
  # remote workers can rebuild the spec without the launcher's disk.
  source_text: str | None = None

  def __post_init__(self):
    if self.read is None:
      if self.lines is None and self.parts is None:
        raise ValueError(f"dataset spec {self.name!r} needs read=, lines= or parts=")
      object.__setattr__(self, "read", _line_reader(self.lines) if self.lines is not None
                         else _parts_reader(self.parts))

  def read_entries(self, path: str, split: str = "train") -> Iterator[Entry | BadEntry]:
    """Every entry of the input, in order, on one worker."""
    if "split" in inspect.signature(self.read).parameters:
      return self.read(path, split=split)
    return self.read(path)

  def check_input(self, path: str, split: str = "train"):
    """Raises ValueError when the input as a whole cannot be read as this corpus."""
    if self.check is not None:
      self.check(path, split)
    elif self.parts is not None:
      self.parts.find(path, split)
    elif self.lines is not None:
      header = []
      if self.lines.header_lines:
        for number, raw in read_lines(path):
          header.append(raw)
          if number == self.lines.header_lines:
            break
      self.lines.context(path, header, split)


_REGISTRY: dict[str, DatasetSpec] = {}


def register(spec: DatasetSpec) -> DatasetSpec:
  old = _REGISTRY.get(spec.name)
  same_reader = (old is not None and (old.read is spec.read
                                      or (spec.lines is not None and old.lines is spec.lines)
                                      or (spec.parts is not None and old.parts is spec.parts)))
  if old is not None and not same_reader:
    raise ValueError(f"a dataset spec named {spec.name!r} is already registered")
  _REGISTRY[spec.name] = spec
  return spec


def _load_builtins():
  for module in pkgutil.iter_modules(specs.__path__):
    importlib.import_module(f"{specs.__name__}.{module.name}")


def names() -> list[str]:
  """The generic manifest first, then the corpus formats by name."""
  _load_builtins()
  return sorted(_REGISTRY, key=lambda name: (name != "jsonl", name))


def get(name_or_path: str) -> DatasetSpec:
  """A registered spec by name, or the spec defined by a Python file."""
  if name_or_path.endswith(".py") or os.sep in name_or_path:
    if not os.path.isfile(name_or_path):
      raise ValueError(f"spec file {name_or_path} does not exist")
    with open(name_or_path, encoding="utf-8") as f:
      return from_source(f.read(), name_or_path)
  _load_builtins()
  if name_or_path not in _REGISTRY:
    raise ValueError(f"unknown dataset spec {name_or_path!r}: registered specs are "
                     f"{', '.join(names())}, or give the path of a spec file (*.py)")
  return _REGISTRY[name_or_path]


def from_source(text: str, filename: str = "<spec>") -> DatasetSpec:
  """Executes a spec file's text; it must define SPEC or register exactly one spec."""
  digest = hashlib.sha256(text.encode()).hexdigest()[:16]
  module_name = f"impax_spec_{digest}"
  if module_name in sys.modules:
    return sys.modules[module_name].SPEC
  before = dict(_REGISTRY)
  module = importlib.util.module_from_spec(
      importlib.util.spec_from_loader(module_name, loader=None, origin=filename))
  module.__file__ = filename
  try:
    exec(compile(text, filename, "exec"), module.__dict__)
  except Exception as e:
    raise ValueError(f"spec file {filename} failed to load: {type(e).__name__}: {e}") from e
  spec = getattr(module, "SPEC", None)
  if spec is None:
    added = [s for n, s in _REGISTRY.items() if before.get(n) is not s]
    if len(added) != 1:
      raise ValueError(f"spec file {filename} must define SPEC = registry.register(...)")
    spec = added[0]
  if not isinstance(spec, DatasetSpec):
    raise ValueError(f"spec file {filename}: SPEC is a {type(spec).__name__}, not a DatasetSpec")
  spec = dataclasses.replace(spec, source_text=text)
  module.SPEC = spec
  sys.modules[module_name] = module
  return spec


def resolve(name: str, source_text: str | None) -> DatasetSpec:
  """Rebuilds a spec on a worker from what travels with the pipeline."""
  return from_source(source_text) if source_text else get(name)
