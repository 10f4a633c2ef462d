"""IMP's claims at small scale: AGD vs mixed batches, MoE vs dense, several resolutions vs one.

    .venv/bin/python benchmarks/train_ablation.py --data demo-output/data [--steps 1000] [--seeds 0 1 2]

Trains the demo config (train/configs/demo.py) in four variants, each with
every seed, at equal steps, and evaluates each on the held-out splits:
  agd             the demo config as it is (tiny MoE, AGD, several buckets per task);
  mixed           every task in every step, losses summed (the baseline of AGD),
                  at equal steps: as many task updates per task as AGD has steps;
  mixed_equal_compute  the same with steps / tasks steps: AGD's number of task
                  updates in all, about its compute;
  dense           the tiny preset without experts: the same active parameters per token;
  one_resolution  each task only at its first bucket.
Reports per variant the mean and standard deviation over seeds of zero-shot
video classification (top-1, held-out videos), video-to-text R@1 and audio
classification accuracy, with the training time. Prints JSON and a markdown
table ("train s": the training loop, compilation not included). Whatever comes out is
the result.
"""

import argparse
import dataclasses
import json
import os
import statistics
import tempfile

from impax.demo import DEMO_CONFIG
from impax.train import config as config_lib
from impax.train import trainer

METRICS = (("zero-shot video top-1", "video_text", "zero_shot_top1"),
           ("video->text R@1", "video_text", "video_to_text/R@1"),
           ("audio classification", "audio_classification", "accuracy"))


def variant(config, name):
  if name == "mixed":
    return dataclasses.replace(config, mode="mixed")
  if name == "mixed_equal_compute":
    # A mixed step runs every task: as many task updates (and about as much
    # compute) as AGD's steps when it takes steps / tasks of them.
    steps = max(1, round(config.steps / len(config.tasks)))
    return dataclasses.replace(config, mode="mixed", steps=steps,
                               warmup_steps=min(config.warmup_steps, steps // 4))
  if name == "dense":
    return dataclasses.replace(config, model_overrides=config.model_overrides + (
        ("moe_layers", ()), ("num_experts", 0)))
  if name == "one_resolution":
    return dataclasses.replace(config, tasks=tuple(dataclasses.replace(t, buckets=t.buckets[:1])
                                                   for t in config.tasks))
  return config


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--data", required=True)
  parser.add_argument("--steps", type=int, default=1000)
  parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
  parser.add_argument("--variants", nargs="+", default=["agd", "mixed", "mixed_equal_compute", "dense", "one_resolution"])
  args = parser.parse_args()
  from absl import flags
  flags.FLAGS.mark_as_parsed()
  base = config_lib.load(f"{DEMO_CONFIG}:{args.data}")
  base = dataclasses.replace(base, steps=args.steps, checkpoint_every=10**9, plots=False,
                             log_every=100)
  root = tempfile.mkdtemp(prefix="impax-ablation-")
  # The seeds of a variant compile the same programs: XLA's persistent cache
  # compiles each once. Compile time is not part of the comparison.
  import jax
  jax.config.update("jax_compilation_cache_dir", os.path.join(root, "xla-cache"))
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
  runs = {}
  for name in args.variants:
    for seed in args.seeds:
      config = dataclasses.replace(variant(base, name), seed=seed)
      summary = trainer.train(config, os.path.join(root, f"{name}-{seed}"), log=lambda *_: None)
      runs.setdefault(name, []).append({
          "seed": seed, "seconds": summary["loop_seconds"],
          **{label: summary["eval"][task][key] for label, task, key in METRICS}})
      print(name, runs[name][-1], flush=True)
  table = {}
  for name, results in runs.items():
    table[name] = {"seconds": statistics.mean(r["seconds"] for r in results)}
    for label, _, _ in METRICS:
      values = [r[label] for r in results]
      table[name][label] = (statistics.mean(values),
                            statistics.stdev(values) if len(values) > 1 else 0.0)
  print(json.dumps({"steps": args.steps, "seeds": args.seeds, "runs": runs}, indent=2))
  print(f"\n| variant ({args.steps} steps, seeds {args.seeds}) | "
        + " | ".join(label for label, _, _ in METRICS) + " | train s |")
  print("|---" * (len(METRICS) + 2) + "|")
  for name, row in table.items():
    cells = " | ".join(f"{row[label][0]:.3f} ± {row[label][1]:.3f}" for label, _, _ in METRICS)
    print(f"| {name} | {cells} | {row['seconds']:.0f} |")


if __name__ == "__main__":
  main()
