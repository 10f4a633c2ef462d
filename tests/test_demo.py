"""The demo's corpus (impax/demo.py) and the one tokenizer its datasets share.

The corpus: complete manifests, real encodings, disjoint validation and test splits. Its
datasets share one tokenizer, so its text tasks can train one model together. The demo's
flows and printout: tests/flows/test_demo.py.
"""

import hashlib
import json
import os
import re
import subprocess

import pytest
import sentencepiece as spm

from impax import demo
from impax.datasets import prepared
from impax.pipelines.tools import ffmpeg_binary
from impax.train import config as config_lib

SIZES = {"videos": 14, "images": 14, "audio": 14}  # 10 train, 2 validation, 2 test
SECONDS = 1.0


def _generate(out_dir):
  return demo.generate(str(out_dir), **SIZES, held_out=demo.HELD_OUT, seconds=SECONDS, seed=3)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
  out_dir = tmp_path_factory.mktemp("demo")
  return out_dir, _generate(out_dir)


def _read(manifest):
  with open(manifest) as f:
    return [json.loads(line) for line in f]


def _probe(path):
  """(stream lines from ffmpeg's log, decoded frame count, width, height)."""
  result = subprocess.run(
      [ffmpeg_binary(), "-hide_banner", "-i", str(path), "-map", "0:v:0",
       "-f", "rawvideo", "-pix_fmt", "rgb24", "pipe:1"],
      capture_output=True, timeout=60, check=True)
  log = result.stderr.decode()
  # Only the input's streams, not the rawvideo output's.
  streams = re.findall(r"Stream #0:\d+.*?: (Video|Audio): (.*)",
                       log.split("Output #0")[0])
  width, height = map(int, re.search(r", (\d+)x(\d+)", streams[0][1]).groups())
  return streams, len(result.stdout) // (width * height * 3), width, height


def test_manifests_list_existing_media_with_digit_labels(corpus):
  out_dir, manifests = corpus
  # every split of every modality, train first: a build of train fixes the vocabularies
  assert list(manifests) == [f"{folder}-{split}" for folder in SIZES
                             for split in ("train", "validation", "test")]
  for name, manifest in manifests.items():
    folder, split = name.split("-")
    records = _read(manifest)
    assert len(records) == {"train": 10, "validation": 2, "test": 2}[split]
    assert len({r["id"] for r in records}) == len(records)
    for record in records:
      media = record[{"videos": "video", "images": "image",
                      "audio": "audio"}[folder]]
      assert not os.path.isabs(media)
      assert os.path.isfile(os.path.join(os.path.dirname(manifest), media))
      assert record["label"] in demo.DIGIT_NAMES
      if folder != "audio":
        assert record["label"] in record["caption"]
    # Classes are cycled, so a split of 10 covers every digit once.
    if split == "train":
      assert sorted(r["label"] for r in records) == sorted(demo.DIGIT_NAMES)


def test_manifests_name_the_colour_and_motion_rendered(corpus):
  """benchmarks/demo_seeds.py probes a model's embeddings for these fields: a caption that
  names a colour or a motion names the manifest's, and an image's digit is drawn in it."""
  import numpy as np
  import PIL.Image
  out_dir, manifests = corpus
  motions = ("bouncing around", "moving to the left", "moving to the right", "moving up",
             "moving down")
  for split in ("train", "validation", "test"):
    for record in _read(manifests[f"videos-{split}"]):
      assert record["colour"] in demo.COLOURS and record["motion"] in motions
      assert record["motion"] in record["caption"]
      named = [c for c in demo.COLOURS if re.search(rf"\b{c}\b", record["caption"])]
      assert named in ([], [record["colour"]])
    for record in _read(manifests[f"images-{split}"]):
      pixels = np.asarray(PIL.Image.open(os.path.join(out_dir, record["image"]))
                          .convert("RGB"), np.float64).reshape(-1, 3)
      # The backgrounds are dark; edges blend the colour with them, so compare hues: each
      # colour over its brightest channel.
      digit = pixels[pixels.max(axis=1) > 180].mean(axis=0)
      hue = {c: np.asarray(rgb) / max(rgb) for c, rgb in demo.COLOURS.items()}
      nearest = min(hue, key=lambda c: np.linalg.norm(digit / digit.max() - hue[c]))
      assert nearest == record["colour"], (record, digit)


def test_videos_are_h264_with_aac_and_the_right_length(corpus):
  out_dir, manifests = corpus
  records = _read(manifests["videos-train"])
  kinds = set()
  for record in records:
    streams, frames, width, height = _probe(out_dir / record["video"])
    codecs = {kind: description.split()[0] for kind, description in streams}
    assert codecs["Video"] == "h264"
    assert codecs.get("Audio", "aac") == "aac"
    assert abs(frames - SECONDS * demo.FPS) <= 1
    kinds.add(("Audio" in codecs, width == height))
  # Some videos are silent and some are not square.
  assert kinds >= {(True, True), (False, True), (True, False)}


def test_held_out_splits_use_digit_samples_no_other_split_sees(corpus):
  _, manifests = corpus
  for folder in ("videos", "images"):
    seen = {split: {r["digit_index"] for r in _read(manifests[f"{folder}-{split}"])}
            for split in demo.SPLITS}
    assert all(seen.values())
    assert not seen["train"] & seen["validation"] and not seen["train"] & seen["test"]
    assert not seen["validation"] & seen["test"]


def test_split_sizes_are_the_demos_and_refuse_a_share_that_leaves_no_train():
  assert demo.split_sizes(480, demo.HELD_OUT) == {"train": 320, "validation": 80, "test": 80}
  assert demo.split_sizes(demo.SIZES["images"], demo.HELD_OUT)["test"] == 200
  with pytest.raises(ValueError, match="leave some for train"):
    demo.generate("/nonexistent", held_out={"validation": 0.5, "test": 0.5})
  with pytest.raises(ValueError, match="held_out takes shares of"):
    demo.generate("/nonexistent", held_out={"dev": 0.1})


def test_same_seed_gives_identical_files(corpus, tmp_path):
  first_dir, _ = corpus
  _generate(tmp_path)

  def digests(root):
    return {str(path.relative_to(root)): hashlib.sha256(path.read_bytes())
            .hexdigest() for path in root.rglob("*") if path.is_file()}

  first = digests(first_dir)
  assert len(first) == sum(SIZES.values()) + 9  # media and manifests
  assert digests(tmp_path) == first


def test_demo_datasets_share_one_tokenizer_that_knows_every_caption_word(demo_data):
  datasets = {m: prepared.open_dataset(path) for m, path in demo_data.items()}
  digests = {m: d.metadata.tokenizer.sha256 for m, d in datasets.items()}
  assert len(set(digests.values())) == 1, digests
  assert not datasets["videos"].metadata.tokenizer.trained  # given, not trained per dataset
  tokenizer = spm.SentencePieceProcessor(model_file=datasets["videos"].tokenizer_path)
  # The words of the video and image captions and of the prompts are known to
  # it: whole pieces, no unknown id.
  raw = os.path.join(os.path.dirname(demo_data["videos"]), "raw")
  for name in ("videos-train", "images-train"):
    with open(os.path.join(raw, f"{name}.jsonl")) as f:
      for line in f:
        pieces = tokenizer.encode(json.loads(line)["caption"])
        assert tokenizer.unk_id() not in pieces
  # The registry's prompts, and the demo config's zero-shot ensembles.
  config = config_lib.load(f"{demo.DEMO_CONFIG}:{os.path.dirname(demo_data['videos'])}")
  ensembles = [t.zero_shot_prompts for t in config.tasks if t.zero_shot_prompts]
  assert len(ensembles) == 2  # image-text's and video-text's
  for digit in demo.DIGIT_NAMES:
    for prompt in ("a video of {label}.", "a photo of {label}.", *sum(ensembles, ())):
      assert tokenizer.unk_id() not in tokenizer.encode(prompt.format(label=digit))
    assert len(tokenizer.encode(digit)) == 1
