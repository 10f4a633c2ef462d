"""Each modality end to end from the demo corpus, read back with array_record and TensorFlow."""

import io
import json
import os

import numpy as np
import pytest
import sentencepiece as spm
from PIL import Image

from impax import demo


@pytest.fixture(scope="module")
def built(corpus, tmp_path_factory, helpers):
  """Every manifest of the small demo corpus, built: {modality: output dir}."""
  root = tmp_path_factory.mktemp("built")
  outputs = {}
  for key, manifest in corpus.items():
    modality, split = key.rsplit("-", 1)
    outputs[modality] = str(root / modality)
    helpers.build(manifest, outputs[modality], split=split, num_shards=2 if split == "train" else 1)
  return outputs


def read_split(output, meta, split):
  """Every record of a split, opened with array_record alone and parsed by TensorFlow."""
  import tensorflow as tf
  from array_record.python.array_record_module import ArrayRecordReader
  examples = []
  for shard in meta["splits"][split]["shards"]:
    reader = ArrayRecordReader(os.path.join(output, shard["path"]))
    assert reader.num_records() == shard["num_records"]
    examples += [tf.train.Example.FromString(r) for r in reader.read_all()]
    reader.close()
  return examples


def values(example, key):
  feature = example.features.feature[key]
  return list(getattr(feature, feature.WhichOneof("kind")).value)


def manifest_lines(path):
  with open(path) as f:
    return [json.loads(line) for line in f]


def test_video_records(built, corpus, helpers):
  meta = helpers.metadata(built["videos"])
  lines = manifest_lines(corpus["videos-train"])
  examples = read_split(built["videos"], meta, "train")
  assert len(examples) == len(lines) == meta["splits"]["train"]["num_examples"]
  assert [values(e, "id")[0].decode() for e in examples] == [l["id"] for l in lines]
  tok = spm.SentencePieceProcessor(model_file=os.path.join(built["videos"], "tokenizer.model"))
  with_audio, silent = 0, []
  for position, (example, line) in enumerate(zip(examples, lines)):
    if "audio/pcm_s16le" not in example.features.feature:
      silent.append(position)
    frames = values(example, "video/frames")
    # 1 s at 5 fps; short side 32, so the 80x64 demo videos come out 40x32.
    assert values(example, "video/num_frames") == [len(frames)] == [5]
    assert values(example, "video/fps") == [5.0]
    height, width = values(example, "video/height")[0], values(example, "video/width")[0]
    assert min(height, width) == 32
    for jpeg in frames:
      image = Image.open(io.BytesIO(jpeg))
      assert image.format == "JPEG" and image.size == (width, height) and image.mode == "RGB"
    assert values(example, "label/name") == [line["label"].encode()]
    assert meta["labels"][values(example, "label/index")[0]] == line["label"]
    assert values(example, "text/string") == [line["caption"].encode()]
    tokens = values(example, "text/tokens")
    assert values(example, "text/lengths") == [len(tokens)]
    assert tok.decode(tokens) == line["caption"]
    assert values(example, "source")[0].decode().endswith(line["video"])
    if "audio/pcm_s16le" in example.features.feature:
      with_audio += 1
      pcm = np.frombuffer(values(example, "audio/pcm_s16le")[0], "<i2")
      assert values(example, "audio/sample_rate") == [16000]
      assert values(example, "audio/num_samples") == [pcm.size]
      assert 15000 < pcm.size < 17500  # the clip's second of sound, resampled to 16 kHz
      assert np.abs(pcm).max() > 1000  # the digit's tone, not silence
  # Some demo videos have no sound track; the rest carry it.
  assert 0 < with_audio < len(examples)
  assert meta["splits"]["train"]["composition"]["video_with_audio"] == with_audio
  # Readers skip the records without sound for tasks that need it: metadata lists
  # them by position in the split, across both shards. Every record has the rest.
  assert meta["splits"]["train"]["lacking"] == {"audio": silent}


def test_video_dataset_metadata(built, helpers):
  meta = helpers.metadata(built["videos"])
  assert meta["name"] == "videos" and meta["spec"] == "jsonl"
  assert meta["labels"] == sorted(meta["labels"]) and set(meta["labels"]) <= set(demo.DIGIT_NAMES)
  assert {t["name"]: t["objective"] for t in meta["tasks"]} == {
      "video_classification": "classification", "video_text": "contrastive",
      "video_audio": "contrastive"}
  assert set(meta["splits"]) == {"train", "test"}
  train = meta["splits"]["train"]
  assert [s["path"] for s in train["shards"]] == [
      "videos-train.array_record-00000-of-00002", "videos-train.array_record-00001-of-00002"]
  for shard in train["shards"]:
    assert shard["num_bytes"] == os.path.getsize(os.path.join(built["videos"], shard["path"]))
  assert train["num_failed"] == 0 and helpers.failures(built["videos"]) == []
  assert train["statistics"]["video/fps"]["mean"] == 5.0
  assert len(train["input_sha256"]) == 64 and len(meta["config_hash"]) == 64
  assert meta["config"]["video_fps"] == 5.0
  for key in ("video/frames", "audio/pcm_s16le", "text/tokens", "label/index"):
    assert meta["features"][key]["dtype"] in ("bytes", "int64", "float")
  assert meta["tokenizer"]["path"] == "tokenizer.model" and meta["tokenizer"]["trained"]
  # A finished build leaves no temporary files.
  assert sorted(os.listdir(built["videos"])) == sorted(
      ["metadata.json", "tokenizer.model", "failures-train.jsonl", "failures-test.jsonl"]
      + [s["path"] for split in meta["splits"].values() for s in split["shards"]])


def test_image_records(built, corpus, helpers):
  meta = helpers.metadata(built["images"])
  lines = manifest_lines(corpus["images-train"])
  examples = read_split(built["images"], meta, "train")
  assert len(examples) == len(lines)
  for example, line in zip(examples, lines):
    image = Image.open(io.BytesIO(values(example, "image/encoded")[0]))
    # PNGs with alpha and grayscale come out RGB JPEGs, resized to a 32 px short side.
    assert image.format == "JPEG" and image.mode == "RGB" and image.size == (32, 32)
    assert values(example, "image/height") == [32] and values(example, "image/width") == [32]
    assert values(example, "text/string") == [line["caption"].encode()]
  assert {t["name"] for t in meta["tasks"]} == {"image_classification", "image_text"}


def test_audio_records(built, corpus, helpers):
  import soundfile
  meta = helpers.metadata(built["audio"])
  lines = manifest_lines(corpus["audio-train"])
  examples = read_split(built["audio"], meta, "train")
  assert len(examples) == len(lines)
  for example, line in zip(examples, lines):
    info = soundfile.info(os.path.join(os.path.dirname(corpus["audio-train"]), line["audio"]))
    pcm = np.frombuffer(values(example, "audio/pcm_s16le")[0], "<i2")
    assert values(example, "audio/sample_rate") == [16000]
    assert abs(pcm.size - info.duration * 16000) <= 2  # WAV/FLAC at 16-44.1 kHz, mono 16 kHz out
    assert "video/frames" not in example.features.feature
    assert values(example, "label/name") == [line["label"].encode()]
  tasks = {t["name"]: t for t in meta["tasks"]}
  assert set(tasks) == {"audio_classification", "audio_text"}
  assert tasks["audio_text"]["prompt"] == "the sound of {label}."


def test_held_out_split_shares_labels_and_tokenizer(built, corpus, helpers):
  meta = helpers.metadata(built["videos"])
  train, test = (read_split(built["videos"], meta, s) for s in ("train", "test"))
  assert len(test) == len(manifest_lines(corpus["videos-test"]))
  tok = spm.SentencePieceProcessor(model_file=os.path.join(built["videos"], "tokenizer.model"))
  for example in test:
    name = values(example, "label/name")[0].decode()
    assert meta["labels"][values(example, "label/index")[0]] == name
    assert tok.decode(values(example, "text/tokens")) == values(example, "text/string")[0].decode()
  assert not {values(e, "id")[0] for e in train} & {values(e, "id")[0] for e in test}


def test_inspect_writes_frames(built, tmp_path, capsys, helpers):
  from impax.cli import main
  assert main(["inspect", built["videos"], "--example", "1", "--frames-to", str(tmp_path)]) == 0
  out = capsys.readouterr().out
  assert "split train: 10 examples" in out and "video-train-00001" in out
  silent = len(helpers.metadata(built["videos"])["splits"]["train"]["lacking"]["audio"])
  assert f"without audio: {silent} examples" in out
  pngs = sorted(os.listdir(tmp_path))
  assert pngs == [f"frame-{i:04d}.png" for i in range(5)]
  assert Image.open(tmp_path / pngs[0]).format == "PNG"


def test_given_tokenizer_and_label_vocabulary(built, corpus, tmp_path, helpers):
  given = os.path.join(built["videos"], "tokenizer.model")
  order = list(reversed(demo.DIGIT_NAMES[1:]))  # "zero" left out on purpose
  (tmp_path / "labels.txt").write_text("\n".join(order) + "\n")
  out = tmp_path / "images"
  helpers.build(corpus["images-train"], out, tokenizer=given, labels_file=str(tmp_path / "labels.txt"))
  meta = helpers.metadata(out)
  assert meta["labels"] == order and meta["tokenizer"]["trained"] is False
  with open(out / "tokenizer.model", "rb") as a, open(given, "rb") as b:
    assert a.read() == b.read()  # the tokenizer used is copied beside the shards
  lines = manifest_lines(corpus["images-train"])
  zeros = [l for l in lines if l["label"] == "zero"]
  assert zeros and meta["splits"]["train"]["num_examples"] == len(lines) - len(zeros)
  failures = helpers.failures(out)
  assert {f["stage"] for f in failures} == {"label"} and len(failures) == len(zeros)
  assert "'zero' is not in the label vocabulary" in failures[0]["error"]
  tok = spm.SentencePieceProcessor(model_file=given)
  for example in read_split(str(out), meta, "train"):
    name = values(example, "label/name")[0].decode()
    assert order[values(example, "label/index")[0]] == name
    assert values(example, "text/tokens") == tok.encode(values(example, "text/string")[0].decode())
