"""What fingerprinting costs a video build: the same build with `fingerprints` on and off.

    .venv/bin/python benchmarks/fingerprint_cost.py [--videos 16] [--seconds 10] [--rounds 2]

The videos of benchmarks/pipeline_throughput.py (1280x720 H.264 with AAC sound,
same settings), built end to end with one worker (DirectRunner), fingerprints
off and on in alternating rounds so drift on a shared machine hits both alike.
Prints JSON: the throughput ratio on/off (goal >= 0.9, i.e. fingerprinting
adds at most 10%), and, measured in-process on the same decoded clips, the
seconds of the fingerprints themselves against the decode's.
"""

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time

from pipeline_throughput import SETTINGS, make_videos

from impax.pipelines import build, media


def build_seconds(manifest: str, out: str, fingerprints: bool) -> float:
  shutil.rmtree(out, ignore_errors=True)
  start = time.perf_counter()
  plan = build.prepare("jsonl", manifest, out, "train", ({**SETTINGS, "fingerprints": fingerprints},))
  summary = build.run(plan, workers=1)
  elapsed = time.perf_counter() - start
  assert summary["num_failed"] == 0, summary
  return elapsed


def in_process(manifest: str) -> dict:
  """Decode seconds and fingerprint seconds of each clip, in this process."""
  with open(manifest) as f:
    videos = [json.loads(line)["video"] for line in f]
  decode_s = fingerprint_s = 0.0
  for path in videos:
    start = time.perf_counter()
    clip = media.decode_video(path, start=None, end=None, fps=SETTINGS["video_fps"],
                              max_frames=SETTINGS["video_max_frames"],
                              short_side=SETTINGS["video_short_side"], jpeg_quality=90,
                              audio_track="optional", sample_rate=16000, timeout=300)
    middle = time.perf_counter()
    media.video_fingerprint(clip.frames)
    if clip.audio:
      media.audio_fingerprint(clip.audio)
    decode_s += middle - start
    fingerprint_s += time.perf_counter() - middle
  return {"decode_s": round(decode_s, 3), "fingerprint_s": round(fingerprint_s, 3),
          "fingerprint_over_decode": round(fingerprint_s / decode_s, 4)}


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--videos", type=int, default=16)
  parser.add_argument("--seconds", type=float, default=10.0)
  parser.add_argument("--rounds", type=int, default=2)
  parser.add_argument("--workdir", default=os.path.join(tempfile.gettempdir(), "impax-bench-fingerprint"))
  args = parser.parse_args()
  manifest = make_videos(os.path.join(args.workdir, "videos"), args.videos, args.seconds)
  times = {False: [], True: []}
  for r in range(args.rounds):
    for on in ((False, True) if r % 2 == 0 else (True, False)):
      times[on].append(build_seconds(manifest, os.path.join(args.workdir, f"out-{on}"), on))
      print(json.dumps({"round": r, "fingerprints": on, "seconds": round(times[on][-1], 2)}),
            file=sys.stderr)
  off, on = statistics.median(times[False]), statistics.median(times[True])
  print(json.dumps({
      "videos": args.videos, "seconds_per_video": args.seconds, "workers": 1,
      "cpus": os.cpu_count(), "settings": SETTINGS,
      "build_s_off": [round(t, 2) for t in times[False]],
      "build_s_on": [round(t, 2) for t in times[True]],
      "videos_per_s_off": round(args.videos / off, 3),
      "videos_per_s_on": round(args.videos / on, 3),
      "throughput_on_over_off": round(off / on, 3),  # goal >= 0.9
      "in_process": in_process(manifest)}, indent=2))


if __name__ == "__main__":
  main()
