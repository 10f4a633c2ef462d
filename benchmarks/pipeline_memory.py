"""Peak memory of a build worker: a 10-minute video against a 10-second one.

    .venv/bin/python benchmarks/pipeline_memory.py [--short_seconds 10] [--long_seconds 600]

Generates a 10-second and a 10-minute H.264/AAC video (640x360, 30 fps), and
builds each with one DirectRunner worker process (multi-process mode, as a
distributed runner runs it), default settings. While a build runs, every
process under it is sampled for its peak resident memory (VmHWM, exact up to
the last sample): the Beam worker, and the ffmpeg it runs, separately.
Cases: the 10-minute video whole (the default cap of 128 frames at 8 fps),
a 10-second clip from its middle (input seeking to 5:00), and the whole
10 minutes at 1 fps with no cap (600 frames in one record).
Goal: the worker's peak is flat across cases and under 1 GiB.
--short_seconds and --long_seconds change the two videos' lengths (the clip is
the short length from the long video's middle; the cases keep their names).
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time

import psutil

from impax.pipelines import build
from impax.pipelines.tools import ffmpeg_binary


def make_video(path: str, seconds: int):
  if not os.path.exists(path):
    subprocess.run([ffmpeg_binary(), "-v", "error", "-y", "-f", "lavfi", "-i",
                    "testsrc2=size=640x360:rate=30", "-f", "lavfi", "-i",
                    "sine=frequency=440:sample_rate=44100", "-t", str(seconds), "-c:v", "libx264",
                    "-preset", "ultrafast", "-pix_fmt", "yuv420p", "-c:a", "aac", path], check=True)


def peak_hwm(pid: int) -> int:
  with open(f"/proc/{pid}/status") as f:
    for line in f:
      if line.startswith("VmHWM:"):
        return int(line.split()[1]) * 1024
  return 0


class Sampler(threading.Thread):
  """Peak resident memory of this process's descendants, by kind."""

  def __init__(self):
    super().__init__(daemon=True)
    self.peaks, self.stop = {}, threading.Event()

  def run(self):
    me = psutil.Process()
    while not self.stop.is_set():
      for child in me.children(recursive=True):
        try:
          cmd = " ".join(child.cmdline())
          kind = "ffmpeg" if "ffmpeg" in cmd else "beam_worker" if "sdk_worker_main" in cmd else "other"
          self.peaks[kind] = max(self.peaks.get(kind, 0), peak_hwm(child.pid))
        except (psutil.Error, OSError):
          pass
      time.sleep(0.02)


def measure(manifest_line: dict, workdir: str, name: str, settings: dict) -> dict:
  manifest = os.path.join(workdir, f"{name}.jsonl")
  with open(manifest, "w") as f:
    f.write(json.dumps(manifest_line) + "\n")
  sampler = Sampler()
  sampler.start()
  plan = build.prepare("jsonl", manifest, os.path.join(workdir, "out", name), "train",
                       (settings,), overwrite=True)
  start = time.perf_counter()
  # One worker process: a one-entry build would otherwise run in this process, unsampled.
  summary = build.run(plan, workers=1, beam_args=["--direct_running_mode=multi_processing",
                                                  "--direct_num_workers=1"])
  sampler.stop.set()
  sampler.join()
  assert summary["num_examples"] == 1, summary
  stats = summary["statistics"]
  return {"worker_peak_mib": round(sampler.peaks.get("beam_worker", 0) / 2**20, 1),
          "ffmpeg_peak_mib": round(sampler.peaks.get("ffmpeg", 0) / 2**20, 1),
          "launcher_peak_mib": round(peak_hwm(os.getpid()) / 2**20, 1),
          "frames": stats["video/num_frames"]["max"],
          "record_mib": round(stats["record/bytes"]["max"] / 2**20, 2),
          "seconds": round(time.perf_counter() - start, 1)}


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--short_seconds", type=int, default=10)
  parser.add_argument("--long_seconds", type=int, default=600)
  parser.add_argument("--workdir", default=os.path.join(tempfile.gettempdir(), "impax-bench-memory"))
  args = parser.parse_args()
  workdir, short_s, long_s = args.workdir, args.short_seconds, args.long_seconds
  os.makedirs(workdir, exist_ok=True)
  short, long_ = (os.path.join(workdir, f"{s}s.mp4") for s in (short_s, long_s))
  make_video(short, short_s)
  make_video(long_, long_s)
  middle = long_s // 2
  cases = {
      "10s_whole": ({"video": short, "label": "x"}, {}),
      "10min_whole": ({"video": long_, "label": "x"}, {}),
      "10min_clip_at_5min": ({"video": long_, "start": middle, "end": middle + short_s,
                              "label": "x"}, {}),
      "10min_whole_1fps_600_frames": ({"video": long_, "label": "x"},
                                      {"video_fps": 1.0, "video_max_frames": long_s}),
  }
  results = {"short_seconds": short_s, "long_seconds": long_s}
  results.update({name: measure(line, workdir, name, settings)
                  for name, (line, settings) in cases.items()})
  for name, r in results.items():
    print(json.dumps({name: r}), file=sys.stderr)
  base = results["10s_whole"]["worker_peak_mib"]
  results["worker_peak_10min_over_10s"] = round(results["10min_whole"]["worker_peak_mib"] / base, 3)
  results["worker_peak_max_mib"] = max(r["worker_peak_mib"] for r in results.values()
                                       if isinstance(r, dict))
  print(json.dumps(results, indent=2))


if __name__ == "__main__":
  main()
