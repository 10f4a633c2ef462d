"""The demo corpus: complete manifests, real encodings, a held-out test split."""

import hashlib
import json
import os
import re
import subprocess

import pytest

from impax.datasets import demo
from impax.pipelines.tools import ffmpeg_binary

SIZES = {"videos": 12, "images": 12, "audio": 12}
SECONDS = 1.0


def _generate(out_dir):
  return demo.generate(str(out_dir), **SIZES, seconds=SECONDS, seed=3)


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
  assert sorted(manifests) == sorted(
      f"{folder}-{split}" for folder in SIZES for split in ("train", "test"))
  for name, manifest in manifests.items():
    folder, split = name.split("-")
    records = _read(manifest)
    assert len(records) == (SIZES[folder] - 2 if split == "train" else 2)
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


def test_test_split_uses_unseen_digit_samples(corpus):
  _, manifests = corpus
  for folder in ("videos", "images"):
    train = {r["digit_index"] for r in _read(manifests[f"{folder}-train"])}
    test = {r["digit_index"] for r in _read(manifests[f"{folder}-test"])}
    assert train and test and not train & test


def test_same_seed_gives_identical_files(corpus, tmp_path):
  first_dir, _ = corpus
  _generate(tmp_path)

  def digests(root):
    return {str(path.relative_to(root)): hashlib.sha256(path.read_bytes())
            .hexdigest() for path in root.rglob("*") if path.is_file()}

  first = digests(first_dir)
  assert len(first) == sum(SIZES.values()) + 6  # media and manifests
  assert digests(tmp_path) == first
