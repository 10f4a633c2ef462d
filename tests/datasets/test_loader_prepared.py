"""Opening a prepared dataset: a broken one fails with an error naming the file."""

import json
import os
import shutil

import pytest

from impax import demo
from impax.datasets import prepared
from impax.pipelines import build


@pytest.fixture(scope="module")
def built(tmp_path_factory):
  root = tmp_path_factory.mktemp("prepared")
  manifests = demo.generate(str(root / "raw"), videos=6, images=4, audio=4, seconds=1.0, seed=1)
  out = root / "videos"
  plan = build.prepare("jsonl", manifests["videos-train"], str(out), "train",
                       ({"video_short_side": 32, "image_short_side": 32,
                         "video_fps": 5.0, "num_shards": 2},))
  build.run(plan, workers=1)
  return out


def copy(built, tmp_path):
  target = tmp_path / "copy"
  shutil.copytree(built, target)
  return target


def rewrite_metadata(path, change):
  meta_path = path / "metadata.json"
  meta = json.loads(meta_path.read_text())
  change(meta)
  meta_path.write_text(json.dumps(meta))


def test_opens_a_valid_dataset(built):
  dataset = prepared.open_dataset(str(built))
  paths = dataset.shard_paths("train")
  assert len(paths) == 2 and all(os.path.exists(p) for p in paths)
  assert dataset.num_records("train") == sum(prepared.count_records(p) for p in paths) > 0


def test_missing_shard_names_the_file(built, tmp_path):
  target = copy(built, tmp_path)
  gone = prepared.open_dataset(str(target)).shard_paths("train")[1]
  os.remove(gone)
  with pytest.raises(prepared.DatasetError, match="missing") as error:
    prepared.open_dataset(str(target))
  assert os.path.basename(gone) in str(error.value)


def test_record_count_mismatch_names_the_file(built, tmp_path):
  target = copy(built, tmp_path)
  rewrite_metadata(target, lambda m: m["splits"]["train"]["shards"][0].update(num_records=999))
  with pytest.raises(prepared.DatasetError, match="999") as error:
    prepared.open_dataset(str(target))
  assert "array_record" in str(error.value)


def test_unknown_feature_key_is_an_error(built, tmp_path):
  target = copy(built, tmp_path)
  rewrite_metadata(target, lambda m: m["features"].update({"depth/encoded": {"dtype": "bytes"}}))
  with pytest.raises(prepared.DatasetError, match="depth/encoded"):
    prepared.open_dataset(str(target))


def test_not_a_dataset_and_unknown_split(built, tmp_path):
  with pytest.raises(prepared.DatasetError, match="metadata.json"):
    prepared.open_dataset(str(tmp_path))
  with pytest.raises(prepared.DatasetError, match="no split 'validation'"):
    prepared.open_dataset(str(built)).shard_paths("validation")
