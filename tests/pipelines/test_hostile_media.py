"""Valid but unusual media (anamorphic video, extreme aspects) is stored as a viewer
sees it; numbers that are not finite (NaN, Infinity) are failures that name the field."""

import io
import json
import math
import os
import struct
import subprocess

import numpy as np
import pytest
from PIL import Image

from impax.datasets import records, registry
from impax.datasets.specs import audioset, esc50, jsonl, kinetics
from impax.pipelines import config as config_lib, example, media
from impax.pipelines.tools import ffmpeg_binary

# Real sizes: the spacer's short side of 256 is what passes JPEG's limit.
SIDES = {"video_short_side": 256, "image_short_side": 256}


def ffmpeg(*args):
  subprocess.run([ffmpeg_binary(), "-v", "error", "-y", *args], check=True, timeout=60)


def video(path, size, *, sar="1", codec=("-c:v", "libx264", "-pix_fmt", "yuv420p"), seconds=0.4):
  ffmpeg("-f", "lavfi", "-i", f"testsrc=size={size}:rate=10", "-t", str(seconds),
         "-vf", f"setsar={sar}", *codec, str(path))


def float_wav(path, samples, rate):
  """A mono 32-bit float WAV (format 3), which can hold NaN and infinity."""
  data = np.asarray(samples, "<f4").tobytes()
  fmt = struct.pack("<HHIIHH", 3, 1, rate, rate * 4, 4, 32)
  path.write_bytes(b"RIFF" + struct.pack("<I", 4 + 8 + len(fmt) + 8 + len(data)) + b"WAVE"
                   + b"fmt " + struct.pack("<I", len(fmt)) + fmt
                   + b"data" + struct.pack("<I", len(data)) + data)


@pytest.fixture(scope="module")
def media_dir(tmp_path_factory):
  d = tmp_path_factory.mktemp("hostile")
  video(d / "dvd.mp4", "720x576", sar="64/45")  # a 16:9 PAL DVD: 1024x576 on screen
  video(d / "tall-anamorphic.mp4", "96x64", sar="1/3")  # 32x64 on screen
  # Turned a quarter (the phone's display matrix) as well: 576x1024 on screen.
  ffmpeg("-i", str(d / "dvd.mp4"), "-c", "copy", "-metadata:s:v:0", "rotate=90",
         str(d / "dvd-turned.mp4"))
  video(d / "square.mp4", "96x64")
  lossless = ("-c:v", "ffv1")  # any size, even 2 pixels wide
  video(d / "tall.mkv", "2x600", codec=lossless, seconds=0.2)
  video(d / "wide.mkv", "600x2", codec=lossless, seconds=0.2)
  Image.new("RGB", (1, 300), (200, 0, 0)).save(d / "spacer.png")
  tone = np.sin(np.arange(6400) * 0.1).astype(np.float32) * 0.5
  float_wav(d / "tone16k.wav", tone, 16000)
  for name, bad in (("nan", np.nan), ("inf", np.inf)):
    samples = tone.copy()
    samples[100] = bad
    float_wav(d / f"{name}16k.wav", samples, 16000)  # at the build's rate: not resampled
    float_wav(d / f"{name}22k.wav", samples, 22050)
  # A video whose audio track is float with a NaN, at the build's rate.
  ffmpeg("-f", "lavfi", "-i", "testsrc=size=96x64:rate=10", "-i", str(d / "nan16k.wav"),
         "-t", "0.4", "-c:v", "libx264", "-pix_fmt", "yuv420p", "-c:a", "pcm_f32le",
         str(d / "nan-track.mov"))
  return d


GOOD = {  # id: (manifest line, medium, (height, width) or None)
    "dvd": ({"video": "dvd.mp4"}, "video", (256, 456)),  # 455.1 made even
    "dvd-turned": ({"video": "dvd-turned.mp4"}, "video", (456, 256)),
    "tall-anamorphic": ({"video": "tall-anamorphic.mp4"}, "video", (512, 256)),
    "square": ({"video": "square.mp4"}, "video", (256, 384)),
    "tall": ({"video": "tall.mkv"}, "video", (2048, 6)),  # 256x76,800 without the cap
    "wide": ({"video": "wide.mkv"}, "video", (6, 2048)),
    "spacer": ({"image": "spacer.png"}, "image", (2048, 7)),
    "float-audio": ({"audio": "tone16k.wav"}, "audio", None),
}

# (raw manifest line, stage, words the error must contain)
BAD = [
    (b'{"id": "end-nan", "video": "square.mp4", "end": NaN}', "manifest", ["'end'", "finite", "NaN"]),
    (b'{"id": "start-nan", "video": "square.mp4", "start": NaN}', "manifest", ["'start'", "finite"]),
    (b'{"id": "end-inf", "video": "square.mp4", "end": Infinity}', "manifest", ["'end'", "finite"]),
    (b'{"id": "start-minf", "video": "square.mp4", "start": -Infinity, "end": 1}', "manifest",
     ["'start'", "finite"]),
    (b'{"id": "end-overflow", "audio": "tone16k.wav", "end": 1e400}', "manifest", ["'end'", "finite"]),
    (b'{"id": "nan-16k", "audio": "nan16k.wav"}', "audio", ["not finite"]),
    (b'{"id": "inf-16k", "audio": "inf16k.wav"}', "audio", ["not finite"]),
    (b'{"id": "nan-22k", "audio": "nan22k.wav"}', "audio", ["not finite"]),
    (b'{"id": "inf-22k", "audio": "inf22k.wav"}', "audio", ["not finite"]),
    (b'{"id": "nan-track", "video": "nan-track.mov"}', "video", ["not finite"]),
]


def stored(output, summary) -> dict:
  from array_record.python.array_record_module import ArrayRecordReader
  out = {}
  for shard in summary["shards"]:
    for data in ArrayRecordReader(os.path.join(output, shard["path"])).read_all():
      r = records.parse_example(data)
      out[r["id"][0].decode()] = r
  return out


@pytest.fixture(scope="module")
def hostile_build(media_dir, tmp_path_factory, helpers):
  lines = [json.dumps({"id": id_, **line}).encode() for id_, (line, _, _) in GOOD.items()]
  lines += [raw for raw, _, _ in BAD]
  manifest = media_dir / "manifest.jsonl"
  manifest.write_bytes(b"\n".join(lines) + b"\n")
  output = tmp_path_factory.mktemp("out") / "hostile"
  summary = helpers.build(manifest, output, num_shards=1, **SIDES)
  return output, summary


def test_frames_and_images_are_stored_as_seen_and_within_the_long_side_cap(hostile_build, helpers):
  output, summary = hostile_build
  examples = stored(output, summary)
  failures = {f["id"]: f for f in helpers.failures(output)}
  for id_, (_, medium, size) in GOOD.items():
    assert id_ in examples, failures[id_]
    if size is None:
      continue
    r = examples[id_]
    assert (r[f"{medium}/height"], r[f"{medium}/width"]) == ([size[0]], [size[1]]), id_
    jpegs = r["video/frames"] if medium == "video" else r["image/encoded"]
    for jpeg in jpegs:  # the pixels, not only the recorded size
      assert Image.open(io.BytesIO(jpeg)).size == (size[1], size[0]), id_
  assert examples["float-audio"]["audio/num_samples"] == [6400]


def test_numbers_that_are_not_finite_fail_with_the_field_named(hostile_build, helpers):
  output, summary = hostile_build
  by_id = {f["id"]: f for f in helpers.failures(output)}
  assert set(stored(output, summary)) == set(GOOD)
  assert summary["num_examples"] == len(GOOD) and summary["num_failed"] == len(BAD)
  for raw, stage, words in BAD:
    failure = by_id[json.loads(raw)["id"]]
    assert failure["stage"] == stage, failure
    for word in words:
      assert word in failure["error"], failure


def test_a_spec_file_that_hands_on_nan_bounds_gets_a_failure(media_dir):
  # A reader other than the built-in specs: the media step refuses the bounds itself.
  cfg = config_lib.resolve({})
  for medium, path in (("video", "square.mp4"), ("audio", "tone16k.wav")):
    for bounds in ({"start": math.nan}, {"end": math.nan}, {"start": 0.0, "end": math.inf}):
      entry = registry.Entry(index=0, source="m:1", id="x", media={medium: str(media_dir / path)},
                             **bounds)
      result, record = example.process_entry(entry, cfg, b"", {})
      assert record is None and result.stage == medium, (medium, bounds, result)
      name = next(k for k, v in bounds.items() if not math.isfinite(v))
      assert f"clip {name}" in result.error and "not a finite number" in result.error, result


def test_spec_lines_with_numbers_that_are_not_numbers_are_bad_entries(tmp_path):
  # Each of these raised out of the parser (a crashed build) or was taken as a clip.
  ctx = kinetics.context(str(tmp_path / "train.csv"), [b"label,youtube_id,time_start,time_end\n"],
                         "train")
  for start, end, field in (("nan", "10", "time_start"), ("0", "inf", "time_end"),
                            ("-inf", "10", "time_start")):
    entry = kinetics.parse(ctx, 2, f"dancing,abc,{start},{end}\n".encode())
    assert isinstance(entry, registry.BadEntry) and field in entry.error, entry
  ctx = {"path": "segments.csv", "names": {"/m/1": "Speech"}, "clips": "segments"}
  for start, end, field in (("0", "inf", "end_seconds"), ("nan", "10", "start_seconds")):
    entry = audioset.parse(ctx, 4, f'abc, {start}, {end}, "/m/1"\n'.encode())
    assert isinstance(entry, registry.BadEntry) and field in entry.error, entry
  ctx = {"path": "esc50.csv", "columns": {"filename": 0, "fold": 1, "category": 2},
         "folds": frozenset({1}), "audio": "audio"}
  entry = esc50.parse(ctx, 2, "1-1.wav,\u00b2,dog\n".encode())  # a superscript 2: isdigit()
  assert isinstance(entry, registry.BadEntry) and "fold" in entry.error, entry
  huge = "1" + "0" * 400  # an integer json reads, past a float's range
  for line, words in (
      (f'{{"video": "a.mp4", "end": {huge}}}', ["'end'", "finite"]),
      ('{"video": "a.mp4", "n": ' + "9" * 5000 + "}", ["cannot be read as JSON", "digits"]),
      ('{"video": "a.mp4", "n": ' + "[" * 100000 + "]" * 100000 + "}", ["cannot be read as JSON"])):
    entry = jsonl.parse_line("m.jsonl", 3, line.encode())
    assert isinstance(entry, registry.BadEntry), entry
    assert "line 3" in entry.error and all(w in entry.error for w in words), entry


def test_max_long_side_setting():
  assert config_lib.resolve({}).max_long_side == 2048
  assert config_lib.resolve({"max_long_side": 0}).max_long_side == 0
  assert config_lib.resolve({"max_long_side": 300, "video_short_side": 300,
                             "image_short_side": 0}).max_long_side == 300
  for value in (100, 255, 65501, -1):  # below a short side (256) caps every square frame
    with pytest.raises(ValueError, match=f"max_long_side={value}"):
      config_lib.resolve({"max_long_side": value})
  for field in ("video_fps", "audio_max_seconds", "ffmpeg_timeout"):
    for value in (math.inf, -math.inf, math.nan):
      with pytest.raises(ValueError, match=f"{field}=.*finite"):
        config_lib.resolve({field: value})


def test_an_image_kept_at_its_size_still_fits_jpeg():
  # image_short_side 0 keeps the size, max_long_side 0 leaves only JPEG's limit.
  buf = io.BytesIO()
  Image.new("L", (70000, 1), 255).save(buf, "PNG")
  jpeg, height, width = media.process_image(buf.getvalue(), short_side=0, jpeg_quality=90,
                                            max_long_side=0)
  assert (height, width) == (1, config_lib.JPEG_MAX_SIDE)
  assert Image.open(io.BytesIO(jpeg)).size == (config_lib.JPEG_MAX_SIDE, 1)
