"""Training step time with the real loader against the same steps on batches already in memory.

    .venv/bin/python benchmarks/train_step_time.py [--data DIR] [--steps 150] [--set KEY=VALUE ...]

Runs the demo config (train/configs/demo.py: the tiny MoE preset, AGD over
image-text, video-text, video-audio and audio classification, 8 task shapes)
twice in one process for the same steps: once reading through the loader
(Grain; --workers N: N worker processes per task, default 0: a prefetch thread in the trainer process), once from the very same batches read
beforehand into memory. Reports the loop time of each (checkpoints off),
their ratio (goal <= 1.1), and the compilations per (task, shape) of the
loader run (goal: exactly one each, none in the loop). DIR is a folder of
prepared demo datasets (`impax demo` writes one under demo-output/data);
without it the demo corpus is generated and built first.
"""

import argparse
import dataclasses
import json
import os
import tempfile

from impax import demo
from impax.train import config as config_lib
from impax.train import inputs, schedule, trainer
from impax.train import step as step_lib


class InMemory:
  """Replays batches read beforehand; the iterator interface the trainer uses."""

  def __init__(self, batches):
    self.batches, self.position, self.failed = batches, 0, 0

  def __next__(self):
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
  memory = {}
  for name, data_loader in loaders.items():
    it = iter(data_loader)
    memory[name] = InMemory([next(it) for _ in range(counts[name])])
    it.close()

  with_loader = trainer.train(config, os.path.join(root, "loader"), log=quiet)
  in_memory = trainer.train(config, os.path.join(root, "memory"), log=quiet, iterators=memory)
  ratio = with_loader["loop_seconds"] / in_memory["loop_seconds"]
  print(json.dumps({
      "steps": config.steps, "loader_workers_per_task": args.workers,
      "steps_per_task": counts,
      "loop_seconds_with_loader": with_loader["loop_seconds"],
      "loop_seconds_in_memory": in_memory["loop_seconds"],
      "ratio_loader_over_memory": round(ratio, 3), "goal": 1.1,
      # Time the loop spent waiting for the loader's batches; the rest of the
      # difference is the loader's decoding competing with XLA for the CPU.
      "data_wait_seconds_with_loader": with_loader["data_wait_seconds"],
      "compilations_per_task_shape": with_loader["compilations"],
      "compile_seconds": with_loader["compile_seconds"],
      "compilations_after_warmup": with_loader["compilations_after_warmup"],
      "xla_compilations_in_loop": with_loader["xla_compilations_in_loop"],
  }, indent=2))


if __name__ == "__main__":
  main()
