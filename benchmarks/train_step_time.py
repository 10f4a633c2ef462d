"""Training step time with the real loader against the same steps on batches already in memory.

    .venv/bin/python benchmarks/train_step_time.py [--data DIR] [--steps 150] [--set KEY=VALUE ...]
        [--profile DIR]

Runs the demo config (train/configs/demo.py: the tiny MoE preset, AGD over
image-text, video-text, video-audio and audio classification, 8 task shapes)
twice in one process for the same steps: once reading through the loader
(Grain; --workers N: N worker processes per task, default 0: a prefetch thread in the trainer process), once from the very same batches read
beforehand into memory. Reports the loop time of each (checkpoints off),
their ratio (goal <= 1.1), and the compilations per (task, shape) of the
loader run (goal: exactly one each, none in the loop). DIR is a folder of
prepared demo datasets (`impax demo` writes one under demo-output/data);
without it the demo corpus is generated and built first.

--profile DIR also traces the in-memory run's loop with JAX's profiler (from its first
batch to its end, so no compile; the Python tracer off) into DIR and reports, from the trace's
Perfetto JSON, the XLA operations a step runs, their summed time a step, and the time the
host waited for a step: the kernels' time over the wait and the pool's threads is how busy the
pool kept the cores. The trace holds at most a million events; the figures are over the
steps it holds. Tracing slows the in-memory run about twice, so with --profile there is no
ratio: measure that without it.
"""

import argparse
import collections
import dataclasses
import glob
import gzip
import json
import os
import tempfile

import jax

from impax import demo
from impax.train import config as config_lib
from impax.train import inputs, schedule, trainer
from impax.train import step as step_lib


class InMemory:
  """Replays batches read beforehand; the iterator interface the trainer uses. `first`, if
  given, is called when its first batch is taken: the loop has begun."""

  def __init__(self, batches, first=None):
    self.batches, self.position, self.failed, self.first = batches, 0, 0, first

  def __next__(self):
    if self.first is not None:
      first, self.first = self.first, None
      first()
    batch = self.batches[self.position]
    self.position += 1
    return batch

  def get_state(self):
    return {"position": self.position}

  def set_state(self, state):
    self.position = state["position"]

  def close(self):
    pass


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--data", default=None)
  parser.add_argument("--steps", type=int, default=150)
  parser.add_argument("--workers", type=int, default=0)
  parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                      help="a config field, as impax train --set")
  parser.add_argument("--nice", type=int, default=None,
                      help="the loader's nice increment (default: the config's, 10)")
  parser.add_argument("--profile", default=None, metavar="DIR",
                      help="trace the in-memory run's loop into DIR and report its XLA kernels")
  args = parser.parse_args()
  from absl import flags
  flags.FLAGS.mark_as_parsed()  # Grain's multiprocessing reads absl flags
  root = tempfile.mkdtemp(prefix="impax-bench-train-")
  data = args.data
  if data is None:
    demo.build_all(root)
    data = os.path.join(root, "data")
  config = config_lib.load(f"{demo.DEMO_CONFIG}:{data}", args.set)
  config = dataclasses.replace(
      config, steps=args.steps, checkpoint_every=10**9, eval_at_end=False, plots=False,
      log_every=50, tasks=tuple(dataclasses.replace(
          t, num_workers=args.workers,
          loader_nice=t.loader_nice if args.nice is None else args.nice) for t in config.tasks))
  quiet = lambda *_: None

  # The batches the loader run will read, step by step, read beforehand.
  model_cfg = step_lib.model_config(config, inputs.check_datasets(config))
  loaders = inputs.open_loaders(config, model_cfg, batch_multiple=1)
  counts = {t.name: 0 for t in config.tasks}
  intervals, weights = tuple(t.interval for t in config.tasks), tuple(t.weight for t in config.tasks)
  for step in range(config.steps):
    counts[config.tasks[schedule.task_of(step, config.schedule, intervals, weights,
                                         config.seed)].name] += 1
  tracing = []

  def start_trace():
    if not tracing:
      options = jax.profiler.ProfileOptions()
      options.python_tracer_level = 0
      jax.profiler.start_trace(args.profile, create_perfetto_trace=True,
                               profiler_options=options)
      tracing.append(True)

  memory = {}
  for name, data_loader in loaders.items():
    it = iter(data_loader)
    memory[name] = InMemory([next(it) for _ in range(counts[name])], first=start_trace if args.profile else None)
    it.close()

  with_loader = trainer.train(config, os.path.join(root, "loader"), log=quiet)
  in_memory = trainer.train(config, os.path.join(root, "memory"), log=quiet, iterators=memory)
  if tracing:
    jax.profiler.stop_trace()
  ratio = with_loader["loop_seconds"] / in_memory["loop_seconds"]
  print(json.dumps({
      "steps": config.steps, "loader_workers_per_task": args.workers,
      "steps_per_task": counts,
      "loop_seconds_with_loader": with_loader["loop_seconds"],
      "loop_seconds_in_memory": in_memory["loop_seconds"],
      # Tracing slows the in-memory run (about 2x): no ratio then.
      "ratio_loader_over_memory": None if args.profile else round(ratio, 3), "goal": 1.1,
      # Time the loop spent waiting for the loader's batches; the rest of the
      # difference is the loader's decoding competing with XLA for the CPU.
      "data_wait_seconds_with_loader": with_loader["data_wait_seconds"],
      "compilations_per_task_shape": with_loader["compilations"],
      "compile_seconds": with_loader["compile_seconds"],
      "compilations_after_warmup": with_loader["compilations_after_warmup"],
      "xla_compilations_in_loop": with_loader["xla_compilations_in_loop"],
      **({"profile": kernels(args.profile)} if args.profile else {}),
  }, indent=2))


def kernels(folder: str) -> dict:
  """A step's XLA kernels from the newest Perfetto trace under `folder`: how many, their summed
  time, the host's wait for the step, and how busy they kept XLA's thread pool."""
  path = max(glob.glob(os.path.join(folder, "plugins", "profile", "*", "perfetto_trace.json.gz")),
             key=os.path.getmtime)
  with gzip.open(path) as f:
    trace = json.load(f)
  events = trace["traceEvents"] if isinstance(trace, dict) else trace
  names = {(e["pid"], e.get("tid")): e["args"]["name"] for e in events
           if e.get("ph") == "M" and e.get("name") == "thread_name"}
  ops, op_us, pool, waits = 0, 0.0, set(), []
  kinds = collections.Counter()
  for e in events:
    if e.get("ph") != "X":
      continue
    thread = names.get((e["pid"], e.get("tid")), "")
    if e["name"] == "ThunkExecutor::Execute (wait for completion)":
      waits.append(e["dur"])
    elif thread.startswith("tf_XLAEigen") and not e["name"].startswith(
        ("ThunkExecutor", "SlinkyThreadPool")):
      ops += 1
      op_us += e["dur"]
      pool.add(e.get("tid"))
      kinds[e["name"].rstrip("0123456789").rstrip(".")] += e["dur"]
  steps = len(waits)
  if not steps:
    return {"error": f"no step in {path}"}
  wait = sum(waits) / steps
  return {"steps_traced": steps, "xla_ops_per_step": round(ops / steps),
          "kernel_ms_per_step": round(op_us / steps / 1000, 2),
          "wait_ms_per_step": round(wait / 1000, 2), "pool_threads": len(pool),
          "pool_busy": round(op_us / steps / (wait * max(1, len(pool))), 3),
          "kernel_time_share": {k: round(v / op_us, 3) for k, v in kinds.most_common(5)}}


if __name__ == "__main__":
  main()
