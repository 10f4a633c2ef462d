"""Precision and recall of `impax dedup` on a generated corpus whose duplicates are known.

    .venv/bin/python benchmarks/dedup_quality.py [--sources 16] [--threshold 10]

Distinct sources from ffmpeg's generators, each with its own parameters (life
and cellauto with their own seed and rule, mandelbrot at its own place; tone
sequences of their own pitches; still frames of the generators), and variants
of every source: videos re-encoded smaller with VP9 at a low bitrate, larger
with H.265, trimmed by 0.3 s, grayscale, cropped by 4%; sounds as MP3 at
22.05 kHz and trimmed Opus; images as a small JPEG, grayscale and cropped.
All of it is built for real (`impax build`, fingerprints on), and dedup's
groups are scored by pairs: a pair is a true duplicate when both records come
from one source. Prints JSON with precision and recall (goal: both >= 0.95).
"""

import argparse
import concurrent.futures
import itertools
import json
import os
import shutil
import subprocess
import tempfile
import time

import numpy as np

from impax.datasets import prepared
from impax.pipelines import build
from impax.pipelines.tools import ffmpeg_binary
from impax.tools import dedup

SETTINGS = {"video_short_side": 64, "image_short_side": 64, "video_fps": 5.0, "num_shards": 2}
RULES = (30, 45, 73, 90, 105, 110, 150, 18, 22, 126, 54, 60)
VIDEO_VARIANTS = {
    "vp9-small": (["-vf", "scale=96:72", "-c:v", "libvpx-vp9", "-b:v", "80k"], ".webm"),
    "h265-large": (["-vf", "scale=320:240", "-c:v", "libx265", "-b:v", "300k"], ".mp4"),
    "trimmed": (["-ss", "0.3", "-c:v", "libx264", "-crf", "33"], ".mp4"),
    "gray": (["-vf", "format=gray,format=yuv420p", "-c:v", "libx264"], ".mp4"),
    "cropped": (["-vf", "crop=iw*0.96:ih*0.96", "-c:v", "mpeg4", "-q:v", "5"], ".mp4"),
}
SOUND_VARIANTS = {
    "mp3": (["-ar", "22050", "-c:a", "libmp3lame", "-b:a", "48k"], ".mp3"),
    "trimmed-opus": (["-ss", "0.2", "-c:a", "libopus", "-b:a", "24k"], ".ogg"),
}
IMAGE_VARIANTS = {
    "small-jpeg": ["-vf", "scale=120:90", "-q:v", "12"],
    "gray": ["-vf", "format=gray"],
    "cropped": ["-vf", "crop=iw*0.96:ih*0.96:2:3"],
}


def ffmpeg(*args):
  subprocess.run([ffmpeg_binary(), "-y", "-nostdin", "-loglevel", "error", *args], check=True,
                 capture_output=True)


def video_source(i: int, rng: np.random.Generator, size: str) -> str:
  kind = i % 3
  if kind == 0:
    return f"life=s={size}:seed={i}:mold=10:r=25:ratio={rng.uniform(0.3, 0.7):.2f}"
  if kind == 1:
    return f"cellauto=s={size}:rule={RULES[i % len(RULES)]}:seed={i}"
  return (f"mandelbrot=s={size}:start_x={rng.uniform(-1.5, 0.3):.3f}:"
          f"start_y={rng.uniform(-0.8, 0.8):.3f}")


def write_corpus(root: str, sources: int, seed: int = 0) -> tuple[str, dict[str, str]]:
  """The media and a manifest; returns (manifest, {id: its source})."""
  os.makedirs(root, exist_ok=True)
  rng = np.random.default_rng(seed)
  jobs, lines, source_of = [], [], {}
  path = lambda name: os.path.join(root, name)

  def add(id_, medium, name, source, make):
    jobs.append(make)
    lines.append({"id": id_, medium: name, "label": "x"})
    source_of[id_] = source

  for i in range(sources):
    src, name = f"video-{i}", f"video-{i}.mp4"
    lavfi = video_source(i, rng, "160x120")
    original = lambda lavfi=lavfi, name=name: ffmpeg(
        "-f", "lavfi", "-i", f"{lavfi},format=yuv420p", "-t", "2.4", "-c:v", "libx264", path(name))
    variants = [lambda name=name, v=v, args=args, suffix=suffix, src=src: ffmpeg(
        "-i", path(name), *args, path(f"{src}-{v}{suffix}"))
        for v, (args, suffix) in VIDEO_VARIANTS.items()]
    add(src, "video", name, src, lambda original=original, variants=variants: (
        original(), [v() for v in variants]))
    for v, (_, suffix) in VIDEO_VARIANTS.items():
      lines.append({"id": f"{src}-{v}", "video": f"{src}-{v}{suffix}", "label": "x"})
      source_of[f"{src}-{v}"] = src

    src = f"sound-{i}"
    base, step = rng.uniform(150, 900), rng.uniform(-200, 200)
    expr = f"sin(2*PI*({base:.1f}+{step:.1f}*floor({rng.integers(2, 6)}*t))*t)"
    add(src, "audio", f"{src}.wav", src, lambda src=src, expr=expr: (
        ffmpeg("-f", "lavfi", "-i", f"aevalsrc={expr}:s=44100:d=2.5", path(f"{src}.wav")),
        [ffmpeg("-i", path(f"{src}.wav"), *args, path(f"{src}-{v}{suffix}"))
         for v, (args, suffix) in SOUND_VARIANTS.items()]))
    for v, (_, suffix) in SOUND_VARIANTS.items():
      lines.append({"id": f"{src}-{v}", "audio": f"{src}-{v}{suffix}", "label": "x"})
      source_of[f"{src}-{v}"] = src

    src = f"image-{i}"
    lavfi = video_source(i + 1000, rng, "200x150")
    add(src, "image", f"{src}.png", src, lambda src=src, lavfi=lavfi: (
        ffmpeg("-f", "lavfi", "-i", lavfi, "-frames:v", "1", path(f"{src}.png")),
        [ffmpeg("-i", path(f"{src}.png"), *args, "-frames:v", "1", path(f"{src}-{v}.jpg"))
         for v, args in IMAGE_VARIANTS.items()]))
    for v in IMAGE_VARIANTS:
      lines.append({"id": f"{src}-{v}", "image": f"{src}-{v}.jpg", "label": "x"})
      source_of[f"{src}-{v}"] = src
  with concurrent.futures.ThreadPoolExecutor(os.cpu_count()) as pool:
    list(pool.map(lambda job: job(), jobs))
  manifest = path("manifest.jsonl")
  with open(manifest, "w") as f:
    f.writelines(json.dumps(line) + "\n" for line in lines)
  return manifest, source_of


def pairs(groups) -> set[tuple[str, str]]:
  return {tuple(sorted(p)) for g in groups for p in itertools.combinations(g, 2)}


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--sources", type=int, default=16, help="distinct sources per medium")
  parser.add_argument("--threshold", type=int, default=dedup.DEFAULT_THRESHOLD)
  parser.add_argument("--workers", type=int, default=2)
  parser.add_argument("--workdir", default=os.path.join(tempfile.gettempdir(), "impax-bench-dedup"))
  args = parser.parse_args()
  shutil.rmtree(args.workdir, ignore_errors=True)
  start = time.perf_counter()
  manifest, source_of = write_corpus(os.path.join(args.workdir, "raw"), args.sources)
  out = os.path.join(args.workdir, "data")
  summary = build.run(build.prepare("jsonl", manifest, out, "train", (SETTINGS,)),
                      workers=args.workers)
  assert summary["num_failed"] == 0, summary
  found = dedup.find([dedup.read(prepared.open_dataset(out))], args.threshold)
  predicted = pairs([m.id for m in g] for g in found.groups)
  families = {}
  for id_, source in source_of.items():
    families.setdefault(source, []).append(id_)
  truth = pairs(families.values())
  result = {"sources_per_medium": args.sources, "records": len(source_of),
            "threshold": args.threshold, "true_pairs": len(truth), "found_pairs": len(predicted)}
  for medium in ("video", "sound", "image", "all"):
    t = {p for p in truth if medium == "all" or p[0].startswith(medium)}
    f = {p for p in predicted if medium == "all" or p[0].startswith(medium)}
    result[medium] = {"precision": round(len(t & f) / len(f), 4) if f else None,
                      "recall": round(len(t & f) / len(t), 4) if t else None}
  result["missed"] = sorted(truth - predicted)[:20]
  result["false"] = sorted(predicted - truth)[:20]
  result["seconds"] = round(time.perf_counter() - start, 1)
  print(json.dumps(result, indent=2))


if __name__ == "__main__":
  main()
