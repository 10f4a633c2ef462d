"""Media from the web: an http(s) URL becomes an image's bytes, or a local file of a video or
sound, as a media path on disk does.

Step 5 of the build (pipelines/example.py) calls `local_copy` for a media path that is
a URL, on whichever worker processes the example, so downloads run wherever the build
runs (DirectRunner, Flink, Spark, Dataflow). An image's body stays in memory, since it
is decoded from bytes (a temporary file cost each image about 0.2 ms of CPU, and its
unlink waited on a busy disk: benchmarks/README.md); a video's or a sound's goes to a
temporary file, which ffmpeg seeks in (an MP4's index may come last; storage.IN_MEMORY).
A URL that gives no media raises `DownloadError`, whose message is the reason the example
failed (stage `download`): `HTTP 404`, `opted out: X-Robots-Tag noai`, `redirect loop`,
`timed out after 20 s`, `body over 32 MB`, `not an image: got HTML`.

How a download goes, as the well-kept downloaders (img2dataset, urllib3) do it:
  - one urllib3.PoolManager per worker process and settings, its connections reused across
    examples; at most `download_per_host` requests to one host at once per process. urllib3
    rather than httpx: a 254 KB image from loopback cost 0.45 ms of CPU through it against
    httpx's 0.85, a tenth of a web image's whole step;
  - connect and read (stall) timeouts, and one for the whole download;
  - redirects followed by hand, so a loop and the hop limit are named as such;
  - 408, 429 and 5xx statuses, timeouts and broken connections retried with exponential
    back-off and jitter, a 429's or 503's `Retry-After` honoured;
  - gzip and deflate bodies decoded here in bounded steps, so a compressed bomb stops at
    the medium's size limit (`download_<medium>_max_bytes`), as a body that is too long does;
  - the body's bytes, never its Content-Type, say what it is: markup or text served as
    media is refused, and an image must be one that PIL recognises;
  - `X-Robots-Tag` directives in `opt_out` (img2dataset's by default) refuse the download;
  - with `keep_originals`, every download is kept there by its sha256, and a rebuild
    reads it there before going to the web.
"""

import concurrent.futures
import contextlib
import email.utils
import hashlib
import importlib.metadata
import io
import itertools
import json
import os
import random
import re
import shutil
import tempfile
import threading
import time
import urllib.parse
import urllib.request
import zlib

import certifi
import urllib3
from PIL import Image

from impax.pipelines import storage
from impax.pipelines.config import BuildConfig

SCHEMES = ("http://", "https://")
REDIRECTS = (301, 302, 303, 307, 308)
RETRIED = (408, 429, 500, 502, 503, 504)
# A server that asks for a longer wait than this (a rate limit by the hour) is not waited for.
MAX_RETRY_AFTER = 120.0
_CHUNK = 1 << 16
_DRAIN = 1 << 16  # an unread body up to this size is read to keep its connection
_HEAD = 4096  # bytes of a body that sniffing looks at
_STEP = 1 << 20  # most bytes a compressed body is decoded into at once


class DownloadError(Exception):
  """A URL that gave no media; the message is the reason, e.g. `HTTP 404`."""


class _Transient(DownloadError):
  """A failure worth another try: a 5xx, a 429, a timeout, a broken connection."""

  def __init__(self, reason: str, retry_after: float | None = None):
    super().__init__(reason)
    self.retry_after = retry_after


def is_url(path: str) -> bool:
  return path[:8].lower().startswith(SCHEMES)


def user_agent(contact: str = "") -> str:
  """impax/VERSION, and the contact a site can reach the crawl's operator at."""
  agent = f"impax/{importlib.metadata.version('impax')}"
  return f"{agent} (+{contact})" if contact else agent


@contextlib.contextmanager
def local_copy(url: str, medium: str, config: BuildConfig):
  """The URL's body (decoded) and its sha256: an image's bytes, or the path of a local file
  of a video or sound (removed when this exits); raises DownloadError.

  With config.keep_originals, the body comes from there when an earlier build kept it.
  A download `Ahead` started for this thread is taken rather than made again.
  """
  started = getattr(_ahead, "fetches", {}).pop((url, medium), None)
  copy, body, sha256, robots = started.result() if started else _fetch(url, medium, config)
  with copy:
    if robots is not None and config.keep_originals:
      _keep(url, body, sha256, robots, config.keep_originals)
    yield body, sha256


def _fetch(url: str, medium: str, config: BuildConfig):
  """local_copy's body: (an ExitStack that removes its file, if it has one; the body, bytes
  for an image, else a local file's path; its sha256; the response's X-Robots-Tag values,
  or None when it was kept by an earlier build)."""
  copy = contextlib.ExitStack()
  try:
    kept = _kept(url, medium, config) if config.keep_originals else None
    if kept:
      body, sha256 = copy.enter_context(storage.media_body(kept[0], medium))
      if sha256 == kept[1]:  # else damaged: download it again
        if isinstance(body, bytes):
          refused = sniff(medium, body[:_HEAD], io.BytesIO(body))
        else:
          with open(body, "rb") as f:
            refused = sniff(medium, f.read(_HEAD), f)
        if refused:
          raise DownloadError(refused)
        return copy, body, sha256, None
      copy.close()
    if medium in storage.IN_MEMORY:
      out = io.BytesIO()
      sha256, robots = download(url, medium, config, out)
      return copy, out.getvalue(), sha256, robots
    local = copy.enter_context(tempfile.NamedTemporaryFile(prefix="impax-download-"))
    sha256, robots = download(url, medium, config, local)
    return copy, local.name, sha256, robots
  except BaseException:
    copy.close()
    raise


class Ahead:
  """Downloads started on a thread pool before their examples are processed, so that a
  worker waits for many servers at once. Each is the same `_fetch` (retries, limits,
  opt-out, kept originals), its failure raised when its example reaches local_copy.

  A body waits for its example in memory (an image) or in a temporary file (a video or a
  sound), each capped by its medium's size limit (`download_<medium>_max_bytes`). The
  build's Process step (one per worker thread, each with its own Ahead) starts an
  example's downloads when at most its window of 2 x download_threads examples wait
  (pipelines/graph.py, WINDOW_PER_THREAD), then processes examples until no more than that
  wait again, so it holds the bodies of at most 2 x download_threads + 1 examples: by
  default 65 images in memory, 2.1 GB at worst (32 MB each), about 16 MB at the web's
  usual few hundred KB an image."""

  def __init__(self, threads: int):
    self.pool = concurrent.futures.ThreadPoolExecutor(threads, thread_name_prefix="impax-download")

  def start(self, urls: list[tuple[str, str]], config: BuildConfig) -> dict:
    """{(url, medium): future} of one example's URLs."""
    return {(url, medium): self.pool.submit(_fetch, url, medium, config) for url, medium in urls}

  def close(self):
    self.pool.shutdown(wait=False, cancel_futures=True)


@contextlib.contextmanager
def taken_from(fetches: dict):
  """local_copy, on this thread, takes these started downloads ({(url, medium): future});
  those it does not take (the example failed before) are removed once done."""
  _ahead.fetches = dict(fetches)
  try:
    yield
  finally:
    left, _ahead.fetches = _ahead.fetches, {}
    for future in left.values():
      discard(future)


def discard(future: concurrent.futures.Future):
  """Removes a started download's file, if it has one, once it is done; a cancelled one
  leaves none."""
  def close(f):
    if not f.cancelled() and f.exception() is None:
      f.result()[0].close()
  future.add_done_callback(close)


_ahead = threading.local()


def download(url: str, medium: str, config: BuildConfig, out) -> tuple[str, list[str]]:
  """Writes the URL's body into `out`, a readable and writable binary file (on disk or an
  io.BytesIO), with retries; returns its sha256 and the response's X-Robots-Tag values.
  Raises DownloadError with the last try's reason."""
  client = _client(config)
  tries = config.download_retries + 1
  for attempt in itertools.count(1):
    out.seek(0)
    out.truncate()
    try:
      return _attempt(client, url, medium, config, out)
    except _Transient as e:
      if attempt == tries:
        raise DownloadError(f"{e}" + (f" ({tries} tries)" if tries > 1 else "")) from None
      if e.retry_after is not None and e.retry_after > MAX_RETRY_AFTER:
        raise DownloadError(f"{e} (Retry-After {e.retry_after:g} s)") from None
      # Exponential back-off with equal jitter: workers that failed together spread out.
      wait = config.download_backoff * 2 ** (attempt - 1)
      wait = wait / 2 + random.uniform(0, wait / 2)
      time.sleep(max(wait, e.retry_after or 0))


# -- one try --------------------------------------------------------------------


def _attempt(pool: "_Pool", url: str, medium: str, config: BuildConfig, out):
  deadline = time.monotonic() + config.download_timeout
  seen = {url}
  for _ in range(config.download_max_redirects + 1):
    with _errors(config, deadline), _host_slot(url, config.download_per_host):
      response = pool.get(url, _timeout(config, deadline))
      try:
        status = response.status
        if 200 <= status < 300:
          return _body(response, medium, config, deadline, out)
        _drain(response)  # a redirect's or an error's page: its connection serves the next try
        if status in REDIRECTS:
          location = response.headers.get("location")
          if not location:
            raise DownloadError(f"HTTP {status} without a Location")
          url = urllib.parse.urljoin(url, location)
        elif status in RETRIED:
          after = _retry_after(response) if status in (429, 503) else None
          raise _Transient(f"HTTP {status}", after)
        else:
          raise DownloadError(f"HTTP {status}")
      finally:
        # A body left unread (over the size limit, opted out, broken) closes its connection.
        if not response.closed:
          response.close()
        response.release_conn()
    if not is_url(url):
      raise DownloadError(f"redirect to {url.split(':', 1)[0]}:, not http(s)")
    if url in seen:
      raise DownloadError("redirect loop")
    seen.add(url)
  raise DownloadError(f"over {config.download_max_redirects} redirects")


def _drain(response: urllib3.BaseHTTPResponse):
  """Reads a small unread body to its end, so that its connection can be used again."""
  left = response.length_remaining
  if left is not None and left <= _DRAIN:
    response.drain_conn()


def _body(response: urllib3.BaseHTTPResponse, medium: str, config: BuildConfig, deadline: float,
          out):
  limit = max_bytes(medium, config)
  encoding = _encoding(response.headers.get("content-encoding", ""))
  declared = response.headers.get("content-length", "")
  if declared.isdigit() and int(declared) > limit:
    raise DownloadError(f"body over {_size(limit)}")
  robots = response.headers.getlist("x-robots-tag")
  directive = opted_out(robots, config.opt_out)
  if directive:
    raise DownloadError(f"opted out: X-Robots-Tag {directive}")
  digest, size, head = hashlib.sha256(), 0, b""
  for data in _Decoder(encoding).decoded(response.stream(_CHUNK, decode_content=False)):
    size += len(data)
    if size > limit:
      raise DownloadError(f"body over {_size(limit)}"
                          + (f" once {encoding}-decoded" if encoding else ""))
    digest.update(data)
    out.write(data)
    if len(head) < _HEAD:
      head += data[:_HEAD - len(head)]
    if time.monotonic() > deadline:
      raise _Transient(f"took over {config.download_timeout:g} s")
  out.flush()
  refused = sniff(medium, head, out)
  if refused:
    raise DownloadError(refused)
  return digest.hexdigest(), robots


def max_bytes(medium: str, config: BuildConfig) -> int:
  return getattr(config, f"download_{medium}_max_bytes")


def _timeout(config: BuildConfig, deadline: float) -> urllib3.Timeout:
  left = max(deadline - time.monotonic(), 0.001)
  return urllib3.Timeout(connect=min(config.download_connect_timeout, left),
                         read=min(config.download_read_timeout, left))


@contextlib.contextmanager
def _errors(config: BuildConfig, deadline: float):
  """urllib3's exceptions as reasons a person reads and a report groups."""
  try:
    yield
  except urllib3.exceptions.NewConnectionError as e:  # a ConnectTimeoutError too: first
    raise _Transient(_network_reason(e)) from None
  except urllib3.exceptions.TimeoutError as e:
    if time.monotonic() >= deadline - 0.01:
      raise _Transient(f"took over {config.download_timeout:g} s") from None
    if isinstance(e, urllib3.exceptions.ConnectTimeoutError):
      raise _Transient(f"connect timed out after {config.download_connect_timeout:g} s") from None
    raise _Transient(f"timed out after {config.download_read_timeout:g} s") from None
  except urllib3.exceptions.LocationValueError as e:
    raise DownloadError(f"invalid URL: {str(e).removeprefix('Failed to parse: ')}") from None
  except urllib3.exceptions.ProtocolError as e:
    raise _Transient(_protocol_reason(str(e))) from None
  except (urllib3.exceptions.HTTPError, OSError) as e:
    raise _Transient(_network_reason(e)) from None


_CUT_SHORT = re.compile(r"IncompleteRead\((\d+) bytes read, (\d+) more expected\)")


def _protocol_reason(message: str) -> str:
  short = _CUT_SHORT.search(message)
  if short:
    return f"body cut short: {short[1]} of {int(short[1]) + int(short[2])} bytes"
  if "IncompleteRead" in message or "ended prematurely" in message or "got length b''" in message:
    return "body cut short"
  if "without response" in message:
    return "connection closed without a response"
  reason = _network_reason(message)
  return reason if reason else f"broken response: {message.splitlines()[0][:120]}"


def _network_reason(e: Exception | str) -> str | None:
  """A reason for a failure to connect or a broken connection; for a message alone (a
  ProtocolError's), None when it names none of these."""
  message = str(e).lower()
  for words, reason in (("refused", "connection refused"), ("reset", "connection reset"),
                        ("broken pipe", "connection reset"),
                        ("name or service not known", "host not found"),
                        ("nodename nor servname", "host not found"),
                        ("temporary failure in name resolution", "host not found"),
                        ("no address associated", "host not found"),
                        ("certificate", "TLS certificate refused"),
                        ("ssl", "TLS error"), ("unreachable", "network unreachable")):
    if words in message:
      return reason
  if isinstance(e, str):
    return None
  return f"{type(e).__name__}: {str(e).splitlines()[0][:120]}" if str(e) else type(e).__name__


def _retry_after(response: urllib3.BaseHTTPResponse) -> float | None:
  """Seconds from a Retry-After header: a number of seconds or an HTTP date."""
  value = response.headers.get("retry-after", "").strip()
  if not value:
    return None
  if value.isdigit():
    return float(value)
  with contextlib.suppress(TypeError, ValueError):
    return max(email.utils.parsedate_to_datetime(value).timestamp() - time.time(), 0.0)
  return None


# -- bodies ---------------------------------------------------------------------


def _encoding(header: str) -> str:
  codings = [c for c in (c.strip().lower() for c in header.split(","))
             if c not in ("", "identity")]
  if not codings:
    return ""
  if len(codings) == 1 and codings[0] in ("gzip", "x-gzip", "deflate"):
    return codings[0]
  raise DownloadError(f"unsupported Content-Encoding {header.strip()}")


class _Decoder:
  """Decodes a body's Content-Encoding a megabyte at a time, so the caller can stop a
  compressed bomb when its output passes the size limit rather than after inflating it."""

  def __init__(self, encoding: str):
    self.encoding = encoding
    wbits = 16 + zlib.MAX_WBITS if encoding in ("gzip", "x-gzip") else zlib.MAX_WBITS
    self.z = zlib.decompressobj(wbits) if encoding else None

  def decoded(self, chunks):
    """The body's bytes from its raw chunks, in pieces of at most _STEP when encoded."""
    if self.z is None:
      yield from chunks
      return
    start = b"" if self.encoding == "deflate" else None
    try:
      for data in chunks:
        if start is not None:
          # Servers send "deflate" as a raw stream as often as with zlib's 2-byte header.
          start += data
          if len(start) < 2:
            continue
          if (start[0] << 8 | start[1]) % 31:
            self.z = zlib.decompressobj(-zlib.MAX_WBITS)
          data, start = start, None
        while True:
          out = self.z.decompress(data, _STEP)
          data = self.z.unconsumed_tail
          yield out
          if not data and len(out) < _STEP:  # a full step may leave output inside zlib
            break
    except zlib.error as e:
      raise DownloadError(f"{self.encoding} body does not decode: {e}") from None
    if not self.z.eof:
      raise _Transient(f"body cut short: its {self.encoding} stream ends early")
    yield self.z.flush()


# -- what the bytes are ---------------------------------------------------------


_ARTICLE = {"image": "an image", "video": "a video", "audio": "an audio file"}
_MARKUP = ((b"<!doctype html", "HTML"), (b"<html", "HTML"), (b"<head", "HTML"),
           (b"<body", "HTML"), (b"<svg", "SVG"), (b"<?xml", "XML"))


def what_is(head: bytes) -> str | None:
  """A name for bytes that are no media: HTML, XML, JSON, PDF, text; None otherwise."""
  text = head.lstrip(b"\xef\xbb\xbf \t\r\n").lower()
  for start, name in _MARKUP:
    if text.startswith(start):
      return "SVG" if name == "XML" and b"<svg" in text else name
  if text.startswith(b"%pdf"):
    return "PDF"
  if b"\0" in head:
    return None
  try:
    decoded = head.decode("utf-8")
  except UnicodeDecodeError as e:  # a character cut at the end of the head is still text
    if e.start < len(head) - 3:
      return None
    decoded = head[:e.start].decode("utf-8")
  if all(c.isprintable() or c in "\t\r\n" for c in decoded):
    return "JSON" if text[:1] in (b"{", b"[") else "text"
  return None


def sniff(medium: str, head: bytes, body) -> str | None:
  """Why a body is not the medium it was fetched as; None when it may be. `head` is its
  start, `body` the whole: a path or a readable binary file, as PIL opens them."""
  if not head:
    return "empty body"
  other = what_is(head)
  if other:
    return f"not {_ARTICLE[medium]}: got {other}"
  if medium == "image":
    try:
      with Image.open(body):  # reads the header only
        pass
    except Image.UnidentifiedImageError:
      return "not an image: a format Pillow does not know"
    except Exception:
      pass  # an image, whose other faults the decode step names
  return None


# -- opt-out --------------------------------------------------------------------


def opted_out(values: list[str], directives: str) -> str | None:
  """The first of `directives` (comma-separated) that X-Robots-Tag `values` hold, as
  img2dataset reads them: a value scoped to another crawler (`googlebot: noindex`)
  does not count; one scoped to impax does."""
  refused = {d.strip().lower() for d in directives.split(",") if d.strip()}
  for value in values:
    scope, scoped, rest = value.partition(":")
    if not scoped:
      rest = value
    elif scope.strip().lower() != "impax":
      continue
    for directive in rest.split(","):
      if directive.strip().lower() in refused:
        return directive.strip().lower()
  return None


# -- per-worker state -----------------------------------------------------------


_lock = threading.Lock()
_clients: dict[tuple, "_Pool"] = {}
# {(host, limit): [semaphore, its users]}; a host's entry goes when its last download ends,
# so that a corpus of a million hosts does not leave a million semaphores in each worker.
_slots: dict[tuple[str, int], list] = {}


class _Pool:
  """A worker process's connections for one User-Agent, shared by its threads: urllib3's
  pools, one per host (the hosts used last kept), and a proxy's where the environment names
  one for the URL's scheme (HTTP_PROXY, HTTPS_PROXY, NO_PROXY), as httpx and requests do.
  Nothing is retried or redirected here (download and _attempt do it, naming each failure),
  and no cookie is kept: what one site sets never goes with another example's request."""

  def __init__(self, agent: str):
    settings = dict(num_pools=64, maxsize=32, block=False, retries=False,
                    ca_certs=os.environ.get("SSL_CERT_FILE") or certifi.where(),
                    headers={"User-Agent": agent, "Accept-Encoding": "gzip, deflate"})
    self.direct = urllib3.PoolManager(**settings)
    self.proxies = {scheme: urllib3.proxy_from_url(proxy, **settings)
                    for scheme, proxy in urllib.request.getproxies().items()
                    if scheme in ("http", "https")}

  def get(self, url: str, timeout: urllib3.Timeout) -> urllib3.BaseHTTPResponse:
    """The response to GET url, its body unread and undecoded."""
    manager = self.direct
    if self.proxies:
      parts = urllib3.util.parse_url(url)
      if parts.scheme in self.proxies and not urllib.request.proxy_bypass(parts.host or ""):
        manager = self.proxies[parts.scheme]
    return manager.urlopen("GET", url, redirect=False, retries=False, preload_content=False,
                           decode_content=False, timeout=timeout)


def _client(config: BuildConfig) -> _Pool:
  """The process's connections for these settings, shared by its threads."""
  key = (os.getpid(), config.user_agent)
  with _lock:
    if key not in _clients:
      _clients[key] = _Pool(user_agent(config.user_agent))
    return _clients[key]


@contextlib.contextmanager
def _host_slot(url: str, limit: int):
  key = (urllib3.util.parse_url(url).netloc or "", limit)
  with _lock:
    slot = _slots.setdefault(key, [threading.Semaphore(limit), 0])
    slot[1] += 1
  try:
    with slot[0]:
      yield
  finally:
    with _lock:
      slot[1] -= 1
      if not slot[1]:
        del _slots[key]


# -- kept originals -------------------------------------------------------------


def _url_entry(folder: str, url: str) -> str:
  key = hashlib.sha256(url.encode()).hexdigest()
  return storage.join(folder, "urls", key[:2], f"{key}.json")


def _blob(folder: str, sha256: str) -> str:
  return storage.join(folder, "sha256", sha256[:2], sha256)


def _kept(url: str, medium: str, config: BuildConfig) -> tuple[str, str] | None:
  """(path, sha256) of the URL's body kept by an earlier build; raises DownloadError when
  this config refuses it (size limit, opt-out)."""
  entry = _url_entry(config.keep_originals, url)
  if not storage.exists(entry):
    return None
  try:
    kept = json.loads(storage.read(entry))
    sha256, size, robots = kept["sha256"], kept["bytes"], kept["x_robots_tag"]
  except (ValueError, KeyError, TypeError):
    return None  # a damaged entry: download again
  blob = _blob(config.keep_originals, sha256)
  if not storage.exists(blob):
    return None
  if size > max_bytes(medium, config):
    raise DownloadError(f"body over {_size(max_bytes(medium, config))}")
  directive = opted_out(robots, config.opt_out)
  if directive:
    raise DownloadError(f"opted out: X-Robots-Tag {directive}")
  return blob, sha256


def _keep(url: str, body: bytes | str, sha256: str, robots: list[str], folder: str):
  """Keeps a download (an image's bytes, or a local file's path) under its sha256, and the
  URL's entry naming it."""
  blob = _blob(folder, sha256)
  if not storage.exists(blob):
    if storage.is_local(blob):
      os.makedirs(os.path.dirname(blob), exist_ok=True)
      temp = f"{blob}.partial-{os.getpid()}-{threading.get_ident()}"
      if isinstance(body, bytes):
        with open(temp, "wb") as f:
          f.write(body)
      else:
        shutil.copyfile(body, temp)
      os.replace(temp, blob)
    elif isinstance(body, bytes):
      storage.write_atomic(blob, body)
    else:
      with tempfile.NamedTemporaryFile(delete=False) as copy:
        shutil.copyfile(body, copy.name)
      storage.publish(copy.name, blob)
  entry = _url_entry(folder, url)
  if storage.is_local(entry):
    os.makedirs(os.path.dirname(entry), exist_ok=True)
  size = len(body) if isinstance(body, bytes) else os.path.getsize(body)
  storage.write_atomic(entry, json.dumps(
      {"url": url, "sha256": sha256, "bytes": size, "x_robots_tag": robots},
      sort_keys=True).encode())


def _size(n: int) -> str:
  for unit, scale in (("GB", 10**9), ("MB", 10**6), ("KB", 10**3)):
    if n >= scale:
      return f"{n / scale:g} {unit}"
  return f"{n} bytes"
