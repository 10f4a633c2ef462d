"""The AGD training loop: one IMP model, many tasks, straight from prepared shards.

    impax train train/configs/demo.py:demo-output/data --workdir /tmp/run

Read top to bottom: the set-up (setup.py: the config checked against its
datasets, the model, the mesh, the tasks' loaders), the optimizer and state
(step.py), every (task, batch shape) compiled ahead of time, the loop,
checkpoints, the final evaluation (evaluate.py). Each step takes one task (Alternating Gradient
Descent, schedule.py) and one batch of it at one of its declared shapes;
every task shares the parameters and the optimizer state. `mode="mixed"`
instead takes every task in every step and sums their losses (the ablation
baseline).
"""

import concurrent.futures
import functools
import itertools
import json
import os
import shutil
import signal
import sys
import threading
import time

import jax
import numpy as np
from jax import monitoring

from impax.model import scan_params, unscan_params
from impax.train import checkpoint, evaluate, inputs, metrics as metrics_lib, schedule
from impax.train import config as config_lib
from impax.train import plan as plan_lib
from impax.train import setup as setup_lib
from impax.train import step as step_lib
from impax.train.config import ConfigError, TrainConfig, to_json


class _CompileCounter:
  """Counts XLA compilations (JAX's backend-compile events) while `active`, in the
  training loop's thread: Orbax's background save threads compile small copy
  programs of their own at any time."""

  def __init__(self):
    self.active, self.count, self.thread = False, 0, None
    monitoring.register_event_duration_secs_listener(self)

  def __call__(self, event: str, duration: float, **kwargs):
    if (self.active and event == "/jax/core/compile/backend_compile_duration"
        and threading.current_thread() is self.thread):
      self.count += 1


_compile_counter = None


def compile_counter() -> _CompileCounter:
  global _compile_counter
  if _compile_counter is None:
    _compile_counter = _CompileCounter()
  return _compile_counter


class _Stop:
  """Set by SIGTERM: the loop saves a checkpoint at the next step and returns."""

  def __init__(self):
    self.requested = False

  def __call__(self, signum, frame):
    self.requested = True


EXIT_DIVERGED = 9  # `impax train`'s exit code when max_nonfinite_steps stopped the run

DATA_FILE = "data.json"  # {dataset: its metadata's content hash}: what the run trains on


def _check_same_data(workdir: str, versions: dict[str, str]) -> None:
  """A workdir holds one run on one set of data: resuming it on rebuilt data that changed
  would continue a run trained on other examples (with their loaders' positions). Refuses
  a start whose data differs from what workdir/data.json recorded at the first start."""
  path = os.path.join(workdir, DATA_FILE)
  if not os.path.exists(path):
    return
  with open(path) as f:
    trained_on = json.load(f)
  changed = sorted(d for d in {*trained_on, *versions} if trained_on.get(d) != versions.get(d))
  if changed:
    raise ConfigError(
        f"{workdir} holds a run on other data: {', '.join(changed)} changed since it started "
        f"({path} lists what it trained on). Train in a new workdir, or delete {workdir} "
        "to start over.")


CONFIG_FILE = "config.json"  # the config of the run's start (or of its last resumption)


def _check_same_run(workdir: str, config: TrainConfig, *, allow: bool, log) -> list[dict]:
  """Resuming continues the run workdir/config.json recorded: refuses a change of a field
  that defines it (the seed, the tasks and their data, buckets, model, optimizer), naming
  each field and its two values, unless `allow`; logs every change, and returns them."""
  path = os.path.join(workdir, CONFIG_FILE)
  if not os.path.exists(path):
    return []
  with open(path) as f:
    recorded = json.load(f)
  changed = config_lib.changes(recorded, config)
  text = lambda value: json.dumps(value, separators=(",", ":"))
  defining = [f"{field} {text(was)} -> {text(now)}" for field, was, now, defines in changed
              if defines]
  if defining and not allow:
    raise ConfigError(
        f"{workdir} holds a run started under another config ({path}): "
        f"{'; '.join(defining)}. These define the run: resuming would go on as another run. "
        "Train in a new workdir, or pass --allow-config-change (the train flow's "
        "allow_config_change) if you mean to; steps, logging, checkpoint and evaluation "
        "settings may change without it")
  for field, was, now, defines in changed:
    log(f"resuming with {field} {text(was)} -> {text(now)}"
        + (" (--allow-config-change)" if defines else ""))
  return [{"field": field, "was": was, "now": now, "defines_the_run": defines}
          for field, was, now, defines in changed]


def train(config: TrainConfig, workdir: str, *, log=print, stop_at: int | None = None,
          iterators: dict | None = None, allow_config_change: bool = False) -> dict:
  """Trains (or resumes) in workdir; returns a summary. `stop_at`: leave after that step.

  `iterators` replaces the loaders' iterators by name (benchmarks feed batches
  already in memory this way); they need __next__, get_state, set_state, close.
  `allow_config_change`: resume even under a config that changes what defines the run.
  """
  # -- set up: the config, its datasets, model, mesh and loaders, checked (setup.py) ----
  os.makedirs(workdir, exist_ok=True)
  setup = setup_lib.setup(config)
  model_cfg, mesh, model, loaders = setup.model_cfg, setup.mesh, setup.model, setup.loaders
  trained_on = inputs.data_versions(config)
  _check_same_data(workdir, trained_on)
  ckpt = checkpoint.Checkpoints(os.path.join(workdir, "checkpoints"), config.keep_checkpoints)
  config_changes = (_check_same_run(workdir, config, allow=allow_config_change, log=log)
                    if ckpt.latest_step() is not None else [])
  for name, data in loaders.items():
    log(f"{name} batches: " + ", ".join(
        f"{size} of {inputs.bucket_text(b)}" for size, b in zip(data.batch_sizes, data.buckets)))
    if data.left_out:
      without = ", ".join(f"{n} without {m}" for m, n in data.left_out.items())
      log(f"{name} reads {data.num_records} records of {', '.join(data.roots)}; left out: "
          f"{without}")
    if data.excluded:
      log(f"{name} skips {data.excluded} records of {', '.join(data.roots)} excluded by "
          f"{data.task.exclude}")
  mixture = plan_lib.make(config, loaders)  # `impax plan`: what each task will take
  for line in mixture.lines():
    log(line)
  tx = step_lib.make_optimizer(config)
  state = step_lib.init_state(config, model_cfg, tx, mesh)
  log(f"model {model_cfg.name}: {sum(x.size for x in jax.tree.leaves(state['params'])):,} "
      f"parameters on {jax.device_count()} device(s)"
      + (f", mesh {dict(mesh.shape)}" if mesh is not None else ""))

  # -- resume --------------------------------------------------------------
  iterators = {name: iter(data) for name, data in loaders.items()} | (iterators or {})
  start_step = 0
  # A checkpoint of the same model with its layers scanned otherwise (scan_layers changes
  # how the model compiles, not what it computes) is converted as it is restored.
  other = ((unscan_params, scan_params) if model_cfg.scan_layers
           else (scan_params, unscan_params))
  restored = ckpt.restore_latest(state, layout=tuple(
      functools.partial(convert, config=model_cfg) for convert in other))
  if restored is not None:
    state, loader_states, meta = restored
    for name, it in iterators.items():
      it.set_state(loader_states[name])
    start_step = meta["step"]
    log(f"resumed from step {start_step}")
  first = jax.process_index() == 0  # the process that writes files and logs
  best = _Best(workdir, config.keep_best, fresh=restored is None, write=first) \
      if config.keep_best else None
  validation = evaluate.Context(evaluate.on_split(config, config.validation_split), setup,
                                None)
  if first:
    with open(os.path.join(workdir, CONFIG_FILE), "w") as f:
      json.dump(to_json(config), f, indent=2)
    with open(os.path.join(workdir, DATA_FILE), "w") as f:  # once every check has passed
      json.dump(trained_on, f, indent=2, sort_keys=True)
  writer = metrics_lib.Writer(workdir, resume_step=start_step, enabled=first)
  batch_ids = (metrics_lib.BatchIds(workdir, start_step, jax.process_index())
               if config.log_batch_ids else None)

  # -- compile every (task, shape) before the first step ---------------------
  tasks = config.tasks
  agd = config.mode == "agd"
  donate = jax.devices()[0].platform != "cpu"
  compiled, programs = {}, []
  # Logged per task in metrics.jsonl: the learning rate, and whether the norm was clipped.
  diagnostics = dict(schedule=step_lib.learning_rate(config), grad_clip=config.grad_clip,
                     microbatches=config.microbatches)
  if agd:
    for task in tasks:
      step_fn = step_lib.make_step(model, (task,), tx, config.seed, **diagnostics)
      compiled[task.name] = step_lib.Compiled(step_fn, state, mesh, donate, log)
      for shapes in loaders[task.name].batch_shapes():
        programs.append((compiled[task.name], task.name, (shapes,)))
  else:  # every combination of the tasks' shapes: keep mixed-mode tasks to few buckets
    mixed = step_lib.make_step(model, tasks, tx, config.seed, **diagnostics)
    compiled["mixed"] = step_lib.Compiled(mixed, state, mesh, donate, log)
    for combo in itertools.product(*(loaders[t.name].batch_shapes() for t in tasks)):
      programs.append((compiled["mixed"], "mixed", combo))
  _compile_all(programs)
  warm = sum(sum(c.compilations.values()) for c in compiled.values())

  # -- train -----------------------------------------------------------------
  stop = _Stop()
  previous = signal.signal(signal.SIGTERM, stop) if _main_thread() else None
  intervals = tuple(t.interval for t in tasks)
  weights = tuple(t.weight for t in tasks)
  end = config.steps if stop_at is None else min(config.steps, stop_at)
  step = start_step
  progress = metrics_lib.Progress(config.steps, start_step, enabled=first)
  status, reason = "finished", None
  nonfinite = {"in_a_row": 0, "in_all": 0, "steps": []}  # skipped updates
  counter = compile_counter()
  counter.count, counter.active, counter.thread = 0, True, threading.current_thread()
  loop_start = time.perf_counter()
  data_wait = 0.0  # seconds the loop waited for batches: an input-bound run shows here
  try:
    while step < end:
      if stop.requested:
        status = "stopped by SIGTERM"
        break
      if agd:
        name = tasks[schedule.task_of(step, config.schedule, intervals, weights, config.seed)].name
        names = (name,)
      else:
        names = tuple(t.name for t in tasks)
      waited = time.perf_counter()
      batches = tuple(next(iterators[n]) for n in names)
      start = time.perf_counter()
      data_wait += start - waited
      shapes = tuple(step_lib.shapes_of(b) for b in batches)
      program = names[0] if agd else "mixed"
      executable = compiled[program].prepare(program, shapes)  # compiled before the loop: a lookup
      state, stats, grad_norm, finite = executable(
          state, tuple(step_lib.put(b, mesh) for b in batches),
          np.int32(step))  # jnp.int32 would compile a cast
      stats, grad_norm, finite = jax.device_get((stats, grad_norm, finite))
      seconds = time.perf_counter() - start
      step += 1
      if batch_ids is not None:
        for n, b, shape in zip(names, batches, shapes):
          batch_ids.add(step, n, b, step_lib.shape_text(shape), loaders[n].roots)
      if finite:
        nonfinite["in_a_row"] = 0
        for n, b, shape in zip(names, batches, shapes):
          writer.add(step, n, stats[n], tokens=inputs.batch_tokens(b, setup.patches),
                     seconds=seconds / len(names), shape=step_lib.shape_text(shape))
        progress.update(step, names[0], float(stats[names[0]]["loss"]))
      else:  # the step left the state as it was (step.make_step)
        nonfinite["in_a_row"] += 1
        nonfinite["in_all"] += 1
        where = [f"{n} {_bucket_text(loaders[n], shape)} loss {float(stats[n]['loss']):g}"
                 for n, shape in zip(names, shapes)]
        nonfinite["steps"] = (nonfinite["steps"] + [{"step": step, "tasks": where}])[-100:]
        log(f"step {step}: non-finite loss or gradient ({'; '.join(where)}, gradient norm "
            f"{float(grad_norm):g}): update skipped, {nonfinite['in_a_row']} in a row, "
            f"{nonfinite['in_all']} in all")
        for n, shape in zip(names, shapes):
          writer.add_skipped(step, n, step_lib.shape_text(shape))
        if nonfinite["in_a_row"] >= config.max_nonfinite_steps:
          status = "diverged"
          reason = (f"training diverged: the loss or gradient was not finite in "
                    f"{nonfinite['in_a_row']} steps in a row, to step {step} "
                    f"(max_nonfinite_steps {config.max_nonfinite_steps}; the last: "
                    f"{'; '.join(where)}); the last checkpoint is step "
                    f"{ckpt.latest_step() or 'none'}: lower learning_rate or grad_clip, or "
                    "lengthen warmup_steps")
          break
      if step % config.log_every == 0 or step == end:
        writer.flush(step)
        if batch_ids is not None:
          batch_ids.flush()
      if step % config.checkpoint_every == 0 or step == config.steps:
        counter.active = False  # Orbax compiles its own small copy programs
        ckpt.save(step, state, _loader_states(iterators), {"step": step, "seed": config.seed})
        counter.active = True
      if config.eval_every and (step % config.eval_every == 0 or step == config.steps):
        counter.active = False  # evaluation compiles its own forward passes
        validation.params = state["params"]
        results = evaluate.evaluate_state(validation, log=log)
        writer.add_eval(step, results, split=config.validation_split)
        if best is not None:
          best.offer(step, state, results, _loader_states(iterators), log)
        counter.active = True
  finally:
    counter.active = False
    if previous is not None:
      signal.signal(signal.SIGTERM, previous)
    progress.close()
    # A diverged run saves nothing more: its last checkpoint is one to resume from.
    if step > start_step and ckpt.latest_step() != step and status != "diverged":
      ckpt.save(step, state, _loader_states(iterators), {"step": step, "seed": config.seed})
    ckpt.close()
    writer.flush(step)
    if batch_ids is not None:
      batch_ids.close()
    for it in iterators.values():
      it.close()

  loop_seconds = time.perf_counter() - loop_start
  compilations = {c.names[k]: n for c in compiled.values() for k, n in c.compilations.items()}
  summary = {
      "status": status, "step": step, "steps": config.steps,
      **({"reason": reason} if reason else {}),
      # Steps whose loss or gradient was not finite: their updates were skipped.
      "nonfinite_steps": {"in_all": nonfinite["in_all"], "last": nonfinite["steps"]},
      "loop_seconds": round(loop_seconds, 3),  # checkpoints and evaluation included
      "data_wait_seconds": round(data_wait, 3),
      "compilations": compilations,
      "compilations_after_warmup": sum(compilations.values()) - warm if agd else None,
      # Every XLA compilation while the loop ran its steps (checkpoint saves and
      # evaluation aside), whatever asked for it: 0 means the ahead-of-time
      # executables served every step.
      "xla_compilations_in_loop": counter.count,
      "compile_seconds": {c.names[k]: s for c in compiled.values()
                          for k, s in c.compile_seconds.items()},
      "failed_records": {n: getattr(it, "failed", 0) for n, it in iterators.items()},
      # Records a task never draws: they lack a modality it reads.
      "records_left_out": {n: data.left_out for n, data in loaders.items() if data.left_out},
      # Records a task skips: its `exclude` list (duplicates, test-set leaks) names them.
      "records_excluded": {n: data.excluded for n, data in loaders.items()},
      "plan": mixture.to_json(),
      # Fields changed since the run's last start (config.json), and whether a change of
      # what defines the run was allowed.
      "config_changes": config_changes,
      "allow_config_change": allow_config_change,
  }
  if best is not None:
    summary["best"] = best.record
  if step == config.steps and config.eval_at_end and status == "finished":
    # The test split, once: the best checkpoint by validation when the run keeps one.
    params, evaluated, name = state["params"], step, "latest"
    if best is not None and best.record is not None:
      params, evaluated, name = best.params(state), best.record["step"], "best"
      log(f"evaluating the best checkpoint: step {evaluated}, {best.figure} "
          f"{best.record['value']:.3f} on {config.validation_split}")
    final = evaluate.Context(config, setup, params, forwards=validation.forwards,
                             embeddings_dir=os.path.join(workdir, "embeddings", f"step-{evaluated}"))
    summary["eval"] = evaluate.evaluate_state(final, log=log, probe=config.linear_probe)
    summary["eval_checkpoint"] = {"checkpoint": name, "step": evaluated}
    if first:
      evaluate.write(workdir, evaluated, summary["eval"], checkpoint_name=name)
  if best is not None:
    best.close()
  writer.close(plots=config.plots)
  if first:
    with open(os.path.join(workdir, "summary.json"), "w") as f:
      json.dump(summary, f, indent=2)
  log(f"{status} at step {step}; {sum(compilations.values())} compilations "
      f"for {len(compilations)} (task, shape) pairs; workdir {workdir}")
  return summary


def _compile_all(programs: list) -> None:
  """Compiles every (Compiled, name, shapes) before the first step, on a thread per core:
  XLA compiles without the GIL (benchmarks/README.md, "Compiling the demo's programs on a
  thread per core"). Each program is compiled once."""
  workers = min(len(programs), os.cpu_count() or 1)
  if workers <= 1 or jax.process_count() > 1:  # processes must compile in the same order
    for group, name, shapes in programs:
      group.prepare(name, shapes)
    return
  with concurrent.futures.ThreadPoolExecutor(workers, thread_name_prefix="compile") as pool:
    for future in [pool.submit(group.prepare, name, shapes) for group, name, shapes in programs]:
      future.result()


class _Best:
  """The checkpoint of the highest periodic validation figure: WORKDIR/best/STEP (Orbax, the
  last one only) and WORKDIR/best.json ({"step", "figure", "value", "split"})."""

  def __init__(self, workdir: str, figure: str, *, fresh: bool, write: bool):
    self.figure, self.write = figure, write
    self.path = os.path.join(workdir, "best.json")
    directory = os.path.join(workdir, "best")
    if fresh:  # a run from step 0: what an earlier run kept here is not this run's
      if write and os.path.exists(self.path):
        os.remove(self.path)
      if write and os.path.isdir(directory):
        shutil.rmtree(directory)
    self.record = None
    if os.path.exists(self.path):
      with open(self.path) as f:
        self.record = json.load(f)
    self.ckpt = checkpoint.Checkpoints(directory, 1)

  def offer(self, step: int, state, results: dict, loader_states: dict, log) -> None:
    """Keeps `state` when its figure beats the best so far (ties keep the earlier)."""
    value = evaluate.metric(results, self.figure)
    if self.record is not None and value <= self.record["value"]:
      return
    self.ckpt.save(step, state, loader_states, {"step": step, "best": self.figure})
    self.ckpt.manager.wait_until_finished()  # best.json names only a finished checkpoint
    self.record = {"step": step, "figure": self.figure, "value": value,
                   "split": results[self.figure.partition("/")[0]]["split"]}
    if self.write:
      with open(self.path + ".tmp", "w") as f:
        json.dump(self.record, f, indent=2)
      os.replace(self.path + ".tmp", self.path)
    log(f"best so far: {self.figure} {value:.3f} at step {step} (checkpoint in best/)")

  def params(self, target):
    return self.ckpt.restore_latest(target)[0]["params"]

  def close(self) -> None:
    self.ckpt.close()


def _bucket_text(data, shapes: dict) -> str:
  """A batch's bucket as the log names it: `bucket 1 (video 4x16x16: 16x4x16x16x3)`."""
  text = step_lib.shape_text(shapes)
  keys = [step_lib.program_key(s) for s in data.batch_shapes()]
  if step_lib.program_key(shapes) not in keys:  # a batch from `iterators`, of its own shape
    return f"batch {text}"
  i = keys.index(step_lib.program_key(shapes))
  return f"bucket {i} ({inputs.bucket_text(data.buckets[i])}: {text})"


def _loader_states(iterators) -> dict:
  return {name: it.get_state() for name, it in iterators.items()}


def _main_thread() -> bool:
  return threading.current_thread() is threading.main_thread()


def main(config_path: str, workdir: str, overrides=(), *, coordinator=None, num_processes=None,
         process_id=None, allow_config_change: bool = False) -> int:
  step_lib.initialize_distributed(coordinator, num_processes, process_id)
  config = config_lib.load(config_path, list(overrides))
  summary = train(config, workdir, log=print if jax.process_index() == 0 else (lambda *_: None),
                  allow_config_change=allow_config_change)
  if "eval" in summary and jax.process_index() == 0:
    print(json.dumps(summary["eval"], indent=2))
  if summary["status"] == "diverged":
    print(f"impax: error: {summary['reason']}", file=sys.stderr)
    return EXIT_DIVERGED
  return 0 if summary["status"] == "finished" else 3


if __name__ == "__main__":
  sys.exit(main(*sys.argv[1:3], sys.argv[3:]))
