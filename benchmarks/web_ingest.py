"""Images from URLs: `impax build cc3m` on a CC3M-style TSV of URLs against img2dataset, the
tool the web corpora's own instructions use, on the same URLs from the same loopback server.

    .venv/bin/python benchmarks/web_ingest.py [--urls 200] [--scale 10] [--processes 2]
        [--threads 16] [--repeat 1] [--latency_ms 0] [--hosts 8] [--host_order hash]
        [--img2dataset_format webdataset]
        [--impax_filters lanczos,area] [--impax_args '--download-threads 16'] [--workdir DIR]

Makes 64 distinct 640x480 JPEGs (a gradient under noise, about 250 KB each, quality 95) and
serves them from memory on 127.0.0.1 with http.server's ThreadingHTTPServer (HTTP/1.1,
keep-alive) in a process of its own: URL /img/<i>.jpg is image i % 64, so every URL is distinct
and neither tool can skip one. The URLs are spread over --hosts loopback addresses (127.0.0.1
to 127.0.0.H, 8 by default; the same server on each), as a web corpus's URLs spread over many
sites, each URL's host by a hash of its number (--host_order hash), not in turn (--host_order
turns: URL i on host i % H). In turn, the hosts follow the URLs' order, and impax's workers met
the URLs in an order that held two of the eight hosts at a time (a worker's 33 waiting examples
on 2 hosts: 8 requests at once, not 16); a web corpus's hosts do not follow its lines' numbers.
impax's politeness limit, `download_per_host` (4 requests at once a worker), holds per host,
and img2dataset has none, so one host would measure that limit and not the tools (at 100 ms, 8
requests at once cap impax at 80 images/s). --latency_ms makes the server wait that long before
each answer, as a site across the world does (loopback answers in well under a millisecond).
Then, in one run, for N and --scale times N URLs:
  - img2dataset 1.47.0, from a virtual environment of its own that this script creates
    under ~/.cache/impax/bench-venvs/img2dataset (`pip install img2dataset==1.47.0 pillow`;
    never a dependency of impax): a TSV with a `url` and `caption` header, `--processes_count P
    --thread_count T --image_size 256 --resize_mode keep_ratio --encode_format jpg
    --encode_quality 90`, shards of N / 4P images so every process has work (its default is
    10,000 a shard: one process), writing --img2dataset_format (webdataset: tar shards, as
    impax writes shards; files: a file per image);
  - impax build cc3m of the same URLs as CC3M's TSV (caption<TAB>url) with --workers P,
    default settings: short side 256, JPEG quality 90, plus what a build always does
    (fingerprints, a trained tokenizer, ArrayRecord shards, metadata); once for each of
    --impax_filters (`--image-resize-filter`: lanczos, impax's default, and area, OpenCV's
    INTER_AREA, the filter img2dataset shrinks with by default), as tools impax-FILTER;
    --impax_args adds options to every impax build (e.g. another --download-threads, or
    --fingerprints false: the perceptual hashes, which img2dataset does not compute, cost
    impax about 1 ms an image, benchmarks/README.md).
Both scale the short side to 256 and keep the aspect (640x480 -> 341x256). Prints JSON:
images/s of each (successes over wall time, the process started to its exit), the ratio of
each impax run's to img2dataset's (goal >= 1.0; impax-area against img2dataset is like with
like), CPU seconds per image of each (getrusage RUSAGE_CHILDREN
around the run: the tool and every process it waited for; the server's CPU is in neither),
and impax's wall time at scale*N over N (10 would be linear; less, a fixed cost amortised).
With --repeat R the runs interleave, each order alternating, and each figure is the median.

Nothing leaves 127.0.0.1: img2dataset's albumentations would look for its own update on
import, and wandb phone home; the environment turns both off.
"""

import argparse
import hashlib
import io
import json
import math
import os
import resource
import shlex
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
from PIL import Image

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
IMPAX = os.path.join(ROOT, ".venv", "bin", "impax")
VENV = os.path.expanduser("~/.cache/impax/bench-venvs/img2dataset")
IMG2DATASET = "img2dataset==1.47.0"
DISTINCT = 64
OFFLINE_ENV = {"NO_ALBUMENTATIONS_UPDATE": "1", "WANDB_MODE": "disabled", "WANDB_DISABLED": "true",
               "HF_HUB_OFFLINE": "1", "no_proxy": "*", "NO_PROXY": "*"}


# -- the server (a process of its own: its CPU is neither tool's) --------------------


def make_images(count: int = DISTINCT) -> list[bytes]:
  rng = np.random.default_rng(0)
  y, x = np.mgrid[0:480, 0:640]
  images = []
  for i in range(count):
    phase = i / count
    base = np.stack([x * 255 / 640, y * 255 / 480, ((x + y) / 1120 + phase) % 1 * 255], -1)
    pixels = np.clip(base + rng.normal(0, 32, base.shape), 0, 255).astype(np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, "JPEG", quality=95)
    images.append(out.getvalue())
  return images


def serve(latency_s: float, hosts: int):
  images = make_images()

  class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):
      name = self.path.rsplit("/", 1)[-1]
      if not (self.path.startswith("/img/") and name.endswith(".jpg") and name[:-4].isdigit()):
        self.send_error(404)
        return
      body = images[int(name[:-4]) % len(images)]
      time.sleep(latency_s)
      self.send_response(200)
      self.send_header("Content-Type", "image/jpeg")
      self.send_header("Content-Length", str(len(body)))
      self.end_headers()
      self.wfile.write(body)

    def log_message(self, *args):
      pass

  # One port on each of the loopback addresses 127.0.0.1 .. 127.0.0.HOSTS.
  for attempt in range(20):
    servers = [ThreadingHTTPServer(("127.0.0.1", 0), Handler)]
    port = servers[0].server_address[1]
    try:
      servers += [ThreadingHTTPServer((f"127.0.0.{k}", port), Handler)
                  for k in range(2, hosts + 1)]
      break
    except OSError:  # the port is taken on another address: another port
      for server in servers:
        server.server_close()
  else:
    raise RuntimeError(f"no port free on 127.0.0.1-{hosts}")
  for server in servers:
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
  print(port, sum(map(len, images)) // len(images), flush=True)
  threading.Event().wait()


class Server:
  def __init__(self, latency_ms: float = 0.0, hosts: int = 1, host_order: str = "hash"):
    self.latency_ms, self.hosts, self.host_order = latency_ms, hosts, host_order

  def __enter__(self):
    self.process = subprocess.Popen([sys.executable, __file__, "--serve", "--latency_ms",
                                     str(self.latency_ms), "--hosts", str(self.hosts)],
                                    stdout=subprocess.PIPE, text=True)
    self.port, self.mean_bytes = map(int, self.process.stdout.readline().split())
    return self

  def url(self, i: int) -> str:
    """URL i: image i % 64, on host 127.0.0.(1 + h), h a hash of i (or i) modulo hosts."""
    h = int.from_bytes(hashlib.blake2b(str(i).encode(), digest_size=4).digest(), "big") \
        if self.host_order == "hash" else i
    return f"http://127.0.0.{1 + h % self.hosts}:{self.port}/img/{i}.jpg"

  def __exit__(self, *exc):
    self.process.terminate()
    self.process.wait()


# -- the two tools -------------------------------------------------------------------


def img2dataset_venv() -> str:
  """The img2dataset command in its own virtual environment, made on first use."""
  command = os.path.join(VENV, "bin", "img2dataset")
  if not os.path.exists(command):
    subprocess.run([sys.executable, "-m", "venv", VENV], check=True)
    subprocess.run([os.path.join(VENV, "bin", "pip"), "install", "-q", IMG2DATASET, "pillow"],
                   check=True)
  return command


def write_lists(folder: str, server: Server, count: int) -> tuple[str, str]:
  """The same URLs and captions as img2dataset's TSV (a header) and CC3M's (caption<TAB>url)."""
  i2d, cc3m = os.path.join(folder, f"urls-{count}.tsv"), os.path.join(folder, f"cc3m-{count}.tsv")
  with open(i2d, "w") as a, open(cc3m, "w") as b:
    a.write("url\tcaption\n")
    for i in range(count):
      url, caption = server.url(i), f"a noisy gradient, number {i}"
      a.write(f"{url}\t{caption}\n")
      b.write(f"{caption}\t{url}\n")
  return i2d, cc3m


def timed(command: list[str], log: str) -> tuple[float, float]:
  """Wall seconds and CPU seconds (the command and every process it waited for)."""
  before = resource.getrusage(resource.RUSAGE_CHILDREN)
  start = time.monotonic()
  with open(log, "w") as f:
    done = subprocess.run(command, stdout=f, stderr=subprocess.STDOUT,
                          env={**os.environ, **OFFLINE_ENV})
  wall = time.monotonic() - start
  after = resource.getrusage(resource.RUSAGE_CHILDREN)
  if done.returncode:
    with open(log) as f:
      raise RuntimeError(f"{command[0]} failed ({done.returncode}):\n{f.read()[-3000:]}")
  return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def run_img2dataset(tsv: str, out: str, count: int, args) -> dict:
  shutil.rmtree(out, ignore_errors=True)
  per_shard = max(1, math.ceil(count / (4 * args.processes)))
  wall, cpu = timed([
      img2dataset_venv(), "--url_list", tsv, "--input_format", "tsv", "--url_col", "url",
      "--caption_col", "caption", "--output_folder", out, "--output_format",
      args.img2dataset_format, "--processes_count", str(args.processes), "--thread_count",
      str(args.threads), "--image_size", "256", "--resize_mode", "keep_ratio", "--encode_format",
      "jpg", "--encode_quality", "90", "--number_sample_per_shard", str(per_shard),
      "--distributor", "multiprocessing", "--enable_wandb", "False"], out + ".log")
  successes = 0
  for name in os.listdir(out):
    if name.endswith("_stats.json"):
      with open(os.path.join(out, name)) as f:
        successes += json.load(f)["successes"]
  return {"wall_s": wall, "cpu_s": cpu, "images": successes, "sample_size": _i2d_size(out)}


def _i2d_size(out: str) -> list[int] | None:
  """One stored image's width and height, to show the sizes match."""
  for name in sorted(os.listdir(out)):
    path = os.path.join(out, name)
    if name.endswith(".tar"):
      with tarfile.open(path) as tar:
        member = next((m for m in tar if m.name.endswith(".jpg")), None)
        if member:
          return list(Image.open(tar.extractfile(member)).size)
    elif os.path.isdir(path):
      jpgs = sorted(n for n in os.listdir(path) if n.endswith(".jpg"))
      if jpgs:
        return list(Image.open(os.path.join(path, jpgs[0])).size)
  return None


def run_impax(tsv: str, out: str, resize_filter: str, args) -> dict:
  shutil.rmtree(out, ignore_errors=True)
  wall, cpu = timed([IMPAX, "build", "cc3m", "--input", tsv, "--output", out, "--workers",
                     str(args.processes), "--image-resize-filter", resize_filter, "--quiet",
                     *shlex.split(args.impax_args)],
                    out + ".log")
  from impax.datasets import prepared
  dataset = prepared.load(out)
  split = dataset.metadata.splits["train"]
  return {"wall_s": wall, "cpu_s": cpu, "images": split.num_examples,
          "failed": split.num_failed, "sample_size": _impax_size(dataset, resize_filter)}


def _impax_size(dataset, resize_filter: str) -> list[int] | None:
  """(width, height) of the first record's image, having checked that its bytes are the
  filter's: a setting that never reached process_image would measure the other filter."""
  from impax.datasets import records
  from impax.pipelines import media
  _, data = next(dataset.records("train"))
  record = records.Record.parse(data)
  if not record.image:
    return None
  served = make_images()[int(record.source.rsplit("/", 1)[-1][:-4]) % DISTINCT]
  if record.image.encoded != media.process_image(served, short_side=256, jpeg_quality=90,
                                                 resize_filter=resize_filter)[0]:
    raise RuntimeError(f"impax's stored image is not image_resize_filter {resize_filter}'s")
  return list(Image.open(io.BytesIO(record.image.encoded)).size)


# -- the run ---------------------------------------------------------------------------


def figures(runs: list[dict]) -> dict:
  median = lambda key: statistics.median(r[key] for r in runs)
  images = runs[0]["images"]
  return {"images": images, "wall_s": round(median("wall_s"), 3),
          "images_per_s": round(statistics.median(r["images"] / r["wall_s"] for r in runs), 2),
          "cpu_s_per_image": round(statistics.median(r["cpu_s"] / max(r["images"], 1) for r in runs), 4),
          "sample_size": runs[0]["sample_size"],
          **({"failed": runs[0]["failed"]} if "failed" in runs[0] else {})}


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--urls", type=int, default=200, help="N, the smaller run's URLs")
  parser.add_argument("--scale", type=int, default=10, help="the larger run has N times this; 0: none")
  parser.add_argument("--processes", type=int, default=2, help="img2dataset's processes, impax's workers")
  parser.add_argument("--threads", type=int, default=16, help="img2dataset's threads per process")
  parser.add_argument("--repeat", type=int, default=1)
  parser.add_argument("--hosts", type=int, default=8, choices=range(1, 255), metavar="H",
                      help="URLs spread over loopback addresses 127.0.0.1-H (1 to 254)")
  parser.add_argument("--host_order", default="hash", choices=("hash", "turns"),
                      help="a URL's host: by a hash of its number, or in turn (i %% H)")
  parser.add_argument("--latency_ms", type=float, default=0.0,
                      help="the server waits this long before each answer")
  parser.add_argument("--img2dataset_format", default="webdataset", choices=("webdataset", "files"))
  parser.add_argument("--impax_filters", default="lanczos,area",
                      help="impax's image_resize_filter of each impax run, comma-separated")
  parser.add_argument("--impax_args", default="",
                      help="more options for impax build, e.g. '--download-threads 16'")
  parser.add_argument("--workdir", default=None)
  parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.serve:
    serve(args.latency_ms / 1000, args.hosts)
    return
  img2dataset_venv()
  work = args.workdir or tempfile.mkdtemp(prefix="impax-web-ingest-")
  os.makedirs(work, exist_ok=True)
  sizes = [args.urls] + ([args.urls * args.scale] if args.scale > 1 else [])
  filters = args.impax_filters.split(",")
  tools = ["img2dataset"] + [f"impax-{f}" for f in filters]
  runs = {(tool, n): [] for tool in tools for n in sizes}
  with Server(args.latency_ms, args.hosts, args.host_order) as server:
    lists = {n: write_lists(work, server, n) for n in sizes}
    for r in range(args.repeat):
      for n in sizes:
        for tool in tools if r % 2 == 0 else tools[::-1]:
          out = os.path.join(work, f"{tool}-{n}")
          result = (run_img2dataset(lists[n][0], out, n, args) if tool == "img2dataset"
                    else run_impax(lists[n][1], out, tool.removeprefix("impax-"), args))
          print(json.dumps({"run": r, "tool": tool, "urls": n, **result}), file=sys.stderr)
          runs[tool, n].append(result)
  report = {"processes": args.processes, "img2dataset_threads": args.threads,
            "latency_ms": args.latency_ms, "hosts": args.hosts, "host_order": args.host_order,
            "img2dataset_format": args.img2dataset_format, "repeat": args.repeat,
            "impax_args": args.impax_args,
            "shrink_filters": {"img2dataset": "area (cv2.INTER_AREA, its default)",
                               **{f"impax-{f}": f for f in filters}},
            "mean_image_bytes": server.mean_bytes, "workdir": work, "by_urls": {}}
  for n in sizes:
    i2d = figures(runs["img2dataset", n])
    report["by_urls"][n] = {"img2dataset": i2d}
    for tool in tools[1:]:
      impax = figures(runs[tool, n])
      report["by_urls"][n][tool] = {
          **impax, "ratio_images_per_s": round(impax["images_per_s"] / i2d["images_per_s"], 3),
          "ratio_cpu_s_per_image": round(impax["cpu_s_per_image"] / i2d["cpu_s_per_image"], 3)}
  if len(sizes) == 2:
    report["impax_time_growth"] = {}
    for tool in tools[1:]:
      small, large = (report["by_urls"][n][tool]["wall_s"] for n in sizes)
      report["impax_time_growth"][tool] = {"urls": sizes, "wall_s": [small, large],
                                           "ratio": round(large / small, 2)}
  print(json.dumps(report, indent=1))


if __name__ == "__main__":
  main()
