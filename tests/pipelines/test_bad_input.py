"""Bad input is counted and listed with its reason; every good example is still written."""

import io
import json
import os
import shutil
import subprocess

import numpy as np
import pytest
from PIL import Image

from impax.cli import main as cli
from impax.datasets import registry
from impax.pipelines import config as config_lib, example, media
from impax.pipelines.tools import ffmpeg_binary


def ffmpeg(*args):
  subprocess.run([ffmpeg_binary(), "-v", "error", "-y", *args], check=True, timeout=60)


@pytest.fixture(scope="module")
def media_dir(tmp_path_factory):
  return make_media(tmp_path_factory.mktemp("media"))


def make_media(d):
  """Good and broken media files in folder d (tests/pipelines/test_engines.py builds them too)."""
  ffmpeg("-f", "lavfi", "-i", "testsrc=size=96x64:rate=10", "-f", "lavfi", "-i",
         "sine=frequency=440:sample_rate=22050", "-t", "2", "-c:v", "libx264", "-c:a", "aac",
         "-pix_fmt", "yuv420p", str(d / "clip.mp4"))
  ffmpeg("-f", "lavfi", "-i", "testsrc=size=96x64:rate=10", "-t", "2", "-c:v", "libx264",
         "-pix_fmt", "yuv420p", str(d / "silent.mp4"))
  ffmpeg("-f", "lavfi", "-i", "sine=frequency=300:sample_rate=44100", "-t", "1", str(d / "tone.flac"))
  for name in ("good video.mp4", "vidéo ünï.mp4", "-leading.mp4"):
    shutil.copy(d / "clip.mp4", d / name)
  data = (d / "clip.mp4").read_bytes()
  (d / "truncated.mp4").write_bytes(data[: len(data) // 3])
  (d / "corrupt.mp4").write_bytes(np.random.default_rng(0).bytes(5000))
  (d / "empty.mp4").write_bytes(b"")
  (d / "broken.jpg").write_bytes(b"this is not an image")
  Image.new("RGBA", (40, 20), (255, 0, 0, 128)).save(d / "ok.png")
  return d


GOOD = [
    {"id": "space", "video": "good video.mp4", "label": "a", "caption": "a clip"},
    {"id": "unicode", "video": "vidéo ünï.mp4", "label": "b", "caption": "ünïcödé caption"},
    {"id": "dash", "video": "-leading.mp4", "label": "a"},
    {"id": "silent-ok", "video": "silent.mp4", "label": "b"},
    {"id": "clip-inside", "video": "clip.mp4", "start": 0.5, "end": 1.5, "label": "a"},
    {"id": "image", "image": "ok.png", "caption": "red"},
    {"id": "audio", "audio": "tone.flac", "label": "b"},
]

# (manifest line, stage, words the error must contain)
BAD = [
    ({"id": "corrupt", "video": "corrupt.mp4"}, "video", ["corrupt.mp4"]),
    ({"id": "truncated", "video": "truncated.mp4"}, "video", ["truncated.mp4"]),
    ({"id": "empty", "video": "empty.mp4"}, "video", ["empty.mp4"]),
    ({"id": "missing", "video": "nowhere.mp4"}, "read", ["nowhere.mp4", "No such file"]),
    ({"id": "no-video-stream", "video": "tone.flac"}, "video", ["no video stream"]),
    ({"id": "no-audio-stream", "audio": "silent.mp4"}, "audio", ["no audio stream"]),
    ({"id": "past-end", "video": "clip.mp4", "start": 10, "end": 12}, "video",
     ["past the end", "duration 2"]),
    ({"id": "broken-image", "image": "broken.jpg"}, "image", ["broken.jpg", "not a readable image"]),
    ({"id": "bad-caption", "video": "clip.mp4", "caption": "\ud800"}, "text", ["UTF-8"]),
    ({"id": "blank-caption", "image": "ok.png", "caption": "   "}, "text", ["empty"]),
    ({"id": "space", "video": "clip.mp4"}, "duplicate", ["duplicate id", ":1"]),
]
INVALID_LINES = [
    (b"{not json\n", "not valid JSON"),
    (b"[1, 2]\n", "JSON list, expected an object"),
    (b'{"label": "x"}\n', "no media key"),
    (b'{"video": "clip.mp4", "start": 5, "end": 2}\n', "'end' (2) must be after 'start' (5)"),
    (b'{"video": "clip.mp4", "caption": 7}\n', "'caption' must be a str"),
    (b'\xff\xfe{"video": "clip.mp4"}\n', "not valid UTF-8"),
    (b'{"id": "\\ud801", "video": "clip.mp4"}\n', "'id' is not valid Unicode"),
]


def write_manifest(media_dir):
  """The manifest of GOOD, BAD and INVALID_LINES over make_media's files."""
  lines = [json.dumps(x).encode() + b"\n" for x in GOOD]
  lines += [json.dumps(x).encode() + b"\n" for x, _, _ in BAD]
  lines += [raw for raw, _ in INVALID_LINES]
  lines.insert(3, b"\n")  # a blank line is allowed
  manifest = media_dir / "manifest.jsonl"
  manifest.write_bytes(b"".join(lines))
  return manifest


@pytest.fixture(scope="module")
def bad_build(media_dir, tmp_path_factory, helpers):
  manifest = write_manifest(media_dir)
  output = tmp_path_factory.mktemp("out") / "bad"
  summary = helpers.build(manifest, output, num_shards=3)
  return manifest, output, summary


def test_build_succeeds_with_every_good_example(bad_build, helpers):
  manifest, output, summary = bad_build
  assert summary["num_examples"] == len(GOOD)
  assert summary["num_failed"] == len(BAD) + len(INVALID_LINES)
  meta = helpers.metadata(output)
  assert meta["splits"]["train"]["num_examples"] == len(GOOD)
  assert meta["labels"] == ["a", "b"]


def test_each_failure_is_listed_with_its_reason(bad_build, helpers):
  manifest, output, _ = bad_build
  failures = helpers.failures(output)
  by_id = {f["id"]: f for f in failures if f["id"]}
  for line, stage, words in BAD:
    failure = by_id[line["id"]] if line["id"] != "space" else next(
        f for f in failures if f["stage"] == "duplicate")
    assert failure["stage"] == stage, failure
    for word in words:
      assert word in failure["error"], failure
    assert " @ 0x" not in failure["error"]  # no memory addresses: the same bytes every run
    assert failure["source"].startswith(str(manifest) + ":")
  invalid = [f for f in failures if f["stage"] == "manifest"]
  assert len(invalid) == len(INVALID_LINES)
  first_invalid_line = len(GOOD) + len(BAD) + 2  # 1-based, after the blank line
  for number, (failure, (_, words)) in enumerate(zip(invalid, INVALID_LINES), first_invalid_line):
    assert failure["source"] == f"{manifest}:{number}"
    assert f"line {number}" in failure["error"] and words in failure["error"], failure
  # The failures file is ordered by input line.
  numbers = [int(f["source"].rsplit(":", 1)[1]) for f in failures]
  assert numbers == sorted(numbers)
  assert meta_failed(output, helpers) == len(failures)


def meta_failed(output, helpers):
  return helpers.metadata(output)["splits"]["train"]["num_failed"]


def test_clip_bounds_and_silent_video(bad_build):
  import tensorflow as tf
  from array_record.python.array_record_module import ArrayRecordReader
  _, output, summary = bad_build
  examples = {}
  for shard in summary["shards"]:
    for r in ArrayRecordReader(os.path.join(output, shard["path"])).read_all():
      e = tf.train.Example.FromString(r)
      examples[e.features.feature["id"].bytes_list.value[0].decode()] = e.features.feature
  assert set(examples) == {x["id"] for x in GOOD}
  # 1 s of a 2 s clip at 5 fps.
  assert examples["clip-inside"]["video/num_frames"].int64_list.value == [5]
  assert examples["clip-inside"]["audio/num_samples"].int64_list.value[0] == pytest.approx(16000, abs=400)
  assert "audio/pcm_s16le" not in examples["silent-ok"]
  assert examples["unicode"]["text/string"].bytes_list.value == ["ünïcödé caption".encode()]
  assert examples["dash"]["video/num_frames"].int64_list.value == [10]


def _entry(media_dir, **kw):
  return registry.Entry(index=0, source="m:1", id="x",
                        media={k: str(media_dir / v) for k, v in kw.pop("media").items()}, **kw)


def test_required_audio_track_and_timeouts(media_dir):
  cfg = config_lib.resolve({"audio_track": "required"})
  result, record = example.process_entry(_entry(media_dir, media={"video": "silent.mp4"}), cfg, b"", {})
  assert record is None and result.stage == "video"
  assert "no audio stream" in result.error and "silent.mp4" in result.error
  result, record = example.process_entry(_entry(media_dir, media={"video": "clip.mp4"}), cfg, b"", {})
  assert record is not None and result.composition.video_with_audio == 1
  with pytest.raises(media.MediaError, match="timed out"):
    media.decode_video(str(media_dir / "clip.mp4"), start=None, end=None, fps=10, max_frames=20,
                       short_side=64, jpeg_quality=90, audio_track="optional", sample_rate=16000,
                       timeout=0.001)


def test_images_become_upright_rgb(tmp_path):
  # EXIF orientation 6: the camera was turned; the stored image is upright.
  wide = Image.new("RGB", (60, 30), (0, 0, 255))
  exif = Image.Exif()
  exif[0x0112] = 6
  buf = io.BytesIO()
  wide.save(buf, "JPEG", exif=exif.tobytes())
  jpeg, h, w = media.process_image(buf.getvalue(), short_side=0, jpeg_quality=90)
  assert (h, w) == (60, 30)
  for image in (Image.new("CMYK", (50, 100), (0, 255, 255, 0)), Image.new("L", (50, 100), 128),
                Image.new("RGBA", (50, 100), (0, 0, 0, 0)), Image.new("P", (50, 100))):
    buf = io.BytesIO()
    image.save(buf, "WEBP" if image.mode == "RGBA" else "JPEG" if image.mode == "CMYK" else "PNG")
    jpeg, h, w = media.process_image(buf.getvalue(), short_side=32, jpeg_quality=90)
    out = Image.open(io.BytesIO(jpeg))
    assert out.mode == "RGB" and (h, w) == (64, 32) and out.size == (32, 64)
    if image.mode == "RGBA":  # fully transparent: composited on white
      assert min(out.getpixel((16, 32))) > 240
    if image.mode == "CMYK":  # no cyan ink on the red channel's paper: red
      r, g, b = out.getpixel((16, 32))
      assert r > 200 and g < 60 and b < 60


def test_refused_before_anything_runs(media_dir, tmp_path, capsys):
  out = tmp_path / "never"
  manifest = str(media_dir / "manifest.jsonl")
  cases = [
      (["build", "nosuchspec", "--input", manifest, "--output", str(out)], "unknown dataset spec 'nosuchspec'"),
      (["build", "jsonl", "--input", manifest, "--output", str(out), "--jpeg-quality", "200"], "jpeg_quality=200"),
      (["build", "jsonl", "--input", manifest, "--output", str(out), "--audio-track", "maybe"], "audio_track"),
      (["build", "jsonl", "--input", manifest, "--output", str(out), "--split", "a/b"], "split name"),
      (["build", "jsonl", "--input", manifest, "--output", str(out), "--", "--no_such_beam_flag=1"],
       "unknown Beam pipeline option(s): --no_such_beam_flag=1"),
  ]
  (tmp_path / "bad.json").write_text('{"video_fsp": 3}')
  cases.append((["build", "jsonl", "--input", manifest, "--output", str(out), "--config",
                 str(tmp_path / "bad.json")], "unknown setting(s) video_fsp"))
  for argv, message in cases:
    assert cli(argv) == 2, argv
    assert message in capsys.readouterr().err, argv
  assert cli(["build", "jsonl", "--input", str(tmp_path / "nope.jsonl"), "--output", str(out)]) == 3
  assert "nope.jsonl does not exist" in capsys.readouterr().err
  with pytest.raises(SystemExit):
    cli(["build", "jsonl", "--input", manifest, "--output", str(out), "--video-fps", "fast"])
  assert not out.exists()
