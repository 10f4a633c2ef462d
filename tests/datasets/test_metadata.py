"""metadata.json as types: the one writer and the one reader agree, and old files still load."""

import dataclasses
import json
import os

import pytest

from impax.datasets import metadata
from impax.datasets.build_settings import BuildConfig

# A metadata.json that impax wrote before metadata had types (the demo's audio
# dataset, trimmed to one split): its tasks still carry the unread keys
# label_names and tokenizer.
OLD = os.path.join(os.path.dirname(__file__), "data", "metadata-before-types.json")


def old_json() -> dict:
  with open(OLD) as f:
    return json.load(f)


def test_a_file_written_before_the_types_loads():
  meta = metadata.loads(open(OLD, "rb").read(), where=OLD)
  train = meta.split("train")
  assert train.num_examples == 160 and train.shards[0].num_records == 160
  assert train.composition.audio == 160 and train.composition.has("audio")
  assert not train.composition.has("video") and train.lacking == {}
  assert meta.labels[:2] == ("eight", "five") and meta.tokenizer.vocab_size == 339
  assert [(t.name, t.modalities, t.prompt) for t in meta.tasks] == [
      ("audio_classification", ("audio",), None),
      ("audio_text", ("audio", "text"), "the sound of {label}.")]


def test_what_is_written_reads_back_the_same():
  meta = metadata.loads(open(OLD, "rb").read())
  again = metadata.loads(metadata.dumps(meta))
  assert again == meta
  written = json.loads(metadata.dumps(meta))
  # The layout is the old one, less the task keys nothing read, and with the build
  # settings added since at their defaults (the config reads back as a BuildConfig).
  expected = old_json()
  for task in expected["tasks"]:
    del task["label_names"], task["tokenizer"]
  expected["config"] = {**BuildConfig().stored(), **expected["config"]}
  assert written == expected


def test_the_build_config_reads_back_typed():
  meta = metadata.loads(open(OLD, "rb").read())
  assert isinstance(meta.config, BuildConfig)
  assert {k: getattr(meta.config, k) for k in old_json()["config"]} == old_json()["config"]
  assert meta.config.array_record_options() == meta.array_record_options


def test_a_split_without_the_lacking_list_reads_as_none():
  obj = old_json()
  del obj["splits"]["train"]["lacking"]
  meta = metadata.from_json(obj)
  assert meta.split("train").lacking is None
  assert "lacking" not in json.loads(metadata.dumps(meta))["splits"]["train"]


@pytest.mark.parametrize("path, field", [
    (("splits", "train", "shards"), "splits.train.shards"),
    (("tokenizer", "vocab_size"), "tokenizer.vocab_size"),
    (("config_hash",), "config_hash"),
])
def test_a_missing_field_is_refused_by_name_with_what_to_do(path, field):
  obj = old_json()
  parent = obj
  for key in path[:-1]:
    parent = parent[key]
  del parent[path[-1]]
  with pytest.raises(metadata.MetadataError, match=rf"out/metadata.json: field '{field}' is "
                                                  r"missing.*rebuild the dataset"):
    metadata.from_json(obj, where="out/metadata.json")


def test_not_json_is_refused_with_what_to_do():
  with pytest.raises(metadata.MetadataError, match="x/metadata.json is not JSON.*impax build"):
    metadata.loads(b"{not json", where="x/metadata.json")


def test_compositions_add_and_answer_for_a_sound_track():
  a = metadata.Composition(examples=2, video=2, video_with_audio=1)
  b = metadata.Composition(examples=1, audio=1)
  total = a + b
  assert dataclasses.asdict(total)["examples"] == 3 and total.audio == 1
  assert a.has("audio")  # a video's sound track is audio
  assert not metadata.Composition(video=1).has("audio")
