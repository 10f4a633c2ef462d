"""`make demo` / `impax demo DIR`: the main job end to end on the demo corpus.

Generates the demo corpus (moving digits with sound, digit images, digit
sounds), then builds each of its manifests, train and held-out test, into a
prepared dataset, and prints what came out.
"""

import os
import time

from impax.datasets import demo as demo_corpus
from impax.pipelines import build

# The demo's media are small (64 px, 10 fps); storing them larger is waste.
SETTINGS = {"video_short_side": 64, "image_short_side": 64, "video_fps": 10.0}


def build_all(root: str, workers: int | None = None, log=print) -> dict[str, dict]:
  """Generates the corpus under root/corpus and builds root/data/<modality>; returns summaries."""
  corpus = os.path.join(root, "corpus")
  start = time.monotonic()
  manifests = demo_corpus.generate(corpus)
  log(f"demo corpus: {corpus} ({time.monotonic() - start:.1f} s)")
  summaries = {}
  for key, manifest in manifests.items():
    modality, split = key.rsplit("-", 1)
    plan, facts = build.prepare("jsonl", manifest, os.path.join(root, "data", modality), split,
                                (SETTINGS,))
    summaries[key] = build.run(plan, facts, workers=workers)
  return summaries


def main(root: str, workers: int | None = None) -> int:
  from impax.cli import print_summary
  summaries = build_all(root, workers)
  for summary in summaries.values():
    print_summary(summary)
  print(f"prepared datasets: {os.path.join(root, 'data')} (inspect one with "
        f"`impax inspect {os.path.join(root, 'data', 'videos')} --example 0`)")
  return 0
