"""Media from http(s) URLs (pipelines/download.py), against a web server on loopback that
this module starts and stops: every good URL becomes an example, every bad one a failure of
stage `download` with its reason, the same bytes served give the same shards, a killed
build resumes without downloading again, and kept originals spare the web."""

import collections
import contextlib
import glob
import gzip
import hashlib
import html
import http.server
import io
import json
import math
import os
import random
import re
import socket
import struct
import subprocess
import sys
import threading
import time
import wave
import zlib

import pytest
from array_record.python.array_record_module import ArrayRecordReader
from PIL import Image

from impax import cli
from impax.datasets import metadata, records
from impax.flows import build as flow
from impax.pipelines import config as config_lib
from impax.pipelines import download
from impax.pipelines.tools import ffmpeg_binary

# Small limits and timeouts so that the failing cases cost little time.
FAST = {"download_read_timeout": 0.5, "download_connect_timeout": 2.0, "download_timeout": 10.0,
        "download_retries": 1, "download_backoff": 0.01, "download_image_max_bytes": 1_000_000}
FLAGS = ["--image-short-side", "32", "--video-short-side", "32", "--video-fps", "4", "--quiet"]
for key, value in FAST.items():
  FLAGS += [f"--{key.replace('_', '-')}", str(value)]


def png(color: str, size=(40, 30)) -> bytes:
  out = io.BytesIO()
  Image.new("RGB", size, color).save(out, "PNG")
  return out.getvalue()


def photo() -> bytes:
  """A noisy 120x90 JPEG: it shrinks, and decodes through simplejpeg, as a web photo does."""
  rng = random.Random(0)
  image = Image.new("RGB", (120, 90))
  image.putdata([tuple(rng.randrange(256) for _ in range(3)) for _ in range(120 * 90)])
  out = io.BytesIO()
  image.save(out, "JPEG", quality=95)
  return out.getvalue()


def mp4(tmp_path_factory) -> bytes:
  path = tmp_path_factory.mktemp("video") / "clip.mp4"
  subprocess.run([ffmpeg_binary(), "-v", "error", "-f", "lavfi", "-i", "testsrc=size=64x48:rate=8",
                  "-t", "1", "-pix_fmt", "yuv420p", str(path)], check=True)
  return path.read_bytes()


def wav() -> bytes:
  out = io.BytesIO()
  with wave.open(out, "wb") as w:
    w.setnchannels(1)
    w.setsampwidth(2)
    w.setframerate(16000)
    w.writeframes(b"".join(struct.pack("<h", int(8000 * math.sin(i / 10))) for i in range(8000)))
  return out.getvalue()


class Server(http.server.ThreadingHTTPServer):
  daemon_threads = True

  def __init__(self, files: dict[str, bytes]):
    super().__init__(("127.0.0.1", 0), Handler)
    self.files = files
    self.hits = collections.Counter()
    self.agents = set()
    self.gate = threading.Event()  # /gate/ answers once set
    self.closing = threading.Event()
    self.active, self.most_active = 0, 0
    self.delayed = []  # (start, end) of each /delay/ answer
    self.lock = threading.Lock()

  def url(self, path: str) -> str:
    return f"http://127.0.0.1:{self.server_address[1]}{path}"


class Handler(http.server.BaseHTTPRequestHandler):
  protocol_version = "HTTP/1.1"  # keep-alive, as real servers

  def log_message(self, *args):
    pass

  def send(self, status: int, body: bytes = b"", **headers):
    self.send_response(status)
    headers.setdefault("Content-Length", str(len(body)))
    for name, value in headers.items():
      self.send_header(name.replace("_", "-"), value)
    self.end_headers()
    self.wfile.write(body)

  def do_GET(self):
    s: Server = self.server
    with s.lock:
      s.hits[self.path] += 1
      hit = s.hits[self.path]
      s.agents.add(self.headers.get("User-Agent"))
    kind, _, rest = self.path[1:].split("?")[0].partition("/")
    if kind == "files":
      self.send(200, s.files[rest], Content_Type="text/html")  # a type the bytes contradict
    elif kind == "redirect":  # /redirect/N: N hops to an image
      n = int(rest)
      self.send(302 if n % 2 else 301, Location=f"/redirect/{n - 1}" if n else "/files/red.png")
    elif kind == "relative":
      self.send(307, Location="../files/blue.png")
    elif kind == "status":
      self.send(int(rest), b"<html>gone</html>", Content_Type="text/html")
    elif kind == "flaky":  # /flaky/STATUS/NAME: every odd hit fails, with Retry-After
      status, name = rest.split("/")
      if hit % 2:
        self.send(int(status), Retry_After="1" if status == "429" else "0")
      else:
        self.send(200, s.files[name])
    elif kind == "limited":  # a rate limit by the hour
      self.send(429, Retry_After="3600")
    elif kind == "loop":
      self.send(302, Location="/loop/b" if rest == "a" else "/loop/a")
    elif kind == "stall":  # headers and part of the body, then nothing until the test ends
      self.send_response(200)
      self.send_header("Content-Length", "5000")
      self.end_headers()
      self.wfile.write(s.files["red.png"][:50])
      self.wfile.flush()
      s.closing.wait(30)
      self.close_connection = True
    elif kind == "short":  # a Content-Length the body does not keep to
      body = s.files["red.png"]
      self.send_response(200)
      self.send_header("Content-Length", str(len(body) + 1000))
      self.end_headers()
      self.wfile.write(body)
      self.wfile.flush()
      # The end of the stream at once, not when the handler returns: on a loaded machine
      # that can be later than the client's read timeout, a stall instead of a short body.
      self.connection.shutdown(socket.SHUT_WR)
      self.close_connection = True
    elif kind == "reset":
      self.wfile.flush()
      self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
      self.connection.close()
      self.close_connection = True
    elif kind == "html":
      self.send(200, b"<!DOCTYPE html><html><body>Not found</body></html>",
                Content_Type="image/jpeg")
    elif kind == "big":  # over the 1 MB limit: declared, or streamed without a length
      body = s.files["red.png"] + b"\0" * 1_500_000
      if rest == "declared":
        self.send(200, body)
      else:
        self.send_response(200)
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        for i in range(0, len(body), 65536):
          chunk = body[i:i + 65536]
          self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
        self.wfile.write(b"0\r\n\r\n")
    elif kind == "bomb":  # 60 KB that inflate to 60 MB
      self.send(200, s.files["bomb"], Content_Encoding="gzip", Content_Type="image/png")
    elif kind == "gzipped":
      self.send(200, gzip.compress(s.files["blue.png"]), Content_Encoding="gzip")
    elif kind == "deflated":  # raw deflate, without zlib's header, as many servers send it
      z = zlib.compressobj(wbits=-zlib.MAX_WBITS)
      self.send(200, z.compress(s.files["green.png"]) + z.flush(), Content_Encoding="deflate")
    elif kind == "robots":  # /robots/VALUE
      self.send(200, s.files["green.png"], X_Robots_Tag=rest.replace("%20", " "))
    elif kind == "gate":  # answers when the test opens the gate
      s.gate.wait(60)
      self.send(200, s.files[rest])
    elif kind == "slow":
      with s.lock:
        s.active += 1
        s.most_active = max(s.most_active, s.active)
      time.sleep(0.2)
      with s.lock:
        s.active -= 1
      self.send(200, s.files["red.png"])
    elif kind == "delay":  # /delay/NAME: 200 ms, as a distant server takes
      start = time.monotonic()
      time.sleep(0.2)
      self.send(200, s.files[rest])
      with s.lock:
        s.delayed.append((start, time.monotonic()))
    else:
      self.send(404)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
  files = {f"{c}.png": png(c) for c in ("red", "blue", "green", "white")}
  files["clip.mp4"] = mp4(tmp_path_factory)
  files["tone.wav"] = wav()
  files["bomb"] = gzip.compress(b"\0" * 60_000_000, 9)
  files["photo.jpg"] = photo()
  s = Server(files)
  thread = threading.Thread(target=s.serve_forever, daemon=True)
  thread.start()
  yield s
  s.closing.set()
  s.gate.set()
  s.shutdown()
  s.server_close()


def free_port() -> int:
  """A port of 127.0.0.1 where nothing listens."""
  with socket.socket() as sock:
    sock.bind(("127.0.0.1", 0))
    return sock.getsockname()[1]


# (id, media key, path, the failure's reason or None for an example written)
CASES = [
    ("url-png", "image", "/files/red.png", None),
    ("url-video", "video", "/files/clip.mp4", None),
    ("url-audio", "audio", "/files/tone.wav", None),
    ("url-redirects", "image", "/redirect/3", None),
    ("url-relative-redirect", "image", "/relative/x", None),
    ("url-gzipped", "image", "/gzipped/", None),
    ("url-deflated", "image", "/deflated/", None),
    ("url-429-then-ok", "image", "/flaky/429/white.png", None),
    ("url-503-then-ok", "image", "/flaky/503/blue.png", None),
    ("url-other-crawler-opt-out", "image", "/robots/googlebot:%20noindex", None),
    ("url-404", "image", "/status/404", "HTTP 404"),
    ("url-410", "image", "/status/410", "HTTP 410"),
    ("url-403", "image", "/status/403", "HTTP 403"),
    ("url-loop", "image", "/loop/a", "redirect loop"),
    ("url-stall", "image", "/stall/", "timed out after 0.5 s (2 tries)"),
    ("url-short", "image", "/short/", "body cut short: 98 of 1098 bytes (2 tries)"),
    ("url-reset", "image", "/reset/", "connection reset (2 tries)"),
    ("url-html", "image", "/html/", "not an image: got HTML"),
    ("url-video-as-image", "image", "/files/clip.mp4",
     "not an image: a format Pillow does not know"),
    ("url-html-video", "video", "/status/200", "not a video: got HTML"),
    ("url-big", "image", "/big/declared", "body over 1 MB"),
    ("url-big-chunked", "image", "/big/chunked", "body over 1 MB"),
    ("url-bomb", "image", "/bomb/", "body over 1 MB once gzip-decoded"),
    ("url-noai", "image", "/robots/noai", "opted out: X-Robots-Tag noai"),
    ("url-noindex", "image", "/robots/noarchive,%20noindex", "opted out: X-Robots-Tag noindex"),
    ("url-nothing-listens", "image", None, "connection refused (2 tries)"),
]


def write_manifest(path, server, cases=CASES, port=None):
  port = port or free_port()
  lines = []
  for id_, key, where, _ in cases:
    url = server.url(where) if where else f"http://127.0.0.1:{port}/x.png"
    lines.append(json.dumps({"id": id_, key: url, "caption": f"a {id_}"}))
  path.write_text("".join(line + "\n" for line in lines))
  return path


def build(manifest, out, *extra, split="train"):
  return cli.main(["build", "jsonl", "--input", str(manifest), "--output", str(out),
                   "--split", split, *FLAGS, *extra])


def shard_bytes(out) -> dict[str, bytes]:
  return {os.path.basename(p): open(p, "rb").read()
          for p in sorted(glob.glob(os.path.join(out, "*.array_record-*")))}


def failures(out) -> dict[str, dict]:
  with open(os.path.join(out, "failures-train.jsonl")) as f:
    return {x["id"]: x for x in map(json.loads, f)}


def read_records(out) -> list[dict]:
  """Every record of a build's shards, parsed, in shard order."""
  found = []
  for path in sorted(glob.glob(os.path.join(out, "*.array_record-*"))):
    reader = ArrayRecordReader(path)
    found += [records.parse_example(data) for data in reader.read_all()]
    reader.close()
  return found


def record_ids(out) -> list[str]:
  return [r["id"][0].decode() for r in read_records(out)]


@pytest.fixture(scope="module")
def built(server, tmp_path_factory):
  """The corpus of every case, built twice from the same server."""
  root = tmp_path_factory.mktemp("web")
  manifest = write_manifest(root / "web.jsonl", server)
  outs = [root / "first", root / "second"]
  for out in outs:
    assert build(manifest, out, "--num-shards", "2") == 0
  return outs


def test_every_good_url_is_written_and_every_bad_one_listed_with_its_reason(built, server):
  out = built[0]
  good = sorted(id_ for id_, _, _, reason in CASES if reason is None)
  assert sorted(record_ids(out)) == good
  listed = failures(out)
  assert {id_: f["error"] for id_, f in listed.items()} == {
      id_: reason for id_, _, _, reason in CASES if reason is not None}
  assert {f["stage"] for f in listed.values()} == {"download"}
  # A 429 was honoured: its Retry-After (1 s) passed before the try that succeeded.
  assert server.hits["/flaky/429/white.png"] == 4  # two builds, two tries each
  # The User-Agent names impax and its version.
  assert server.agents == {download.user_agent()} and download.user_agent().startswith("impax/")


def test_downloads_ahead_give_the_bytes_of_one_at_a_time(built, server, tmp_path):
  """The built corpus downloads 32 at a time (download_threads' default): the same shards
  and failures as a build that downloads each URL as its example is processed."""
  manifest = write_manifest(tmp_path / "web.jsonl", server)
  out = tmp_path / "one-at-a-time"
  assert build(manifest, out, "--num-shards", "2", "--download-threads", "1") == 0
  assert list(shard_bytes(out).values()) == list(shard_bytes(built[0]).values())
  reasons = lambda out: {id_: (f["stage"], f["error"]) for id_, f in failures(out).items()}
  assert reasons(out) == reasons(built[0])


def test_a_worker_waits_for_many_servers_at_once(server, tmp_path):
  n = 24
  names = ["red.png", "blue.png", "green.png", "white.png"]
  cases = [(f"slow-{i}", "image", f"/delay/{names[i % 4]}?{i}", None) for i in range(n)]
  manifest = write_manifest(tmp_path / "slow.jsonl", server, cases)
  assert build(manifest, tmp_path / "out", "--workers", "1", "--download-per-host", "16") == 0
  assert sorted(record_ids(tmp_path / "out")) == sorted(c[0] for c in cases)
  starts, ends = zip(*server.delayed)
  # One at a time, the downloads alone would take n x 200 ms = 4.8 s.
  assert len(server.delayed) == n and max(ends) - min(starts) < n * 0.2 / 2


def test_metadata_and_card_count_download_failures_by_reason(built):
  with open(built[0] / "metadata.json", "rb") as f:
    split = metadata.loads(f.read()).splits["train"]
  bad = [reason for _, _, _, reason in CASES if reason]
  assert split.failures_by_stage == {"download": len(bad)}
  assert split.download_failures_by_reason == dict(collections.Counter(bad))
  assert split.num_examples == len(CASES) - len(bad)
  # The card's status table, commonest first.
  assert cli.main(["card", str(built[0]), "--samples", "2"]) == 0
  page = (built[0] / "card.html").read_text()
  table = re.search(r'<table class="download-failures">(.*?)</table>', page)[1]
  rows = re.findall(r"<tr><td>(.*?)</td><td>(\d+)</td></tr>", table)
  assert rows[0] == ("body over 1 MB", "2")
  assert {html.unescape(r): int(n) for r, n in rows} == split.download_failures_by_reason
  # The build_dataset flow's failure artifact groups them as well.
  report = flow.failure_report(str(built[0]), metadata.loads(
      (built[0] / "metadata.json").read_bytes()), ["train"])
  assert "| download | HTTP 404 | 1 |" in report and "| download | body over 1 MB | 2 |" in report


def test_the_same_bytes_served_give_the_same_shards(built):
  first, second = (list(shard_bytes(out).values()) for out in built)  # names hold the folder's
  assert len(first) == 2 and first == second


def records_by_id(out) -> dict[str, dict]:
  return {r["id"][0].decode(): r for r in read_records(out)}


def test_urls_give_the_records_of_local_files_of_the_same_bytes(server, tmp_path):
  """An image's body is kept in memory, a video's and a sound's in a temporary file: either
  way each record is the one a build of local files of the same bytes writes, field for
  field but for its source (the URL, or the file's path)."""
  names = {"jpeg": "photo.jpg", "png": "red.png", "video": "clip.mp4", "audio": "tone.wav"}
  keys = {"jpeg": "image", "png": "image", "video": "video", "audio": "audio"}
  (tmp_path / "media").mkdir()
  local, web = [], []
  for id_, name in names.items():
    path = tmp_path / "media" / name
    path.write_bytes(server.files[name])
    local.append({"id": id_, keys[id_]: str(path), "caption": f"a {id_}"})
    web.append({"id": id_, keys[id_]: server.url(f"/files/{name}?same-bytes"),
                "caption": f"a {id_}"})
  both = {"local": local, "web": web}
  for kind, lines in both.items():
    (tmp_path / f"{kind}.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    assert build(tmp_path / f"{kind}.jsonl", tmp_path / kind) == 0
  from_files, from_web = (records_by_id(tmp_path / kind) for kind in both)
  assert sorted(from_web) == sorted(names)
  for id_, record in from_web.items():
    assert record.pop("source") == [server.url(f"/files/{names[id_]}?same-bytes").encode()]
    assert from_files[id_].pop("source") == [f"media/{names[id_]}".encode()]
    assert record == from_files[id_], id_


def test_the_fingerprint_is_the_hash_of_the_downloaded_bytes(built, server):
  sha = hashlib.sha256(server.files["red.png"]).hexdigest()
  exact = json.dumps({"media": {"image": sha}, "start": None, "end": None}, sort_keys=True)
  record = records_by_id(built[0]).get("url-png")
  assert record is not None, "no record url-png"
  expected = hashlib.sha256(exact.encode()).hexdigest()
  assert record["fingerprint/sha256"][0].decode() == expected


def test_a_build_where_every_url_fails_exits_non_zero(server, tmp_path, capsys):
  manifest = write_manifest(tmp_path / "bad.jsonl", server,
                            [c for c in CASES if c[0] in ("url-404", "url-html", "url-noai")])
  assert build(manifest, tmp_path / "out") == cli.EXIT_FAILED
  err = capsys.readouterr().err
  assert "no example was written" in err and "download: HTTP 404 (1)" in err


def test_kept_originals_spare_the_web_on_a_rebuild(server, tmp_path):
  good = ("url-png", "url-video", "url-redirects", "url-gzipped")
  cases = [c for c in CASES if c[0] in (*good, "url-404")]
  manifest = write_manifest(tmp_path / "kept.jsonl", server, cases)
  keep = tmp_path / "originals"
  assert build(manifest, tmp_path / "a", "--keep-originals", str(keep)) == 0
  served = {name: server.files[name] for name in ("red.png", "clip.mp4", "blue.png")}
  kept = {os.path.basename(p) for p in glob.glob(str(keep / "sha256" / "*" / "*"))}
  assert kept == {hashlib.sha256(b).hexdigest() for b in served.values()}
  before = server.hits.copy()
  # Another output, another config: nothing good is downloaded again.
  assert build(manifest, tmp_path / "b", "--keep-originals", str(keep), "--jpeg-quality", "80") == 0
  assert {p: n - before[p] for p, n in server.hits.items() if n != before[p]} == {"/status/404": 1}
  assert sorted(record_ids(tmp_path / "b")) == sorted(good)
  # An opt-out list that refuses what was kept refuses it from the folder too.
  stricter = tmp_path / "strict.jsonl"
  write_manifest(stricter, server, [("noai-kept", "image", "/robots/noai", None)])
  assert build(stricter, tmp_path / "c", "--keep-originals", str(keep), "--opt-out", "") == 0
  assert build(stricter, tmp_path / "d", "--keep-originals", str(keep)) == cli.EXIT_FAILED
  assert failures(tmp_path / "d")["noai-kept"]["error"] == "opted out: X-Robots-Tag noai"
  assert server.hits["/robots/noai"] == before["/robots/noai"] + 1


def test_originals_are_kept_on_an_object_store(server, tmp_path):
  """--keep-originals s3://... against moto's S3 server on loopback."""
  boto3 = pytest.importorskip("boto3")
  pytest.importorskip("moto")
  port = free_port()
  moto = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  try:
    endpoint = f"http://127.0.0.1:{port}"
    for _ in range(300):
      with contextlib.suppress(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        break
      time.sleep(0.1)
    client = boto3.client("s3", endpoint_url=endpoint, aws_access_key_id="testing",
                          aws_secret_access_key="testing", region_name="us-east-1")
    client.create_bucket(Bucket="kept")
    beam = ["--", f"--s3_endpoint_url={endpoint}", "--s3_access_key_id=testing",
            "--s3_secret_access_key=testing", "--s3_region_name=us-east-1"]
    manifest = write_manifest(tmp_path / "s3.jsonl", server,
                              [("url-s3", "image", "/files/white.png?s3", None)])
    for out in ("a", "b"):
      assert build(manifest, tmp_path / out, "--keep-originals", "s3://kept/originals", *beam) == 0
    assert server.hits["/files/white.png?s3"] == 1
    sha = hashlib.sha256(server.files["white.png"]).hexdigest()
    keys = [o["Key"] for o in client.list_objects_v2(Bucket="kept")["Contents"]]
    assert f"originals/sha256/{sha[:2]}/{sha}" in keys
  finally:
    moto.terminate()
    moto.wait(timeout=30)


def results_kept(out) -> int:
  """Examples a running build has processed: its result logs' whole lines (a local disk),
  or result files (an older impax's)."""
  examples = out / ".impax-tmp" / "train" / "examples"
  return (sum(p.read_bytes().count(b"\n") for p in examples.glob("*.results"))
          + len(list(examples.glob("*.json"))))


def test_a_killed_build_resumes_without_downloading_again(server, tmp_path):
  names = ["red.png", "blue.png", "green.png", "white.png"]
  cases = [(f"img-{i}", "image", f"/files/{n}?kill={i}", None) for i, n in enumerate(names)]
  cases.append(("gated", "image", "/gate/red.png", None))
  manifest = write_manifest(tmp_path / "kill.jsonl", server, cases)
  out = tmp_path / "out"
  argv = [sys.executable, "-m", "impax.cli", "build", "jsonl", "--input", str(manifest),
          "--output", str(out), "--workers", "1", *FLAGS, "--download-read-timeout", "60"]
  proc = subprocess.Popen(argv, start_new_session=True, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT)
  deadline = time.monotonic() + 120
  # Killed while it waits at the gate, once the other four are processed.
  while not server.hits["/gate/red.png"] or results_kept(out) < 4:
    assert proc.poll() is None, proc.stdout.read().decode()[-3000:]
    assert time.monotonic() < deadline, "the build never reached the gate"
    time.sleep(0.05)
  os.killpg(proc.pid, 9)
  proc.wait()
  server.gate.set()
  assert build(manifest, out) == 0
  assert sorted(record_ids(out)) == sorted(c[0] for c in cases)
  assert [server.hits[c[2]] for c in cases] == [1, 1, 1, 1, 2]


def test_downloads_to_one_host_at_once_are_limited_per_worker(server, tmp_path):
  config = config_lib.resolve({**FAST, "download_per_host": 2})
  errors = []

  def fetch(i):
    try:
      with open(tmp_path / f"{i}", "w+b") as f:
        download.download(server.url(f"/slow/{i}"), "image", config, f)
    except Exception as e:  # shown by the assert below
      errors.append(e)

  threads = [threading.Thread(target=fetch, args=(i,)) for i in range(6)]
  for t in threads:
    t.start()
  for t in threads:
    t.join()
  assert not errors and server.most_active == 2
  assert not download._slots  # a host's semaphore goes with its last download


def test_an_invalid_url_fails_at_once(tmp_path):
  config = config_lib.resolve(FAST)
  with open(tmp_path / "f", "w+b") as f, pytest.raises(download.DownloadError,
                                                        match=r"^invalid URL: .*not a valid host or port"):
    download.download("http://[::1/x.png", "image", config, f)


def test_retry_after_is_honoured_and_a_long_one_is_not_waited_for(server, tmp_path):
  config = config_lib.resolve(FAST)
  with open(tmp_path / "f", "w+b") as f:
    start = time.monotonic()
    download.download(server.url("/flaky/429/red.png?honoured"), "image", config, f)
    assert time.monotonic() - start >= 1.0  # the server asked for 1 s; back-off alone is 0.01
    start = time.monotonic()
    with pytest.raises(download.DownloadError, match=r"^HTTP 429 \(Retry-After 3600 s\)$"):
      download.download(server.url("/limited/"), "image", config, f)
    assert time.monotonic() - start < 1.0


@pytest.mark.parametrize("values, refused", [
    (["noai"], "noai"), (["noarchive, NoImageAI"], "noimageai"), (["googlebot: noindex"], None),
    (["impax: noindex"], "noindex"), (["otherbot: noai", "none"], None), ([], None),
])
def test_opt_out_reads_x_robots_tag_as_img2dataset(values, refused):
  assert download.opted_out(values, config_lib.BuildConfig().opt_out) == refused
  assert download.opted_out(values, "") is None


def test_download_settings_that_cannot_change_bytes_keep_the_config_hash():
  fp = lambda **s: config_lib.config_hash(config_lib.fingerprint(config_lib.resolve(s), "jsonl"))
  assert fp() == fp(download_timeout=5.0, user_agent="data@example.org", keep_originals="/k",
                    download_retries=0, download_per_host=1, download_threads=1)
  assert fp() != fp(download_image_max_bytes=10) != fp(opt_out="noai")
  with pytest.raises(ValueError, match="opt_out"):
    config_lib.resolve({"opt_out": "noai; noindex"})


@pytest.mark.parametrize("encoding", ["gzip", "deflate", "raw-deflate"])
def test_a_compressed_body_decodes_whole_however_it_is_cut(encoding):
  body = b"\0" * (3 << 20) + os.urandom(5000)  # a chunk decodes in several full steps
  if encoding == "gzip":
    data = gzip.compress(body)
  else:
    z = zlib.compressobj(wbits=-zlib.MAX_WBITS if encoding == "raw-deflate" else zlib.MAX_WBITS)
    data = z.compress(body) + z.flush()
  for size in (len(data), 1000, 1):
    chunks = [data[i:i + size] for i in range(0, len(data), size)]
    decoder = download._Decoder("gzip" if encoding == "gzip" else "deflate")
    assert b"".join(decoder.decoded(chunks)) == body
  with pytest.raises(download.DownloadError, match="body cut short: its gzip stream ends early"):
    b"".join(download._Decoder("gzip").decoded([gzip.compress(body)[:-100]]))
