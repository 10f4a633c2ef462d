"""The mixture of a training config, made visible before anything trains.

    impax plan train/configs/demo.py:demo-output/data
    impax plan train/configs/demo.py:demo-output/data --target-share image_text=0.4,video_text=0.4,video_audio=0.1,audio_classification=0.1

For each task: the examples its split holds, its global batch per bucket, its
share of the optimizer steps under the schedule, its steps, the epochs over
its data they make, and its patch tokens per step and over the run. The
counts are exact, not expected: the schedule's task of each step and each
task's bucket of each of its steps are pure functions of the step
(train/schedule.py, the loader's draws), so this counts what the trainer
will take. The trainer logs the same plan at start and writes it to
summary.json.

`solve` finds the intervals (schedule "intervals") or weights (schedule
"random") that come closest to target shares of the steps or of the tokens.
"""

import dataclasses
import json
import math

import numpy as np

from impax.train import config as config_lib
from impax.train import schedule
from impax.train import setup as setup_lib
from impax.train.config import ConfigError, TrainConfig

FEW_EPOCHS, MANY_EPOCHS = 1.0, 50.0  # a task outside these is warned about
MAX_CYCLES = 4096  # the longest period of cycles `solve` proposes


@dataclasses.dataclass(frozen=True)
class DatasetPlan:
  """One dataset of a task's mixture."""
  root: str
  weight: float
  examples: int  # records of its split the task reads
  examples_seen: int  # of the task's examples over the run, those drawn from it

  @property
  def epochs(self) -> float:
    return self.examples_seen / self.examples


@dataclasses.dataclass(frozen=True)
class TaskPlan:
  name: str
  examples: int  # records of its split the task reads
  batch_sizes: tuple[int, ...]  # global, per bucket
  steps: int  # optimizer steps that take this task (mixed mode: every step)
  bucket_steps: tuple[int, ...]  # of those, per bucket
  share: float  # of the run's steps
  examples_seen: int
  tokens: int  # patch tokens (and text tokens) over the run
  tokens_per_bucket: tuple[int, ...]  # of one global batch, per bucket
  datasets: tuple[DatasetPlan, ...] = ()  # a mixture's, as the task lists them

  @property
  def epochs(self) -> float:
    return self.examples_seen / self.examples

  @property
  def tokens_per_step(self) -> float:
    return self.tokens / self.steps if self.steps else 0.0


@dataclasses.dataclass(frozen=True)
class Plan:
  steps: int
  mode: str
  schedule: str
  tasks: tuple[TaskPlan, ...]

  @property
  def tokens(self) -> int:
    return sum(t.tokens for t in self.tasks)

  def token_share(self, task: TaskPlan) -> float:
    return task.tokens / self.tokens if self.tokens else 0.0

  def warnings(self) -> list[str]:
    out = []
    for t in self.tasks:
      out += _epoch_warnings(t.name, "sees", t.epochs, t.examples, "raise steps or its share",
                             "lower its share or add data")
      for d in t.datasets:  # a mixture's
        out += _epoch_warnings(f"{t.name}'s dataset {d.root}", "gives", d.epochs, d.examples,
                               "raise its weight or the task's steps", "lower its weight")
    return out

  def to_json(self) -> dict:
    return {"steps": self.steps, "mode": self.mode, "schedule": self.schedule,
            "tokens": self.tokens, "warnings": self.warnings(),
            "tasks": {t.name: {"examples": t.examples, "batch_sizes": list(t.batch_sizes),
                               "steps": t.steps, "bucket_steps": list(t.bucket_steps),
                               "share_of_steps": round(t.share, 6),
                               "share_of_tokens": round(self.token_share(t), 6),
                               "epochs": round(t.epochs, 4), "examples_seen": t.examples_seen,
                               "tokens_per_step": round(t.tokens_per_step, 1),
                               "tokens": t.tokens,
                               **({"datasets": {d.root: {
                                   "weight": d.weight, "examples": d.examples,
                                   "examples_seen": d.examples_seen,
                                   "share_of_examples": round(
                                       d.examples_seen / max(1, t.examples_seen), 6),
                                   "epochs": round(d.epochs, 4)} for d in t.datasets}}
                                  if t.datasets else {})}
                      for t in self.tasks}}

  def lines(self) -> list[str]:
    """The plan as a table, then its warnings."""
    head = ("task", "examples", "batch per bucket", "steps", "share", "epochs",
            "tokens/step", "tokens", "token share")
    rows = [head]
    for t in self.tasks:
      rows.append((t.name, str(t.examples), "/".join(map(str, t.batch_sizes)), str(t.steps),
                   f"{t.share:.1%}", f"{t.epochs:.2f}", f"{t.tokens_per_step:,.0f}",
                   f"{t.tokens:,}", f"{self.token_share(t):.1%}"))
      for d in t.datasets:  # a mixture's: its share of the task's examples, its epochs
        share = d.examples_seen / max(1, t.examples_seen)
        rows.append((f"  {d.root}", str(d.examples), f"weight {d.weight:g}", "",
                     f"{share:.1%} of ex.", f"{d.epochs:.2f}", "", "", ""))
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    text = [f"{self.steps} steps, mode {self.mode}, schedule {self.schedule}, "
            f"{self.tokens:,} tokens in all"]
    text += ["  ".join(c.ljust(w) if i == 0 else c.rjust(w)
                       for i, (c, w) in enumerate(zip(r, widths))) for r in rows]
    return text + [f"warning: {w}" for w in self.warnings()]


def _epoch_warnings(who: str, verb: str, epochs: float, examples: int, fewer: str,
                    more: str) -> list[str]:
  """A warning about data read less than once over the run, or more than MANY_EPOCHS times."""
  if epochs < FEW_EPOCHS:
    return [f"{who} {verb} {epochs:.2f} of an epoch of its {examples} examples: part of its "
            f"data is never read; {fewer}"]
  if epochs > MANY_EPOCHS:
    return [f"{who} repeats its {examples} examples {epochs:.0f} times (more than "
            f"{MANY_EPOCHS:.0f}): it may overfit; {more}"]
  return []


def task_steps(config: TrainConfig) -> list[int]:
  """How many of the run's steps take each task: exact, as the trainer's loop draws them."""
  n, steps = len(config.tasks), config.steps
  if config.mode == "mixed":
    return [steps] * n
  intervals = tuple(t.interval for t in config.tasks)
  weights = tuple(t.weight for t in config.tasks)
  if config.schedule == "intervals":
    period = schedule._period(intervals)
    whole, rest = divmod(steps, len(period))
    return [whole * period.count(i) + period[:rest].count(i) for i in range(n)]
  counts = np.zeros(n, np.int64)
  for s in range(steps):
    counts[schedule.task_of(s, config.schedule, intervals, weights, config.seed)] += 1
  return counts.tolist()


def make(config: TrainConfig, loaders: dict) -> Plan:
  """The plan of `config`, given its tasks' training loaders (setup.setup's)."""
  counts = task_steps(config)
  out = []
  for task, steps in zip(config.tasks, counts):
    data = loaders[task.name]
    sizes = tuple(data.batch_sizes)
    per_bucket = np.zeros(len(sizes), np.int64)
    for k in range(steps):
      per_bucket[data.bucket_of(k)] += 1
    tokens = tuple(data.tokens_per_batch(b) for b in range(len(sizes)))
    seen = int(per_bucket @ np.array(sizes))
    mixture = ()
    if len(data.roots) > 1:
      mixture = tuple(DatasetPlan(root, weight, n, drawn) for (_, weight), root, n, drawn in zip(
          task.datasets, data.roots, data.part_records, data.sampler.drawn(seen)))
    out.append(TaskPlan(
        name=task.name, examples=data.num_records, batch_sizes=sizes, steps=steps,
        bucket_steps=tuple(per_bucket.tolist()), share=steps / config.steps if config.steps else 0.0,
        examples_seen=seen, tokens=int(per_bucket @ np.array(tokens)), tokens_per_bucket=tokens,
        datasets=mixture))
  return Plan(steps=config.steps, mode=config.mode, schedule=config.schedule, tasks=tuple(out))


def parse_targets(text: str, config: TrainConfig) -> dict[str, float]:
  """`image_text=0.5,video_text=0.3,...`: a share for every task, summing to 1."""
  names = [t.name for t in config.tasks]
  targets = {}
  for item in filter(None, (s.strip() for s in text.split(","))):
    name, sep, value = item.partition("=")
    if not sep or name not in names:
      raise ConfigError(f"--target-share {item!r}: expected TASK=SHARE with TASK one of {names}")
    try:
      targets[name] = float(value)
    except ValueError:
      raise ConfigError(f"--target-share {item!r}: the share must be a number") from None
    if not targets[name] > 0:
      raise ConfigError(f"--target-share {item!r}: a share must be above 0")
  missing = [n for n in names if n not in targets]
  if missing:
    raise ConfigError(f"--target-share names no share for {', '.join(missing)}: give every task one")
  if abs(sum(targets.values()) - 1) > 0.01:
    raise ConfigError(f"--target-share: the shares sum to {sum(targets.values()):.3f}, not 1")
  return targets


def _interval_shares(intervals) -> np.ndarray:
  rate = 1.0 / np.asarray(intervals, np.float64)
  return rate / rate.sum()


def solve(plan: Plan, config: TrainConfig, targets: dict[str, float], of: str = "steps",
          max_interval: int = 64) -> dict[str, float]:
  """The intervals (schedule "intervals") or weights (schedule "random") per task that come
  closest to `targets`, shares of the steps (`of="steps"`) or of the tokens
  (`of="tokens"`, from each task's tokens per step in `plan`)."""
  if config.mode != "agd":
    raise ConfigError("--target-share: in mixed mode every task takes every step; "
                      "shares of steps are set by the schedule of mode 'agd'")
  if of not in ("steps", "tokens"):
    raise ConfigError(f"shares are of 'steps' or 'tokens', not {of!r}")
  names = [t.name for t in config.tasks]
  target = np.array([targets[n] for n in names], np.float64)
  target /= target.sum()
  per_step = np.array([t.tokens_per_step or t.tokens_per_bucket[0] for t in plan.tasks],
                      np.float64)
  # the share of steps that gives the target (a token share is steps times tokens per step)
  rate = target if of == "steps" else target / per_step
  rate /= rate.sum()
  achieved = (lambda s: s) if of == "steps" else (lambda s: s * per_step / (s * per_step).sum())
  if config.schedule == "random":
    return {n: float(round(r / rate.max(), 6)) for n, r in zip(names, rate)}
  # The smallest intervals within half a percent of every target (a short period of
  # cycles), else the closest; a period of over MAX_CYCLES cycles is not considered.
  best, best_error = None, math.inf
  for scale in range(1, max_interval + 1):  # the most frequent task's interval
    intervals = [min(max_interval, max(1, round(scale * rate.max() / r))) for r in rate]
    if math.lcm(*intervals) > MAX_CYCLES:
      continue
    error = float(np.abs(achieved(_interval_shares(intervals)) - target).max())
    if error < best_error - 1e-9:
      best, best_error = intervals, error
    if best_error <= 0.005:
      break
  if best is None:
    raise ConfigError(f"--target-share: no intervals of at most {max_interval} with a period "
                      f"of at most {MAX_CYCLES} cycles reach these shares; use "
                      "schedule='random', whose weights reach any share")
  return dict(zip(names, best))


def for_config(config: TrainConfig) -> Plan:
  """The plan of `config` on its datasets, checked as the trainer checks them (setup.py).
  Batch sizes are the config's (batch_multiple, no mesh): the plan holds on any hardware."""
  return make(config, setup_lib.setup(config, mesh=False).loaders)


def with_solution(config: TrainConfig, solved: dict[str, float]) -> TrainConfig:
  field = "interval" if config.schedule == "intervals" else "weight"
  return dataclasses.replace(config, tasks=tuple(
      dataclasses.replace(t, **{field: solved[t.name]}) for t in config.tasks))


def main(config_path: str, overrides=(), *, target: str | None = None, of: str = "steps",
         as_json: bool = False, out=print) -> dict:
  """`impax plan`: prints the plan (or, with `target`, the settings that reach the target
  shares and the plan under them); returns it as JSON."""
  config = config_lib.load(config_path, list(overrides))
  loaders = setup_lib.setup(config, mesh=False).loaders  # as for_config
  plan = make(config, loaders)
  result, lines = plan.to_json(), plan.lines()
  if target:
    targets = parse_targets(target, config)
    solved = solve(plan, config, targets, of)
    config = with_solution(config, solved)
    plan = make(config, loaders)  # the loaders draw buckets alike whatever the schedule
    field = "interval" if config.schedule == "intervals" else "weight"
    reached = {t.name: (t.share if of == "steps" else plan.token_share(t)) for t in plan.tasks}
    result = {**plan.to_json(), "solved": {"of": of, "field": field, "values": solved,
                                           "target": targets, "reached": reached}}
    lines = [f"target shares of {of}: set each Task's {field} in the config file: "
             + ", ".join(f"{n} {field}={v:g}" for n, v in solved.items()),
             "reached: " + ", ".join(f"{n} {reached[n]:.1%} (target {targets[n]:.1%})"
                                     for n in solved), *plan.lines()]
  if as_json:
    out(json.dumps(result, indent=2))
  else:
    for line in lines:
      out(line)
  return result
