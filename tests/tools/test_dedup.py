"""Duplicates and leakage on a generated corpus whose duplicates are known.

A few distinct clips, images and sounds from ffmpeg's generators, and variants
of one of each (re-encoded at another size, bitrate and codec, trimmed by a
fraction of a second (video and sound), grayscale, slightly cropped, a
byte-identical copy) are built for real; the groups `impax dedup` finds must be
exactly the known ones. Two tone sequences are close on purpose (the same
generator, nearby pitches) and must stay apart.
"""

import json
import logging
import os
import subprocess
import sys

import numpy as np
import pytest
from array_record.python import array_record_module

from impax import cli
from impax.datasets import loader, metadata, prepared, records
from impax.tools import dedup
from impax.pipelines import build, publish, tools

SETTINGS = {"video_short_side": 48, "image_short_side": 48, "video_fps": 5.0, "num_shards": 2}
LIFE = "life=s=160x120:seed={}:mold=10:r=25:ratio=0.5"
VIDEOS = {  # id: (lavfi source, extra ffmpeg output args)
    "life-1": (LIFE.format(1), []),
    "life-2": (LIFE.format(2), []),
    "mandel-1": ("mandelbrot=s=160x120:start_x=-0.7:start_y=0.3", []),
    "cells": ("cellauto=s=160x120:rule=30:seed=3", []),
}
VIDEO_VARIANTS = {  # id: (ffmpeg args between the input and the output, suffix)
    "life-1-vp9-small": (["-vf", "scale=96:72", "-c:v", "libvpx-vp9", "-b:v", "80k"], ".webm"),
    "life-1-trimmed": (["-ss", "0.3", "-c:v", "libx264", "-crf", "35"], ".mp4"),
    "life-1-gray": (["-vf", "format=gray,format=yuv420p", "-c:v", "libx264"], ".mp4"),
    "life-1-cropped": (["-vf", "crop=iw*0.96:ih*0.96", "-c:v", "libx265", "-b:v", "150k"], ".mp4"),
}
TONES = "sin(2*PI*({}+{}*floor(4*t))*t)"
SOUNDS = {
    "tones-1": TONES.format(300, 150),
    "tones-2": TONES.format(900, -170),
    "tones-3": TONES.format(340, 130),  # close to tones-1, a different clip
    "chirp": "sin(2*PI*(200+300*t)*t)*(0.5+0.5*sin(2*PI*3*t))",
}
SOUND_VARIANTS = {
    "tones-1-mp3": (["-ar", "22050", "-c:a", "libmp3lame", "-b:a", "48k"], ".mp3"),
    "tones-1-trimmed-opus": (["-ss", "0.2", "-c:a", "libopus", "-b:a", "24k"], ".ogg"),
}
IMAGES = {
    "mandel-img": "mandelbrot=s=200x150:start_x=-1.2:start_y=0.1",
    "life-img": LIFE.format(7).replace("160x120", "200x150"),
    "cells-img": "cellauto=s=200x150:rule=110:seed=4",
}
IMAGE_VARIANTS = {
    "mandel-img-small-jpeg": ["-vf", "scale=120:90", "-q:v", "12"],
    "mandel-img-gray": ["-vf", "format=gray"],
    "mandel-img-cropped": ["-vf", "crop=iw*0.96:ih*0.96:2:3"],
}
EXPECTED = [  # the groups within the training split
    {"life-1", *VIDEO_VARIANTS},
    {"life-2", "life-2-copy"},
    {"tones-1", *SOUND_VARIANTS},
    {"mandel-img", *IMAGE_VARIANTS},
]


def ffmpeg(*args):
  subprocess.run([tools.ffmpeg_binary(), "-y", "-nostdin", "-loglevel", "error", *args],
                 check=True, capture_output=True)


def write_corpus(root) -> dict[str, str]:
  """Media files and two manifests, train and test: {split: manifest path}."""
  os.makedirs(root, exist_ok=True)
  train, test = [], []
  path = lambda name: os.path.join(root, name)
  for id_, (source, _) in VIDEOS.items():
    ffmpeg("-f", "lavfi", "-i", f"{source},format=yuv420p", "-t", "2.4", "-c:v", "libx264",
           path(f"{id_}.mp4"))
    train.append({"id": id_, "video": f"{id_}.mp4"})
  for id_, (args, suffix) in VIDEO_VARIANTS.items():
    ffmpeg("-i", path("life-1.mp4"), *args, path(id_ + suffix))
    train.append({"id": id_, "video": id_ + suffix})
  with open(path("life-2.mp4"), "rb") as src, open(path("life-2-copy.mp4"), "wb") as dst:
    dst.write(src.read())
  train.append({"id": "life-2-copy", "video": "life-2-copy.mp4"})
  for id_, expr in SOUNDS.items():
    ffmpeg("-f", "lavfi", "-i", f"aevalsrc={expr}:s=44100:d=2.5", path(f"{id_}.wav"))
    train.append({"id": id_, "audio": f"{id_}.wav"})
  for id_, (args, suffix) in SOUND_VARIANTS.items():
    ffmpeg("-i", path("tones-1.wav"), *args, path(id_ + suffix))
    train.append({"id": id_, "audio": id_ + suffix})
  for id_, source in IMAGES.items():
    ffmpeg("-f", "lavfi", "-i", source, "-frames:v", "1", path(f"{id_}.png"))
    train.append({"id": id_, "image": f"{id_}.png"})
  for id_, args in IMAGE_VARIANTS.items():
    ffmpeg("-i", path("mandel-img.png"), *args, "-frames:v", "1", path(f"{id_}.jpg"))
    train.append({"id": id_, "image": f"{id_}.jpg"})
  # The test split: a re-encode of a training clip (a leak) and a clip of its own.
  ffmpeg("-i", path("mandel-1.mp4"), "-vf", "scale=120:90", "-c:v", "mpeg4", "-q:v", "8",
         path("mandel-1-test.mp4"))
  ffmpeg("-f", "lavfi", "-i", "mandelbrot=s=160x120:start_x=-0.2:start_y=0.8,format=yuv420p",
         "-t", "2.4", "-c:v", "libx264", path("mandel-2.mp4"))
  test += [{"id": "mandel-1-test", "video": "mandel-1-test.mp4"},
           {"id": "mandel-2", "video": "mandel-2.mp4"}]
  manifests = {}
  for split, lines in (("train", train), ("test", test)):
    manifests[split] = path(f"{split}.jsonl")
    with open(manifests[split], "w") as f:
      f.writelines(json.dumps({**line, "label": "clip"}) + "\n" for line in lines)
  return manifests


@pytest.fixture(scope="module")
def built(tmp_path_factory):
  root = tmp_path_factory.mktemp("dedup")
  manifests = write_corpus(str(root / "raw"))
  out = {"train": str(root / "data"), "test": str(root / "eval")}
  for split, manifest in manifests.items():
    build.run(build.prepare("jsonl", manifest, out[split], split, (SETTINGS,)), workers=1)
  return out


def id_groups(groups) -> list[set[str]]:
  return sorted(({m.id if isinstance(m, dedup.Member) else m["id"] for m in g} for g in groups),
                key=sorted)


def test_every_record_has_its_fingerprints(built):
  dataset = prepared.open_dataset(built["train"])
  fp = dedup.read(dataset)
  kinds = {m.id: dedup.KINDS[k] for m, k in zip(fp.members, fp.kind)}
  assert all(kinds[i] == "video" for i in VIDEOS) and all(kinds[i] == "audio" for i in SOUNDS)
  assert all(kinds[i] == "image" for i in IMAGES)
  rows = {m.id: i for i, m in enumerate(fp.members)}
  assert len(fp.of(rows["mandel-img"])) == 2  # the whole image and its centre
  assert len(fp.of(rows["tones-1"])) == pytest.approx(2.5 / 0.032, abs=2)  # a value per 32 ms
  sha = dict(zip((m.id for m in fp.members), fp.sha256))
  assert sha["life-2"] == sha["life-2-copy"] and sha["life-1"] != sha["life-1-gray"]
  assert len(set(sha.values())) == len(sha) - 1
  assert {"fingerprint/sha256", "fingerprint/video"} <= set(dataset.metadata.features)


def test_the_known_duplicates_are_found_and_nothing_else(built):
  found = dedup.find([dedup.read(prepared.open_dataset(built["train"]))])
  assert id_groups(found.groups) == sorted(EXPECTED, key=sorted)
  assert found.exact_groups == 1 and found.near_groups == 3


def test_metadata_summarizes_the_duplicates_of_each_split(built):
  with open(os.path.join(built["train"], "metadata.json"), "rb") as f:
    meta = metadata.loads(f.read())
  with open(os.path.join(built["test"], "metadata.json"), "rb") as f:
    test_meta = metadata.loads(f.read())
  summary = meta.splits["train"].duplicates
  assert summary["exact_groups"] == 1 and summary["near_groups"] == 3
  assert summary["records_in_groups"] == sum(map(len, EXPECTED))
  assert sorted(map(set, summary["groups"]), key=sorted) == sorted(EXPECTED, key=sorted)
  assert test_meta.splits["test"].duplicates == {
      "exact_groups": 0, "near_groups": 0, "records_in_groups": 0, "groups": [], "sizes": [],
      "descriptions": []}


def test_old_metadata_without_duplicates_still_loads():
  path = os.path.join(os.path.dirname(__file__), "..", "datasets", "data",
                      "metadata-before-types.json")
  with open(path, "rb") as f:
    meta = metadata.loads(f.read())
  assert all(s.duplicates is None for s in meta.splits.values())
  assert "duplicates" not in json.loads(metadata.dumps(meta))["splits"][next(iter(meta.splits))]


def test_cli_report_groups_and_leaks(built, tmp_path, capsys):
  out = tmp_path / "report.json"
  assert cli.main(["dedup", built["train"], "--against", built["test"], "--json", str(out)]) == 0
  printed = capsys.readouterr().out
  assert "1 training records duplicate the evaluation set" in printed
  assert f"{built['train']}:train:mandel-1 = {built['test']}:test:mandel-1-test" in printed
  report = json.loads(out.read_text())
  # Across datasets: the known groups and the clip the test set shares with training.
  assert id_groups(report["groups"]) == sorted(EXPECTED + [{"mandel-1", "mandel-1-test"}], key=sorted)
  assert {m["dataset"] for g in report["groups"] for m in g} == {built["train"], built["test"]}
  assert [(m["id"], m["split"], [x["id"] for x in m["matches"]]) for m in report["leaks"]] == [
      ("mandel-1", "train", ["mandel-1-test"])]


def test_splits_are_named_after_a_colon(built, tmp_path, capsys):
  """`DIR:SPLIT` selects splits, so a folder's train split is checked against its test split;
  the same split on both sides is refused, not reported as every record leaking."""
  assert dedup.parse_selector("/data/videos:train,val") == ("/data/videos", ("train", "val"))
  assert dedup.parse_selector("gs://bucket/videos") == ("gs://bucket/videos", None)
  assert dedup.parse_selector("s3://b/videos:test") == ("s3://b/videos", ("test",))
  out = tmp_path / "report.json"
  assert cli.main(["dedup", f"{built['train']}:train", "--against", f"{built['test']}:test",
                   "--json", str(out)]) == 0
  leaks = json.loads(out.read_text())["leaks"]
  assert [(m["dataset"], m["id"]) for m in leaks] == [(built["train"], "mandel-1")]
  capsys.readouterr()
  assert cli.main(["dedup", built["train"], "--against", f"{built['train']}:train"]) == 2
  assert "on both sides of --against" in capsys.readouterr().err
  assert cli.main(["dedup", f"{built['train']}:nope"]) == 2
  assert f"{built['train']} has no split 'nope' (it has train)" in capsys.readouterr().err


def test_near_pairs_by_index_equal_all_pairs():
  rng = np.random.default_rng(0)
  hashes = rng.integers(0, 1 << 63, 3000, dtype=np.int64).astype(np.uint64) << np.uint64(1)
  for i in range(300):  # near copies with 0..12 flipped bits
    flips = rng.choice(64, rng.integers(0, 13), replace=False)
    hashes[1500 + i] = hashes[i] ^ np.uint64(sum(1 << int(b) for b in flips))
  for threshold in (0, 5, 10, 12):
    by_index = {tuple(p) for p in dedup.near_pairs(hashes, threshold).tolist()}
    assert by_index == {tuple(p) for p in dedup.brute_force_pairs(hashes, threshold).tolist()}
  assert len(dedup.near_pairs(hashes, 12)) >= 300  # every planted copy
  # A few candidates at a time, slices cutting through a query's: the same pairs.
  chunks = list(dedup.near_chunks(hashes, 10, budget=1000))
  assert max(len(q) for q, _ in chunks) <= 1000
  assert {(q, h) for qs, hs in chunks for q, h in zip(qs.tolist(), hs.tolist())} == {
      tuple(p) for p in dedup.brute_force_pairs(hashes, 10).tolist()}


def test_a_trimmed_sound_aligns_with_its_original():
  rng = np.random.default_rng(1)
  sound = rng.integers(0, 1 << 62, 80).astype(np.uint64)
  assert dedup.aligned_distance(sound, sound[6:]) == 0.0  # trimmed by 6 frames
  assert dedup.aligned_distance(sound[:-3], sound[6:]) == 0.0
  assert dedup.aligned_distance(sound, rng.permutation(sound)) > dedup.AUDIO_DISTANCE
  assert dedup.aligned_distance(sound, sound[:30]) == 1.0  # less than half of it: not a copy


def video_task(dataset, exclude=None):
  return loader.Task("clips", dataset, "classification", ("video",),
                     buckets=(loader.Bucket(video=(4, 32, 32), batch_size=2),), eval_split="train",
                     exclude=exclude)


def test_the_loader_skips_excluded_examples_and_counts_them(built, tmp_path):
  report = tmp_path / "leaks.json"
  assert cli.main(["dedup", built["train"], "--against", built["test"], "--json", str(report)]) == 0
  built = built["train"]
  ids = tmp_path / "ids.txt"
  ids.write_text("life-2-copy\nlife-1-gray\n")
  everything = loader.Loader(video_task(built), train=False)
  without_leak = loader.Loader(video_task(built, str(report)), train=False)
  without_ids = loader.Loader(video_task(built, str(ids)), train=False)
  videos = len(VIDEOS) + len(VIDEO_VARIANTS) + 1
  assert (everything.num_records, everything.excluded) == (videos, 0)
  assert (without_leak.num_records, without_leak.excluded) == (videos - 1, 1)
  assert (without_ids.num_records, without_ids.excluded) == (videos - 2, 2)
  # The skipped records are the ones named: the rest are all read.
  read = [int(b["valid"].sum()) for b in without_ids]
  assert sum(read) == videos - 2


def test_fingerprints_off_writes_none(tmp_path):
  raw = tmp_path / "raw"
  raw.mkdir()
  ffmpeg("-f", "lavfi", "-i", IMAGES["cells-img"], "-frames:v", "1", str(raw / "a.png"))
  (raw / "m.jsonl").write_text(json.dumps({"id": "a", "image": "a.png"}) + "\n")
  plan = build.prepare("jsonl", str(raw / "m.jsonl"), str(tmp_path / "out"), "train",
                       ({**SETTINGS, "fingerprints": False},))
  build.run(plan, workers=1)
  dataset = prepared.open_dataset(str(tmp_path / "out"))
  reader = array_record_module.ArrayRecordReader(dataset.shard_paths("train")[0], "readahead_buffer_size:0")
  keys = set(records.parse_example(reader.read([0])[0]))
  reader.close()
  assert not any(k.startswith("fingerprint/") for k in keys)
  assert dataset.split("train").duplicates is None


# -- many copies of one image ----------------------------------------------------

COPIES = """
import json, resource, sys, tracemalloc
import numpy as np
from impax.tools import dedup
n, same_bytes = int(sys.argv[1]), sys.argv[2] == "same"
# A small image's two hashes (whole, centre), n times; the same file or n re-encodes.
fp = dedup.Fingerprints(
    [dedup.Member("", "train", f"copy-{i}", i) for i in range(n)],
    ["ab" * 32 if same_bytes else f"{i:064x}" for i in range(n)], np.ones(n, np.int8),
    np.tile(np.array([0x9F3A5C7E1B2D4F60, 0x9F3A5C7E1B2D4F61], np.uint64), n),
    np.arange(0, 2 * n + 1, 2))
resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))  # a quadratic search fails here
tracemalloc.start()
summary = dedup.find([fp]).summary()
print(json.dumps({"summary": summary, "peak": tracemalloc.get_traced_memory()[1]}))
"""


def find_copies(n: int, same_bytes: bool = True) -> tuple[dict, int]:
  """(the summary, peak bytes allocated) of finding the duplicates of n copies of one image,
  in a process held to 1 GiB of address space."""
  done = subprocess.run([sys.executable, "-c", COPIES, str(n), "same" if same_bytes else "other"],
                        capture_output=True, text=True, timeout=300)
  assert done.returncode == 0, done.stderr[-3000:]
  out = json.loads(done.stdout)
  return out["summary"], out["peak"]


def test_thousands_of_copies_of_one_image_are_one_group_in_bounded_memory():
  summary, peak = find_copies(3000)
  assert peak < 64 << 20, peak  # comparing all pairs held ~4 GB
  assert summary["descriptions"] == ["3,000 copies of one image"]
  assert summary["sizes"] == [3000] and summary["records_in_groups"] == 3000
  assert summary["groups"] == [[f"copy-{i}" for i in range(dedup.REPORT_IDS)]]
  assert (summary["exact_groups"], summary["near_groups"]) == (1, 0)
  # Re-encodes: other bytes, one perceptual hash.
  summary, peak = find_copies(3000, same_bytes=False)
  assert peak < 64 << 20, peak
  assert summary["descriptions"] == ["3,000 copies of one image in 3,000 versions"]
  assert (summary["exact_groups"], summary["near_groups"]) == (0, 1)


def test_memory_does_not_grow_with_the_square_of_the_copies():
  (_, small), (summary, large) = find_copies(2000), find_copies(20000)
  # 10 times the copies: 100 times the memory if all pairs were held; the ids, 10 times.
  assert large < 20 * small, (small, large)
  assert summary["descriptions"] == ["20,000 copies of one image"]


@pytest.fixture(scope="module")
def copies(tmp_path_factory):
  """A manifest of 1,000 lines of one small PNG, distinct ids: {manifest, image}."""
  raw = tmp_path_factory.mktemp("copies")
  ffmpeg("-f", "lavfi", "-i", "cellauto=s=32x24:rule=110:seed=4", "-frames:v", "1",
         str(raw / "placeholder.png"))
  (raw / "m.jsonl").write_text("".join(
      json.dumps({"id": f"copy-{i}", "image": "placeholder.png"}) + "\n" for i in range(1000)))
  return str(raw / "m.jsonl")


def test_a_build_of_copies_of_one_image_publishes_them_as_one_group(copies, tmp_path):
  out = str(tmp_path / "out")
  build.run(build.prepare("jsonl", copies, out, "train",
                          ({"image_short_side": 24, "num_shards": 2},)), workers=1)
  found = prepared.open_dataset(out).split("train").duplicates
  assert found["descriptions"] == ["1,000 copies of one image"] and found["sizes"] == [1000]
  assert len(found["groups"][0]) == dedup.REPORT_IDS  # metadata.json lists the first ids


def test_a_failed_duplicate_summary_does_not_fail_the_build(copies, tmp_path, monkeypatch, caplog):
  """The summary is an extra: without it the dataset is still published, since a rerun would
  resume the finished shards and fail on it again."""
  def fail(paths, split):
    raise MemoryError("Unable to allocate 596. GiB")
  monkeypatch.setattr(dedup, "split_summary", fail)
  out = str(tmp_path / "out")
  with caplog.at_level(logging.WARNING, logger=publish.__name__):
    build.run(build.prepare("jsonl", copies, out, "train",
                            ({"image_short_side": 24, "num_shards": 2},)), workers=1)
  dataset = prepared.open_dataset(out)
  assert dataset.num_records("train") == 1000 and dataset.split("train").duplicates is None
  assert "MemoryError: Unable to allocate 596. GiB" in caplog.text
  assert f"impax dedup {out}" in caplog.text
