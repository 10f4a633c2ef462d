"""The compiled step: model and mesh, optimizer and state, one task's loss, AGD's update.

    model_cfg = step.model_config(config, num_labels)
    mesh = step.make_mesh(model_cfg)                  # None on one device
    model, tx = Model(model_cfg, mesh=mesh), step.make_optimizer(config)
    state = step.init_state(config, model_cfg, tx, mesh)
    fn = step.make_step(model, (task,), tx, config.seed)
    executable = step.Compiled(fn, state, mesh, donate, log).prepare(task.name, (shapes,))

Every step function is compiled ahead of time once per (task, batch shapes), keyed
by the shape and dtype of every input; the loop (trainer.py) only looks executables up.
"""

import collections
import time

import jax
import jax.numpy as jnp
import optax

from impax.datasets.loader import HOST_KEYS
from impax.model import Model, get_config, init_params, moe, sharding
from impax.model import embed as embed_lib
from impax.model import heads as heads_lib
from impax.train import checkpoint, inputs, objectives
from impax.train.config import ConfigError, Task, TrainConfig


# ---------------------------------------------------------------------------
# Model and mesh.

def model_config(config: TrainConfig, num_labels: dict[str, int]):
  """The preset with one classification head per classification task."""
  classifiers = tuple((t.name, num_labels[t.name]) for t in config.tasks
                      if t.objective == "classification")
  return get_config(config.model, classifiers=classifiers, **dict(config.model_overrides))


def make_mesh(model_cfg):
  return sharding.make_mesh(model_cfg.num_experts) if jax.device_count() > 1 else None


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



# ---------------------------------------------------------------------------
# Losses of one task on one batch.

def _forward(model: Model, params, batch: dict, task: Task, rng, train: bool) -> dict:
  x = inputs.model_inputs(batch, task.modalities)
  drop = {m: task.drop_token for m in task.modalities if m != "text"} if train else None
  heads = ({task.modalities[0]: task.name} if task.objective == "classification" else None)
  return model.apply({"params": params}, x, train=train, drop_token=drop, heads=heads,
                     rngs={"droptoken": rng})


def _pair(task: Task) -> str:
  a, b = task.modalities
  return heads_lib.pair_name(embed_lib.FAMILY[a], embed_lib.FAMILY[b])


def _objective(task: Task, out: dict, batch: dict) -> tuple[jax.Array, dict]:
  """The task's loss (unweighted) and metrics over the batch's valid examples."""
  valid = batch["valid"]
  if task.objective == "contrastive":
    a, b = task.modalities
    temperature = out["temperature"][_pair(task)]
    loss, stats = objectives.infonce(out[a]["embedding"], out[b]["embedding"], temperature, valid)
    stats["temperature"] = temperature
    return loss, stats
  logits = out[task.modalities[0]]["logits"][task.name]
  fn = objectives.sigmoid_cross_entropy if task.multi_label else objectives.softmax_cross_entropy
  return fn(logits, batch["label"], valid)


def task_loss(model: Model, params, batch: dict, task: Task, rng, train: bool):
  out = _forward(model, params, batch, task, rng, train)
  loss, stats = _objective(task, out, batch)
  stats.update(loss=loss, aux_loss=out["aux_loss"])
  stats.update(_routing_stats(out))
  return task.loss_weight * loss + out["aux_loss"], stats


def _routing_stats(out: dict) -> dict:
  stats = {}
  for modality, layers in out["moe"]["experts"].items():
    for layer, s in layers.items():
      # Each expert's load (its share of the routed tokens), the tokens no expert took
      # (expert choice) or that overflowed capacity (token choice), the router's losses.
      taken = s["tokens_per_expert"].astype(jnp.float32)
      stats[f"experts/{modality}/{layer}/fraction"] = taken / jnp.maximum(taken.sum(), 1.0)
      stats[f"experts/{modality}/{layer}/dropped"] = (
          s["dropped_tokens"] / jnp.maximum(s["tokens"], 1)).astype(jnp.float32)
      stats[f"experts/{modality}/{layer}/z_loss"] = s["z_loss"].astype(jnp.float32)
      stats[f"experts/{modality}/{layer}/load_balance_loss"] = (
          s["load_balance_loss"].astype(jnp.float32))
  return stats


# ---------------------------------------------------------------------------
# Microbatches: one task's gradient over its batch in k parts, accumulated.
#
# Part j holds examples j, j + k, j + 2k, ... of the batch, so that on a mesh every part is
# spread over every device that holds the batch. A classification's loss is a mean over
# the valid examples: each part's gradient is weighted by its share of them, which sums to
# the whole batch's gradient. A contrastive loss needs every negative of the batch
# (open_clip's --accum-freq): every part is embedded first, without gradients; the loss
# and its gradients with respect to the embeddings and the temperature are taken over the
# whole batch; then each part is embedded again and back-propagated from its slice of
# those gradients. The MoE auxiliary losses and routing statistics are each part's,
# averaged: an MoE routes each part's tokens in groups of its own, so a split batch is
# routed otherwise than whole unless each routing group holds one example's tokens.

def _parts(batch: dict, k: int) -> dict:
  """[B, ...] -> [k, B/k, ...]: part j holds examples j, j + k, ..."""
  return {key: jnp.swapaxes(x.reshape(x.shape[0] // k, k, *x.shape[1:]), 0, 1)
          for key, x in batch.items()}


def _whole(x: jax.Array) -> jax.Array:
  """[k, B/k, ...] -> [B, ...] in the batch's order: `_parts` undone."""
  return jnp.swapaxes(x, 0, 1).reshape(-1, *x.shape[2:])


def microbatched_grads(model: Model, params, batch: dict, task: Task, rng, k: int):
  """(loss as task_loss gives it, stats, gradients) of one task's batch in k parts."""
  size = batch["valid"].shape[0]
  if size % k:
    raise ConfigError(f"task {task.name!r}: a batch of {size} does not split into "
                      f"microbatches={k}; make every bucket's batch a multiple of it")
  parts = _parts(batch, k)
  steps = jnp.arange(k)
  zeros = jax.tree.map(jnp.zeros_like, params)

  if task.objective != "contrastive":
    count = jnp.maximum(batch["valid"].sum(), 1).astype(jnp.float32)

    def part_loss(p, part, j):
      out = _forward(model, p, part, task, jax.random.fold_in(rng, j), True)
      loss, stats = _objective(task, out, part)
      share = part["valid"].sum() / count  # of the batch's valid examples
      stats = {**{n: v * share for n, v in stats.items()}, "loss": loss * share,
               **jax.tree.map(lambda v: v / k, {"aux_loss": out["aux_loss"], **_routing_stats(out)})}
      return task.loss_weight * loss * share + out["aux_loss"] / k, stats

    def body(grads, xs):
      part, j = xs
      (_, stats), g = jax.value_and_grad(part_loss, has_aux=True)(params, part, j)
      return jax.tree.map(jnp.add, grads, g), stats

    grads, stats = jax.lax.scan(body, zeros, (parts, steps))
    stats = jax.tree.map(lambda v: v.sum(0), stats)
    return task.loss_weight * stats["loss"] + stats["aux_loss"], stats, grads

  a, b = task.modalities

  def embed(p, part, j):
    out = _forward(model, p, part, task, jax.random.fold_in(rng, j), True)
    return (out[a]["embedding"], out[b]["embedding"], out["temperature"][_pair(task)],
            out["aux_loss"]), _routing_stats(out)

  (ea, eb, temperature, aux), routing = jax.lax.map(
      lambda xs: embed(params, *xs), (parts, steps))
  whole = {"valid": batch["valid"]}
  out = {a: {"embedding": _whole(ea)}, b: {"embedding": _whole(eb)},
         "temperature": {_pair(task): temperature[0]}}

  def batch_loss(ea_all, eb_all, t):
    o = {a: {"embedding": ea_all}, b: {"embedding": eb_all}, "temperature": {_pair(task): t}}
    return _objective(task, o, whole)

  (loss, stats), (da, db, dt) = jax.value_and_grad(batch_loss, argnums=(0, 1, 2), has_aux=True)(
      out[a]["embedding"], out[b]["embedding"], temperature[0])
  w = task.loss_weight
  cotangents = (w * _parts({"x": da}, k)["x"], w * _parts({"x": db}, k)["x"])

  def body(grads, xs):
    part, j, ca, cb = xs
    _, back, _ = jax.vjp(lambda p: embed(p, part, j), params, has_aux=True)
    one = jnp.ones((), jnp.float32)
    (g,) = back((ca, cb, w * dt / k, one / k))  # the temperature's and aux's share per part
    return jax.tree.map(jnp.add, grads, g), None

  grads, _ = jax.lax.scan(body, zeros, (parts, steps, *cotangents))
  aux = aux.mean()
  stats.update(loss=loss, aux_loss=aux, **jax.tree.map(lambda v: v.mean(0), routing))
  return w * loss + aux, stats, grads


# ---------------------------------------------------------------------------
# State and optimizer.

def learning_rate(config: TrainConfig) -> optax.Schedule:
  """The learning rate at each step: linear warmup, then cosine decay to end_learning_rate."""
  return optax.warmup_cosine_decay_schedule(
      init_value=0.0, peak_value=config.learning_rate, warmup_steps=config.warmup_steps,
      decay_steps=max(config.steps, config.warmup_steps + 1), end_value=config.end_learning_rate)


def make_optimizer(config: TrainConfig) -> optax.GradientTransformation:
  return optax.chain(
      optax.clip_by_global_norm(config.grad_clip),
      optax.adamw(learning_rate(config), b1=config.b1, b2=config.b2, eps=config.eps,
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

def make_step(model: Model, tasks: tuple[Task, ...], tx, seed: int, *, diagnostics: bool = True,
              schedule: optax.Schedule | None = None, grad_clip: float | None = None,
              microbatches: int = 1):
  """A training step over one batch per task in `tasks` (AGD: one task; mixed: all).

  Each task's statistics hold its loss and metrics and the MoE layers' routing; with
  diagnostics, the optimizer's too: grad_norm (before clipping), clipped (1.0 when
  grad_norm exceeded grad_clip, given), update_norm, param_norm (after the update) and,
  given the schedule, learning_rate. A few reductions over the parameters
  (benchmarks/train_diagnostics.py measures their cost). `microbatches` k > 1: each
  task's gradient is accumulated over its batch in k parts (microbatched_grads).
  """

  def step(state, batches, step_index):
    rng = jax.random.fold_in(jax.random.key(seed), step_index)

    def loss_fn(params):
      total, stats = 0.0, {}
      for i, (task, batch) in enumerate(zip(tasks, batches)):
        loss, s = task_loss(model, params, batch, task, jax.random.fold_in(rng, i), train=True)
        total += loss
        stats[task.name] = s
      return total, stats

    if microbatches == 1:
      (total, stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(state["params"])
    else:
      total, stats, grads = 0.0, {}, None
      for i, (task, batch) in enumerate(zip(tasks, batches)):
        loss, stats[task.name], g = microbatched_grads(
            model, state["params"], batch, task, jax.random.fold_in(rng, i), microbatches)
        total += loss
        grads = g if grads is None else jax.tree.map(jnp.add, grads, g)
    grad_norm = optax.tree.norm(grads)
    updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
    params = optax.apply_updates(state["params"], updates)
    # A non-finite loss or gradient (or an update that overflows a parameter) skips the
    # update: parameters and optimizer state stay as they were, so no non-finite value
    # reaches a checkpoint. Decided here, on the device: the host reads the flag with the
    # step's statistics, which it reads anyway.
    finite = jnp.isfinite(total) & jnp.isfinite(grad_norm) & checkpoint.all_finite(params)
    new = {"params": params, "opt_state": opt_state}
    new = jax.tree.map(lambda n, old: jnp.where(finite, n, old), new, state)
    if diagnostics:
      extra = {"grad_norm": grad_norm, "update_norm": optax.tree.norm(updates),
               "param_norm": optax.tree.norm(new["params"])}
      if grad_clip is not None:
        extra["clipped"] = (grad_norm > grad_clip).astype(jnp.float32)
      if schedule is not None:  # the rate of this step's update: the optimizer's own count
        extra["learning_rate"] = jnp.asarray(schedule(update_count(state["opt_state"])),
                                             jnp.float32)
      for name in stats:
        stats[name].update(extra)
    return new, stats, grad_norm, finite

  return step


def update_count(opt_state) -> jax.Array:
  """The updates the optimizer has applied (optax's `count`), which steps whose update was
  skipped do not advance: the learning-rate schedule's step."""
  for path, leaf in jax.tree_util.tree_leaves_with_path(opt_state):
    if path and isinstance(path[-1], jax.tree_util.GetAttrKey) and path[-1].name == "count":
      return leaf
  raise ValueError("the optimizer state has no update count")


class Compiled:
  """Ahead-of-time compiled steps keyed by (task, every input's shape and dtype); counts
  compilations."""

  def __init__(self, fn, state, mesh, donate: bool, log):
    self.fn, self.state, self.mesh, self.log = fn, state, mesh, log
    self.donate = donate
    self.executables = {}
    self.names = {}  # key -> "task 8x4x32x32x3+8x96x128", as the summary and the log name it
    self.compilations = collections.Counter()
    self.compile_seconds = {}

  def _spec(self, shapes: dict) -> dict:
    sharded = sharding.batch_sharding(self.mesh) if self.mesh is not None else None
    return {k: jax.ShapeDtypeStruct((shape[0] * jax.process_count(), *shape[1:]), dtype,
                                    sharding=sharded)
            for k, (shape, dtype) in shapes.items()}

  def prepare(self, name: str, shapes: tuple[dict, ...]):
    """The step compiled for `shapes` (one batch's shapes per task of the step); compiled
    now unless it is already. `name` is the task's, or "mixed"."""
    key = (name, tuple(program_key(s) for s in shapes))
    if key in self.executables:
      return self.executables[key]
    start = time.perf_counter()
    out = None
    if self.mesh is not None:  # the state keeps its shardings step after step
      replicated = jax.sharding.NamedSharding(self.mesh, jax.sharding.PartitionSpec())
      out = (jax.tree.map(lambda x: x.sharding, self.state), replicated, replicated, replicated)
    jitted = jax.jit(self.fn, donate_argnums=(0,) if self.donate else (),
                     **({"out_shardings": out} if out else {}))
    state_spec = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding),
                              self.state)
    batches = tuple(self._spec(s) for s in shapes)
    try:
      lowered = jitted.lower(state_spec, batches, jax.ShapeDtypeStruct((), jnp.int32))
    except moe.RoutingGroupsError as e:  # before the first step, with the task and bucket
      raise ConfigError(f"{name} batch {[shape_text(s) for s in shapes]}: {e}") from e
    executable = lowered.compile()
    seconds = time.perf_counter() - start
    texts = [shape_text(s) for s in shapes]
    self.executables[key] = executable
    self.names[key] = f"{name} {texts[0] if len(texts) == 1 else tuple(texts)}"
    self.compilations[key] += 1
    self.compile_seconds[key] = round(seconds, 2)
    self.log(f"compiled {name} {texts} in {seconds:.1f} s")
    return executable


def program_key(shapes: dict) -> tuple:
  """What a compiled step is specialized to: every input's shape and dtype. Two buckets
  may share their video and differ in their sound, or in nothing but their text."""
  return tuple(sorted((k, tuple(shape), str(dtype)) for k, (shape, dtype) in shapes.items()))


def shape_text(shapes: dict) -> str:
  """A batch's media shapes as logs name them: `8x4x32x32x3`, `8x4x32x32x3+8x96x128`."""
  main = [k for k in ("video", "image", "spectrogram", "waveform") if k in shapes] or ["text"]
  return "+".join("x".join(str(d) for d in shapes[k][0]) for k in main)


def shapes_of(batch: dict) -> dict:
  """{key: (shape, dtype)} of what goes to the devices, the form of Loader.batch_shapes()."""
  return {k: (tuple(v.shape), str(v.dtype)) for k, v in batch.items() if k not in HOST_KEYS}


def put(batch: dict, mesh):
  """A loader's batch on the devices, without its host-side keys (ids)."""
  batch = {k: v for k, v in batch.items() if k not in HOST_KEYS}
  if mesh is None:
    return jax.device_put(batch)  # a transfer; jnp.asarray would compile a copy per shape
  sharded = sharding.batch_sharding(mesh)
  return {k: jax.make_array_from_process_local_data(sharded, v) for k, v in batch.items()}
