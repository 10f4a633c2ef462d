"""One build at a time into an output: a lock on OUTPUT/.impax-lock.

Two builds into one output (a double click in the Prefect UI, a cron job retried
while the first still runs) would clear and write each other's temporary files.
The second is refused with one line naming the holder: host, process id, since when.

- On a local (or mounted) disk the lock is an flock on the file, which the kernel
  releases when its process ends however it ends: a killed build's lock is stale by
  construction, and the next build takes it over (saying whose it was).
- On gs:// and s3:// it is a lease object: the holder rewrites it every
  LEASE_SECONDS / 4 with a new expiry, and a lease past its expiry (or one held by a
  process of this host that no longer runs) is stale. Beam's filesystems have no
  create-if-absent, so a taker writes its lease, waits SETTLE_SECONDS (longer than a
  write takes; both stores read their own writes) and reads it back: of two builds that
  wrote at once, the one whose lease is there holds it, and the other is refused.

A process holds a lock once however often it asks (prepare, then run), until its
last release.
"""

import contextlib
import dataclasses
import datetime
import fcntl
import json
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable

from impax.pipelines import storage

LOCK_NAME = ".impax-lock"
LEASE_SECONDS = 120.0
SETTLE_SECONDS = 1.0

logger = logging.getLogger(__name__)


class Locked(Exception):
  """Another build holds the output's lock; the message names it and what to do."""


@dataclasses.dataclass
class _Held:
  count: int
  release: Callable[[], None]


_held: dict[str, _Held] = {}
_held_lock = threading.Lock()


@contextlib.contextmanager
def locked(output: str, what: str = "impax build"):
  """Holds OUTPUT's lock for the block; raises Locked when another process holds it."""
  key = output.rstrip("/") if "://" in output else os.path.abspath(output)
  with _held_lock:
    if key in _held:
      _held[key].count += 1
    else:
      _held[key] = _Held(1, (_take_local if storage.is_local(key) else _take_lease)(key, what))
  try:
    yield
  finally:
    with _held_lock:
      held = _held[key]
      held.count -= 1
      if not held.count:
        del _held[key]
        held.release()


def holder_text(holder: dict) -> str:
  return (f"{holder.get('what', 'a build')} on host {holder.get('host', '?')}, pid "
          f"{holder.get('pid', '?')}, since {holder.get('since', '?')}")


def _holder(what: str, token: str = "") -> dict:
  now = datetime.datetime.now(datetime.timezone.utc)
  return {"what": what, "host": socket.gethostname(), "pid": os.getpid(),
          "pid_started": _start_time(os.getpid()),
          "since": now.isoformat(timespec="seconds"), "token": token}


def _start_time(pid: int) -> str | None:
  """The process's start time in clock ticks since boot (Linux), so that a process id
  the system has given to another process is not taken for the holder."""
  try:
    with open(f"/proc/{pid}/stat", "rb") as f:
      return f.read().rsplit(b")", 1)[1].split()[19].decode()
  except (OSError, IndexError):
    return None


def _parse(data: bytes) -> dict:
  try:
    holder = json.loads(data)
  except ValueError:
    return {}
  return holder if isinstance(holder, dict) else {}


def _refusal(output: str, holder: dict) -> Locked:
  return Locked(f"{output} is being built by {holder_text(holder)}: wait for it to finish, "
                f"or build into another output (if no such build runs, remove "
                f"{storage.join(output, LOCK_NAME)})")


def _take_local(output: str, what: str):
  path = os.path.join(output, LOCK_NAME)
  os.makedirs(output, exist_ok=True)
  while True:
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      holder = _parse(os.pread(fd, 1 << 16, 0))
      os.close(fd)
      raise _refusal(output, holder) from None
    # The file may have been removed by its last holder between our open and flock:
    # then this lock is on a name nobody else sees, and we open the new file.
    try:
      same = os.fstat(fd).st_ino == os.stat(path).st_ino
    except FileNotFoundError:
      same = False
    if same:
      break
    os.close(fd)
  if previous := _parse(os.pread(fd, 1 << 16, 0)):
    logger.warning("%s: taking over the lock left by %s, which ended without releasing it",
                   output, holder_text(previous))
  os.ftruncate(fd, 0)
  os.pwrite(fd, json.dumps(_holder(what)).encode(), 0)

  def release():
    with contextlib.suppress(OSError):
      os.remove(path)
    os.close(fd)
  return release


def _stale(holder: dict, now: float) -> bool:
  if holder.get("expires", 0) < now:
    return True
  if holder.get("host") == socket.gethostname():  # a process of this host: is it running?
    pid = holder.get("pid")
    return not isinstance(pid, int) or _start_time(pid) != holder.get("pid_started")
  return False


def _take_lease(output: str, what: str):
  path = storage.join(output, LOCK_NAME)
  token = uuid.uuid4().hex
  if storage.exists(path):
    previous = _parse(storage.read(path))
    if not _stale(previous, time.time()):
      raise _refusal(output, previous)
    logger.warning("%s: taking over the lease of %s, which ended without releasing it",
                   output, holder_text(previous))
  lease = _holder(what, token)

  def renew():
    storage.write_atomic(path, json.dumps({**lease, "expires": time.time() + LEASE_SECONDS}).encode())

  renew()
  time.sleep(SETTLE_SECONDS)
  current = _parse(storage.read(path)) if storage.exists(path) else {}
  if current.get("token") != token:
    raise _refusal(output, current)
  stop = threading.Event()

  def heartbeat():
    while not stop.wait(LEASE_SECONDS / 4):
      try:
        renew()
      except Exception as e:  # the next beat tries again; the lease outlives three misses
        logger.warning("%s: could not renew the build's lease: %s", output, e)

  beat = threading.Thread(target=heartbeat, name="impax-lease", daemon=True)
  beat.start()

  def release():
    stop.set()
    beat.join()
    with contextlib.suppress(Exception):
      if _parse(storage.read(path)).get("token") == token:
        storage.delete([path])
  return release
