"""Media read from, and shards and metadata written to, s3:// through Beam's FileSystems,
against moto's S3 server on loopback: the same shard bytes as a build of the same corpus on disk.
gs:// likewise against gcp-storage-emulator on loopback (impax[test] installs it)."""

import json
import os
import shutil
import sys
import time

import pytest

from impax.pipelines import build, read


SMALL = {"video_short_side": 32, "image_short_side": 32, "video_fps": 5.0}  # as conftest's builds
KEYS = {"aws_access_key_id": "testing", "aws_secret_access_key": "testing",
        "region_name": "us-east-1"}


@pytest.fixture(scope="module")
def s3(tmp_path_factory, serve):
  """(beam args, boto3 client) of a moto S3 server on a free loopback port."""
  boto3 = pytest.importorskip("boto3")
  pytest.importorskip("moto")
  server, port = serve([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", "{port}"],
                       tmp_path_factory.mktemp("moto") / "moto.log")
  endpoint = f"http://127.0.0.1:{port}"
  try:
    client = boto3.client("s3", endpoint_url=endpoint, **KEYS)
    args = [f"--s3_endpoint_url={endpoint}", "--s3_access_key_id=testing",
            "--s3_secret_access_key=testing", "--s3_region_name=us-east-1"]
    yield args, client
  finally:
    server.terminate()
    server.wait(timeout=30)


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


@pytest.fixture(scope="module")
def local_build(mixed_corpus, tmp_path_factory, helpers):
  local = tmp_path_factory.mktemp("local") / "mixed"
  helpers.build(mixed_corpus / "mixed.jsonl", local, num_shards=2)
  return local


def test_build_from_and_to_s3_gives_the_local_bytes(s3, mixed_corpus, local_build, tmp_path, helpers,
                                                    monkeypatch):
  args, client = s3
  local = local_build

  upload(client, mixed_corpus, "corpus", "demo")
  client.create_bucket(Bucket="data")
  monkeypatch.setattr(read, "RANGE_BYTES", 300)  # the manifest is read in several ranges
  plan = build.prepare("jsonl", "s3://corpus/demo/mixed.jsonl", "s3://data/sets/mixed",
                       "train", ({**SMALL, "num_shards": 2},), beam_args=args)
  summary = build.run(plan, workers=2, beam_args=args)
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
  plan = build.prepare("jsonl", "s3://corpus/demo/mixed.jsonl", "s3://data/sets/mixed",
                       "train", ({**SMALL, "num_shards": 2},), beam_args=args)
  assert plan.up_to_date


def test_a_spec_reads_its_annotations_and_media_from_s3(s3, tmp_path, helpers):
  from PIL import Image
  args, client = s3
  root = tmp_path / "pets"
  for cls, colour in (("cat", "red"), ("dog", "blue")):
    (root / cls).mkdir(parents=True)
    Image.new("RGB", (40, 30), colour).save(root / cls / f"{colour}.png")
  upload(client, root, "pets", "images")
  # Through the command line: the object-store options after `--` reach the
  # launcher's own reads (the folder listing) as well as the workers.
  from impax import cli
  assert cli.main(["build", "imagefolder", "--input", "s3://pets/images", "--output",
                   str(tmp_path / "out"), "--workers", "1", "--image-short-side", "32",
                   "--", *args]) == 0
  assert helpers.metadata(tmp_path / "out")["splits"]["train"]["num_examples"] == 2
  assert helpers.metadata(tmp_path / "out")["labels"] == ["cat", "dog"]


def test_build_from_and_to_gs_gives_the_local_bytes(mixed_corpus, local_build, tmp_path, helpers,
                                                    monkeypatch, serve):
  from google.cloud import storage  # an impax dependency, as gs:// in Beam needs it
  pytest.importorskip("gcp_storage_emulator", reason="gcp-storage-emulator comes with impax[test]")
  server, port = serve([sys.executable, "-m", "gcp_storage_emulator", "start", "--host=127.0.0.1",
                        "--port={port}", "--in-memory"], tmp_path / "gcs.log")
  try:
    # The GCS client library, in this process and in the workers it starts, talks to the emulator.
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", f"http://127.0.0.1:{port}")
    client = storage.Client.create_anonymous_client()
    client.project = "test"
    bucket = client.create_bucket("corpus")
    client.create_bucket("data")
    for dirpath, _, files in os.walk(mixed_corpus):
      for name in files:
        path = os.path.join(dirpath, name)
        bucket.blob(f"demo/{os.path.relpath(path, mixed_corpus)}").upload_from_filename(path)
    monkeypatch.setattr(read, "RANGE_BYTES", 300)
    plan = build.prepare("jsonl", "gs://corpus/demo/mixed.jsonl", "gs://data/sets/mixed",
                         "train", ({**SMALL, "num_shards": 2},))
    summary = build.run(plan, workers=2)
    assert (summary["num_examples"], summary["num_failed"]) == (6, 1)
    remote = tmp_path / "remote"
    remote.mkdir()
    for blob in client.list_blobs("data", prefix="sets/mixed/"):
      blob.download_to_filename(str(remote / blob.name.rsplit("/", 1)[1]))
    assert sorted(os.listdir(remote)) == sorted(
        [*helpers.hashes(local_build), "metadata.json", "tokenizer.model", "failures-train.jsonl"])
    assert helpers.hashes(remote) == helpers.hashes(local_build)
  finally:
    server.terminate()
    server.wait(timeout=30)


def test_a_store_without_credentials_or_bucket_and_a_held_lease(s3, mixed_corpus, monkeypatch,
                                                                 capsys):
  """One `impax: error:` line each, at once (Beam would retry for minutes): no credentials,
  no such bucket; and a build's lease on an s3:// output refuses a second build."""
  from impax import cli
  from impax.pipelines import lock
  args, client = s3
  endpoint = next(a for a in args if a.startswith("--s3_endpoint_url"))
  for name in [n for n in os.environ if n.startswith("AWS_")]:
    monkeypatch.delenv(name)
  monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent")
  monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent")
  manifest = str(mixed_corpus / "mixed.jsonl")
  build = ["build", "jsonl", "--input", manifest, "--quiet", "--output"]
  assert cli.main([*build, "s3://nobucket/x", "--", endpoint]) == cli.EXIT_STORE
  assert "impax: error: no credentials for s3://nobucket/x: set AWS_ACCESS_KEY_ID" in \
      capsys.readouterr().err
  assert cli.main([*build, "s3://nobucket/x", "--", *args]) == cli.EXIT_STORE
  assert "impax: error: bucket nobucket of s3://nobucket/x does not exist" in \
      capsys.readouterr().err
  client.create_bucket(Bucket="leased")
  client.put_object(Bucket="leased", Key="out/" + lock.LOCK_NAME, Body=json.dumps(
      {"what": "impax build", "host": "elsewhere", "pid": 7, "since": "2026-12-07T00:00:00+00:00",
       "expires": time.time() + 600}).encode())
  assert cli.main([*build, "s3://leased/out", "--", *args]) == cli.EXIT_LOCKED
  assert ("impax: error: s3://leased/out is being built by impax build on host elsewhere, pid 7, "
          "since 2026-12-07T00:00:00+00:00") in capsys.readouterr().err
  client.put_object(Bucket="leased", Key="out/" + lock.LOCK_NAME, Body=json.dumps(
      {"what": "impax build", "host": "elsewhere", "pid": 7, "since": "2026-12-07T00:00:00+00:00",
       "expires": time.time() - 1}).encode())  # expired: its holder stopped renewing it
  assert cli.main([*build, "s3://leased/out", "--", *args]) == 0
  keys = [o["Key"] for o in client.list_objects_v2(Bucket="leased")["Contents"]]
  assert "out/metadata.json" in keys and "out/" + lock.LOCK_NAME not in keys
