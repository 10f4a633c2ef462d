"""The demo's figures over seeds: the checkpoint chosen on validation, reported once on test.

    .venv/bin/python benchmarks/demo_seeds.py --data demo-output/data --root /tmp/seeds [--seeds 0 1 2]
        [--set KEY=VALUE ...]

Trains train/configs/demo.py once per seed in ROOT/seedS (as
`impax train train/configs/demo.py:DATA --workdir ROOT/seedS --set seed=S`; a
finished run already there is read, not trained again). The demo config
evaluates on validation every 500 steps, keeps the best checkpoint by zero-shot
video top-1 there, and evaluates that checkpoint once on test. Prints a markdown
row per seed and the mean, standard deviation and minimum of each figure: the
test figures are reported as they come out, none is chosen on them. --set
changes the config for every seed, as `impax train --set` does (e.g. steps=2).
"""

import argparse
import json
import os
import statistics

from impax.demo import DEMO_CONFIG

# (column, task, figure in the final eval.json on test)
FIGURES = (("video zero-shot, test (4x3 views)", "video_text", "zero_shot_top1"),
           ("the same, single view", "video_text", "zero_shot_top1/single_view"),
           ("image zero-shot, test", "image_text", "zero_shot_top1"),
           ("audio classification, test", "audio_classification", "accuracy"),
           ("probe: videos", "video_text", "linear_probe_top1/video"),
           ("probe: images", "image_text", "linear_probe_top1/image"),
           ("probe: sounds", "audio_classification", "linear_probe_top1/spectrogram"))


def run(data: str, workdir: str, seed: int, overrides: list[str]) -> dict:
  path = os.path.join(workdir, "summary.json")
  if os.path.exists(path):
    with open(path) as f:
      summary = json.load(f)
    if summary.get("status") == "finished" and "eval" in summary:
      return summary
  from impax.train import config as config_lib, trainer
  config = config_lib.load(f"{DEMO_CONFIG}:{data}", [f"seed={seed}", *overrides])
  return trainer.train(config, workdir)


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--data", required=True, help="the demo datasets (impax demo DIR: DIR/data)")
  parser.add_argument("--root", required=True, help="one workdir per seed goes here")
  parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
  parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                      help="a config field for every seed, as impax train --set")
  args = parser.parse_args()
  rows = []
  for seed in args.seeds:
    summary = run(args.data, os.path.join(args.root, f"seed{seed}"), seed, args.set)
    best = summary["best"]
    rows.append({"seed": seed, "best step": best["step"], "validation": best["value"],
                 **{column: summary["eval"][task][key] for column, task, key in FIGURES}})
  columns = ["best step", "validation", *(c for c, _, _ in FIGURES)]
  print(json.dumps(rows, indent=2))
  print("\n| seed | " + " | ".join(columns) + " |\n" + "|---" * (len(columns) + 1) + "|")
  for r in rows:
    print(f"| {r['seed']} | {r['best step']} | "
          + " | ".join(f"{r[c]:.1%}" for c in columns[1:]) + " |")
  cells = []
  for c in columns[1:]:
    values = [r[c] for r in rows]
    spread = statistics.stdev(values) if len(values) > 1 else 0.0
    cells.append(f"{statistics.mean(values):.1%} ± {spread:.1%} ({min(values):.1%})")
  print("| **mean ± std (min)** | | " + " | ".join(cells) + " |")


if __name__ == "__main__":
  main()
