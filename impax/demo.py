"""`make demo` / `impax demo DIR`: the main job end to end on the demo corpus.

1. Generates the demo corpus and builds it into prepared datasets (pipelines/demo.py).
2. Trains the tiny MoE preset with AGD on image-text, video-text, video-audio and
   audio classification (train/configs/demo.py) for a few minutes on a CPU.
3. Evaluates on the held-out splits and prints zero-shot video classification.

Everything lands under DIR: corpus/, data/ (prepared datasets), run/ (checkpoints,
metrics.jsonl, tensorboard/, plots/, eval.json).
"""

import os
import time

import impax.train

DEMO_CONFIG = os.path.join(os.path.dirname(impax.train.__file__), "configs", "demo.py")
ZERO_SHOT_GOAL = 0.6


def main(root: str, workers: int | None = None, steps: int | None = None) -> int:
  from impax.cli import print_summary
  from impax.pipelines import demo as demo_pipelines
  from impax.train import config as config_lib, trainer

  start = time.monotonic()
  for summary in demo_pipelines.build_all(root, workers).values():
    print_summary(summary)
  data, workdir = os.path.join(root, "data"), os.path.join(root, "run")
  config = config_lib.load(f"{DEMO_CONFIG}:{data}", [f"steps={steps}"] if steps else [])
  print(f"\ntraining {config.model} with AGD on {', '.join(t.name for t in config.tasks)} "
        f"for {config.steps} steps (config: {DEMO_CONFIG})")
  summary = trainer.train(config, workdir)
  video = summary.get("eval", {}).get("video_text", {})
  top1 = video.get("zero_shot_top1")
  print(f"\nprepared datasets: {data}\nrun: {workdir} (metrics.jsonl, tensorboard/, plots/, "
        f"eval.json)\ntotal time: {time.monotonic() - start:.0f} s")
  if top1 is None:
    print("no zero-shot result: the run did not finish")
    return 1
  print(f"zero-shot video classification of {video['examples']} held-out videos: "
        f"top-1 {top1:.1%} (chance {video['zero_shot_chance']:.0%}, goal {ZERO_SHOT_GOAL:.0%})")
  return 0
