"""The build half of `impax demo` (impax/demo.py): the demo corpus into prepared datasets.

Generates the demo corpus (moving digits with sound, digit images, digit
sounds), then builds each of its manifests, train and held-out test, into a
prepared dataset.
"""

import json
import os
import time

from impax.datasets import demo as demo_corpus
from impax.datasets import registry
from impax.pipelines import build, storage, text
from impax.pipelines import config as config_lib

# The demo's media are small (64 px, 10 fps); storing them larger is waste.
SETTINGS = {"video_short_side": 64, "image_short_side": 64, "video_fps": 10.0}
# Examples per modality, train and test together. Images are cheap to make and
# teach the shared vision tower and the text tower the digits' names.
SIZES = {"videos": 400, "images": 1000, "audio": 200}


def shared_tokenizer(manifests: dict[str, str], path: str) -> str:
  """Trains one tokenizer on the captions of every train manifest, writes it to path.

  The model has one text embedding table, so every dataset a training run
  reads text from must use the same token ids: each dataset training its own
  tokenizer would give "seven" one id in the videos and another in the
  images, and the trainer refuses such datasets. Built from the train splits
  only, with the digits' names and the registry's prompts, as a build's own
  tokenizer is.
  """
  captions: dict[str, int] = {}
  for key, manifest in sorted(manifests.items()):
    if not key.endswith("-train"):
      continue
    with open(manifest) as f:
      for line in f:
        caption = json.loads(line).get("caption")
        if caption:
          caption = text.normalize(caption)
          captions[caption] = captions.get(caption, 0) + 1
  texts = text.corpus_texts(sorted(captions.items()), demo_corpus.DIGIT_NAMES,
                            sorted(registry.PROMPTS.values()))
  vocab_size = config_lib.BuildConfig().vocab_size
  storage.write_atomic(path, text.train_tokenizer(texts, vocab_size, "bpe"))
  return path


def settings(corpus: str) -> dict:
  """The build options of the demo datasets whose corpus (and shared tokenizer) is in corpus."""
  return {**SETTINGS, "tokenizer": os.path.join(corpus, "tokenizer.model")}


def build_all(root: str, workers: int | None = None, log=print) -> dict[str, dict]:
  """Generates the corpus under root/corpus and builds root/data/<modality>; returns summaries."""
  corpus = os.path.join(root, "corpus")
  start = time.monotonic()
  manifests = demo_corpus.generate(corpus, **SIZES)
  shared_tokenizer(manifests, settings(corpus)["tokenizer"])
  log(f"demo corpus: {corpus} ({time.monotonic() - start:.1f} s)")
  summaries = {}
  for key, manifest in manifests.items():
    modality, split = key.rsplit("-", 1)
    plan, facts = build.prepare("jsonl", manifest, os.path.join(root, "data", modality), split,
                                (settings(corpus),))
    summaries[key] = build.run(plan, facts, workers=workers)
  return summaries
