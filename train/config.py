"""Training configs: plain dataclasses, written in Python config files.

A config file defines `get_config()` returning a `TrainConfig`; its docstring
holds the command that runs it (see train/configs/demo.py):

    impax train train/configs/demo.py --workdir /tmp/run
    impax train train/configs/demo.py --workdir /tmp/run --set steps=200 --set seed=1

Every field has a default; `--set FIELD=VALUE` overrides one, a task's by its name:

    impax train train/configs/demo.py --workdir /tmp/run --set tasks.video_text.token_budget=4096
"""

import dataclasses
import importlib.util
import json
import os
import types
import typing
from collections.abc import Mapping

from impax.datasets import loader
from impax.datasets.decode import Augment
from impax.datasets.loader import Bucket
from impax.datasets.modalities import ENCODED

# A config file needs only this module: Bucket and Augment are the loader's, Task extends its.
__all__ = ["Augment", "Bucket", "ConfigError", "EXTENDS_A_RUN", "EXTENDS_A_TASK", "OBJECTIVES",
           "Task", "TrainConfig", "changes", "check", "load", "apply_overrides", "to_json"]

OBJECTIVES = ("contrastive", "classification")


@dataclasses.dataclass(frozen=True)
class Task(loader.Task):
  """One task of Alternating Gradient Descent: what the loader reads (a dataset, its inputs,
  buckets and preprocessing: impax.datasets.loader.Task), and how training schedules and
  weighs it. A Loader takes it as it is.

      impax.Task("video_text", "data/videos", "contrastive", ("video", "text"),
                 buckets=(impax.Bucket(video=(8, 64, 64)),), token_budget=8192, interval=2)
  """
  interval: int = 1  # schedule "intervals": runs when the cycle counter is a multiple of it
  weight: float = 1.0  # schedule "random": relative probability per step
  loss_weight: float = 1.0
  drop_token: float = 0.0  # fraction of each non-text modality's tokens dropped in training
  # Zero-shot classification's prompt ensemble (CLIP's): templates with "{label}", each
  # class's text embedding the mean of its L2-normalised embeddings over them. Empty: the
  # one template `prompt`, or the registry's for the other modality ("a video of {label}.").
  zero_shot_prompts: tuple[str, ...] = ()


@dataclasses.dataclass(frozen=True)
class TrainConfig:
  """A training run: its tasks, model, schedule, optimizer and cadences. Configs are Python
  files whose get_config() returns one (train/configs/demo.py); every field has a default.

      config = impax.TrainConfig(tasks=(task,), model="MoE-B", steps=100_000,
                                 learning_rate=1e-3, log_every=50)
      impax.train(config, "runs/moe-b")
  """
  tasks: tuple[Task, ...]
  model: str = "tiny"  # preset of impax.model
  model_overrides: tuple[tuple[str, object], ...] = ()  # (field, value) pairs
  mode: str = "agd"  # "agd": one task per step; "mixed": every task each step, losses summed
  schedule: str = "intervals"  # "intervals" (IMP's round robin) or "random" (seeded, by weight)
  steps: int = 1000
  seed: int = 0
  # AdamW with linear warm-up and cosine decay (IMP's values, fewer steps).
  learning_rate: float = 1e-3
  end_learning_rate: float = 1e-6
  warmup_steps: int = 100
  b1: float = 0.9
  b2: float = 0.999
  eps: float = 1e-7
  weight_decay: float = 1e-4
  grad_clip: float = 1.0
  # Every bucket's global batch is rounded to a multiple of this, whatever hardware the run
  # has: the same config trains the same way on 1 device or 8. The data-parallel devices
  # (the mesh's batch shards, and the processes) must divide it; 8 divides 1, 2, 4 and 8.
  batch_multiple: int = 8
  # Each task's global batch in this many parts, its gradient accumulated over them (a
  # contrastive loss still over the whole batch's negatives: train/step.py), so a batch too
  # big for the devices' memory runs on them. Every batch must split into whole parts.
  microbatches: int = 1
  # A step whose loss or gradient is not finite (NaN, inf) is skipped: parameters and
  # optimizer state stay as they were. This many skipped in a row stop the run as diverged.
  max_nonfinite_steps: int = 10
  # Cadence.
  log_every: int = 10
  checkpoint_every: int = 200
  keep_checkpoints: int = 3
  # Periodic evaluation, every eval_every steps and at the last, on validation_split (where
  # each task's dataset has it; 0: none). keep_best "TASK/METRIC" (e.g.
  # "video_text/zero_shot_top1", higher is better) keeps the checkpoint of its highest
  # periodic figure in WORKDIR/best (WORKDIR/best.json says which).
  eval_every: int = 0
  validation_split: str = "validation"
  keep_best: str = ""
  # At the end: each task on its eval_split (the test split), once, with the best checkpoint
  # when keep_best names one; WORKDIR/eval.json. Otherwise `impax eval` when asked.
  eval_at_end: bool = True
  linear_probe: bool = False  # the evaluation at the end also fits linear probes (evaluate.py)
  plots: bool = True
  # WORKDIR/batches.jsonl: the ids of each step's examples (train/metrics.py BatchIds)
  log_batch_ids: bool = False


# What a resumed run may change: how long it runs, how often it logs, saves and evaluates,
# and how it is evaluated (and, per task, how its loader is run). Every other field (the
# seed, the tasks and their data, buckets and schedule, the model, the optimizer) defines
# the run: the trainer refuses to resume under another value (trainer.py).
EXTENDS_A_RUN = ("steps", "log_every", "checkpoint_every", "keep_checkpoints",
                 "max_nonfinite_steps", "eval_every", "validation_split", "keep_best",
                 "eval_at_end", "linear_probe", "plots", "log_batch_ids")
# Model fields that change how it compiles and what memory it takes, never what it computes:
# a run may resume under other values (its checkpoint is converted: trainer.py).
HOW_A_MODEL_COMPILES = ("scan_layers", "remat", "attention_impl")
EXTENDS_A_TASK = ("eval_split", "eval_bucket", "eval_clips", "eval_crops", "zero_shot_prompts",
                  "num_workers", "loader_nice")


class ConfigError(ValueError):
  """A config the trainer refuses before it starts."""


def check(config: TrainConfig) -> None:
  if not config.tasks:
    raise ConfigError("the config has no tasks")
  names = [t.name for t in config.tasks]
  if len(set(names)) != len(names):
    raise ConfigError(f"task names must be unique: {names}")
  if config.mode not in ("agd", "mixed"):
    raise ConfigError(f"mode must be 'agd' or 'mixed', not {config.mode!r}")
  if config.schedule not in ("intervals", "random"):
    raise ConfigError(f"schedule must be 'intervals' or 'random', not {config.schedule!r}")
  for t in config.tasks:
    where = f"task {t.name!r}"
    if t.objective not in OBJECTIVES:
      raise ConfigError(f"{where}: objective must be one of {OBJECTIVES}, not {t.objective!r}")
    if any(m not in ENCODED for m in t.modalities):
      raise ConfigError(f"{where}: modalities {t.modalities} must come from {ENCODED}")
    want = 2 if t.objective == "contrastive" else 1
    if len(t.modalities) != want or len(set(t.modalities)) != want:
      raise ConfigError(f"{where}: a {t.objective} task takes {want} distinct modalities, "
                        f"got {t.modalities}")
    if t.objective == "classification" and "text" in t.modalities:
      raise ConfigError(f"{where}: text classification is not supported")
    if not isinstance(t.dataset, str) and not (
        isinstance(t.dataset, Mapping) and t.dataset
        and all(isinstance(d, str) and isinstance(w, (int, float)) and w > 0
                for d, w in t.dataset.items())):
      raise ConfigError(f"{where}: dataset must be a dataset's path or URI, or a mixture "
                        f"{{PATH: WEIGHT, ...}} with positive weights, not {t.dataset!r}")
    if t.interval < 1 or t.weight <= 0:
      raise ConfigError(f"{where}: interval must be >= 1 and weight > 0")
    if not t.buckets:
      raise ConfigError(f"{where}: declares no buckets")
    if t.eval_clips < 1 or t.eval_crops < 1:
      raise ConfigError(f"{where}: eval_clips and eval_crops must be at least 1")
    for template in t.zero_shot_prompts:
      if not isinstance(template, str) or "{label}" not in template:
        raise ConfigError(f"{where}: each of zero_shot_prompts must be a str with {{label}} "
                          f"where the class name goes, not {template!r}")
  if config.keep_best:
    task, sep, figure = config.keep_best.partition("/")
    if not sep or not figure or task not in names:
      raise ConfigError(f"keep_best {config.keep_best!r}: expected TASK/METRIC with TASK one of "
                        f"{names}, e.g. {names[0]}/zero_shot_top1")
    if not config.eval_every:
      raise ConfigError(f"keep_best {config.keep_best!r} chooses among the periodic "
                        "evaluations: set eval_every too")
  if config.eval_every < 0:
    raise ConfigError(f"eval_every must be at least 0, not {config.eval_every}")
  if config.max_nonfinite_steps < 1:
    raise ConfigError(f"max_nonfinite_steps must be at least 1, not {config.max_nonfinite_steps}")
  if config.microbatches < 1:
    raise ConfigError(f"microbatches must be at least 1, not {config.microbatches}")
  if config.batch_multiple < 1:
    raise ConfigError(f"batch_multiple must be at least 1, not {config.batch_multiple}")


def load(path: str, overrides: list[str] = ()) -> TrainConfig:
  """Runs a config file's get_config() and applies `FIELD=VALUE` overrides.

      config = impax.load_config("train/configs/demo.py:demo-output/data",
                                 ["steps=500", "tasks.video_text.token_budget=4096"])

  `path` may end in `:ARG` (as in big_vision): get_config(ARG) is called. Overrides
  are `impax train --set`'s (apply_overrides).
  """
  arg = None
  if not os.path.isfile(path) and ":" in path:
    path, arg = path.split(":", 1)
  if not os.path.isfile(path):
    raise ConfigError(f"config file {path} does not exist")
  spec = importlib.util.spec_from_file_location("impax_train_config", path)
  module = importlib.util.module_from_spec(spec)
  try:
    spec.loader.exec_module(module)
  except Exception as e:
    raise ConfigError(f"config file {path} failed to load: {type(e).__name__}: {e}") from e
  if not hasattr(module, "get_config"):
    raise ConfigError(f"config file {path} defines no get_config()")
  config = module.get_config() if arg is None else module.get_config(arg)
  if not isinstance(config, TrainConfig):
    raise ConfigError(f"{path}: get_config() returned a {type(config).__name__}, "
                      "not a TrainConfig")
  config = apply_overrides(config, overrides)
  check(config)
  return config


def apply_overrides(config: TrainConfig, overrides: list[str]) -> TrainConfig:
  """Applies `FIELD=VALUE` items in order (`--set`). FIELD is a top-level field (`steps`), a
  task's field by the task's name (`tasks.video_text.token_budget`), a field of one of its
  dataclasses (`tasks.video_text.augment.crop_area`, `tasks.video_text.eval_bucket.video`)
  or of one of its buckets by index (`tasks.image_text.buckets.0.image`). VALUE is read as
  the field's type: a str as given; anything else as JSON (`4096`, `true`, `[48, 48]`,
  `{"image": [32, 32]}` for a Bucket), and `null` (or `none`) where the field may be None."""
  for item in overrides:
    key, sep, value = item.partition("=")
    path = key.split(".")
    if not sep or path[0] not in _fields(config) or path == ["tasks"]:
      raise ConfigError(f"--set {item!r}: expected FIELD=VALUE with FIELD one of "
                        f"{sorted(f for f in _fields(config) if f != 'tasks')}, or "
                        f"tasks.TASK.FIELD=VALUE with TASK one of {[t.name for t in config.tasks]}")
    config = _replace(config, path, value, item, "")
  return config


def _fields(obj) -> dict[str, object]:
  """{field: its type} of a dataclass instance."""
  hints = typing.get_type_hints(type(obj))
  return {f.name: hints[f.name] for f in dataclasses.fields(obj)}


def _replace(obj, path: list[str], text: str, item: str, prefix: str):
  """`obj` (a dataclass) with the field at `path` set from `text`."""
  fields = _fields(obj)
  name, rest = path[0], path[1:]
  if name not in fields:
    raise ConfigError(f"--set {item!r}: {prefix.rstrip('.')} has no field {name!r}; expected "
                      f"{prefix}FIELD=VALUE with FIELD one of {sorted(fields)}")
  where = prefix + name
  current = getattr(obj, name)
  if not rest:
    return dataclasses.replace(obj, **{name: _parse(text, fields[name], item, where)})
  if name == "tasks" and not prefix:  # a task by its name
    names = [t.name for t in current]
    if rest[0] not in names:
      raise ConfigError(f"--set {item!r}: no task {rest[0]!r}; expected tasks.TASK.FIELD=VALUE "
                        f"with TASK one of {names}")
    if len(rest) == 1:
      raise ConfigError(f"--set {item!r}: expected tasks.{rest[0]}.FIELD=VALUE with FIELD one "
                        f"of {sorted(_fields(current[0]))}")
    i = names.index(rest[0])
    task = _replace(current[i], rest[1:], text, item, f"tasks.{rest[0]}.")
    return dataclasses.replace(obj, tasks=(*current[:i], task, *current[i + 1:]))
  kind = _optional(fields[name])
  if dataclasses.is_dataclass(kind):  # e.g. augment, or eval_bucket (from Bucket() when None)
    inner = current if current is not None else kind()
    return dataclasses.replace(obj, **{name: _replace(inner, rest, text, item, where + ".")})
  if typing.get_origin(kind) is tuple and dataclasses.is_dataclass(typing.get_args(kind)[0]):
    # a tuple of dataclasses (buckets), by index
    index = rest[0]
    if not index.isdigit() or int(index) >= len(current) or len(rest) == 1:
      raise ConfigError(f"--set {item!r}: expected {where}.INDEX.FIELD=VALUE with INDEX from 0 "
                        f"to {len(current) - 1} (or {where}=VALUE, all of them as JSON)")
    i = int(index)
    element = _replace(current[i], rest[1:], text, item, f"{where}.{i}.")
    return dataclasses.replace(obj, **{name: (*current[:i], element, *current[i + 1:])})
  raise ConfigError(f"--set {item!r}: {where} takes {_describe(fields[name])}; it has no fields")


def _optional(kind):
  """X of `X | None`; else `kind`."""
  args = typing.get_args(kind)
  if type(None) in args and len(args) == 2:
    return next(a for a in args if a is not type(None))
  return kind


def _parse(text: str, kind, item: str, where: str):
  """`text` as a value of type `kind`: a str as given, else JSON."""
  if kind is not _optional(kind) and text.lower() in ("null", "none"):
    return None
  if _optional(kind) is str:
    return text
  if _alternatives(kind) and str in _alternatives(kind):  # a str, or JSON of the other
    if not text.lstrip().startswith(("{", "[")):
      return text
    kind = next(a for a in _alternatives(kind) if a is not str)
  try:
    return _from_json(json.loads(text.lower() if _optional(kind) is bool else text), kind)
  except (ValueError, TypeError) as e:
    why = f": {e}" if isinstance(e, _Mismatch) else ""
    raise ConfigError(f"--set {item!r}: {where} takes {_describe(kind)}{why}") from e


def _alternatives(kind) -> tuple:
  """The types of a union without None (`str | dict[str, float]`); () for another type."""
  if typing.get_origin(kind) not in (typing.Union, types.UnionType):
    return ()
  return tuple(a for a in typing.get_args(kind) if a is not type(None))


class _Mismatch(TypeError):
  """A JSON value of another shape than its field's type."""


def _from_json(value, kind):
  """A JSON value as `kind`: a scalar, a tuple, a dataclass (from an object of its fields)."""
  if kind is typing.Any or kind is object:
    return value
  if kind is not _optional(kind):
    return None if value is None else _from_json(value, _optional(kind))
  if dataclasses.is_dataclass(kind):
    hints = typing.get_type_hints(kind)
    if not isinstance(value, dict):
      raise _Mismatch(f"{json.dumps(value)} is not an object")
    unknown = sorted(set(value) - set(hints))
    if unknown:
      raise _Mismatch(f"{kind.__name__} has no field {', '.join(map(repr, unknown))}")
    return kind(**{k: _from_json(v, hints[k]) for k, v in value.items()})
  if typing.get_origin(kind) is dict:
    key, item = typing.get_args(kind)
    if not isinstance(value, dict):
      raise _Mismatch(f"{json.dumps(value)} is not an object")
    return {_from_json(k, key): _from_json(v, item) for k, v in value.items()}
  if typing.get_origin(kind) is tuple:
    args = typing.get_args(kind)
    if not isinstance(value, list):
      raise _Mismatch(f"{json.dumps(value)} is not a list")
    if len(args) == 2 and args[1] is Ellipsis:
      return tuple(_from_json(v, args[0]) for v in value)
    if len(value) != len(args):
      raise _Mismatch(f"{len(value)} values, not {len(args)}")
    return tuple(_from_json(v, a) for v, a in zip(value, args))
  return kind(value)


def _describe(kind) -> str:
  """How `--set` reads a type: `an int`, `a JSON list [int, int]`, `a str or null`."""
  if kind is not _optional(kind):
    return f"{_describe(_optional(kind))} or null"
  if len(_alternatives(kind)) > 1:
    return " or ".join(_describe(a) for a in _alternatives(kind))
  if typing.get_origin(kind) is dict:
    return "a JSON object {" + " : ".join(_name(a) for a in typing.get_args(kind)) + ", ...}"
  if kind is bool:
    return "true or false"
  if kind in (int, float, str):
    return f"{'an' if kind is int else 'a'} {kind.__name__}"
  return f"a JSON {'object' if dataclasses.is_dataclass(kind) else 'list'} {_name(kind)}"


def _name(kind) -> str:
  """A type as JSON writes it: `[int, int]`, `[str, ...]`, `{video, image, ...}`."""
  if kind is not _optional(kind):
    return f"{_name(_optional(kind))} or null"
  if dataclasses.is_dataclass(kind):
    return "{" + ", ".join(f.name for f in dataclasses.fields(kind)) + "}"
  if typing.get_origin(kind) is tuple:
    args = typing.get_args(kind)
    if len(args) == 2 and args[1] is Ellipsis:
      return f"[{_name(args[0])}, ...]"
    return "[" + ", ".join(_name(a) for a in args) + "]"
  return "value" if kind in (object, typing.Any) else kind.__name__


def to_json(config: TrainConfig) -> dict:
  return json.loads(json.dumps(dataclasses.asdict(config), default=str))


def changes(recorded: dict, config: TrainConfig) -> list[tuple[str, object, object, bool]]:
  """(field, recorded value, value, whether it defines the run) of each field where `config`
  differs from `recorded` (a config as to_json wrote it; fields it lacks are not compared).
  A task's field is named `tasks['NAME'].FIELD`."""
  now = to_json(config)
  out = [(key, recorded[key], value, key not in EXTENDS_A_RUN) for key, value in now.items()
         if key not in ("tasks", "model_overrides") and key in recorded and recorded[key] != value]
  if "model_overrides" in recorded and recorded["model_overrides"] != now["model_overrides"]:
    computes = lambda pairs: [p for p in pairs if p[0] not in HOW_A_MODEL_COMPILES]
    out.append(("model_overrides", recorded["model_overrides"], now["model_overrides"],
                computes(recorded["model_overrides"]) != computes(now["model_overrides"])))
  before = {t["name"]: t for t in recorded.get("tasks", ())}
  after = {t["name"]: t for t in now["tasks"]}
  if list(before) != list(after):  # the order too: it seeds each task's data
    out.append(("tasks", list(before), list(after), True))
  for name in (n for n in after if n in before):
    out += [(f"tasks[{name!r}].{key}", before[name][key], value, key not in EXTENDS_A_TASK)
            for key, value in after[name].items()
            if key in before[name] and before[name][key] != value]
  return out
