"""Training straight from a bucket (issue 29): the loader reading s3:// against reading disk.

    .venv/bin/python benchmarks/streaming.py [--images 1200] [--videos 96] [--batches 300]
        [--warmup 5] [--rounds 3] [--latency-ms 0 20] [--server gofakes3|moto] [--workdir DIR]
        [--smoke]

Builds two of the demo's datasets as the demo builds them (impax.demo.write_corpus and its
build settings: 64 px, 10 fps, 2-second clips of 20 frames; --images and --videos count all
splits, two thirds are train), starts an S3 server on loopback, uploads both, and puts a
TCP proxy (asyncio, a process per latency) in front of the server that holds every request
for --latency-ms before forwarding it, to stand in for a real bucket. The loader reads
`s3://` through boto3's standard environment (AWS_ENDPOINT_URL: the proxy).

The server: gofakes3 (Go, in memory; --server gofakes3, the default), built on first use
with `go install` from the Go module proxy into ~/.cache/impax/bench-tools (no project
dependency), or moto's (Python; the tests' server). A real bucket's CPU is not on the
training host; on a 2-core machine moto's is: 4-7 ms a request, against gofakes3's 0.4.
Where Go is missing or the build fails, the run uses moto and says so (`settings.server`).
--smoke builds nothing: gofakes3 if already built, else moto.

For each dataset (the demo's image-text task at its buckets, 32x32 and 48x48; a video-text
task at one bucket of 16x64x64; the demo's token budget, tiny's 2x8x8 patches) and each
latency, --rounds rounds of a run from disk and a run from the bucket (which goes first
alternates: on a shared machine the load moves between runs), each with 2 worker
processes, the same seed, the disk cache limited to a tenth of the split's shard bytes in a
fresh folder; --warmup batches, then --batches timed. Reports, as medians over the rounds
(each round's figures under `rounds`):
  - batches/s of each and streamed / local (goal: >= 0.9 at 20 ms);
  - the time from constructing the Loader to its first batch, from the bucket and from disk;
  - the peak bytes in the cache folder (polled) and the peak RSS (VmHWM, polled) of every
    loader process, main and workers, against the limit;
  - requests and bytes through the proxy per timed batch, and the CPU milliseconds per
    timed batch of the loader's processes (local and streamed) and of the server and the
    proxy (on a 2-core machine they compete with the loader; a real bucket's do not);
  - the loader's CPU alone, local over streamed (`loader_cpu_local_over_streamed`): what
    the ratio is bound by where the loader's processes have the cores to themselves;
  - whether the warm-up batches from the bucket are those from disk (the same work).
Prints JSON. Every server it starts is stopped by its process id at the end, also on error.
--smoke: tiny datasets and budgets, 3 timed batches, one round (the figures mean nothing).
"""

import argparse
import asyncio
import dataclasses
import json
import mmap
import os
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import threading
import time

import numpy as np
import psutil

from impax.datasets import decode, loader, prepared
from impax.pipelines import processes

PATCHES = loader.Patches(tubelet=(2, 8, 8))  # the tiny preset's, which the demo trains
# The demo config's image-text task (train/configs/demo.py): its buckets, budget, augmentation.
AUGMENT = decode.Augment(crop_area=(0.6, 1.0), flip=False)
IMAGE_BUCKETS = (loader.Bucket(image=(32, 32)), loader.Bucket(image=(48, 48)))
VIDEO_BUCKETS = (loader.Bucket(video=(16, 64, 64)),)
TOKEN_BUDGET = 3072  # the demo's, every task
BUCKET = "data"
AWS = {"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench",
       "AWS_DEFAULT_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true"}
METHODS = (b"GET ", b"HEAD ", b"PUT ", b"POST ", b"DELETE ")
STATS = struct.Struct("<qq")  # the proxy's counters: requests, bytes sent back
GOFAKES3 = "github.com/johannesboyne/gofakes3/cmd/gofakes3@v1.2.0"
GOFAKES3_BIN = os.path.expanduser("~/.cache/impax/bench-tools/gofakes3-v1.2.0/gofakes3")


# -- the servers -------------------------------------------------------------------------


def stop(server: subprocess.Popen) -> None:
  if server.poll() is None:
    server.terminate()
    try:
      server.wait(timeout=30)
    except subprocess.TimeoutExpired:
      server.kill()
      server.wait()


def gofakes3(build: bool) -> tuple[str | None, str]:
  """(gofakes3's command, None where there is none; why not), built on first use if `build`."""
  if os.path.exists(GOFAKES3_BIN):
    return GOFAKES3_BIN, ""
  if not build:
    return None, "not built (--smoke builds nothing)"
  if shutil.which("go") is None:
    return None, "no `go` on PATH to build it"
  done = subprocess.run(["go", "install", GOFAKES3], capture_output=True, text=True,
                        env={**os.environ, "GOBIN": os.path.dirname(GOFAKES3_BIN)})
  if done.returncode or not os.path.exists(GOFAKES3_BIN):
    return None, f"`go install {GOFAKES3}` failed: {done.stderr.strip()[-300:]}"
  return GOFAKES3_BIN, ""


def start_server(kind: str, folder: str, smoke: bool) -> tuple[str, subprocess.Popen, int]:
  """(the server's name, its process, its port): gofakes3 where asked and built, else moto."""
  if kind == "gofakes3":
    command, why = gofakes3(build=not smoke)
    if command:
      server, port = processes.serve(
          [command, "-backend", "memory", "-quiet", "-host", "127.0.0.1:{port}"],
          os.path.join(folder, "gofakes3.log"))
      return "gofakes3", server, port
    print(f"gofakes3: {why}; the S3 server is moto's", file=sys.stderr)
  server, port = processes.serve(
      [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", "{port}"],
      os.path.join(folder, "moto.log"))
  return "moto", server, port


def run_proxy(listen: int, upstream: int, latency_ms: float, stats_path: str) -> None:
  """The proxy process: forwards loopback TCP to `upstream`, holding each chunk that starts
  an HTTP request for `latency_ms` first (a connection waits, others go on, as at a bucket);
  counts requests and bytes sent back in `stats_path` (shared memory the parent reads).
  It reads up to 1 MiB at a time (64 KiB took a loop turn per 64 KiB of a video chunk: the
  stand-in's CPU, on the loader's cores here, a real bucket's not)."""
  with open(stats_path, "r+b") as f:
    stats = mmap.mmap(f.fileno(), STATS.size)
  counts = [0, 0]
  delay = latency_ms / 1000

  def count(requests: int, down: int) -> None:
    counts[0] += requests
    counts[1] += down
    STATS.pack_into(stats, 0, *counts)

  async def client(reader, writer):
    up_reader, up_writer = await asyncio.open_connection("127.0.0.1", upstream)

    async def down():
      try:
        while data := await up_reader.read(1 << 20):
          count(0, len(data))
          writer.write(data)
          await writer.drain()
      except ConnectionError:
        pass
      writer.close()

    task = asyncio.ensure_future(down())
    try:
      while data := await reader.read(1 << 20):
        if data.startswith(METHODS):
          count(1, 0)
          if delay:
            await asyncio.sleep(delay)
        up_writer.write(data)
        await up_writer.drain()
    except ConnectionError:
      pass
    up_writer.close()
    task.cancel()

  async def main():
    server = await asyncio.start_server(client, "127.0.0.1", listen)
    async with server:
      await server.serve_forever()

  asyncio.run(main())


class Proxy:
  """A proxy process in front of the S3 server, and its counters."""

  def __init__(self, upstream: int, latency_ms: float, folder: str):
    self.latency_ms = latency_ms
    path = os.path.join(folder, f"proxy-{latency_ms:g}ms.stats")
    with open(path, "wb") as f:
      f.write(bytes(STATS.size))
    with open(path, "r+b") as f:
      self.stats = mmap.mmap(f.fileno(), STATS.size)
    self.process, port = processes.serve(
        [sys.executable, os.path.abspath(__file__), "--proxy", "{port}", str(upstream),
         str(latency_ms), path], os.path.join(folder, f"proxy-{latency_ms:g}ms.log"))
    self.url = f"http://127.0.0.1:{port}"

  def counts(self) -> tuple[int, int]:
    return STATS.unpack_from(self.stats, 0)


def upload(endpoint: str, folder: str, prefix: str) -> None:
  """Every file of a prepared dataset into the bucket, straight to the server (no proxy)."""
  import boto3  # here: each Grain worker process imports this module, and needs no boto3
  client = boto3.client("s3", endpoint_url=endpoint)
  try:
    client.create_bucket(Bucket=BUCKET)
  except (client.exceptions.BucketAlreadyOwnedByYou, client.exceptions.BucketAlreadyExists):
    pass  # moto's answer, gofakes3's
  for name in sorted(os.listdir(folder)):
    path = os.path.join(folder, name)
    if os.path.isfile(path):
      client.upload_file(path, BUCKET, f"{prefix}/{name}")


# -- the datasets ------------------------------------------------------------------------


def build_datasets(root: str, images: int, videos: int) -> dict[str, str]:
  """{"images", "videos"}: the train splits of the demo's datasets at these sizes, built as
  the demo builds them (kept in root: a second run reuses them)."""
  out = {m: os.path.join(root, "data", m) for m in ("images", "videos")}
  marker = os.path.join(root, "data", f"sizes-{images}-{videos}")
  if os.path.exists(marker):
    return out
  shutil.rmtree(root, ignore_errors=True)
  # In a process of its own: what building imports and holds (Beam, TensorFlow) would
  # otherwise be in the peak RSS of the loader's main process measured here.
  subprocess.run([sys.executable, os.path.abspath(__file__), "--build", root, str(images),
                  str(videos)], check=True)
  open(marker, "w").close()
  return out


def run_build(root: str, images: int, videos: int) -> None:
  """The build process: the demo corpus at these sizes, and its image and video train splits."""
  # Here, not at the top: each Grain worker process imports this module (Beam and
  # scikit-learn are seconds of its start).
  from impax import demo
  from impax.pipelines import build
  corpus = os.path.join(root, "corpus")
  manifests = demo.write_corpus(corpus, videos=videos, images=images, audio=6)
  for modality in ("images", "videos"):
    plan = build.prepare("jsonl", manifests[f"{modality}-train"],
                         os.path.join(root, "data", modality), "train", (demo.settings(corpus),))
    summary = build.run(plan, workers=1)
    assert summary["num_failed"] == 0, summary


def tasks(paths: dict[str, str], budget: int) -> dict[str, tuple[str, loader.Task]]:
  """{name: (local folder, task)}: the demo's image-text task, and video-text at 16x64x64."""
  return {
      "image_text": (paths["images"], loader.Task(
          "image_text", paths["images"], "contrastive", ("image", "text"),
          buckets=IMAGE_BUCKETS, token_budget=budget, augment=AUGMENT)),
      "video_16x64x64": (paths["videos"], loader.Task(
          "video_text", paths["videos"], "contrastive", ("video", "text"),
          buckets=VIDEO_BUCKETS, token_budget=budget, augment=AUGMENT)),
  }


# -- measuring ---------------------------------------------------------------------------


def hwm(pid: int | str) -> int:
  """A process's peak resident bytes (VmHWM); 0 when it is gone."""
  try:
    with open(f"/proc/{pid}/status") as f:
      for line in f:
        if line.startswith("VmHWM:"):
          return int(line.split()[1]) * 1024
  except (FileNotFoundError, ProcessLookupError):
    pass
  return 0


def folder_bytes(folder: str) -> int:
  total = 0
  for path, _, names in os.walk(folder):
    for name in names:
      try:
        total += os.path.getsize(os.path.join(path, name))
      except FileNotFoundError:  # evicted meanwhile
        pass
  return total


class Watcher:
  """Polls, in a thread, the bytes under the cache folder and the peak RSS of this process
  and of each of its child processes but the servers (the loader's workers): their maxima."""

  def __init__(self, cache_dir: str, servers: set[int], every: float = 0.02):
    self.cache_dir, self.servers, self.every = cache_dir, servers, every
    self.peak_cache, self.workers = 0, {}
    self.done = threading.Event()
    # VmHWM since now: the peak of this run, not of the runs before it in this process
    with open("/proc/self/clear_refs", "w") as f:
      f.write("5")
    self.thread = threading.Thread(target=self._poll, daemon=True)
    self.thread.start()

  def loader_processes(self) -> list[psutil.Process]:
    """This process and its children but the servers and multiprocessing's resource tracker."""
    out = []
    for child in psutil.Process().children(recursive=True):
      try:
        if child.pid not in self.servers and "resource_tracker" not in " ".join(child.cmdline()):
          out.append(child)
      except psutil.Error:
        continue
    return [psutil.Process()] + out

  def _poll(self) -> None:
    while not self.done.is_set():
      self.peak_cache = max(self.peak_cache, folder_bytes(self.cache_dir))
      for process in self.loader_processes()[1:]:
        self.workers[process.pid] = max(self.workers.get(process.pid, 0), hwm(process.pid))
      self.done.wait(self.every)

  def stop(self) -> dict:
    self.done.set()
    self.thread.join()
    return {"peak_cache_bytes": self.peak_cache,
            "peak_rss_bytes": {"main": hwm("self"),
                               "workers": [v for _, v in sorted(self.workers.items())]}}


def cpu_seconds(processes: list[psutil.Process]) -> dict[int, float]:
  out = {}
  for process in processes:
    try:
      times = process.cpu_times()
      out[process.pid] = times.user + times.system
    except psutil.Error:
      pass
  return out


def cpu_since(before: dict[int, float], processes: list[psutil.Process]) -> float:
  """CPU seconds these processes took since `before` (one taken before started at 0)."""
  return sum(v - before.get(pid, 0.0) for pid, v in cpu_seconds(processes).items())


def measure(task: loader.Task, *, warmup: int, batches: int, cache_dir: str, cache_limit: int,
            servers: dict[str, int], proxy: Proxy | None = None) -> tuple[dict, list[dict]]:
  """One loader run: (its figures, its warm-up batches)."""
  os.makedirs(cache_dir)
  watcher = Watcher(cache_dir, set(servers.values()))
  start = time.perf_counter()
  data = loader.Loader(task, seed=0, patches=PATCHES, num_workers=2, cache_dir=cache_dir,
                       cache_limit=cache_limit)
  it = iter(data)
  kept = [next(it)]
  first = time.perf_counter() - start
  kept += [next(it) for _ in range(warmup - 1)]
  requests, sent = proxy.counts() if proxy else (0, 0)
  # CPU while timed: the loader's processes (main and workers), and each server's
  server_processes = {name: psutil.Process(pid) for name, pid in servers.items()}
  loaders = watcher.loader_processes()
  cpu = cpu_seconds(loaders + list(server_processes.values()))
  start = time.perf_counter()
  for _ in range(batches):
    next(it)
  seconds = time.perf_counter() - start
  loader_cpu = cpu_since(cpu, watcher.loader_processes())
  server_cpu = {name: round(cpu_since(cpu, [p]), 2) for name, p in server_processes.items()}
  figures = {"first_batch_s": round(first, 3), "batches_per_s": round(batches / seconds, 2),
             "timed_s": round(seconds, 2), "batch_sizes": list(data.batch_sizes),
             "loader_cpu_ms_per_batch": round(1e3 * loader_cpu / batches, 1)}
  it.close()
  figures.update(watcher.stop())
  if proxy:
    now = proxy.counts()
    figures["requests_per_batch"] = round((now[0] - requests) / batches, 2)
    figures["bucket_bytes_per_batch"] = round((now[1] - sent) / batches)
    figures["server_cpu_ms_per_batch"] = {
        name: round(1e3 * v / batches, 1) for name, v in server_cpu.items() if v}
  return figures, kept


def same(a: list[dict], b: list[dict]) -> bool:
  return len(a) == len(b) and all(
      x.keys() == y.keys() and all(np.array_equal(x[k], y[k]) for k in x) for x, y in zip(a, b))


def median(values):
  return round(float(np.median(values)), 3)


def compare(name: str, local_path: str, task: loader.Task, args, proxies: dict[float, Proxy],
            servers: dict[str, int], work: str) -> dict:
  """Each latency: --rounds pairs of runs, from disk and from the bucket, in turn first; the
  medians over rounds (the ratio: of each round's), the peaks over all."""
  shards = prepared.open_dataset(local_path).split("train").shards
  dataset_bytes = sum(s.num_bytes for s in shards)
  limit = dataset_bytes // 10
  out = {"dataset_bytes": dataset_bytes, "shards": len(shards), "cache_limit": limit}
  remote_task = dataclasses.replace(task, dataset=f"s3://{BUCKET}/{name}")
  for latency, proxy in proxies.items():
    os.environ["AWS_ENDPOINT_URL"] = proxy.url  # the loader's processes read it (boto3)
    runs = os.path.join(work, "runs", f"{name}-{latency:g}ms")
    shutil.rmtree(runs, ignore_errors=True)
    common = {"warmup": args.warmup, "batches": args.batches, "cache_limit": limit,
              "servers": servers}
    rounds = []
    for r in range(args.rounds):
      figures, batches = {}, {}
      # in turn first: a load that rises or falls through a round favours neither
      for side in ("local", "streamed") if r % 2 == 0 else ("streamed", "local"):
        folder = os.path.join(runs, f"round-{r}", side)
        if side == "local":
          figures[side], batches[side] = measure(task, cache_dir=folder, **common)
        else:
          figures[side], batches[side] = measure(remote_task, cache_dir=folder, proxy=proxy,
                                                 **common)
      figures["first"] = "local" if r % 2 == 0 else "streamed"
      figures["batches_equal"] = same(batches["local"], batches["streamed"])
      rounds.append(figures)

    def each(side, key):
      return [f[side][key] for f in rounds]
    local_bps, streamed_bps = each("local", "batches_per_s"), each("streamed", "batches_per_s")
    local_cpu = each("local", "loader_cpu_ms_per_batch")
    streamed_cpu = each("streamed", "loader_cpu_ms_per_batch")
    first_local, first_streamed = each("local", "first_batch_s"), each("streamed", "first_batch_s")
    servers_cpu = each("streamed", "server_cpu_ms_per_batch")
    out[f"{latency:g}ms"] = {
        "batches_per_s_local": median(local_bps),
        "batches_per_s_streamed": median(streamed_bps),
        "ratio_streamed_over_local": median([b / a for a, b in zip(local_bps, streamed_bps)]),
        "first_batch_s_local": median(first_local),
        "first_batch_s_streamed": median(first_streamed),
        "first_batch_streamed_over_local": median(
            [b / a for a, b in zip(first_local, first_streamed)]),
        "peak_cache_bytes": max(each("streamed", "peak_cache_bytes")),
        "cache_limit": limit,
        "peak_cache_within_limit": max(each("streamed", "peak_cache_bytes")) <= limit,
        "peak_rss_bytes": {
            side: {"main": max(f[side]["peak_rss_bytes"]["main"] for f in rounds),
                   "workers": max((f[side]["peak_rss_bytes"]["workers"] for f in rounds),
                                  key=max)}
            for side in ("streamed", "local")},
        "requests_per_batch": median(each("streamed", "requests_per_batch")),
        "bucket_bytes_per_batch": round(median(each("streamed", "bucket_bytes_per_batch"))),
        # on a 2-core machine CPU is what batches/s is bound by: where it goes, per batch
        "loader_cpu_ms_per_batch": {"local": median(local_cpu), "streamed": median(streamed_cpu)},
        "server_cpu_ms_per_batch": {server: median([c.get(server, 0.0) for c in servers_cpu])
                                    for server in sorted(set().union(*servers_cpu))},
        # the loader's CPU alone, local over streamed: the ratio were the server off the host
        # (None where no round's streamed CPU time was above the clock's tick, as in a smoke
        # run's few batches)
        "loader_cpu_local_over_streamed": median(
            [a / b for a, b in zip(local_cpu, streamed_cpu) if b > 0]) if any(streamed_cpu)
            else None,
        "batch_sizes": rounds[0]["local"]["batch_sizes"],
        "batches_equal": all(f["batches_equal"] for f in rounds),
        "rounds": [{"first": f["first"],
                    "batches_per_s": {"local": f["local"]["batches_per_s"],
                                      "streamed": f["streamed"]["batches_per_s"]},
                    "ratio": round(f["streamed"]["batches_per_s"] / f["local"]["batches_per_s"],
                                   3),
                    "loader_cpu_ms_per_batch": {
                        side: f[side]["loader_cpu_ms_per_batch"] for side in ("local", "streamed")},
                    "server_cpu_ms_per_batch": f["streamed"]["server_cpu_ms_per_batch"],
                    "timed_s": {"local": f["local"]["timed_s"],
                                "streamed": f["streamed"]["timed_s"]}}
                   for f in rounds],
    }
    print(json.dumps({name: {f"{latency:g}ms": out[f"{latency:g}ms"]}}), file=sys.stderr,
          flush=True)
  return out


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--images", type=int, default=1200, help="the demo's: 1200 (800 train)")
  parser.add_argument("--videos", type=int, default=96)
  parser.add_argument("--batches", type=int, default=300, help="timed batches per run")
  parser.add_argument("--warmup", type=int, default=5, help="batches before the timing")
  parser.add_argument("--rounds", type=int, default=3,
                      help="pairs of runs (disk, bucket) per dataset and latency: medians")
  parser.add_argument("--latency-ms", type=float, nargs="+", default=[0.0, 20.0])
  parser.add_argument("--token-budget", type=int, default=TOKEN_BUDGET)
  parser.add_argument("--server", choices=("gofakes3", "moto"), default="gofakes3",
                      help="the S3 server on loopback (gofakes3: built on first use with Go)")
  parser.add_argument("--workdir", default=os.path.join(tempfile.gettempdir(),
                                                        "impax-bench-streaming"))
  parser.add_argument("--smoke", action="store_true", help="tiny sizes: the script runs")
  parser.add_argument("--proxy", nargs=4, help=argparse.SUPPRESS)  # the proxy process
  parser.add_argument("--build", nargs=3, help=argparse.SUPPRESS)  # the build process
  args = parser.parse_args()
  if args.proxy:
    listen, upstream, latency, stats = args.proxy
    run_proxy(int(listen), int(upstream), float(latency), stats)
    return
  if args.build:
    root, images, videos = args.build
    run_build(root, int(images), int(videos))
    return
  if args.smoke:
    args.images, args.videos, args.batches, args.warmup, args.token_budget = 48, 12, 3, 2, 512
    args.rounds = 1
  from absl import flags
  flags.FLAGS.mark_as_parsed()  # Grain's multiprocessing reads absl flags
  started = time.perf_counter()
  os.makedirs(args.workdir, exist_ok=True)
  paths = build_datasets(os.path.join(args.workdir, "build"), args.images, args.videos)
  built = time.perf_counter() - started
  os.environ.update(AWS)
  # the tokenizer's copy goes here, not into the cache folders measured
  os.environ["IMPAX_CACHE_DIR"] = os.path.join(args.workdir, "tokenizer-cache")
  servers: list[subprocess.Popen] = []
  try:
    server_name, server, port = start_server(args.server, args.workdir, args.smoke)
    servers.append(server)
    for modality, path in paths.items():
      upload(f"http://127.0.0.1:{port}", path, {"images": "image_text",
                                                 "videos": "video_16x64x64"}[modality])
    proxies = {}
    for latency in args.latency_ms:
      proxies[latency] = Proxy(port, latency, args.workdir)
      servers.append(proxies[latency].process)
    results = {"settings": {"images": args.images, "videos": args.videos,
                            "batches": args.batches, "warmup": args.warmup,
                            "rounds": args.rounds,
                            "token_budget": args.token_budget, "num_workers": 2,
                            "server": server_name,
                            "cpus": os.cpu_count(), "load_average_before": os.getloadavg()}}
    for name, (path, task) in tasks(paths, args.token_budget).items():
      pids = {server_name: server.pid, **{f"proxy_{p.latency_ms:g}ms": p.process.pid
                                   for p in proxies.values()}}
      results[name] = compare(name, path, task, args, proxies, pids, args.workdir)
    results["first_batch_s"] = {
        f"{name}_{lat:g}ms": {k: results[name][f"{lat:g}ms"][k] for k in (
            "first_batch_s_local", "first_batch_s_streamed", "first_batch_streamed_over_local")}
        for name in ("image_text", "video_16x64x64") for lat in args.latency_ms}
    results["goal"] = {"ratio_streamed_over_local_at_20ms": 0.9, "met": {
        name: results[name]["20ms"]["ratio_streamed_over_local"] >= 0.9
        for name in ("image_text", "video_16x64x64") if "20ms" in results[name]}}
    results["settings"]["load_average_after"] = os.getloadavg()
    results["settings"]["build_s"] = round(built, 1)
    results["settings"]["total_s"] = round(time.perf_counter() - started, 1)
    print(json.dumps(results, indent=2))
  finally:
    for server in servers:
      stop(server)


if __name__ == "__main__":
  signal.signal(signal.SIGTERM, signal.default_int_handler)  # a terminated run stops its servers
  main()
