"""Media read from, and shards and metadata written to, s3:// through Beam's FileSystems,
against moto's S3 server on loopback: the same shard bytes as a build of the same corpus on disk."""

import json
import os
import shutil
import socket
import subprocess
import sys
import time

import pytest

from impax.pipelines import build, read

boto3 = pytest.importorskip("boto3")
pytest.importorskip("moto")

SMALL = {"video_short_side": 32, "image_short_side": 32, "video_fps": 5.0}  # as conftest's builds
KEYS = {"aws_access_key_id": "testing", "aws_secret_access_key": "testing",
        "region_name": "us-east-1"}


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
  """(beam args, boto3 client) of a moto S3 server on a free loopback port."""
  with socket.socket() as sock:
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
  log = open(tmp_path_factory.mktemp("moto") / "moto.log", "wb")
  server = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                            stdout=log, stderr=subprocess.STDOUT)
  endpoint = f"http://127.0.0.1:{port}"
  try:
    for _ in range(200):
      try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        break
      except OSError:
        assert server.poll() is None, "moto's server exited"
        time.sleep(0.1)
    client = boto3.client("s3", endpoint_url=endpoint, **KEYS)
    args = [f"--s3_endpoint_url={endpoint}", "--s3_access_key_id=testing",
            "--s3_secret_access_key=testing", "--s3_region_name=us-east-1"]
    yield args, client
  finally:
    server.terminate()
    server.wait(timeout=30)
    log.close()


def upload(client, folder, bucket, prefix):
  client.create_bucket(Bucket=bucket)
  for dirpath, _, files in os.walk(folder):
    for name in files:
      path = os.path.join(dirpath, name)
      client.upload_file(path, bucket, f"{prefix}/{os.path.relpath(path, folder)}")


def listing(client, bucket, prefix):
  pages = client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix + "/")
  return sorted(o["Key"][len(prefix) + 1:] for page in pages for o in page.get("Contents", []))


@pytest.fixture(scope="module")
def mixed_corpus(corpus, tmp_path_factory):
  """Two of each modality of the demo corpus and a missing file, in one manifest."""
  root = tmp_path_factory.mktemp("mixed")
  lines = []
  for key in ("videos-train", "images-train", "audio-train"):
    with open(corpus[key]) as f:
      for line in [json.loads(l) for l in f][:2]:
        media_key = next(k for k in ("video", "image", "audio") if k in line)
        src = os.path.join(os.path.dirname(corpus[key]), line[media_key])
        os.makedirs(root / os.path.dirname(line[media_key]), exist_ok=True)
        shutil.copy(src, root / line[media_key])
        lines.append({k: line[k] for k in ("id", media_key, "label", "caption") if k in line})
  lines.append({"id": "gone", "video": "videos/gone.mp4", "label": "zero"})
  (root / "mixed.jsonl").write_text("".join(json.dumps(l) + "\n" for l in lines))
  return root


def test_build_from_and_to_s3_gives_the_local_bytes(s3, mixed_corpus, tmp_path, helpers, monkeypatch):
  args, client = s3
  local = tmp_path / "local" / "mixed"
  helpers.build(mixed_corpus / "mixed.jsonl", local, num_shards=2)

  upload(client, mixed_corpus, "corpus", "demo")
  client.create_bucket(Bucket="data")
  monkeypatch.setattr(read, "RANGE_BYTES", 300)  # the manifest is read in several ranges
  plan, facts = build.prepare("jsonl", "s3://corpus/demo/mixed.jsonl", "s3://data/sets/mixed",
                              "train", ({**SMALL, "num_shards": 2},), beam_args=args)
  summary = build.run(plan, facts, workers=2, beam_args=args)
  assert (summary["num_examples"], summary["num_failed"]) == (6, 1)

  expected = helpers.hashes(local)
  names = listing(client, "data", "sets/mixed")
  assert names == sorted([*expected, "metadata.json", "tokenizer.model", "failures-train.jsonl"])
  remote = tmp_path / "remote"
  remote.mkdir()
  for name in names:
    client.download_file("data", f"sets/mixed/{name}", str(remote / name))
  assert helpers.hashes(remote) == expected
  assert (remote / "tokenizer.model").read_bytes() == (local / "tokenizer.model").read_bytes()
  meta = helpers.metadata(remote)
  assert meta["splits"]["train"]["media_sha256"] == helpers.metadata(local)["splits"]["train"]["media_sha256"]
  [failure] = helpers.failures(remote)
  assert failure["stage"] == "read" and failure["source"] == "s3://corpus/demo/mixed.jsonl:7"
  assert "s3://corpus/demo/videos/gone.mp4" in failure["error"] and "Not found" in failure["error"]

  # Built again: already up to date, read from the object store's metadata.
  plan, facts = build.prepare("jsonl", "s3://corpus/demo/mixed.jsonl", "s3://data/sets/mixed",
                              "train", ({**SMALL, "num_shards": 2},), beam_args=args)
  assert facts["up_to_date"]


def test_a_spec_reads_its_annotations_and_media_from_s3(s3, tmp_path, helpers):
  from PIL import Image
  args, client = s3
  root = tmp_path / "pets"
  for cls, colour in (("cat", "red"), ("dog", "blue")):
    (root / cls).mkdir(parents=True)
    Image.new("RGB", (40, 30), colour).save(root / cls / f"{colour}.png")
  upload(client, root, "pets", "images")
  plan, facts = build.prepare("imagefolder", "s3://pets/images", str(tmp_path / "out"), "train",
                              (SMALL,), beam_args=args)
  summary = build.run(plan, facts, workers=1, beam_args=args)
  assert (summary["num_examples"], summary["num_failed"]) == (2, 0)
  assert helpers.metadata(tmp_path / "out")["labels"] == ["cat", "dog"]
