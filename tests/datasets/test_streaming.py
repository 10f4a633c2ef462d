"""Training straight from a bucket: the demo's prepared videos in moto's S3 server (and in
gcp-storage-emulator) on loopback, read by byte range through datasets/remote.py, give the
batches of the same dataset on disk; transient failures are retried, a deleted shard is
refused by name, and the disk cache stays within its limit. The dataset tools (verify,
inspect, dedup) and a training run read the bucket's URI as they read the folder."""

import asyncio
import collections
import functools
import http.server
import os
import random
import shutil
import socket
import struct
import sys
import threading
import time

import numpy as np
import pytest

from batches import assert_batches_equal, take
from impax.datasets import exclusions, loader, prepared, remote
from impax.datasets.loader import Bucket
from impax.tools import dedup, inspect, verify
from impax.train import metrics, trainer
from impax.train.config import Task, TrainConfig

PATCHES = loader.Patches(tubelet=(2, 8, 8), spectrogram=(8, 8), waveform=64)
ENV = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
       "AWS_DEFAULT_REGION": "us-east-1"}


class Proxy:
  """A loopback TCP proxy in front of a server: the next ranged GETs are answered by `faults`
  ("503": an HTTP 503; "reset": the connection reset) instead of forwarded."""

  def __init__(self, port: int):
    self.port, self.faults, self.served = port, collections.deque(), collections.Counter()
    self.loop = asyncio.new_event_loop()
    threading.Thread(target=self.loop.run_forever, daemon=True).start()
    server = asyncio.run_coroutine_threadsafe(
        asyncio.start_server(self._client, "127.0.0.1", 0), self.loop).result()
    self.url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"

  async def _client(self, reader, writer):
    up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.port)

    async def down():
      while data := await up_reader.read(1 << 16):
        writer.write(data)
        await writer.drain()
      writer.close()

    task = asyncio.ensure_future(down())
    while data := await reader.read(1 << 16):
      if data.startswith(b"GET ") and b"range:" in data.lower() and self.faults:
        fault = self.faults.popleft()
        self.served[fault] += 1
        if fault == "503":
          writer.write(b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n"
                       b"Connection: close\r\n\r\n")
          await writer.drain()
        else:  # an RST, not a FIN: linger 0
          writer.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                                     struct.pack("ii", 1, 0))
        writer.close()
        break
      up_writer.write(data)
      await up_writer.drain()
    up_writer.close()
    task.cancel()


@pytest.fixture(scope="module")
def s3(tmp_path_factory, serve):
  """A moto S3 server on loopback behind a fault-injecting proxy, the AWS environment
  pointing at the proxy (as a user's would at a bucket): (boto3 client, proxy)."""
  boto3 = pytest.importorskip("boto3")
  pytest.importorskip("moto")
  server, port = serve([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", "{port}"],
                       tmp_path_factory.mktemp("moto") / "moto.log")
  proxy = Proxy(port)
  try:
    with pytest.MonkeyPatch.context() as patch:
      for name, value in {**ENV, "AWS_ENDPOINT_URL": proxy.url}.items():
        patch.setenv(name, value)
      patch.setattr(remote, "BACKOFF", 0.01)
      yield boto3.client("s3"), proxy
  finally:
    server.terminate()
    server.wait(timeout=30)


def upload(client, folder, bucket, prefix):
  client.create_bucket(Bucket=bucket)
  for name in os.listdir(folder):
    client.upload_file(os.path.join(folder, name), bucket, f"{prefix}/{name}")


@pytest.fixture(scope="module")
def videos(demo_data, s3):
  """(local folder, its URI in the S3 server) of the demo's prepared videos."""
  client, _ = s3
  upload(client, demo_data["videos"], "data", "videos")
  return demo_data["videos"], "s3://data/videos"


def shards_of(folder, split="train"):
  return prepared.open_dataset(folder).split(split).shards


def test_records_read_by_byte_range_are_the_shards_records(videos, tmp_path):
  local, uri = videos
  dataset = prepared.open_dataset(local)
  expected = [data for _, data in dataset.records("train")]
  source = remote.RemoteSource.open(uri, shards_of(local), cache_dir=str(tmp_path),
                                    cache_limit=0)
  assert len(source) == len(expected) == dataset.num_records("train")
  order = list(range(len(expected)))
  random.Random(0).shuffle(order)
  for start in range(0, len(order), 7):
    positions = order[start:start + 7]
    assert source.read(positions) == [expected[p] for p in positions]
  assert not os.listdir(tmp_path)  # a limit of 0: nothing on disk


def video_task(dataset, **kw):
  task = loader.Task(name="video_text", dataset=dataset, objective="contrastive",
                     modalities=("video", "text"),
                     buckets=(loader.Bucket(video=(4, 32, 32)), loader.Bucket(video=(2, 48, 48))),
                     token_budget=256, text_length=12)
  return functools.partial(loader.Loader, task, seed=5, patches=PATCHES, **kw)




def steps_for_epochs(data_loader, epochs):
  """Steps whose examples cover `epochs` passes over the task's records."""
  seen, step = 0, 0
  while seen < epochs * data_loader.num_records:
    seen += data_loader.batch_sizes[data_loader.bucket_of(step)]
    step += 1
  return step


@pytest.mark.parametrize("workers", [0, 2])
def test_streamed_batches_are_the_local_ones_and_resume_exactly(videos, tmp_path, workers):
  local, uri = videos
  local_loader = video_task(local, num_workers=workers)()
  streamed = video_task(uri, num_workers=workers, cache_dir=str(tmp_path),
                        cache_limit=1 << 20)()
  steps = steps_for_epochs(local_loader, 2.2)  # over two epochs: each reshuffled
  expected = take(iter(local_loader), steps)
  it = iter(streamed)
  half = take(it, steps // 2)
  state = it.get_state()
  rest = take(it, steps - steps // 2)
  assert_batches_equal(half + rest, expected)
  resumed = iter(video_task(uri, num_workers=workers, cache_dir=str(tmp_path), cache_limit=0)())
  resumed.set_state(state)
  assert_batches_equal(take(resumed, steps - steps // 2), rest)


def test_a_mixture_with_a_bucket_gives_the_mixture_on_disk(videos, tmp_path):
  """A task mixing the bucket's dataset with a local one: the batches of the same mixture
  read from disk (a copy of the bucket's dataset in its place), over several epochs."""
  local, uri = videos
  copy = tmp_path / "copy"
  shutil.copytree(local, copy)
  on_disk = video_task({str(copy): 0.7, local: 0.3})()
  streamed = video_task({uri: 0.7, local: 0.3}, cache_dir=str(tmp_path / "cache"),
                        cache_limit=1 << 20)()
  assert streamed.roots == (uri, local)
  steps = steps_for_epochs(on_disk, 2.2)
  expected = take(iter(on_disk), steps)
  assert_batches_equal(take(iter(streamed), steps), expected)
  drawn = np.concatenate([b["dataset"] for b in expected])
  assert 0.5 < (drawn == 0).mean() < 0.9  # both datasets drawn, the bucket's more


def test_each_process_reads_only_its_slice(videos, tmp_path, monkeypatch):
  """Two processes of a two-process job: together the local batches, and each fetches only
  its own slice. Its source is asked, to read a step or to fetch one ahead (blocks of
  remote.BLOCK_STEPS steps, up to remote.AHEAD ahead), for the records of its half of that
  step's global batch and no other, and fetches no chunk but theirs (a request spans the
  chunks between two it fetches only where they lie within remote.MERGE_GAP). Bytes are not
  what this checks: a few steps ahead, each process's slices of this small dataset hold
  most of it, as one process's steps do (6 steps, fetched 4 to 6 ahead: 1.49 MB a
  process against 1.76 MB alone)."""
  local, uri = videos
  steps = 6
  whole = video_task(local, batch_multiple=2)()  # the global batch of two processes
  # the steps a process's source may be asked for: those made (the loader's prefetch buffer
  # makes a few more than taken) and those fetched ahead of them
  expected = take(iter(whole), steps + 4 + remote.AHEAD + remote.BLOCK_STEPS)
  ids = {id_: position for position, id_ in
         enumerate(exclusions.split_ids(prepared.open_dataset(local), "train"))}
  asked = collections.defaultdict(list)  # source -> [(step or None, positions)]
  fetched = collections.defaultdict(set)  # source -> chunks fetched

  def prefetch(self, step, stride, records_of):
    def told(later):
      asked[id(self)].append((later, records_of(later)))
      return asked[id(self)][-1][1]
    return original_prefetch(self, step, stride, told)

  def read(self, positions):
    asked[id(self)].append((None, list(positions)))
    return original_read(self, positions)

  def fetch(self, group):
    fetched[id(self.source)].update(group)
    return original_fetch(self, group)
  original_prefetch, original_read = remote.RemoteSource.prefetch, remote.RemoteSource.read
  original_fetch = remote._State._fetch
  monkeypatch.setattr(remote.RemoteSource, "prefetch", prefetch)
  monkeypatch.setattr(remote.RemoteSource, "read", read)
  monkeypatch.setattr(remote._State, "_fetch", fetch)

  parts = []
  for p in range(2):
    data_loader = video_task(uri, process_index=p, process_count=2, cache_dir=str(tmp_path),
                             cache_limit=0)()
    it = iter(data_loader)
    parts.append(take(it, steps))
    it.close()
    source = data_loader.source

    def half(step, p=p):
      batch = expected[step]["id"]
      return sorted(ids[i] for i in batch[p * len(batch) // 2:(p + 1) * len(batch) // 2])
    reads = [positions for step, positions in asked[id(source)] if step is None]
    assert [sorted(r) for r in reads[:steps]] == [half(s) for s in range(steps)]
    ahead = [(step, positions) for step, positions in asked[id(source)] if step is not None]
    assert ahead and all(sorted(positions) == half(step) for step, positions in ahead)
    wanted = {where[:2] for _, positions in asked[id(source)]
              for where in source._locate(positions)}
    assert fetched[id(source)] and fetched[id(source)] <= wanted
  for step in range(steps):
    for key in expected[step]:
      np.testing.assert_array_equal(
          np.concatenate([parts[0][step][key], parts[1][step][key]]), expected[step][key],
          err_msg=key)


def test_the_disk_cache_stays_within_its_limit(videos, tmp_path):
  local, uri = videos
  total = sum(s.num_bytes for s in shards_of(local))
  limit = total // 10
  data_loader = video_task(uri, num_workers=2, cache_dir=str(tmp_path), cache_limit=limit)()
  peak, done = [0], threading.Event()

  def measure():
    while not done.is_set():
      used = 0
      for dirpath, _, names in os.walk(tmp_path):
        for name in names:
          try:
            used += os.path.getsize(os.path.join(dirpath, name))
          except FileNotFoundError:
            pass
      peak[0] = max(peak[0], used)
      time.sleep(0.005)

  watcher = threading.Thread(target=measure)
  watcher.start()
  try:
    it = iter(data_loader)
    take(it, steps_for_epochs(data_loader, 1.5))
    it.close()
  finally:
    done.set()
    watcher.join()
  tokenizers = tmp_path / "tokenizers"  # the tokenizer's copy, if it went here, is no record
  tokenizer = sum(os.path.getsize(tokenizers / n) for n in os.listdir(tokenizers)) \
      if tokenizers.exists() else 0
  assert 0 < peak[0] - tokenizer <= limit


def test_a_transient_503_and_a_reset_are_retried(videos, s3, tmp_path):
  local, uri = videos
  _, proxy = s3
  expected = [data for _, data in prepared.open_dataset(local).records("train", [0, 5, 9])]
  source = remote.RemoteSource.open(uri, shards_of(local), cache_dir=str(tmp_path),
                                    cache_limit=0)
  proxy.faults.extend(["503", "reset", "503"])
  proxy.served.clear()
  assert source.read([0, 5, 9]) == expected
  assert proxy.served == {"503": 2, "reset": 1}


def test_a_kept_alive_connection_the_store_closed_is_opened_again(monkeypatch):
  """A store may close an idle kept-alive connection whenever it likes: the next request on
  it goes out again at once on a new connection, not as a failure (here no retry is left).
  moto closes every connection after its answer, so a loopback store that keeps them."""
  blob = bytes(range(256)) * 4
  connections = []

  class Store(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # connections kept alive, as S3's and GCS's are

    def setup(self):
      super().setup()
      connections.append(self.connection)

    def do_GET(self):  # noqa: N802 - BaseHTTPRequestHandler's name
      start, end = map(int, self.headers["Range"].removeprefix("bytes=").split("-"))
      self.send_response(206)
      self.send_header("Content-Length", str(end + 1 - start))
      self.end_headers()
      self.wfile.write(blob[start:end + 1])

    def log_message(self, *args):
      pass

  server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Store)
  threading.Thread(target=server.serve_forever, daemon=True).start()
  try:
    for name, value in {**ENV, "AWS_ENDPOINT_URL": f"http://127.0.0.1:{server.server_port}"
                        }.items():
      monkeypatch.setenv(name, value)
    monkeypatch.setattr(remote, "RETRIES", 0)
    assert remote.get("s3://b/blob", 0, 100) == blob[:100]
    connections[0].shutdown(socket.SHUT_RDWR)  # the store closes it, idle
    assert remote.get("s3://b/blob", 100, 300) == blob[100:300]
    assert len(connections) == 2
  finally:
    server.shutdown()
    server.server_close()


def test_a_deleted_shard_is_refused_by_name(videos, s3, tmp_path):
  local, _ = videos
  client, _ = s3
  upload(client, local, "gone", "videos")
  shards = shards_of(local)
  source = remote.RemoteSource.open("s3://gone/videos", shards, cache_dir=str(tmp_path),
                                    cache_limit=0)
  client.delete_object(Bucket="gone", Key=f"videos/{shards[-1].path}")
  # While training: its next read names it.
  with pytest.raises(remote.RemoteError, match=f"{shards[-1].path}.*impax verify"):
    source.read([len(source) - 1])
  # Before training: the loader refuses the dataset, naming the shard.
  with pytest.raises(prepared.DatasetError, match=f"{shards[-1].path}.*impax verify"):
    video_task("s3://gone/videos", cache_dir=str(tmp_path))()


def test_records_read_from_gcs_are_the_shards_records(demo_data, tmp_path, monkeypatch, serve):
  from google.cloud import storage
  pytest.importorskip("gcp_storage_emulator", reason="gcp-storage-emulator comes with impax[test]")
  server, port = serve([sys.executable, "-m", "gcp_storage_emulator", "start", "--host=127.0.0.1",
                        "--port={port}", "--in-memory"], tmp_path / "gcs.log")
  try:
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", f"http://127.0.0.1:{port}")
    client = storage.Client.create_anonymous_client()
    client.project = "test"
    bucket = client.create_bucket("data")
    local = demo_data["images"]
    for name in os.listdir(local):
      bucket.blob(f"images/{name}").upload_from_filename(os.path.join(local, name))
    dataset = prepared.open_dataset(local)
    expected = [data for _, data in dataset.records("train")]
    source = remote.RemoteSource.open("gs://data/images", shards_of(local),
                                      cache_dir=str(tmp_path / "cache"), cache_limit=1 << 20)
    order = list(range(len(expected)))[::-1]
    assert source.read(order) == [expected[p] for p in order]
  finally:
    server.terminate()
    server.wait(timeout=30)


def test_the_dataset_tools_read_a_bucket_where_it_is(videos, s3, tmp_path, capsys):
  """impax verify --deep, inspect --example and dedup --against on the URI, through the
  loader's client with AWS_ENDPOINT_URL set, say what they say of the dataset on disk."""
  local, uri = videos
  client, _ = s3
  assert verify.verify(uri, deep=True).ok

  def said(root, run):
    run(root)
    return capsys.readouterr().out.replace(root, "DATASET")
  assert said(uri, lambda r: inspect.main(r, example=3)) == \
      said(local, lambda r: inspect.main(r, example=3)).replace(
          f"card: none yet; `impax card DATASET` writes DATASET/card.html",
          "card: `impax card DATASET --output PATH` writes one")
  assert said(uri, lambda r: dedup.main([f"{r}:train"], against=[f"{r}:test"])) == \
      said(local, lambda r: dedup.main([f"{r}:train"], against=[f"{r}:test"]))
  # a shard changed in the bucket (same size, one byte) is found by its checksum
  shard = shards_of(local)[0].path
  data = bytearray(open(os.path.join(local, shard), "rb").read())
  data[len(data) // 2] ^= 1
  upload(client, local, "changed", "videos")
  client.put_object(Bucket="changed", Key=f"videos/{shard}", Body=bytes(data))
  report = verify.verify("s3://changed/videos")
  assert [p.file for p in report.problems] == [shard], report.describe()


def test_training_from_a_bucket_takes_the_steps_it_takes_from_disk(videos, tmp_path):
  local, uri = videos

  def losses(dataset, workdir):
    task = Task("video_text", dataset, "contrastive", ("video", "text"),
                buckets=(Bucket(video=(2, 16, 16)), Bucket(video=(4, 16, 16))),
                token_budget=288, text_length=8)
    config = TrainConfig(tasks=(task,), model="tiny", steps=3, warmup_steps=1, log_every=1,
                         eval_at_end=False, plots=False)
    assert trainer.train(config, str(workdir), log=lambda *_: None)["status"] == "finished"
    return [(r["step"], r["loss"]) for r in metrics.read(str(workdir / "metrics.jsonl"))
            if "loss" in r]
  from_disk = losses(local, tmp_path / "disk")
  assert len(from_disk) == 3 and losses(uri, tmp_path / "bucket") == from_disk
