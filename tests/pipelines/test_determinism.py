"""Same input and config: byte-identical shards whatever the workers or runner mode;
a killed build resumes to the same bytes; an existing output is protected."""

import glob
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from impax.pipelines import build

SMALL = {"video_short_side": 32, "image_short_side": 32, "video_fps": 5.0}  # as conftest's builds


@pytest.fixture(scope="module")
def reference(corpus, tmp_path_factory, helpers):
  output = tmp_path_factory.mktemp("ref") / "videos"
  helpers.build(corpus["videos-train"], output, workers=2, num_shards=3)
  return output


def test_worker_count_and_runner_mode_do_not_change_bytes(corpus, reference, tmp_path, helpers):
  expected = helpers.hashes(reference)
  assert len(expected) == 3
  one, mem = tmp_path / "one" / "videos", tmp_path / "mem" / "videos"
  helpers.build(corpus["videos-train"], one, workers=1, num_shards=3)
  assert helpers.hashes(one) == expected
  plan = build.prepare("jsonl", corpus["videos-train"], str(mem), "train",
                       ({**SMALL, "num_shards": 3},))
  build.run(plan, beam_args=["--direct_running_mode=in_memory"])
  assert helpers.hashes(mem) == expected
  for other in (one, mem):
    with open(other / "tokenizer.model", "rb") as a, open(reference / "tokenizer.model", "rb") as b:
      assert a.read() == b.read()


def test_existing_output_is_protected(corpus, reference, tmp_path, helpers):
  out = tmp_path / "videos"
  helpers.build(corpus["videos-train"], out, num_shards=3)
  again = helpers.build(corpus["videos-train"], out, num_shards=3)
  assert again["skipped"] == "already built with this config and input"
  with pytest.raises(build.BuildError, match="another config.*--overwrite"):
    helpers.build(corpus["videos-train"], out, num_shards=3, jpeg_quality=50)
  assert helpers.hashes(out) == helpers.hashes(reference)
  helpers.build(corpus["videos-train"], out, num_shards=2, jpeg_quality=50, overwrite=True)
  meta = helpers.metadata(out)
  assert meta["config"]["jpeg_quality"] == 50 and len(helpers.hashes(out)) == 2
  assert not [n for n in os.listdir(out) if "-of-00003" in n]
  with pytest.raises(build.BuildError, match="another input"):
    helpers.build(corpus["videos-test"], out, num_shards=2, jpeg_quality=50)


def _start_build(manifest, output):
  argv = [sys.executable, "-m", "impax.cli", "build", "jsonl", "--input", str(manifest),
          "--output", str(output), "--workers", "2", "--num-shards", "3"]
  for key, value in SMALL.items():
    argv += [f"--{key.replace('_', '-')}", str(value)]
  return subprocess.Popen(argv, start_new_session=True, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT)


def _kill_when(proc, condition, timeout=120):
  deadline = time.monotonic() + timeout
  while not condition():
    assert proc.poll() is None, proc.stdout.read().decode()[-3000:]
    assert time.monotonic() < deadline, "the build never reached the point to kill it at"
    time.sleep(0.02)
  os.killpg(proc.pid, signal.SIGKILL)
  proc.wait()


def _published(output):
  return [p for p in glob.glob(os.path.join(output, "*.array_record-*-of-*")) if "partial" not in p]


def test_killed_while_processing_resumes_to_the_same_bytes(corpus, reference, tmp_path, helpers):
  out = tmp_path / "videos"
  examples = out / ".impax-tmp" / "train" / "examples"
  proc = _start_build(corpus["videos-train"], out)
  # Results: a line of a bundle's log each (pipelines/plan.py, Plan.result_log).
  _kill_when(proc, lambda: sum(open(p, "rb").read().count(b"\n")
                               for p in glob.glob(str(examples / "*.results"))) >= 3)
  helpers.nothing_half_written(out)
  assert build.prepare("jsonl", corpus["videos-train"], str(out), "train",
                       ({**SMALL, "num_shards": 3},)).resuming
  helpers.build(corpus["videos-train"], out, num_shards=3)
  assert helpers.hashes(out) == helpers.hashes(reference)
  assert not os.path.exists(out / ".impax-tmp")


def test_a_new_build_looks_for_no_killed_results(corpus, reference, tmp_path, monkeypatch,
                                                 helpers):
  """A build with no killed one before it asks for no example's earlier result: on an
  object store each question was a request an example."""
  from impax.pipelines import storage
  asked, exists = [], storage.exists
  monkeypatch.setattr(storage, "exists", lambda path: asked.append(path) or exists(path))
  out = tmp_path / "videos"
  plan = build.prepare("jsonl", corpus["videos-train"], str(out), "train",
                       ({**SMALL, "num_shards": 3},))
  assert not plan.resuming
  build.run(plan, beam_args=["--direct_running_mode=in_memory"])
  assert helpers.hashes(out) == helpers.hashes(reference)
  assert not [p for p in asked if "/examples/" in p]


def test_killed_after_a_shard_finishes_only_the_missing_shards(corpus, reference, tmp_path, helpers):
  out = tmp_path / "videos"
  proc = _start_build(corpus["videos-train"], out)
  _kill_when(proc, lambda: _published(out))
  helpers.nothing_half_written(out)
  done = {p: os.stat(p) for p in _published(out)}
  plan = build.prepare("jsonl", corpus["videos-train"], str(out), "train",
                       ({**SMALL, "num_shards": 3},))
  assert plan.resumed_shards == len(done) >= 1
  # A kill while a shard was being written leaves its temporary file; make sure
  # there is one, whenever the kill came: the finished build removes it.
  (out / ".videos-train.array_record-00002-of-00003.k1ll3d.partial").write_bytes(b"half")
  build.run(plan, workers=2)
  for path, before in done.items():  # not rewritten
    after = os.stat(path)
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
  assert helpers.hashes(out) == helpers.hashes(reference)
  assert helpers.metadata(out)["splits"]["train"]["num_examples"] == 10
