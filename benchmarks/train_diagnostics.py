"""The step-time cost of the trainer's diagnostics (issue 31's goal: under 3%).

    .venv/bin/python benchmarks/train_diagnostics.py [--steps 40] [--rounds 5]
    .venv/bin/python benchmarks/train_diagnostics.py --smoke

The demo config's model (train/configs/demo.py: the tiny MoE preset with its conv stem)
and its tasks' first buckets, each compiled twice by train/step.py's make_step: with
the diagnostics the trainer logs (grad_norm, clipped, update_norm, param_norm,
learning_rate; the routers' per-layer losses are computed either way) and without.
Both run on the same random batches of the bucket's shape, in alternating rounds of
--steps steps (so load on the machine falls on both alike); the figure is each
task's median step time with diagnostics over without, and their geometric mean.
No data is read: it times the step alone.
"""

import argparse
import json
import statistics
import time

import jax
import numpy as np

from impax import demo
from impax.datasets import loader
from impax.model import Model
from impax.train import config as config_lib
from impax.train import inputs
from impax.train import step as step_lib


def batch_for(task, model_cfg, batch_size: int, rng: np.random.Generator) -> dict:
  """Random inputs of the task's first bucket: what the loader would hand the step."""
  batch = {}
  for name, shape in loader.input_shapes(task.buckets[0], task.inputs, task.sample_rate).items():
    shape = (batch_size, *shape)
    if name in ("video", "image"):
      batch[name] = rng.integers(0, 256, shape, np.uint8)
    else:
      batch[name] = rng.normal(size=shape).astype(np.float32)
  if "text" in task.inputs:
    batch["text"] = rng.integers(1, model_cfg.vocab_size, (batch_size, task.text_length), np.int32)
    batch["text_mask"] = np.ones((batch_size, task.text_length), bool)
  if "label" in task.inputs:
    batch["label"] = rng.integers(0, 10, (batch_size,), np.int32)
  batch["valid"] = np.ones((batch_size,), bool)
  return batch


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--steps", type=int, default=40, help="steps per round")
  parser.add_argument("--rounds", type=int, default=5)
  parser.add_argument("--batch", type=int, default=32)
  parser.add_argument("--smoke", action="store_true", help="2 rounds of 3 steps, two tasks")
  args = parser.parse_args()
  if args.smoke:
    args.steps, args.rounds = 3, 2
  config = config_lib.load(f"{demo.DEMO_CONFIG}:unused")
  tasks = config.tasks[:2] if args.smoke else config.tasks
  labels = {t.name: 10 for t in config.tasks if t.objective == "classification"}
  model_cfg = step_lib.model_config(config, labels)
  model, tx = Model(model_cfg, mesh=None), step_lib.make_optimizer(config)
  rng = np.random.default_rng(0)
  results = {}
  for task in tasks:
    batch = batch_for(task, model_cfg, args.batch, rng)
    shapes = step_lib.shapes_of(batch)
    state = step_lib.init_state(config, model_cfg, tx, None)
    runs = {}
    for on in (True, False):
      fn = step_lib.make_step(model, (task,), tx, config.seed, diagnostics=on,
                              schedule=step_lib.learning_rate(config), grad_clip=config.grad_clip)
      runs[on] = step_lib.Compiled(fn, state, None, False, lambda *_: None).prepare(
          task.name, (shapes,))
    device_batch = (jax.device_put(batch),)
    times = {True: [], False: []}
    for r in range(args.rounds):
      for on in ((True, False) if r % 2 == 0 else (False, True)):
        s = state
        jax.block_until_ready(runs[on](s, device_batch, np.int32(0)))  # warm
        start = time.perf_counter()
        for i in range(args.steps):
          s, stats, *_ = runs[on](s, device_batch, np.int32(i))
        jax.block_until_ready((s, stats))
        times[on].append((time.perf_counter() - start) / args.steps)
    on, off = statistics.median(times[True]), statistics.median(times[False])
    results[task.name] = {"step_ms_with": round(on * 1e3, 2), "step_ms_without": round(off * 1e3, 2),
                          "ratio": round(on / off, 4)}
  geomean = float(np.exp(np.mean([np.log(r["ratio"]) for r in results.values()])))
  print(json.dumps({"model": config.model, "batch": args.batch, "steps_per_round": args.steps,
                    "rounds": args.rounds, "tasks": results,
                    "ratio_with_over_without_diagnostics": round(geomean, 4),
                    "goal": "< 1.03"}, indent=2))


if __name__ == "__main__":
  main()
