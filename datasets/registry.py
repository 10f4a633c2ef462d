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
and listed in the failures file) and never raises for one bad record.
"""

import dataclasses
import hashlib
import importlib
import importlib.util
import os
import pkgutil
import sys
from collections.abc import Callable, Iterator, Mapping

MODALITIES = ("video", "audio", "image")


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


@dataclasses.dataclass(frozen=True)
class Task:
  """A training task a prepared dataset yields."""
  name: str  # e.g. "video_text"
  modalities: tuple[str, ...]  # e.g. ("video", "text")
  objective: str  # "contrastive" | "classification"
  prompt: str | None = None  # text for labels, e.g. "a video of {label}."
  multi_label: bool = False


@dataclasses.dataclass(frozen=True)
class Composition:
  """What a built split holds: example counts by modality and annotation."""
  examples: int = 0
  video: int = 0
  video_with_audio: int = 0
  audio: int = 0
  image: int = 0
  captions: int = 0
  labels: int = 0
  multi_label: int = 0


# Label prompts, per modality; label names go through them into text when a
# corpus has labels but no captions (IMP's zero-shot recipe).
PROMPTS = {
    "video": "a video of {label}.",
    "image": "a photo of {label}.",
    "audio": "the sound of {label}.",
}


def default_tasks(c: Composition) -> list[Task]:
  """The tasks a corpus yields, from what it holds (most corpora want these)."""
  tasks = []
  multi = c.multi_label > 0
  for modality in MODALITIES:
    if not getattr(c, modality):
      continue
    if c.labels:
      tasks.append(Task(f"{modality}_classification", (modality,), "classification",
                        multi_label=multi))
    if c.captions:
      tasks.append(Task(f"{modality}_text", (modality, "text"), "contrastive"))
    elif c.labels:
      tasks.append(Task(f"{modality}_text", (modality, "text"), "contrastive",
                        prompt=PROMPTS[modality]))
  if c.video_with_audio:
    tasks.append(Task("video_audio", ("video", "audio"), "contrastive"))
  return tasks


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
  """How a corpus is read (`read`), processed (`settings`) and trained on (`tasks`)."""
  name: str
  read: Callable[[str], Iterator[Entry | BadEntry]]
  description: str = ""
  # Processing settings that differ from the pipeline's defaults for this
  # corpus, by BuildConfig field name, e.g. {"audio_track": "required"}.
  settings: Mapping[str, object] = dataclasses.field(default_factory=dict)
  tasks: Callable[[Composition], list[Task]] = default_tasks
  prompts: Mapping[str, str] = dataclasses.field(default_factory=lambda: dict(PROMPTS))
  # The spec file's source text when it was loaded from a file, so that
  # remote workers can rebuild the spec without the launcher's disk.
  source_text: str | None = None


_REGISTRY: dict[str, DatasetSpec] = {}


def register(spec: DatasetSpec) -> DatasetSpec:
  if spec.name in _REGISTRY and _REGISTRY[spec.name].read is not spec.read:
    raise ValueError(f"a dataset spec named {spec.name!r} is already registered")
  _REGISTRY[spec.name] = spec
  return spec


def _load_builtins():
  from impax.datasets import specs
  for module in pkgutil.iter_modules(specs.__path__):
    importlib.import_module(f"{specs.__name__}.{module.name}")


def names() -> list[str]:
  _load_builtins()
  return sorted(_REGISTRY)


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
