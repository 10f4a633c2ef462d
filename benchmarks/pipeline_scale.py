"""A corpus ten times larger, built on the same workers: how much longer it takes.

    .venv/bin/python benchmarks/pipeline_scale.py [--examples 40] [--factor 10] [--workers 2]

Generates a few H.264/AAC videos (320x240, 25 fps, 2 s, with sound) and JSONL
manifests of N and 10N lines over them (each line its own example: id, label,
caption), then builds each end to end with `impax build` on the same DirectRunner
workers, shards of 20 examples (so 10N writes ten times the shards). Also builds a
single example, the pipeline's fixed cost (Beam's start-up, the global steps).

Prints JSON with the issue's figure, T(10N) / T(N) (goal <= 10.5), and the same
ratio with the fixed cost taken out, (T(10N) - T(1)) / (T(N) - T(1)): 10 when the
per-example work grows exactly linearly.
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

from impax.pipelines import build
from impax.pipelines.tools import ffmpeg_binary

SETTINGS = {"video_fps": 8.0, "video_short_side": 128, "shard_size": 20}
SOURCES = 8


def make_sources(folder: str) -> list[str]:
  os.makedirs(folder, exist_ok=True)
  paths = []
  for i in range(SOURCES):
    path = os.path.join(folder, f"source{i}.mp4")
    subprocess.run([ffmpeg_binary(), "-v", "error", "-y", "-f", "lavfi", "-i",
                    f"testsrc2=size=320x240:rate=25,hue=h={i * 40}", "-f", "lavfi", "-i",
                    f"sine=frequency={300 + 50 * i}:sample_rate=44100", "-t", "2",
                    "-c:v", "libx264", "-preset", "veryfast", "-pix_fmt", "yuv420p", "-c:a", "aac",
                    path], check=True)
    paths.append(path)
  return paths


def manifest(folder: str, sources: list[str], count: int) -> str:
  path = os.path.join(folder, f"manifest-{count}.jsonl")
  with open(path, "w") as f:
    for i in range(count):
      f.write(json.dumps({"id": f"clip-{i:06d}", "video": sources[i % len(sources)],
                          "label": f"class {i % 10}", "caption": f"clip {i} of class {i % 10}"}) + "\n")
  return path


def timed_build(manifest_path: str, output: str, workers: int) -> float:
  shutil.rmtree(output, ignore_errors=True)
  start = time.monotonic()
  plan = build.prepare("jsonl", manifest_path, output, "train", (SETTINGS,))
  summary = build.run(plan, workers=workers)
  seconds = time.monotonic() - start
  assert summary["num_failed"] == 0, summary["failures_by_stage"]
  return seconds


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--examples", type=int, default=40, help="N, the smaller corpus")
  parser.add_argument("--factor", type=int, default=10)
  parser.add_argument("--workers", type=int, default=2)
  parser.add_argument("--dir", help="working folder (default: a temporary one)")
  args = parser.parse_args()
  work = args.dir or tempfile.mkdtemp(prefix="impax-scale-")
  sources = make_sources(os.path.join(work, "videos"))
  sizes = [1, args.examples, args.examples * args.factor]
  seconds = {}
  for count in sizes:
    seconds[count] = timed_build(manifest(work, sources, count), os.path.join(work, f"out-{count}"),
                                 args.workers)
    print(f"{count} examples: {seconds[count]:.1f} s", file=sys.stderr)
  small, large, fixed = seconds[sizes[1]], seconds[sizes[2]], seconds[1]
  print(json.dumps({
      "workers": args.workers,
      "examples": sizes,
      "seconds": [round(seconds[c], 2) for c in sizes],
      "ratio": round(large / small, 3),
      "ratio_without_fixed_cost": round((large - fixed) / (small - fixed), 3),
      "examples_per_second": [round(c / seconds[c], 2) for c in sizes],
      "goal": f"ratio <= {args.factor + 0.5}",
  }, indent=2))
  if not args.dir:
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
  main()
