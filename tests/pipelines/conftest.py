"""Shared fixtures: a small demo corpus and a way to build it."""

import glob
import hashlib
import json
import os

import pytest

from impax import demo
from impax.pipelines import build

SMALL = {"video_short_side": 32, "image_short_side": 32, "video_fps": 5.0}


@pytest.fixture(scope="session")
def corpus(tmp_path_factory):
  """A small demo corpus: {manifest name: path}."""
  root = tmp_path_factory.mktemp("corpus")
  return demo.generate(str(root), videos=12, images=10, audio=10, seconds=1.0, seed=1)


def run_build(manifest, output, split="train", workers=1, overwrite=False, spec="jsonl", **settings):
  plan = build.prepare(spec, str(manifest), str(output), split, ({**SMALL, **settings},),
                       overwrite=overwrite)
  return build.run(plan, workers=workers)


def shard_hashes(output) -> dict[str, str]:
  out = {}
  for name in sorted(os.listdir(output)):
    if ".array_record-" in name:
      with open(os.path.join(output, name), "rb") as f:
        out[name] = hashlib.sha256(f.read()).hexdigest()
  return out


def shards_published(output) -> list[str]:
  """The shards under their final names (not a temporary .partial)."""
  return [p for p in glob.glob(os.path.join(output, "*.array_record-*-of-*")) if "partial" not in p]


def nothing_half_written(output):
  """After a kill: no metadata, and every shard under its final name is complete."""
  from array_record.python.array_record_module import ArrayRecordReader
  assert not os.path.exists(os.path.join(output, "metadata.json"))
  for path in shards_published(output):
    shard = int(path.rsplit("-of-", 1)[0][-5:])
    with open(os.path.join(output, ".impax-tmp", "train", "shards", f"{shard:05d}.json")) as f:
      sidecar = json.load(f)
    assert ArrayRecordReader(path).num_records() == sidecar["num_records"]


def read_failures(output, split="train") -> list[dict]:
  with open(os.path.join(output, f"failures-{split}.jsonl")) as f:
    return [json.loads(line) for line in f]


def read_metadata(output) -> dict:
  with open(os.path.join(output, "metadata.json")) as f:
    return json.load(f)


@pytest.fixture(scope="session")
def helpers():
  class H:
    build = staticmethod(run_build)
    hashes = staticmethod(shard_hashes)
    failures = staticmethod(read_failures)
    metadata = staticmethod(read_metadata)
    nothing_half_written = staticmethod(nothing_half_written)
  return H
