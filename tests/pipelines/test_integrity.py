"""The build records each shard's sha256 and count, and "up to date" means the shards are intact:
a deleted, truncated or altered shard makes the next build rebuild its split, to the same bytes."""

import dataclasses
import hashlib
import json
import logging
import os

import apache_beam as beam
import pytest

from impax.datasets import prepared
from impax.pipelines import build, graph, plan as plan_lib
# The folder conftest.py's SMALL, with three shards to damage three ways.
SETTINGS = {"video_short_side": 32, "image_short_side": 32, "video_fps": 5.0, "num_shards": 3}


def sha256(path) -> str:
  with open(path, "rb") as f:
    return hashlib.sha256(f.read()).hexdigest()


@pytest.fixture(scope="module")
def images(corpus, tmp_path_factory, helpers):
  out = tmp_path_factory.mktemp("integrity") / "images"
  helpers.build(corpus["images-train"], out, **SETTINGS)
  return out


def test_metadata_records_each_shards_sha256_size_and_count(images, helpers):
  shards = helpers.metadata(images)["splits"]["train"]["shards"]
  assert len(shards) == 3
  for shard in shards:
    path = images / shard["path"]
    assert shard["sha256"] == sha256(path)
    assert shard["num_bytes"] == os.path.getsize(path)
    assert shard["num_records"] == prepared.count_records(str(path))
  assert sum(s["num_records"] for s in shards) == 8


def test_a_damaged_split_is_rebuilt_to_the_same_bytes(images, corpus, helpers, caplog):
  before, meta_before = helpers.hashes(images), helpers.metadata(images)
  plan = build.prepare("jsonl", corpus["images-train"], str(images), "train", (SETTINGS,))
  assert plan.up_to_date  # intact: nothing to do
  names = sorted(before)
  os.remove(images / names[0])
  with open(images / names[1], "r+b") as f:
    f.truncate(os.path.getsize(images / names[1]) - 1)
  with open(images / names[2], "r+b") as f:  # same size, one bit changed
    f.seek(100)
    byte = f.read(1)
    f.seek(100)
    f.write(bytes([byte[0] ^ 1]))

  with caplog.at_level(logging.WARNING, logger="impax.pipelines.plan"):
    plan = build.prepare("jsonl", corpus["images-train"], str(images), "train", (SETTINGS,))
  assert not plan.up_to_date and not plan.finished
  warning = caplog.text
  assert "split 'train'" in warning and "rebuilding it" in warning
  assert f"{names[0]}: missing" in warning
  size = meta_before["splits"]["train"]["shards"][1]["num_bytes"]
  assert f"{names[1]}: size {size - 1} bytes, metadata.json says {size}" in warning
  assert f"{names[2]}: checksum mismatch" in warning

  summary = build.run(plan, workers=2)
  assert "skipped" not in summary
  assert helpers.hashes(images) == before
  after = helpers.metadata(images)["splits"]["train"]
  assert after["shards"] == meta_before["splits"]["train"]["shards"]
  assert build.prepare("jsonl", corpus["images-train"], str(images), "train",
                       (SETTINGS,)).up_to_date


def test_a_resumed_build_records_every_shards_sha256(corpus, tmp_path, helpers):
  out = tmp_path / "images"
  manifest = corpus["images-train"]
  # A build killed after its shards were published, before metadata.json: the shards'
  # sidecars stay, and the next run takes each shard's facts from its sidecar.
  plan = build.prepare("jsonl", manifest, str(out), "train", (SETTINGS,))
  plan_lib.mark_started(plan)
  with beam.Pipeline(options=build.pipeline_options([], workers=2)) as p:
    graph.build_pipeline(p, plan)
  assert not (out / "metadata.json").exists()
  names = sorted(n for n in os.listdir(out) if ".array_record-" in n)
  # One sidecar as an impax that did not record the checksum wrote it.
  sidecar = plan.sidecar(0)
  with open(sidecar) as f:
    info = graph.ShardInfo.from_json(json.load(f))
  assert info.sha256 == sha256(out / names[0])
  with open(sidecar, "w") as f:
    json.dump({k: v for k, v in dataclasses.replace(info, sha256=None).to_json().items()
               if k != "sha256"}, f)

  plan = build.prepare("jsonl", manifest, str(out), "train", (SETTINGS,))
  assert plan.resumed_shards == 3
  build.run(plan, workers=2)
  shards = helpers.metadata(out)["splits"]["train"]["shards"]
  assert [s["path"] for s in shards] == names
  assert [s["sha256"] for s in shards] == [sha256(out / s["path"]) for s in shards]
