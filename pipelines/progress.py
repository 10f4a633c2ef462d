"""The launcher's progress on a running build: examples processed of the input's, failures
so far, examples/s and the time left.

The workers leave each processed example's result in OUTPUT/.impax-tmp/<split>/examples/
(pipelines/graph.py, step 5) until the build publishes: a line of its bundle's result log on
a local disk (Plan.result_log), a file of its own on an object store (Plan.result_blob); the
launcher counts them. That works on every runner whose workers write where the launcher can
read, Flink, Spark and Dataflow included. Beam's metrics cannot do it there: Flink's job
server (Beam 2.62.0) reports no user counter to the launcher while a job runs, nor after it
(tried).

On a terminal the line is redrawn every second; otherwise (a log, a Prefect flow) a line is
printed every IMPAX_PROGRESS_INTERVAL seconds (default 30).
"""

import json
import os
import threading
import time

from impax.pipelines import storage
from impax.pipelines.plan import RESULT_LOG, Plan


def _clock(seconds: float) -> str:
  seconds = int(seconds)
  return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def describe(done: int, failed: int, total: int | None, rate: float | None) -> str:
  """One progress line, e.g. `37/120 examples, 2 failed, 4.1 examples/s, 0:00:20 left`."""
  line = f"{done}/{total} examples" if total else f"{done} examples"
  line += f", {failed} failed"
  if rate:
    line += f", {rate:.1f} examples/s"
    if total and total > done:
      line += f", {_clock((total - done) / rate)} left"
  return line


class Progress:
  """A thread that reports a build's progress to `stream` while the pipeline runs."""

  def __init__(self, plan: Plan, total: int | None, stream, interval: float | None = None):
    self.examples = storage.join(plan.tmp, "examples")
    self.local = storage.is_local(self.examples)
    self.total, self.stream = total, stream
    self.tty = stream.isatty()
    default = float(os.environ.get("IMPAX_PROGRESS_INTERVAL", 30))
    self.interval = interval or (1.0 if self.tty and self.local else default)
    self.prefix = f"{plan.split}: "
    self._seen: dict[str, bool] = {}  # result file: whether it is a failure
    self._logs: dict[str, list[int]] = {}  # result log: [bytes counted, results, failures]
    self._stop = threading.Event()
    self._thread = threading.Thread(target=self._run, daemon=True, name="impax-progress")
    self._first: tuple[float, int] | None = None  # when examples were first seen, and how many
    self._last: tuple[float, int] = (0.0, 0)  # when the count last grew, and to what

  def __enter__(self):
    self._start = time.monotonic()
    self._thread.start()
    return self

  def __exit__(self, *exc):
    self._stop.set()
    self._thread.join()
    if self.tty:
      self.stream.write("\r\x1b[K")
      self.stream.flush()

  def poll(self) -> tuple[int, int]:
    """(examples processed, failures among them) so far."""
    if self.local:
      try:
        entries = list(os.scandir(self.examples))
      except FileNotFoundError:
        entries = []
      names = [e.name for e in entries if e.name.endswith(".json")]
      for e in entries:
        if e.name.endswith(RESULT_LOG):
          self._count_log(e.name)
    else:
      names = [os.path.basename(p) for p in storage.glob(storage.join(self.examples, "*.json"))]
    for name in names:
      if name not in self._seen and self.local:
        try:
          with open(os.path.join(self.examples, name)) as f:
            self._seen[name] = "error" in json.load(f)
        except (OSError, ValueError):
          continue  # a result is written atomically, but it may be gone: the build is done
      elif name not in self._seen:
        self._seen[name] = False  # a remote output: its failures are counted at the end
    logged = [sum(counts[i] for counts in self._logs.values()) for i in (1, 2)]
    return len(self._seen) + logged[0], sum(self._seen.values()) + logged[1]

  def _count_log(self, name: str):
    """Counts the whole lines a result log gained since the last poll."""
    counts = self._logs.setdefault(name, [0, 0, 0])
    try:
      with open(os.path.join(self.examples, name), "rb") as f:
        f.seek(counts[0])
        data = f.read()
    except OSError:
      return  # gone: the build is done
    data = data[:data.rfind(b"\n") + 1]  # a line still being written counts next time
    for line in data.splitlines():
      counts[1] += 1
      counts[2] += "error" in json.loads(line)
    counts[0] += len(data)

  def _run(self):
    # Once more when the pipeline ends: a log's last line counts every example, however
    # soon after the last poll the build finished.
    stopped = False
    while not stopped:
      stopped = self._stop.wait(self.interval)
      try:
        done, failed = self.poll()
      except Exception:  # progress is a convenience: never the reason a build fails
        continue
      now = time.monotonic()
      if done and self._first is None:
        self._first = (now, done)
      if self._first and done > self._last[1]:
        self._last = (now, done)
      rate = None  # over the time examples kept coming, from the first seen
      if self._first and self._last[1] > self._first[1]:
        rate = (self._last[1] - self._first[1]) / (self._last[0] - self._first[0])
      line = self.prefix + describe(done, failed, self.total, rate)
      if self.tty:
        self.stream.write("\r\x1b[K" + line)
      else:
        self.stream.write(f"impax build {line} ({_clock(now - self._start)} in)\n")
      self.stream.flush()
