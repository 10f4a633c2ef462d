"""The build half of `impax demo` (impax/demo.py): the demo corpus into prepared datasets.

Generates the demo corpus (moving digits with sound, digit images, digit
sounds), then builds each of its manifests, train and held-out test, into a
prepared dataset.
"""

import os
import time

from impax.datasets import demo as demo_corpus
from impax.pipelines import build

# The demo's media are small (64 px, 10 fps); storing them larger is waste.
SETTINGS = {"video_short_side": 64, "image_short_side": 64, "video_fps": 10.0}
# Examples per modality, train and test together. Images are cheap to make and
# teach the shared vision tower and the text tower the digits' names.
SIZES = {"videos": 400, "images": 1000, "audio": 200}


def build_all(root: str, workers: int | None = None, log=print) -> dict[str, dict]:
  """Generates the corpus under root/corpus and builds root/data/<modality>; returns summaries."""
  corpus = os.path.join(root, "corpus")
  start = time.monotonic()
  manifests = demo_corpus.generate(corpus, **SIZES)
  log(f"demo corpus: {corpus} ({time.monotonic() - start:.1f} s)")
  summaries = {}
  for key, manifest in manifests.items():
    modality, split = key.rsplit("-", 1)
    plan, facts = build.prepare("jsonl", manifest, os.path.join(root, "data", modality), split,
                                (SETTINGS,))
    summaries[key] = build.run(plan, facts, workers=workers)
  return summaries
