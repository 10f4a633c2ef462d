"""A running build says how far it is: a redrawn line on a terminal, a periodic line in a
log, nothing with --quiet."""

import io
import json
import os
import pty
import re
import subprocess
import sys
import types

from impax.pipelines import progress

SMALL = ["--video-short-side", "32", "--image-short-side", "32", "--video-fps", "5.0"]
LINE = re.compile(r"train: (\d+)/10 examples, (\d+) failed")


def _build(corpus, output, *flags, stderr=subprocess.PIPE):
  argv = [sys.executable, "-m", "impax.cli", "build", "jsonl", "--input", corpus["videos-train"],
          "--output", str(output), "--workers", "2", *SMALL, *flags]
  env = {**os.environ, "IMPAX_PROGRESS_INTERVAL": "0.2"}
  return subprocess.run(argv, stdout=subprocess.PIPE, stderr=stderr, env=env, timeout=300)


def test_a_log_gets_a_line_at_each_interval_and_quiet_gets_none(corpus, tmp_path):
  result = _build(corpus, tmp_path / "a")
  assert result.returncode == 0, result.stderr.decode()[-3000:]
  lines = [l for l in result.stderr.decode().splitlines() if l.startswith("impax build train: ")]
  counts = [int(LINE.search(l)[1]) for l in lines]
  assert len(counts) >= 3 and counts == sorted(counts) and counts[-1] == 10, lines
  assert "examples/s" in lines[-1]
  assert b"10 examples, 0 failed, 1 shard(s)" in result.stdout  # the summary, as before
  quiet = _build(corpus, tmp_path / "b", "--quiet")
  assert quiet.returncode == 0 and b"impax build train:" not in quiet.stderr


def test_a_terminal_gets_one_redrawn_line(corpus, tmp_path):
  leader, follower = pty.openpty()
  result = _build(corpus, tmp_path / "a", stderr=follower)
  os.close(follower)
  seen = b""
  while True:
    try:
      chunk = os.read(leader, 65536)
    except OSError:  # the terminal closed
      break
    if not chunk:
      break
    seen += chunk
  os.close(leader)
  assert result.returncode == 0
  text = seen.decode(errors="replace")
  redraws = [m for m in text.split("\r\x1b[K") if LINE.match(m)]
  assert redraws, text[-2000:]
  assert "\nimpax build train" not in text  # no log lines on a terminal
  assert text.endswith("\r\x1b[K"), text[-300:]  # the line is cleared when the build ends


def test_the_count_of_examples_and_failures_and_the_line(tmp_path):
  examples = tmp_path / ".impax-tmp" / "train" / "examples"
  examples.mkdir(parents=True)
  plan = types.SimpleNamespace(tmp=str(tmp_path / ".impax-tmp" / "train"), split="train")
  meter = progress.Progress(plan, total=120, stream=io.StringIO())
  assert meter.poll() == (0, 0)
  for i in range(5):
    result = {"index": i, "id": str(i), "source": f"m.jsonl:{i + 1}"}
    if i in (1, 3):
      result.update(stage="video", error="ffmpeg could not decode", media={})
    (examples / f"{i:012d}.json").write_text(json.dumps(result))
  (examples / "000000000009.tfex").write_bytes(b"a record, not a result")
  assert meter.poll() == (5, 2)
  # A bundle's result log (a local disk): its whole lines, counted as they come.
  log = examples / "0123456789ab.results"
  failed = {"index": 5, "id": "5", "source": "m.jsonl:6", "stage": "download",
            "error": "HTTP 404", "media": {}}
  log.write_bytes(json.dumps(failed).encode() + b"\n" + b'{"index": 6, "id"')  # still written
  assert meter.poll() == (6, 3)
  with open(log, "ab") as f:
    f.write(b': "6", "source": "m.jsonl:7"}\n')
  assert meter.poll() == (7, 3)
  assert meter.poll() == (7, 3)  # a line is counted once
  assert progress.describe(37, 2, 120, 4.1) == "37/120 examples, 2 failed, 4.1 examples/s, 0:00:20 left"
  assert progress.describe(3, 0, None, None) == "3 examples, 0 failed"
