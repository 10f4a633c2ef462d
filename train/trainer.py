"""The AGD trainer: one IMP model, many tasks, straight from prepared shards.

    impax train train/configs/demo.py:demo-output/data --workdir /tmp/run

Read top to bottom: model and mesh, input pipelines, state and optimizer,
ahead-of-time compilation of every (task, batch shape), the loop, checkpoints.
Each step takes one task (Alternating Gradient Descent, schedule.py) and one
batch of it at one of its declared shapes; every task shares the parameters
and the optimizer state. `mode="mixed"` instead takes every task in every step
and sums their losses (the ablation baseline).
"""

import collections
import itertools
import json
import os
import signal
import sys
import threading
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from impax.datasets import loader as loader_lib
from impax.model import Model, get_config, init_params, sharding
from impax.model import embed as embed_lib
from impax.model import heads as heads_lib
from impax.train import checkpoint, metrics as metrics_lib, objectives, schedule
from impax.train.config import ConfigError, Task, TrainConfig, to_json

VISION = ("image", "video")


# ---------------------------------------------------------------------------
# Model and mesh.

def model_config(config: TrainConfig, num_labels: dict[str, int]):
  """The preset with one classification head per classification task."""
  classifiers = tuple((t.name, num_labels[t.name]) for t in config.tasks
                      if t.objective == "classification")
  return get_config(config.model, classifiers=classifiers, **dict(config.model_overrides))


def make_mesh(model_cfg):
  return sharding.make_mesh(model_cfg.num_experts) if jax.device_count() > 1 else None


# ---------------------------------------------------------------------------
# Input pipelines.

def loader_inputs(task: Task) -> tuple[str, ...]:
  if task.objective == "classification":
    return (*task.modalities, "label")
  return tuple(task.modalities)


def patches_of(model_cfg) -> loader_lib.Patches:
  return loader_lib.Patches(tubelet=model_cfg.tubelet, spectrogram=model_cfg.spectrogram_patch,
                            waveform=model_cfg.waveform_patch)


def task_input(task: Task, config: TrainConfig, index: int, *, train: bool,
               batch_multiple: int) -> loader_lib.TaskInput:
  buckets = task.buckets if train else (task.eval_bucket or task.buckets[0],)
  return loader_lib.TaskInput(
      name=task.name, dataset=task.dataset, inputs=loader_inputs(task), buckets=buckets,
      split=task.split if train else task.eval_split, token_budget=task.token_budget,
      text_length=task.text_length, prompt=task.prompt, multi_label=task.multi_label,
      train=train, eval_clips=1 if train else task.eval_clips, augment=task.augment,
      seed=config.seed * 1000 + index, batch_multiple=batch_multiple)


def check_buckets(task: Task, model_cfg) -> None:
  """A bucket the model cannot take (smaller than one patch) is refused by name."""
  t, ph, pw = model_cfg.tubelet
  for i, b in enumerate(task.buckets + ((task.eval_bucket,) if task.eval_bucket else ())):
    where = f"task {task.name!r} bucket {i}"
    if "video" in task.modalities and b.video and (
        b.video[0] < t or b.video[1] < ph or b.video[2] < pw):
      raise ConfigError(f"{where}: video {b.video} is smaller than the model's tubelet "
                        f"{model_cfg.tubelet}")
    if "image" in task.modalities and b.image and (b.image[0] < ph or b.image[1] < pw):
      raise ConfigError(f"{where}: image {b.image} is smaller than a {ph}x{pw} patch")
    if "spectrogram" in task.modalities and b.audio_seconds:
      from impax.datasets import decode
      if decode.spectrogram_frames(b.audio_seconds) < model_cfg.spectrogram_patch[0]:
        raise ConfigError(f"{where}: {b.audio_seconds} s of audio is shorter than one "
                          "spectrogram patch")


def open_loaders(config: TrainConfig, model_cfg, *, batch_multiple: int
                 ) -> dict[str, loader_lib.Loader]:
  """The training loader of every task; a task its dataset cannot serve is refused by name."""
  out = {}
  for i, task in enumerate(config.tasks):
    try:
      out[task.name] = loader_lib.Loader(
          task_input(task, config, i, train=True, batch_multiple=batch_multiple),
          patches=patches_of(model_cfg), process_index=jax.process_index(),
          process_count=jax.process_count(), num_workers=task.num_workers,
          nice=task.loader_nice)
    except (loader_lib.LoaderError, ValueError) as e:
      raise ConfigError(str(e)) from e  # the loader's messages name the task
  return out


def check_datasets(config: TrainConfig) -> dict[str, int]:
  """Opens each task's dataset; refuses a classification without labels and text tasks
  whose datasets' tokenizers differ. Returns each task's number of labels."""
  from impax.datasets import prepared
  out, tokenizers = {}, {}
  for task in config.tasks:
    dataset = prepared.open_dataset(task.dataset)
    if task.objective == "classification" and not dataset.labels:
      raise ConfigError(f"task {task.name!r} is a classification but {task.dataset} has no labels")
    out[task.name] = len(dataset.labels)
    if "text" in task.modalities:
      digest = (dataset.metadata.get("tokenizer") or {}).get("sha256")
      tokenizers.setdefault(digest, []).append(f"{task.name!r} ({task.dataset})")
  if len(tokenizers) > 1:
    # One text embedding table: the same id must mean the same piece in every task.
    found = "; ".join(f"{', '.join(tasks)} by tokenizer {(digest or 'none')[:12]}"
                      for digest, tasks in tokenizers.items())
    raise ConfigError(
        f"the tasks' text is tokenized by different tokenizers ({found}), but the model has "
        "one text embedding table. Build these datasets with one tokenizer: "
        "`impax build ... --tokenizer PATH` with the same SentencePiece model for each.")
  return out


# ---------------------------------------------------------------------------
# Losses of one task on one batch.

def model_inputs(batch: dict, modalities) -> dict:
  out = {}
  for m in modalities:
    x = batch[m]
    if m in VISION:
      x = x.astype(jnp.float32) * (2 / 255.0) - 1.0  # [-1, 1], as big_vision feeds ViTs
      if x.ndim == (6 if m == "video" else 5):  # evaluation clips: [b, clips, ...] -> [b*clips, ...]
        x = x.reshape(-1, *x.shape[2:])
    elif m == "spectrogram":
      # Log-mel sits far from zero (silence is log(1e-6) = -13.8, the demo's mean is -9.3
      # with a spread of 2.4), so every patch token would share one large component.
      # Standardized per example, as audio transformers normalize their input.
      mean = x.mean(axis=(-2, -1), keepdims=True)
      x = (x - mean) / (x.std(axis=(-2, -1), keepdims=True) + 1e-5)
    out[m] = x
  if "text" in modalities:
    out["text_mask"] = batch["text_mask"]
  return out


def task_loss(model: Model, params, batch: dict, task: Task, rng, train: bool):
  inputs = model_inputs(batch, task.modalities)
  drop = {m: task.drop_token for m in task.modalities if m != "text"} if train else None
  heads = ({task.modalities[0]: task.name} if task.objective == "classification" else None)
  out = model.apply({"params": params}, inputs, train=train, drop_token=drop, heads=heads,
                    rngs={"droptoken": rng})
  valid = batch["valid"]
  if task.objective == "contrastive":
    a, b = task.modalities
    pair = heads_lib.pair_name(embed_lib.FAMILY[a], embed_lib.FAMILY[b])
    temperature = out["temperature"][pair]
    loss, stats = objectives.infonce(out[a]["embedding"], out[b]["embedding"], temperature, valid)
    stats["temperature"] = temperature
  else:
    logits = out[task.modalities[0]]["logits"][task.name]
    fn = objectives.sigmoid_cross_entropy if task.multi_label else objectives.softmax_cross_entropy
    loss, stats = fn(logits, batch["label"], valid)
  stats.update(loss=loss, aux_loss=out["aux_loss"])
  for modality, layers in out["moe"]["experts"].items():
    for layer, s in layers.items():
      taken = s["tokens_per_expert"].astype(jnp.float32)
      stats[f"experts/{modality}/{layer}/fraction"] = taken / jnp.maximum(taken.sum(), 1.0)
      stats[f"experts/{modality}/{layer}/dropped"] = (
          s["dropped_tokens"] / jnp.maximum(s["tokens"], 1)).astype(jnp.float32)
  return task.loss_weight * loss + out["aux_loss"], stats


# ---------------------------------------------------------------------------
# State and optimizer.

def make_optimizer(config: TrainConfig) -> optax.GradientTransformation:
  lr = optax.warmup_cosine_decay_schedule(
      init_value=0.0, peak_value=config.learning_rate, warmup_steps=config.warmup_steps,
      decay_steps=max(config.steps, config.warmup_steps + 1), end_value=config.end_learning_rate)
  return optax.chain(
      optax.clip_by_global_norm(config.grad_clip),
      optax.adamw(lr, b1=config.b1, b2=config.b2, eps=config.eps,
                  weight_decay=config.weight_decay))


def init_state(config: TrainConfig, model_cfg, tx, mesh):
  """{"params", "opt_state"}; on a mesh, each leaf placed by sharding.PARAM_RULES (Adam's
  moments match their parameters' paths, so expert moments live with their experts)."""
  def init(key):
    params = init_params(model_cfg, key)
    return {"params": params, "opt_state": tx.init(params)}
  key = jax.random.key(config.seed)
  if mesh is None:
    return jax.jit(init)(key)
  return jax.jit(init, out_shardings=state_shardings(init, key, mesh))(key)


def state_shardings(init, key, mesh):
  return sharding.param_shardings(jax.eval_shape(init, key), mesh)


# ---------------------------------------------------------------------------
# Steps, compiled ahead of time once per (task, batch shape).

def make_step(model: Model, tasks: tuple[Task, ...], tx, seed: int):
  """A training step over one batch per task in `tasks` (AGD: one task; mixed: all)."""

  def step(state, batches, step_index):
    rng = jax.random.fold_in(jax.random.key(seed), step_index)

    def loss_fn(params):
      total, stats = 0.0, {}
      for i, (task, batch) in enumerate(zip(tasks, batches)):
        loss, s = task_loss(model, params, batch, task, jax.random.fold_in(rng, i), train=True)
        total += loss
        stats[task.name] = s
      return total, stats

    (_, stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(state["params"])
    updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
    params = optax.apply_updates(state["params"], updates)
    return {"params": params, "opt_state": opt_state}, stats, optax.tree.norm(grads)

  return step


class Compiled:
  """Ahead-of-time compiled steps keyed by (tasks, batch shapes); counts compilations."""

  def __init__(self, fn, state, mesh, donate: bool, log):
    self.fn, self.state, self.mesh, self.log = fn, state, mesh, log
    self.donate = donate
    self.executables = {}
    self.compilations = collections.Counter()
    self.compile_seconds = {}

  def _spec(self, shapes: dict) -> dict:
    sharded = sharding.batch_sharding(self.mesh) if self.mesh is not None else None
    return {k: jax.ShapeDtypeStruct((shape[0] * jax.process_count(), *shape[1:]), dtype,
                                    sharding=sharded)
            for k, (shape, dtype) in shapes.items()}

  def prepare(self, key: tuple, shapes: tuple[dict, ...]):
    """Compiles the step for `key` (task names and shapes) unless it is compiled."""
    if key in self.executables:
      return self.executables[key]
    start = time.perf_counter()
    out = None
    if self.mesh is not None:  # the state keeps its shardings step after step
      replicated = jax.sharding.NamedSharding(self.mesh, jax.sharding.PartitionSpec())
      out = (jax.tree.map(lambda x: x.sharding, self.state), replicated, replicated)
    jitted = jax.jit(self.fn, donate_argnums=(0,) if self.donate else (),
                     **({"out_shardings": out} if out else {}))
    state_spec = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding),
                              self.state)
    batches = tuple(self._spec(s) for s in shapes)
    executable = jitted.lower(state_spec, batches,
                              jax.ShapeDtypeStruct((), jnp.int32)).compile()
    seconds = time.perf_counter() - start
    self.executables[key] = executable
    self.compilations[key] += 1
    self.compile_seconds[key] = round(seconds, 2)
    self.log(f"compiled {key[0]} {[_shape_text(s) for s in shapes]} in {seconds:.1f} s")
    return executable


def _shape_text(shapes: dict) -> str:
  main = [k for k in ("video", "image", "spectrogram", "waveform") if k in shapes]
  key = main[0] if main else "text"
  return "x".join(str(d) for d in shapes[key][0])


def shapes_of(batch: dict) -> dict:
  """{key: (shape, dtype)}, the form of Loader.batch_shapes()."""
  return {k: (tuple(v.shape), str(v.dtype)) for k, v in batch.items()}


def put(batch: dict, mesh):
  if mesh is None:
    return jax.device_put(batch)  # a transfer; jnp.asarray would compile a copy per shape
  sharded = sharding.batch_sharding(mesh)
  return {k: jax.make_array_from_process_local_data(sharded, v) for k, v in batch.items()}


def batch_tokens(batch: dict, patches: loader_lib.Patches) -> int:
  """Patch tokens of a batch (all processes)."""
  t, ph, pw = patches.tubelet
  n = 0
  if "video" in batch:
    s = batch["video"].shape
    n += int(np.prod(s[:-4])) * max(1, s[-4] // t) * (s[-3] // ph) * (s[-2] // pw)
  if "image" in batch:
    b, h, w, _ = batch["image"].shape
    n += b * (h // ph) * (w // pw)
  if "spectrogram" in batch:
    b, f, m = batch["spectrogram"].shape
    n += b * (f // patches.spectrogram[0]) * (m // patches.spectrogram[1])
  if "waveform" in batch:
    b, s = batch["waveform"].shape
    n += b * (s // patches.waveform)
  if "text" in batch:
    n += int(batch["text_mask"].sum())
  return n * jax.process_count()


# ---------------------------------------------------------------------------
# The loop.

class _CompileCounter:
  """Counts XLA compilations (JAX's backend-compile events) while `active`, in the
  training loop's thread: Orbax's background save threads compile small copy
  programs of their own at any time."""

  def __init__(self):
    self.active, self.count, self.thread = False, 0, None
    from jax import monitoring
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


def train(config: TrainConfig, workdir: str, *, log=print, stop_at: int | None = None,
          iterators: dict | None = None) -> dict:
  """Trains (or resumes) in workdir; returns a summary. `stop_at`: leave after that step.

  `iterators` replaces the loaders' iterators by name (benchmarks feed batches
  already in memory this way); they need __next__, get_state, set_state, close.
  """
  os.makedirs(workdir, exist_ok=True)
  num_labels = check_datasets(config)
  model_cfg = model_config(config, num_labels)
  for task in config.tasks:
    check_buckets(task, model_cfg)
  mesh = make_mesh(model_cfg)
  model = Model(model_cfg, mesh=mesh)
  multiple = sharding.batch_shards(mesh)
  loaders = open_loaders(config, model_cfg, batch_multiple=multiple)
  for name, data in loaders.items():
    if data.left_out:
      without = ", ".join(f"{n} without {m}" for m, n in data.left_out.items())
      log(f"{name} reads {data.num_records} records of {data.dataset.root}; left out: {without}")
  patches = patches_of(model_cfg)
  tx = make_optimizer(config)
  state = init_state(config, model_cfg, tx, mesh)
  log(f"model {model_cfg.name}: {sum(x.size for x in jax.tree.leaves(state['params'])):,} "
      f"parameters on {jax.device_count()} device(s)"
      + (f", mesh {dict(mesh.shape)}" if mesh is not None else ""))

  # -- resume --------------------------------------------------------------
  ckpt = checkpoint.Checkpoints(os.path.join(workdir, "checkpoints"), config.keep_checkpoints)
  iterators = {name: iter(data) for name, data in loaders.items()} | (iterators or {})
  start_step = 0
  restored = ckpt.restore_latest(state)
  if restored is not None:
    state, loader_states, meta = restored
    for name, it in iterators.items():
      it.set_state(loader_states[name])
    start_step = meta["step"]
    log(f"resumed from step {start_step}")
  first = jax.process_index() == 0  # the process that writes files and logs
  if first:
    with open(os.path.join(workdir, "config.json"), "w") as f:
      json.dump(to_json(config), f, indent=2)
  writer = metrics_lib.Writer(workdir, resume_step=start_step, enabled=first)

  # -- compile every (task, shape) before the first step ---------------------
  tasks = config.tasks
  agd = config.mode == "agd"
  donate = jax.devices()[0].platform != "cpu"
  compiled = {}
  if agd:
    for task in tasks:
      step_fn = make_step(model, (task,), tx, config.seed)
      compiled[task.name] = Compiled(step_fn, state, mesh, donate, log)
      for shapes in loaders[task.name].batch_shapes():
        compiled[task.name].prepare((task.name, _shape_text(shapes)), (shapes,))
  else:  # every combination of the tasks' shapes: keep mixed-mode tasks to few buckets
    compiled["mixed"] = Compiled(make_step(model, tasks, tx, config.seed), state, mesh, donate, log)
    for combo in itertools.product(*(loaders[t.name].batch_shapes() for t in tasks)):
      compiled["mixed"].prepare(("mixed", tuple(_shape_text(s) for s in combo)), combo)
  warm = sum(sum(c.compilations.values()) for c in compiled.values())

  # -- train -----------------------------------------------------------------
  stop = _Stop()
  previous = signal.signal(signal.SIGTERM, stop) if _main_thread() else None
  intervals = tuple(t.interval for t in tasks)
  weights = tuple(t.weight for t in tasks)
  end = config.steps if stop_at is None else min(config.steps, stop_at)
  step = start_step
  progress = metrics_lib.Progress(config.steps, start_step, enabled=first)
  status = "finished"
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
      shapes = tuple(shapes_of(b) for b in batches)
      group = compiled[names[0]] if agd else compiled["mixed"]
      key = ((names[0], _shape_text(shapes[0])) if agd else
             ("mixed", tuple(_shape_text(s) for s in shapes)))
      executable = group.prepare(key, shapes)  # compiled before the loop: a lookup
      state, stats, grad_norm = executable(state, tuple(put(b, mesh) for b in batches),
                                           np.int32(step))  # jnp.int32 would compile a cast
      stats = jax.device_get(stats)
      seconds = time.perf_counter() - start
      step += 1
      for n, b, shape in zip(names, batches, shapes):
        writer.add(step, n, stats[n], tokens=batch_tokens(b, patches), seconds=seconds / len(names),
                   shape=_shape_text(shape))
      writer.add_scalar(step, "grad_norm", float(grad_norm))
      progress.update(step, names[0], float(stats[names[0]]["loss"]))
      if step % config.log_every == 0 or step == end:
        writer.flush(step)
      if step % config.checkpoint_every == 0 or step == config.steps:
        counter.active = False  # Orbax compiles its own small copy programs
        ckpt.save(step, state, _loader_states(iterators), {"step": step, "seed": config.seed})
        counter.active = True
      if config.eval_every and step % config.eval_every == 0 and step < config.steps:
        from impax.train import evaluate
        counter.active = False  # evaluation compiles its own forward passes
        writer.add_eval(step, evaluate.evaluate_state(config, model, state["params"], model_cfg,
                                                      mesh, log=log))
        counter.active = True
  finally:
    counter.active = False
    if previous is not None:
      signal.signal(signal.SIGTERM, previous)
    progress.close()
    if step > start_step and ckpt.latest_step() != step:
      ckpt.save(step, state, _loader_states(iterators), {"step": step, "seed": config.seed})
    ckpt.close()
    writer.flush(step)
    for it in iterators.values():
      it.close()

  loop_seconds = time.perf_counter() - loop_start
  compilations = {f"{k[0]} {k[1]}": n for c in compiled.values() for k, n in c.compilations.items()}
  summary = {
      "status": status, "step": step, "steps": config.steps,
      "loop_seconds": round(loop_seconds, 3),  # checkpoints and evaluation included
      "data_wait_seconds": round(data_wait, 3),
      "compilations": compilations,
      "compilations_after_warmup": sum(compilations.values()) - warm if agd else None,
      # Every XLA compilation while the loop ran its steps (checkpoint saves and
      # evaluation aside), whatever asked for it: 0 means the ahead-of-time
      # executables served every step.
      "xla_compilations_in_loop": counter.count,
      "compile_seconds": {f"{k[0]} {k[1]}": s for c in compiled.values()
                          for k, s in c.compile_seconds.items()},
      "failed_records": {n: getattr(it, "failed", 0) for n, it in iterators.items()},
      # Records a task never draws: they lack a modality it reads.
      "records_left_out": {n: data.left_out for n, data in loaders.items() if data.left_out},
  }
  if step == config.steps and config.eval_at_end and status == "finished":
    from impax.train import evaluate
    summary["eval"] = evaluate.evaluate_state(config, model, state["params"], model_cfg, mesh,
                                              log=log)
    if first:
      evaluate.write(workdir, step, summary["eval"])
  writer.close(plots=config.plots)
  if first:
    with open(os.path.join(workdir, "summary.json"), "w") as f:
      json.dump(summary, f, indent=2)
  log(f"{status} at step {step}; {sum(compilations.values())} compilations "
      f"for {len(compilations)} (task, shape) pairs; workdir {workdir}")
  return summary


def _loader_states(iterators) -> dict:
  return {name: it.get_state() for name, it in iterators.items()}


def _main_thread() -> bool:
  return threading.current_thread() is threading.main_thread()


def initialize_distributed(coordinator: str | None, num_processes: int | None,
                           process_id: int | None) -> None:
  """Joins a multi-process run (one process per host, or several on one machine).

  With no coordinator, nothing happens: a single process, or a cluster JAX
  detects by itself (Cloud TPU, SLURM) when jax.distributed.initialize() is
  called with no arguments there.
  """
  if not coordinator:
    return
  # Processes on CPUs reach each other through gloo; accelerators ignore this.
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  jax.distributed.initialize(coordinator_address=coordinator, num_processes=num_processes,
                             process_id=process_id)


def main(config_path: str, workdir: str, overrides=(), *, coordinator=None, num_processes=None,
         process_id=None) -> int:
  from impax.train import config as config_lib
  initialize_distributed(coordinator, num_processes, process_id)
  config = config_lib.load(config_path, list(overrides))
  summary = train(config, workdir, log=print if jax.process_index() == 0 else (lambda *_: None))
  if "eval" in summary and jax.process_index() == 0:
    print(json.dumps(summary["eval"], indent=2))
  return 0 if summary["status"] == "finished" else 3


if __name__ == "__main__":
  sys.exit(main(*sys.argv[1:3], sys.argv[3:]))
