"""bfloat16 against float32: the demo config trained both ways from the same seed.

    .venv/bin/python benchmarks/train_precision.py --data demo-output/data --root /tmp/precision
        [--steps 300] [--seed 0] [--tolerance 0.05] [--set KEY=VALUE ...] [--tasks NAME ...]

Trains train/configs/demo.py for --steps steps twice in ROOT/float32 and
ROOT/bfloat16, the model's compute dtype the only difference (parameters, the
MoE router, softmax and LayerNorm statistics stay float32 either way:
model/config.py), and compares:
  - the loss curves, per task: each logged loss smoothed over a window of 5 log
    lines, the largest relative difference of bfloat16's from float32's (goal:
    within --tolerance, 5% by default), and the mean absolute difference;
  - the zero-shot video top-1 on the validation split at the last step and on
    test once at the end, against its noise: two standard errors of a binomial
    proportion over the split's examples (goal: the difference within it);
  - the step time of each.
A finished run already in ROOT is read, not trained again. Prints JSON.
"""

import argparse
import dataclasses
import json
import math
import os

import numpy as np

from impax.demo import DEMO_CONFIG
from impax.train import config as config_lib
from impax.train import metrics, trainer

WINDOW = 5  # log lines a loss is smoothed over


def run(data: str, workdir: str, dtype: str, overrides: list[str], tasks: list[str]) -> dict:
  path = os.path.join(workdir, "summary.json")
  if os.path.exists(path):
    with open(path) as f:
      summary = json.load(f)
    if summary.get("status") == "finished":
      return summary
  config = config_lib.load(f"{DEMO_CONFIG}:{data}", overrides)
  if tasks:  # the smoke run's: fewer programs to compile
    config = dataclasses.replace(config, tasks=tuple(t for t in config.tasks if t.name in tasks))
  config = dataclasses.replace(
      config, model_overrides=(*(o for o in config.model_overrides if o[0] != "dtype"),
                               ("dtype", dtype)))
  return trainer.train(config, workdir)


def curves(workdir: str) -> dict[str, tuple[list[int], np.ndarray]]:
  rows = [r for r in metrics.read(os.path.join(workdir, "metrics.jsonl")) if "loss" in r]
  out = {}
  for task in sorted({r["task"] for r in rows}):
    mine = [r for r in rows if r["task"] == task]
    out[task] = ([r["step"] for r in mine], np.array([r["loss"] for r in mine]))
  return out


def smooth(x: np.ndarray) -> np.ndarray:
  return np.convolve(x, np.ones(WINDOW) / WINDOW, mode="valid") if len(x) >= WINDOW else x


def zero_shot(summary: dict, workdir: str) -> dict:
  """{split: (top-1, examples)} of video zero-shot: validation at the last step, test."""
  out = {}
  evals = [r for r in metrics.read(os.path.join(workdir, "metrics.jsonl")) if "eval" in r]
  if evals:
    v = evals[-1]["eval"].get("video_text", {})
    out["validation"] = (v.get("zero_shot_top1"), v.get("examples"))
  t = summary.get("eval", {}).get("video_text", {})
  out["test"] = (t.get("zero_shot_top1"), t.get("examples"))
  return out


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--data", required=True, help="the demo datasets (impax demo DIR: DIR/data)")
  parser.add_argument("--root", required=True)
  parser.add_argument("--steps", type=int, default=300)
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--tolerance", type=float, default=0.05,
                      help="largest relative difference of the smoothed loss curves")
  parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
  parser.add_argument("--tasks", nargs="+", default=[],
                      help="train only these of the config's tasks (default: all)")
  args = parser.parse_args()
  overrides = [f"steps={args.steps}", f"seed={args.seed}", *args.set]
  summaries, runs = {}, {}
  for dtype in ("float32", "bfloat16"):
    workdir = os.path.join(args.root, dtype)
    summaries[dtype] = run(args.data, workdir, dtype, overrides, args.tasks)
    runs[dtype] = curves(workdir)
  result = {"steps": args.steps, "seed": args.seed, "tolerance": args.tolerance, "tasks": {}}
  within = True
  for task, (steps, f32) in runs["float32"].items():
    steps16, b16 = runs["bfloat16"][task]
    assert steps16 == steps, task
    a, b = smooth(f32), smooth(b16)
    worst = float(np.max(np.abs(b - a) / np.abs(a)))
    within &= worst <= args.tolerance
    result["tasks"][task] = {
        "logged_losses": len(steps), "max_relative_difference_smoothed": round(worst, 4),
        "mean_absolute_difference": round(float(np.mean(np.abs(b16 - f32))), 4),
        "final_loss_float32": round(float(f32[-1]), 4),
        "final_loss_bfloat16": round(float(b16[-1]), 4)}
  result["loss_curves_within_tolerance"] = within
  shots = {d: zero_shot(summaries[d], os.path.join(args.root, d)) for d in summaries}
  result["video_zero_shot"] = {}
  for split in shots["float32"]:
    (p, n), (q, _) = shots["float32"][split], shots["bfloat16"][split]
    if p is None or q is None or not n:
      continue
    noise = 2 * math.sqrt(max(p * (1 - p), 1 / n) / n)  # two standard errors
    result["video_zero_shot"][split] = {
        "float32": p, "bfloat16": q, "difference": round(q - p, 4),
        "two_standard_errors": round(noise, 4), "within_noise": abs(q - p) <= noise,
        "examples": n}
  result["mean_step_seconds"] = {
      d: round(float(np.mean([r["step_seconds"] for r in metrics.read(
          os.path.join(args.root, d, "metrics.jsonl")) if "step_seconds" in r])), 4)
      for d in summaries}
  print(json.dumps(result, indent=2))


if __name__ == "__main__":
  main()
