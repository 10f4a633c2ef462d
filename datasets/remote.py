"""A prepared dataset read straight from a bucket (s3://, gs://): records fetched by byte range.

    source = remote.RemoteSource.open("s3://bucket/sets/videos", "train")
    source.read([17, 4, 901])        # the bytes of three records of the split
    len(source)                       # records in the split

The loader reads a remote dataset through this record source (datasets/loader.py),
without staging it: no shard is copied whole, and the training host needs
neither Beam nor TensorFlow.

Where a record lies. An ArrayRecord shard is a Riegeli file: chunks of records
(one record each with the build's `group_size:1`), then a footer chunk listing
every chunk's offset, then a 64 KiB postscript giving the footer's offset.
Opening a source fetches each shard's tail (one ranged GET, two for a long
footer), so a record is then one ranged GET of its chunk, which this module
decodes (`_chunk_records`: Riegeli's simple chunks, uncompressed or zstd, the
build's choices; brotli where its module is installed). Fetching whole shards
instead would read a shard per record under a global shuffle.

Ahead of the loader. The loader knows every coming step's records (the
sampler's are a function of the seed and the step) and tells the source
(`prefetch`): their chunks are fetched on a pool of threads while earlier
steps decode, a block of BLOCK_STEPS steps at a time (up to AHEAD steps ahead),
chunks of a shard less than MERGE_GAP apart in one request, and held in memory
until read.

The disk cache. Chunks read are also kept on disk, under `IMPAX_CACHE_DIR`
(default ~/.cache/impax/streams), in a folder per dataset version, within
`IMPAX_CACHE_LIMIT` bytes (or the Loader's `cache_limit`; 0: memory only). Each
reading process claims a slot folder (a lock file) with its share of the
limit, evicts its least recently used chunks before writing one that would
pass it, and reads any slot's chunks: the folder never holds more than the
limit, though several loader processes share it, and a second epoch (or run)
reads what fits from disk. Once its slot is full, a process writes only a
sample of the chunks it fetches (`_DiskCache`).

Failures. A request that fails transiently (HTTP 5xx, 429, 408, a reset or
refused connection, a timeout, a short body) is retried with exponential
backoff, `RETRIES` times. A shard that is gone, or whose size or footer
differs from metadata.json, stops the run with a `RemoteError` naming it and
`impax verify`. (A shard's sha256 covers its whole file, which streaming never
reads: `impax verify` checks it.)

Credentials and endpoints are each store's standard environment: boto3's
(`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_ENDPOINT_URL` for an
S3-compatible store, ...) and Google's application default credentials, or
`STORAGE_EMULATOR_HOST`. boto3 and google-cloud-storage rather than fsspec's
s3fs and gcsfs: google-cloud-storage is already an impax dependency, s3fs's
aiobotocore pins botocore to a narrow range that the environment's boto3
excludes, and plain synchronous clients made per process are safe in the
loader's forked worker processes, where an asyncio loop inherited across a fork
is not.
"""

import collections
import concurrent.futures
import dataclasses
import fcntl
import functools
import hashlib
import http.client
import io
import json
import os
import random
import ssl
import struct
import tempfile
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Sequence

import numpy as np
import zstandard

from impax.datasets import metadata as metadata_lib

SCHEMES = ("s3://", "gs://")
RETRIES = 8  # attempts after the first, for a transient failure
BACKOFF = 0.2  # seconds before the first retry; doubles, up to 10 s, with jitter
THREADS = 16  # concurrent requests per process
AHEAD = 6  # steps of one loader process fetched ahead of the one it makes, at most
# Steps fetched ahead together: a block's chunks lie denser in a shard than a step's, so
# fewer requests join them (benchmarks/streaming.py's datasets, one process, blocks of 4
# against 2: image-text 0.29 requests and 0.42 MB a step against 0.82 and 0.79 MB; video
# 3.4 requests a step against 4.3).
BLOCK_STEPS = 4
# Chunks of a shard this close are fetched in one request. Not sized to the records: with
# blocks of 4 steps, 16 KiB (8 image-text records) cost 3.0 requests a step for 0.36 MB,
# against 0.29 for 0.42 MB at 64 KiB; a gap of two video records (168 KiB), 1.8 for 0.57 MB
# against 3.4 for 0.39 MB.
MERGE_GAP = 64 << 10
MEMORY_CAP = 1 << 30  # bytes of fetched-ahead chunks held, past which the oldest are dropped
CONNECT_TIMEOUT, READ_TIMEOUT = 20, 60  # seconds, of a request to a store
TAIL = 256 << 10  # bytes of a shard's end fetched first: its postscript and, mostly, its footer

_BLOCK, _BLOCK_HEADER, _CHUNK_HEADER = 1 << 16, 24, 40


class RemoteError(ValueError):
  """A remote dataset that is gone, changed, unreadable or unreachable."""


class _Gone(Exception):
  """The object does not exist (404), or not with the bytes asked for (416)."""


class _Transient(Exception):
  """A failure worth retrying."""


def is_remote(path: str) -> bool:
  return path.startswith(SCHEMES)


def _split(uri: str) -> tuple[str, str, str]:
  scheme, rest = uri.split("://", 1)
  bucket, _, key = rest.partition("/")
  return scheme, bucket, key.strip("/")


def _verify_hint(root: str) -> str:
  return f"run `impax verify {root}` to check every shard, and rebuild the split"


# -- object stores ---------------------------------------------------------------------


class _S3:
  """S3 through boto3, configured by the environment; its own retries off: `_retried` is the
  policy. A ranged GET goes to a presigned URL of its object through http.client, on a
  kept-alive connection per thread: boto3's get_object costs 2-3 ms of CPU a request
  whatever its size, urllib3 (the one boto3 uses) 0.4, http.client 0.2 (gofakes3 on
  loopback, 4 KB to 400 KB). A URL is signed again after half its lifetime, and once on a
  403 (credentials rotated); an answer only boto3 knows what to do with (a redirect to
  another region, a proxy in the environment) sends this client's GETs through get_object
  from then on."""

  URL_LIFETIME = 3600  # seconds a presigned URL is valid for

  def __init__(self, bucket: str):
    import boto3  # the s3:// client, loaded for s3:// datasets only
    import botocore.config
    import botocore.exceptions
    import botocore.httpsession
    self.bucket, self.errors = bucket, botocore.exceptions
    config = botocore.config.Config(retries={"max_attempts": 1, "mode": "standard"},
                                    connect_timeout=CONNECT_TIMEOUT, read_timeout=READ_TIMEOUT,
                                    max_pool_connections=THREADS * 2,
                                    signature_version="s3v4")  # else presigned URLs use v2
    session = boto3.session.Session()
    self.client = session.client("s3", config=config)
    verify = session._session.get_config_variable("ca_bundle")  # AWS_CA_BUNDLE, ~/.aws/config
    self.ca_file = verify or botocore.httpsession.get_cert_path(True)
    self.connections = threading.local()  # .open: {(scheme, host): HTTP(S)Connection}
    self.urls: dict[str, tuple[str, float]] = {}  # key -> (presigned URL, when signed)
    self.urls_lock = threading.Lock()
    self.presigned = not urllib.request.getproxies()  # boto3 honours HTTP(S)_PROXY itself

  def _call(self, fn, **kw):
    e = self.errors
    try:
      return fn(**kw)
    except e.ClientError as err:
      status = err.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
      code = err.response.get("Error", {}).get("Code", "")
      if status in (404, 416) or code in ("NoSuchKey", "NotFound", "InvalidRange"):
        raise _Gone(code or status) from None
      if status in (408, 429) or status >= 500 or code in ("SlowDown", "Throttling"):
        raise _Transient(f"HTTP {status} {code}") from None
      raise
    except (e.ConnectionError, e.HTTPClientError, e.ResponseStreamingError,
            e.IncompleteReadError) as err:
      raise _Transient(f"{type(err).__name__}: {err}") from None

  def _connection(self, scheme: str, host: str) -> http.client.HTTPConnection:
    """This thread's connection to a host, kept alive between requests."""
    open_ = self.connections.__dict__.setdefault("open", {})
    conn = open_.get((scheme, host))
    if conn is None:
      if scheme == "https":
        context = ssl.create_default_context(cafile=self.ca_file)
        conn = http.client.HTTPSConnection(host, timeout=CONNECT_TIMEOUT, context=context)
      else:
        conn = http.client.HTTPConnection(host, timeout=CONNECT_TIMEOUT)
      open_[scheme, host] = conn
    return conn

  def _ranged_get(self, url: str, start: int, end: int) -> tuple[int, bytes]:
    """(status, body as stored, no Content-Encoding decoded) of a ranged GET of a URL. A
    connection that fails is closed and the failure is transient; one kept alive that the
    server had closed meanwhile (a reset or a disconnect before any answer) is opened again
    at once, once."""
    parts = urllib.parse.urlsplit(url)
    target = f"{parts.path}?{parts.query}" if parts.query else parts.path
    conn = self._connection(parts.scheme, parts.netloc)
    stale = (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError)
    while True:
      kept_alive = conn.sock is not None
      try:
        if not kept_alive:  # connect within CONNECT_TIMEOUT, then read within READ_TIMEOUT
          conn.connect()
          conn.sock.settimeout(READ_TIMEOUT)
        conn.request("GET", target, headers={"Range": f"bytes={start}-{end - 1}"})
        response = conn.getresponse()
        return response.status, response.read()  # (a "Connection: close" closes it)
      except (http.client.HTTPException, OSError) as err:
        conn.close()  # the next attempt opens it again
        if not (kept_alive and isinstance(err, stale)):
          raise _Transient(f"{type(err).__name__}: {err}"[:200]) from None

  def _url(self, key: str, stale: str | None = None) -> str:
    """The key's presigned URL; signed anew when half its life is gone, or when it is `stale`."""
    with self.urls_lock:
      url, signed = self.urls.get(key, (None, 0.0))
      if url is None or url == stale or time.monotonic() - signed > self.URL_LIFETIME / 2:
        url = self._call(self.client.generate_presigned_url, ClientMethod="get_object",
                         Params={"Bucket": self.bucket, "Key": key},
                         ExpiresIn=self.URL_LIFETIME)
        self.urls[key] = url, time.monotonic()
      return url

  def _get_object(self, key: str, start: int, end: int) -> bytes:
    def fetch():
      body = self.client.get_object(Bucket=self.bucket, Key=key,
                                    Range=f"bytes={start}-{end - 1}")["Body"]
      return body.read()
    return self._call(fetch)

  def get(self, key: str, start: int, end: int) -> bytes:
    if not self.presigned:
      return self._get_object(key, start, end)
    url = self._url(key)
    for signed_again in (False, True):
      status, data = self._ranged_get(url, start, end)
      if status in (200, 206):
        return data
      if status == 403 and not signed_again:  # expired, or the credentials changed
        url = self._url(key, stale=url)
        continue
      if status == 403:  # S3's answer for a missing key, to one who may not list the bucket
        raise _Gone("HTTP 403: gone, or denied to these credentials")
      if status in (404, 416):
        raise _Gone(f"HTTP {status}")
      if status in (408, 429) or status >= 500:
        raise _Transient(f"HTTP {status}")
      break
    self.presigned = False  # a redirect or a request refused: boto3's own way from now on
    return self._get_object(key, start, end)

  def sizes(self, prefix: str) -> dict[str, int]:
    def listing():
      out, pages = {}, self.client.get_paginator("list_objects_v2")
      for page in pages.paginate(Bucket=self.bucket, Prefix=prefix):
        for item in page.get("Contents", []):
          out[item["Key"]] = item["Size"]
      return out
    return self._call(listing)


class _GCS:
  """google-cloud-storage with application default credentials (or STORAGE_EMULATOR_HOST, which
  it reads itself); its own retries off: `_retried` is the policy."""

  def __init__(self, bucket: str):
    import google.api_core.exceptions  # the gs:// client, loaded for gs:// datasets only
    import requests
    from google.cloud import storage
    self.api, self.requests = google.api_core.exceptions, requests
    project = os.environ.get("GOOGLE_CLOUD_PROJECT", "<none>")  # reads need none
    self.bucket = storage.Client(project=project).bucket(bucket)

  def _call(self, fn):
    api = self.api
    try:
      return fn()
    except (api.NotFound, api.RequestRangeNotSatisfiable):
      raise _Gone("not found") from None
    except (api.TooManyRequests, api.InternalServerError, api.BadGateway,
            api.ServiceUnavailable, api.GatewayTimeout, api.RequestTimeout) as err:
      raise _Transient(f"{type(err).__name__}: {err}"[:200]) from None
    except (self.requests.ConnectionError, self.requests.Timeout,
            self.requests.exceptions.ChunkedEncodingError) as err:
      raise _Transient(f"{type(err).__name__}: {err}"[:200]) from None

  def get(self, key: str, start: int, end: int) -> bytes:
    return self._call(lambda: self.bucket.blob(key).download_as_bytes(
        start=start, end=end - 1, checksum=None, retry=None,
        timeout=(CONNECT_TIMEOUT, READ_TIMEOUT)))

  def sizes(self, prefix: str) -> dict[str, int]:
    return self._call(lambda: {b.name: b.size for b in
                               self.bucket.client.list_blobs(self.bucket, prefix=prefix,
                                                             retry=None)})


_stores: dict = {}
_stores_lock = threading.Lock()
_CLIENT_ENV = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE",
               "AWS_ENDPOINT_URL", "AWS_DEFAULT_REGION", "STORAGE_EMULATOR_HOST",
               "GOOGLE_APPLICATION_CREDENTIALS")


def _store(uri: str):
  """This process's client of a URI's bucket, shared by its threads (both libraries' clients
  are thread-safe); made in the process using it, never inherited across a fork."""
  scheme, bucket, _ = _split(uri)
  # The environment configures the client (credentials, endpoint): a changed one, a new client.
  key = (os.getpid(), scheme, bucket, tuple(os.environ.get(k) for k in _CLIENT_ENV))
  with _stores_lock:
    if key not in _stores:
      _stores[key] = (_S3 if scheme == "s3" else _GCS)(bucket)
    return _stores[key]


def _retried(what: str, fn: Callable[[], bytes | dict]):
  """fn(), retried with backoff while it fails transiently; RemoteError once it gives up."""
  for attempt in range(RETRIES + 1):
    try:
      return fn()
    except _Transient as e:
      if attempt == RETRIES:
        raise RemoteError(f"{what}: still failing after {RETRIES} retries: {e}") from None
      time.sleep(min(10.0, BACKOFF * 2 ** attempt) * (0.5 + random.random()))


def get(uri: str, start: int, end: int, *, size_known: bool = True) -> bytes:
  """Bytes [start, end) of an object, retried; a short answer is retried, then refused."""
  _, _, key = _split(uri)

  def fetch():
    data = _store(uri).get(key, start, end)
    if size_known and len(data) != end - start:
      raise _Transient(f"{len(data)} bytes where {end - start} were asked")
    return data
  try:
    return _retried(f"reading bytes {start}-{end} of {uri}", fetch)
  except _Gone as e:
    raise RemoteError(f"{uri} is gone, or shorter than {end} bytes ({e})") from None


def size(uri: str) -> int | None:
  """An object's size in bytes; None where there is none (one listing of its name)."""
  _, _, key = _split(uri)
  return _retried(f"listing {uri}", lambda: _store(uri).sizes(key)).get(key)


def read(uri: str) -> bytes:
  """A whole (small) object: metadata.json, the tokenizer."""
  length = size(uri)
  if length is None:
    raise RemoteError(f"{uri} does not exist")
  return get(uri, 0, length) if length else b""


class _Object(io.RawIOBase):
  """An object read front to back by ranged GETs (each retried)."""

  def __init__(self, uri: str, length: int):
    self.uri, self.length, self.position = uri, length, 0

  def readable(self) -> bool:
    return True

  def readinto(self, buffer) -> int:
    end = min(self.length, self.position + len(buffer))
    if end <= self.position:
      return 0
    data = get(self.uri, self.position, end)
    buffer[:len(data)] = data
    self.position = end
    return len(data)


def open_object(uri: str, buffer: int = 8 << 20) -> io.BufferedReader:
  """A binary file reading an object (`impax verify` hashes shards through it)."""
  length = size(uri)
  if length is None:
    raise FileNotFoundError(f"{uri} does not exist")
  return io.BufferedReader(_Object(uri, length), buffer_size=buffer)


def sizes(folder: str) -> dict[str, int]:
  """{name: size} of the objects in a folder (and below it, by relative name), one listing."""
  _, _, prefix = _split(folder)
  prefix = prefix + "/" if prefix else ""
  found = _retried(f"listing {folder}", lambda: _store(folder).sizes(prefix))
  return {k[len(prefix):]: v for k, v in found.items()}


def check_sizes(root: str, shards: Sequence[metadata_lib.Shard]) -> None:
  """Every shard there with the size metadata.json gives it (one listing), else a RemoteError
  naming the first that is not."""
  found = sizes(root)
  for shard in shards:
    size = found.get(shard.path)
    if size is None:
      raise RemoteError(f"shard {root}/{shard.path} listed in {root}/metadata.json is "
                        f"gone: {_verify_hint(root)}")
    if size != shard.num_bytes:
      raise RemoteError(f"shard {root}/{shard.path} is {size} bytes but {root}/metadata.json "
                        f"says {shard.num_bytes}: {_verify_hint(root)}")


# -- ArrayRecord (Riegeli) decoding ------------------------------------------------------


def _varint(b: bytes, i: int) -> tuple[int, int]:
  value = shift = 0
  while True:
    byte = b[i]
    i += 1
    value |= (byte & 0x7F) << shift
    shift += 7
    if byte < 0x80:
      return value, i


def _fields(message: bytes) -> dict[int, int]:
  """The varint fields of a small protobuf message (ArrayRecord's footer entries, postscript)."""
  out, i = {}, 0
  while i < len(message):
    key, i = _varint(message, i)
    if key & 7 != 0:
      raise ValueError(f"protobuf field {key >> 3} is not a varint")
    out[key >> 3], i = _varint(message, i)
  return out


def _without_block_headers(raw: bytes, begin: int) -> bytes:
  """File bytes from position `begin`, without the 24-byte block header at every 64 KiB."""
  parts, i, pos = [], 0, begin
  while i < len(raw):
    if pos % _BLOCK == 0:
      i, pos = i + _BLOCK_HEADER, pos + _BLOCK_HEADER
      continue
    n = min(len(raw) - i, _BLOCK - pos % _BLOCK)
    parts.append(raw[i:i + n])
    i, pos = i + n, pos + n
  return b"".join(parts)


_zstd = threading.local()  # a decompressor per thread: making one costs what decompressing does


def _decompress(kind: int, data: bytes) -> bytes:
  if kind == 0:
    return data
  size, i = _varint(data, 0)
  if kind == ord("z"):
    decompressor = getattr(_zstd, "decompressor", None)
    if decompressor is None:
      decompressor = _zstd.decompressor = zstandard.ZstdDecompressor()
    return decompressor.decompress(data[i:], max_output_size=size)
  if kind == ord("b"):
    import brotli  # optional: impax builds write zstd
    return brotli.decompress(data[i:])
  raise ValueError(f"Riegeli compression {chr(kind)!r} is not read from a bucket; "
                   "build with zstd or uncompressed")


def _chunk_records(raw: bytes, begin: int) -> list[bytes]:
  """The records of the Riegeli chunk whose bytes (with padding after) begin at file position
  `begin`: a simple chunk ('r') of records, uncompressed, zstd or brotli."""
  b = _without_block_headers(raw, begin)
  data_size, = struct.unpack_from("<Q", b, 8)
  chunk_type, count = b[24], int.from_bytes(b[25:32], "little")
  if chunk_type != ord("r"):
    raise ValueError(f"a Riegeli chunk of type {chr(chunk_type)!r}, not simple records "
                     "(a transposed shard?)")
  data = b[_CHUNK_HEADER:_CHUNK_HEADER + data_size]
  if len(data) != data_size:
    raise ValueError("a Riegeli chunk shorter than its header says")
  sizes_size, i = _varint(data, 1)
  record_sizes = _decompress(data[0], data[i:i + sizes_size])
  values = _decompress(data[0], data[i + sizes_size:])
  out, j, k = [], 0, 0
  for _ in range(count):
    size, j = _varint(record_sizes, j)
    out.append(values[k:k + size])
    k += size
  if k != len(values):
    raise ValueError("a Riegeli chunk whose record sizes do not add up")
  return out


@dataclasses.dataclass(frozen=True)
class ShardIndex:
  """Where each chunk of a shard lies: chunk c is bytes [offsets[c], offsets[c + 1]) and holds
  records first[c] .. first[c + 1] - 1."""
  offsets: np.ndarray  # int64, chunks + 1 (the last: the footer's offset)
  first: np.ndarray  # int64, chunks + 1 (the last: the shard's record count)

  @property
  def num_records(self) -> int:
    return int(self.first[-1])

  def chunk_of(self, record: int) -> int:
    return int(np.searchsorted(self.first, record, side="right")) - 1


def read_index(uri: str, size: int) -> ShardIndex:
  """The chunk index of a remote ArrayRecord shard of `size` bytes: one or two ranged reads of
  its end (the postscript, the last 64 KiB, gives the footer's offset)."""
  start = max(0, size - TAIL)
  tail = get(uri, start, size)
  postscript = _chunk_records(tail[size - _BLOCK - start:], size - _BLOCK)
  footer_offset = _fields(postscript[0])[1]
  if footer_offset < start:
    tail = get(uri, footer_offset, start) + tail
    start = footer_offset
  footer = _chunk_records(tail[footer_offset - start:size - _BLOCK - start], footer_offset)
  entries = [_fields(e) for e in footer[1:]]  # footer[0]: the file's ArrayRecord metadata
  offsets = np.array([e.get(1, 0) for e in entries] + [footer_offset], np.int64)
  first = np.concatenate([[0], np.cumsum([e.get(3, 0) for e in entries])]).astype(np.int64)
  return ShardIndex(offsets, first)


# -- the disk cache ----------------------------------------------------------------------


def cache_settings(cache_dir: str | None, cache_limit: int | None) -> tuple[str, int]:
  """(folder, bytes) of the disk cache: the arguments, else IMPAX_CACHE_DIR and
  IMPAX_CACHE_LIMIT, else ~/.cache/impax/streams and 10 GiB."""
  folder = cache_dir or os.environ.get("IMPAX_CACHE_DIR") or os.path.join(
      os.path.expanduser("~"), ".cache", "impax", "streams")
  if cache_limit is None:
    cache_limit = int(float(os.environ.get("IMPAX_CACHE_LIMIT", 10 << 30)))
  if cache_limit < 0:
    raise RemoteError(f"a cache limit of {cache_limit} bytes: give 0 (memory only) or more")
  return folder, cache_limit


class _DiskCache:
  """Chunks on disk, a file each, in this process's slot of the dataset's cache folder, the
  slot within `budget` bytes, least recently used evicted first; any slot's chunks are read.

  What this slot holds is known in memory, and the other slots' from a listing made at most
  every LIST_EVERY seconds (a chunk evicted there since is a miss): no listing per lookup.
  Once the slot is full, a chunk fetched is written with probability `admit` only. A shuffled
  epoch reads each chunk once, so a slot rewritten with every chunk fetched holds the ones
  read last, which the next epoch reads at random times, by when almost all are evicted
  (benchmarks/streaming.py's datasets, limit a tenth: 0.1-0.2% of lookups found); a slot
  renewed a little at a time holds chunks the next epoch reads as often as any (9-12% found),
  for a fraction of the writes (each a file written and one removed)."""

  LIST_EVERY = 2.0  # seconds between two listings of the other slots

  def __init__(self, folder: str, slots: int, budget: int, admit: float = 1.0):
    os.makedirs(folder, exist_ok=True)
    self.folder, self.budget, self.admit = folder, budget, admit
    self.lock = threading.Lock()
    self.random = random.Random()
    self.used: collections.OrderedDict[str, int] = collections.OrderedDict()
    self.total = 0
    self.others: dict[str, str] = {}  # chunk name -> its path in another slot, when listed
    self.listed = -float("inf")
    for n in range(1 << 16):  # the first slot no other process holds (its budget: 0 past `slots`)
      lock = open(os.path.join(folder, f"slot-{n}.lock"), "wb")  # noqa: SIM115 - held till exit
      try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
      except OSError:
        lock.close()
        continue
      self._lock_file, self.slot = lock, os.path.join(folder, f"slot-{n}")
      if n >= slots:
        self.budget = 0
      break
    os.makedirs(self.slot, exist_ok=True)
    found = []
    for name in os.listdir(self.slot):
      path = os.path.join(self.slot, name)
      if name.endswith(".part"):
        os.remove(path)  # a write a killed process left
        continue
      stat = os.stat(path)
      found.append((stat.st_mtime, name, stat.st_size))
    for _, name, size in sorted(found):
      self.used[name] = size
      self.total += size
    self._evict(0)

  def _evict(self, room: int) -> None:
    while self.used and self.total + room > self.budget:
      name, size = self.used.popitem(last=False)
      try:
        os.remove(os.path.join(self.slot, name))
      except FileNotFoundError:
        pass
      self.total -= size

  def _list_others(self) -> None:
    others = {}
    for slot in os.listdir(self.folder):
      path = os.path.join(self.folder, slot)
      if not slot.startswith("slot-") or slot.endswith(".lock") or path == self.slot:
        continue
      try:
        others.update((name, os.path.join(path, name)) for name in os.listdir(path)
                      if not name.endswith(".part"))
      except (FileNotFoundError, NotADirectoryError):
        continue
    self.others, self.listed = others, time.monotonic()

  def get(self, name: str) -> bytes | None:
    with self.lock:
      if name in self.used:
        self.used.move_to_end(name)
        path = os.path.join(self.slot, name)
      else:
        if time.monotonic() - self.listed > self.LIST_EVERY:
          self._list_others()
        path = self.others.get(name)
    if path is None:
      return None
    try:
      with open(path, "rb") as f:
        return f.read()
    except FileNotFoundError:  # evicted by its slot's process since the listing
      return None

  def put(self, name: str, data: bytes) -> None:
    with self.lock:
      if len(data) > self.budget or name in self.used or name in self.others:
        return
      if self.total + len(data) > self.budget and self.random.random() >= self.admit:
        return
      self._evict(len(data))  # before writing: the folder never holds more than the limit
      path = os.path.join(self.slot, name)
      with open(path + ".part", "wb") as f:
        f.write(data)
      os.replace(path + ".part", path)
      self.used[name] = len(data)
      self.total += len(data)


# -- the record source -------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class RemoteSource:
  """A split's records in its remote shards, in shard order: the loader's record source for a
  bucket (`len`, `read`, `prefetch`). Pickled to the loader's worker processes, each of which
  makes its own clients, threads and cache slot on first use."""
  root: str  # the dataset's URI
  shards: tuple[metadata_lib.Shard, ...]
  indexes: tuple[ShardIndex, ...]
  cache_dir: str
  cache_limit: int  # bytes on disk for all processes; 0: memory only
  processes: int = 1  # processes reading (the loader's workers): each gets its share
  ahead: int = AHEAD

  @classmethod
  def open(cls, root: str, shards: Sequence[metadata_lib.Shard], *,
           cache_dir: str | None = None, cache_limit: int | None = None,
           processes: int = 1, ahead: int = AHEAD) -> "RemoteSource":
    """Checks every shard's size (one listing) and reads its chunk index (in parallel);
    a missing or changed shard is a RemoteError naming it."""
    root = root.rstrip("/")
    check_sizes(root, shards)

    def index(shard: metadata_lib.Shard) -> ShardIndex:
      uri = f"{root}/{shard.path}"
      try:
        result = read_index(uri, shard.num_bytes)
      except (ValueError, IndexError, struct.error, zstandard.ZstdError) as e:
        if isinstance(e, RemoteError):
          raise RemoteError(f"{e}: {_verify_hint(root)}") from None
        raise RemoteError(f"shard {uri} is not a readable ArrayRecord file ({e}): "
                          f"{_verify_hint(root)}") from None
      if result.num_records != shard.num_records:
        raise RemoteError(f"shard {uri} holds {result.num_records} records but "
                          f"{root}/metadata.json says {shard.num_records}: {_verify_hint(root)}")
      return result

    with concurrent.futures.ThreadPoolExecutor(THREADS) as pool:
      indexes = tuple(pool.map(index, shards))
    folder, limit = cache_settings(cache_dir, cache_limit)
    return cls(root=root, shards=tuple(shards), indexes=indexes,
               cache_dir=folder, cache_limit=limit, processes=processes, ahead=ahead)

  def __len__(self) -> int:
    return int(self._starts[-1])

  @functools.cached_property
  def _starts(self) -> np.ndarray:
    return np.concatenate([[0], np.cumsum([s.num_records for s in self.shards])])

  @functools.cached_property
  def _state(self) -> "_State":
    return _State(self)

  def _locate(self, positions: Sequence[int]) -> list[tuple[int, int, int]]:
    """(shard, chunk, record within the chunk) of each split position (at once: a position
    at a time was a tenth of a streamed batch's CPU)."""
    positions = np.asarray(positions, np.int64).reshape(-1)
    outside = (positions < 0) | (positions >= len(self))
    if outside.any():
      raise IndexError(f"record {int(positions[outside][0])} outside the split's {len(self)}")
    shards = np.searchsorted(self._starts, positions, side="right") - 1
    records = positions - self._starts[shards]
    chunks, within = np.empty_like(records), np.empty_like(records)
    for shard in np.unique(shards):
      here = shards == shard
      first = self.indexes[shard].first
      chunks[here] = np.searchsorted(first, records[here], side="right") - 1
      within[here] = records[here] - first[chunks[here]]
    return list(zip(shards.tolist(), chunks.tolist(), within.tolist()))

  def read(self, positions: Sequence[int]) -> list[bytes]:
    """The records at these split positions, in their order."""
    where = self._locate(positions)
    chunks = self._state.chunks([(s, c) for s, c, _ in where], consume=True)
    out = []
    for shard, chunk, within in where:
      try:
        records = _chunk_records(chunks[shard, chunk], int(self.indexes[shard].offsets[chunk]))
      except (ValueError, IndexError, struct.error, zstandard.ZstdError) as e:
        raise RemoteError(f"chunk {chunk} of shard {self.root}/{self.shards[shard].path} is "
                          f"not readable ({e}): {_verify_hint(self.root)}") from None
      out.append(records[within])
    return out

  def prefetch(self, step: int, stride: int, records_of: Callable[[int], list[int]]) -> None:
    """Fetches ahead the records of steps step + stride, ..., step + ahead * stride (this
    process makes every stride-th step), each step once, by blocks of BLOCK_STEPS steps;
    `records_of(step)`: its positions."""
    self._state.prefetch(step, stride, records_of)

  @property
  def cache_folder(self) -> str:
    """This dataset's folder in the cache: named by its URI and its shards' names, sizes and
    sha256s, so that a dataset rebuilt in place never reads the chunks of the one before."""
    version = json.dumps([self.root, [(s.path, s.num_bytes, s.sha256) for s in self.shards]])
    return os.path.join(self.cache_dir, hashlib.sha256(version.encode()).hexdigest()[:16])


class _State:
  """A process's fetching machinery for one source: threads, chunks held ahead, disk cache."""

  TURNOVER = 4  # epochs in which a full disk cache slot is renewed (`_DiskCache.admit`)

  def __init__(self, source: RemoteSource):
    self.source = source
    self.pool = concurrent.futures.ThreadPoolExecutor(THREADS)
    self.lock = threading.Lock()
    # (shard, chunk) -> [future of its bytes, reads expected], oldest first: fetched ahead,
    # held till read
    self.held: dict[tuple[int, int], list] = {}
    self.held_bytes = 0  # of the chunks in `held`, fetched or not (their sizes are known)
    self.expected: set[int] = set()
    self.disk = None
    if source.cache_limit > 0:
      split_bytes = max(1, sum(s.num_bytes for s in source.shards))
      self.disk = _DiskCache(source.cache_folder, max(1, source.processes),
                             source.cache_limit // max(1, source.processes),
                             admit=min(1.0, source.cache_limit / (self.TURNOVER * split_bytes)))
    self.fetched_bytes = 0  # from the store, this process
    self.requests = 0
    self.disk_reads = 0  # chunks read from the disk cache, this process

  def _name(self, key: tuple[int, int]) -> str:
    return f"{key[0]}-{key[1]}"

  def _size(self, key: tuple[int, int]) -> int:
    offsets = self.source.indexes[key[0]].offsets
    return int(offsets[key[1] + 1]) - int(offsets[key[1]])

  def _requests(self, keys: list[tuple[int, int]]) -> list[list[tuple[int, int]]]:
    """Chunks of shards grouped into requests: a shard's chunks less than MERGE_GAP apart
    in one."""
    out = []
    for key in sorted(set(keys)):
      if out and out[-1][-1][0] == key[0]:
        offsets = self.source.indexes[key[0]].offsets
        if int(offsets[key[1]]) - int(offsets[out[-1][-1][1] + 1]) <= MERGE_GAP:
          out[-1].append(key)
          continue
      out.append([key])
    return out

  def _fetch(self, group: list[tuple[int, int]]) -> dict[tuple[int, int], bytes]:
    """Chunks of one shard, in order, from the store in one request."""
    source = self.source
    shard = group[0][0]
    offsets = source.indexes[shard].offsets
    uri = f"{source.root}/{source.shards[shard].path}"
    start, end = int(offsets[group[0][1]]), int(offsets[group[-1][1] + 1])
    try:
      data = get(uri, start, end)
    except RemoteError as e:
      raise RemoteError(f"{e}: {_verify_hint(source.root)}") from None
    with self.lock:
      self.fetched_bytes += len(data)
      self.requests += 1
    out = {}
    for key in group:
      a, b = int(offsets[key[1]]) - start, int(offsets[key[1] + 1]) - start
      out[key] = data[a:b]
      if self.disk is not None:
        self.disk.put(self._name(key), out[key])
    return out

  def _from_disk_or_store(self, keys: list[tuple[int, int]]) -> dict[tuple[int, int], "_Part"]:
    """Futures of each chunk's bytes: the disk cache's, else fetched on the pool, each request
    a task (a shard's requests one after another took a request's latency each)."""
    result: dict[tuple[int, int], concurrent.futures.Future] = {}
    missing = []
    for key in dict.fromkeys(keys):
      data = self.disk.get(self._name(key)) if self.disk is not None else None
      if data is not None:
        self.disk_reads += 1
        result[key] = concurrent.futures.Future()
        result[key].set_result(data)
      else:
        missing.append(key)
    for group in self._requests(missing):
      request = self.pool.submit(self._fetch, group)
      for key in group:
        result[key] = _Part(request, key)
    return result

  def prefetch(self, step: int, stride: int, records_of: Callable[[int], list[int]]) -> None:
    # This process's steps are step + k * stride, k counted from its first. The ones wanted
    # ahead are fetched by blocks of BLOCK_STEPS steps, a block once its last step is at most
    # `ahead` steps past k: a block's chunks lie denser in each shard than a step's, so
    # fewer requests join them.
    ahead = self.source.ahead
    k = step // stride
    block = max(1, min(BLOCK_STEPS, ahead))
    block_end = (k + ahead + 1) // block * block
    later = [s for s in range(step + stride, step + (block_end - k) * stride, stride)
             if s not in self.expected]
    if not later:
      return
    positions = []
    for s in later:
      self.expected.add(s)
      positions += records_of(s)
    keys = [where[:2] for where in self.source._locate(positions)]
    if len(self.expected) > 4 * self.source.ahead + 16:  # steps long made: forget them
      for s in sorted(self.expected)[:len(self.expected) - 3 * self.source.ahead]:
        self.expected.discard(s)
    with self.lock:
      new = [k for k in dict.fromkeys(keys) if k not in self.held]
    futures = self._from_disk_or_store(new) if new else {}
    with self.lock:
      for key, future in futures.items():
        self.held[key] = [future, 0]
        self.held_bytes += self._size(key)
      for key in keys:
        self.held[key][1] += 1
      self._bound_held()

  def _drop(self, key: tuple[int, int]) -> None:
    del self.held[key]
    self.held_bytes -= self._size(key)

  def _bound_held(self) -> None:
    """Drops the oldest chunks held ahead past MEMORY_CAP (steps expected but never made)."""
    while self.held_bytes > MEMORY_CAP and self.held:
      self._drop(next(iter(self.held)))

  def chunks(self, keys: list[tuple[int, int]], consume: bool) -> dict[tuple[int, int], bytes]:
    """The bytes of these chunks: held ahead, cached or fetched now; a read consumes one
    expected read of each held chunk."""
    with self.lock:
      held = {k: self.held[k][0] for k in dict.fromkeys(keys) if k in self.held}
    futures = {**held, **self._from_disk_or_store([k for k in keys if k not in held])}
    out = {key: future.result() for key, future in futures.items()}
    if consume:
      with self.lock:
        for key in keys:
          entry = self.held.get(key)
          if entry is not None:
            entry[1] -= 1
            if entry[1] <= 0:
              self._drop(key)
    return out


class _Part:
  """The future of one chunk of a request that fetches several."""

  def __init__(self, batch: concurrent.futures.Future, key: tuple[int, int]):
    self.batch, self.key = batch, key

  def done(self) -> bool:
    return self.batch.done()

  def exception(self):
    return self.batch.exception()

  def result(self) -> bytes:
    return self.batch.result()[self.key]


def local_copy(uri: str, folder: str) -> str:
  """A small remote file (the tokenizer) copied once into `folder`; its local path."""
  os.makedirs(folder, exist_ok=True)
  path = os.path.join(folder, hashlib.sha256(uri.encode()).hexdigest()[:16] + "-" +
                      uri.rsplit("/", 1)[-1])
  if not os.path.exists(path):
    fd, part = tempfile.mkstemp(dir=folder, suffix=".part")
    with os.fdopen(fd, "wb") as f:
      f.write(read(uri))
    os.replace(part, path)
  return path


