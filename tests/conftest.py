"""Fixtures shared across test folders: a small demo corpus built into prepared datasets."""

import pytest

from impax import demo
from impax.pipelines import build

SETTINGS = {"video_short_side": 48, "image_short_side": 48, "video_fps": 8.0, "num_shards": 2}


@pytest.fixture(scope="session")
def demo_data(tmp_path_factory) -> dict[str, str]:
  """{"videos", "images", "audio"}: prepared datasets with a train and a test split."""
  root = tmp_path_factory.mktemp("demo-data")
  manifests = demo.generate(str(root / "raw"), videos=40, images=30, audio=20, seconds=1.5,
                            size=48, seed=3)
  # One tokenizer for all, as the demo's: the trainer refuses text tasks that differ.
  tokenizer = demo.shared_tokenizer(manifests, str(root / "raw" / "tokenizer.model"))
  out = {}
  for key, manifest in sorted(manifests.items()):
    modality, split = key.rsplit("-", 1)
    plan = build.prepare("jsonl", manifest, str(root / modality), split,
                         ({**SETTINGS, "tokenizer": tokenizer},))
    build.run(plan, workers=2)
    out[modality] = str(root / modality)
  return out
