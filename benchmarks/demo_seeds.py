"""The demo's figures over seeds: the checkpoint chosen on validation, reported once on test.

    .venv/bin/python benchmarks/demo_seeds.py --data demo-output/data --root /tmp/seeds [--seeds 0 1 2]
        [--set KEY=VALUE ...] [--build-videos N]

Trains train/configs/demo.py once per seed in ROOT/seedS (as
`impax train train/configs/demo.py:DATA --workdir ROOT/seedS --set seed=S`; a
finished run already there is read, not trained again). The demo config
evaluates on validation every 500 steps, keeps the best checkpoint by zero-shot
video top-1 there, and evaluates that checkpoint once on test. Prints a markdown
row per seed and the mean, standard deviation and minimum of each figure: the
test figures are reported as they come out, none is chosen on them. --set
changes the config for every seed, as `impax train --set` does (e.g. steps=2).
--build-videos N: where DATA holds no datasets yet, the demo's corpus with N videos (all
splits; the demo's is 480, 320 of them train) is generated in DATA/../corpus and built into
DATA first, as `impax demo` builds it (impax.demo.build_all).

It also shows what each seed's video embeddings encode (the diagnostic behind the demo's
recipe, benchmarks/README.md): a logistic regression (C 1, on L2-normalized embeddings of the
best checkpoint, the centre view, the run's own cache) fitted on the train videos and scored on
the validation videos, for the digit, the clip's colour and its motion (the corpus manifests
name both; --corpus, default DATA/../corpus). Chance: 10%, 12.5% and about 25%.
"""

import argparse
import glob
import json
import os
import statistics

import numpy as np

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


ATTRIBUTES = ("digit", "colour", "motion")


def encoded(workdir: str, corpus: str, step: int) -> dict[str, float]:
  """{attribute: validation accuracy of a linear probe} of the video_text task's embeddings."""
  from sklearn.linear_model import LogisticRegression
  arrays = {}
  for split in ("train", "validation"):
    found = glob.glob(os.path.join(workdir, "embeddings", f"step-{step}",
                                   f"video_text-video-{split}-*.npz"))
    if len(found) != 1:
      raise SystemExit(f"{workdir}: no cached video embeddings of {split} at step {step}")
    with np.load(found[0]) as cached:
      x, labels = cached["embeddings"], cached["labels"]
    with open(os.path.join(corpus, f"videos-{split}.jsonl")) as f:
      records = [json.loads(line) for line in f]
    # The single-shard demo splits hold the manifest's records in its order: check it.
    names = [r["label"] for r in records]
    if len(names) != len(labels) or len(set(zip(names, labels.tolist()))) != len(set(names)):
      raise SystemExit(f"{workdir}: the {split} embeddings are not in {corpus}'s order")
    x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-6)
    motion = [r["motion"].replace("moving ", "") for r in records]
    arrays[split] = (x, {"digit": names, "colour": [r["colour"] for r in records],
                         "motion": motion})
  (train_x, train_y), (val_x, val_y) = arrays["train"], arrays["validation"]
  return {a: float(LogisticRegression(C=1.0, max_iter=5000).fit(train_x, train_y[a])
                   .score(val_x, val_y[a])) for a in ATTRIBUTES}


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--data", required=True, help="the demo datasets (impax demo DIR: DIR/data)")
  parser.add_argument("--root", required=True, help="one workdir per seed goes here")
  parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
  parser.add_argument("--corpus", help="the demo corpus's manifests (default: DATA/../corpus)")
  parser.add_argument("--build-videos", type=int, metavar="N",
                      help="build the demo's datasets with N videos into DATA first, if absent")
  parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                      help="a config field for every seed, as impax train --set")
  args = parser.parse_args()
  root = os.path.dirname(os.path.abspath(args.data))
  if args.build_videos and not os.path.exists(os.path.join(args.data, "videos", "metadata.json")):
    if os.path.basename(os.path.abspath(args.data)) != "data":
      parser.error("--build-videos builds into ROOT/data: give --data a folder named data")
    from impax import demo
    demo.build_all(root, videos=args.build_videos)
  corpus = args.corpus or os.path.join(root, "corpus")
  rows = []
  for seed in args.seeds:
    workdir = os.path.join(args.root, f"seed{seed}")
    summary = run(args.data, workdir, seed, args.set)
    best = summary["best"]
    probes = encoded(workdir, corpus, best["step"])
    rows.append({"seed": seed, "best step": best["step"], "validation": best["value"],
                 **{column: summary["eval"][task][key] for column, task, key in FIGURES},
                 **{f"video embeddings encode: {a}, validation": v for a, v in probes.items()}})
  columns = ["best step", "validation", *(c for c, _, _ in FIGURES),
             *(f"video embeddings encode: {a}, validation" for a in ATTRIBUTES)]
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
