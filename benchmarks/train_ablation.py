"""IMP's claims at small scale: AGD vs mixed batches, MoE vs dense, several resolutions vs one.

    .venv/bin/python benchmarks/train_ablation.py --data demo-output/data [--steps 1000] [--seeds 0 1 2]
        [--set KEY=VALUE ...]

Trains the demo config (train/configs/demo.py) in these variants, each with
every seed, at equal steps:
  agd             the demo config as it is (tiny MoE, AGD, several buckets per task);
  mixed           every task in every step, losses summed (the baseline of AGD),
                  at equal steps: as many task updates per task as AGD has steps;
  mixed_equal_compute  the same with steps / tasks steps: AGD's number of task
                  updates in all, about its compute;
  dense           the tiny preset without experts: the same active parameters per token;
  one_resolution  each task only at its first bucket.
Every variant is evaluated on the **validation** split (the test split is
not read: recipes are chosen on validation), from its last checkpoint, at
every resolution bucket of the demo's tasks, not only the first: IMP's
claim about training over several resolutions is about robustness across
test resolutions. Reports per variant the mean and standard deviation over
seeds of zero-shot video classification (top-1, the config's views), video-to-text
R@1 and audio classification accuracy at each bucket, with the patch tokens
the run trained on (its compute, from the plan) and the training loop's time.
Prints JSON and a markdown table per claim. Whatever comes out is the result.
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
SPLIT = "validation"
# Which variants each claim compares, and which evaluation buckets its table shows
# (None: every bucket of the figure's task).
CLAIMS = (("AGD against mixed batches at equal compute", ("agd", "mixed_equal_compute", "mixed")),
          ("MoE against dense at the same active parameters", ("agd", "dense")),
          ("several resolutions against one", ("agd", "one_resolution")))


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


def evaluate_every_bucket(base, config, workdir: str) -> dict:
  """{label: {bucket text: figure}}: the run's last checkpoint on SPLIT at each bucket of
  the base (demo) config's task, whatever buckets the variant trained on."""
  from impax.train import evaluate, inputs
  out = {label: {} for label, _, _ in METRICS}
  own = {t.name: t for t in base.tasks}
  for task_name in dict.fromkeys(task for _, task, _ in METRICS):
    for bucket in own[task_name].buckets:
      # Every task stays (the checkpoint holds their heads); only this one is evaluated.
      tasks = tuple(dataclasses.replace(t, eval_bucket=bucket, eval_split=SPLIT)
                    if t.name == task_name else dataclasses.replace(t, eval_split=None)
                    for t in config.tasks)
      result = evaluate.evaluate_checkpoint(dataclasses.replace(config, tasks=tasks), workdir,
                                            log=lambda *_: None)
      for label, task, key in METRICS:
        if task == task_name:
          out[label][inputs.bucket_text(bucket)] = result["results"][task_name][key]
  return out


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--data", required=True)
  parser.add_argument("--steps", type=int, default=1000)
  parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
  parser.add_argument("--variants", nargs="+",
                      default=["agd", "mixed", "mixed_equal_compute", "dense", "one_resolution"])
  parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                      help="a config field, as impax train --set")
  args = parser.parse_args()
  from absl import flags
  flags.FLAGS.mark_as_parsed()
  base = config_lib.load(f"{DEMO_CONFIG}:{args.data}", args.set)
  # The variants at a fixed number of steps, evaluated once at the end on validation.
  base = dataclasses.replace(base, steps=args.steps, checkpoint_every=10**9, plots=False,
                             log_every=100, eval_every=0, keep_best="", eval_at_end=False,
                             linear_probe=False)
  root = tempfile.mkdtemp(prefix="impax-ablation-")
  # The seeds of a variant compile the same programs: XLA's persistent cache
  # compiles each once (the environment's, JAX_COMPILATION_CACHE_DIR, if one is set).
  # Compile time is not part of the comparison.
  import jax
  if not os.environ.get("JAX_COMPILATION_CACHE_DIR"):
    jax.config.update("jax_compilation_cache_dir", os.path.join(root, "xla-cache"))
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
  runs = {}
  for name in args.variants:
    for seed in args.seeds:
      config = dataclasses.replace(variant(base, name), seed=seed)
      workdir = os.path.join(root, f"{name}-{seed}")
      summary = trainer.train(config, workdir, log=lambda *_: None)
      tokens = summary["plan"]["tokens"]  # patch and text tokens over the run
      runs.setdefault(name, []).append({
          "seed": seed, "seconds": summary["loop_seconds"], "tokens": tokens,
          "figures": evaluate_every_bucket(base, config, workdir)})
      print(name, json.dumps(runs[name][-1]), flush=True)
  print(json.dumps({"steps": args.steps, "seeds": args.seeds, "split": SPLIT, "runs": runs},
                   indent=2))
  for claim, names in CLAIMS:
    names = [n for n in names if n in runs]
    if len(names) < 2:
      continue
    buckets = {label: list(runs[names[0]][0]["figures"][label]) for label, _, _ in METRICS}
    columns = [(label, b) for label, _, _ in METRICS for b in buckets[label]]
    print(f"\n**{claim}** ({args.steps} steps, seeds {args.seeds}, {SPLIT} split)\n")
    print("| variant | " + " | ".join(f"{label} @ {b}" for label, b in columns)
          + " | patch tokens | train s |")
    print("|---" * (len(columns) + 3) + "|")
    for name in names:
      cells = []
      for label, b in columns:
        values = [r["figures"][label][b] for r in runs[name]]
        spread = statistics.stdev(values) if len(values) > 1 else 0.0
        cells.append(f"{statistics.mean(values):.3f} ± {spread:.3f}")
      tokens = statistics.mean(r["tokens"] for r in runs[name])
      seconds = ", ".join(f"{r['seconds']:.0f}" for r in runs[name])
      print(f"| {name} | " + " | ".join(cells) + f" | {tokens / 1e6:.1f} M | {seconds} |")


if __name__ == "__main__":
  main()
