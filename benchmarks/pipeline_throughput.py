"""Video throughput of `impax build` against bare ffmpeg, and two workers against one.

    .venv/bin/python benchmarks/pipeline_throughput.py [--videos 48] [--seconds 10] [--repeat 1]

Generates H.264/AAC videos (1280x720, 30 fps, with sound), then in one run:
  - baseline: bare ffmpeg doing the same trim, fps and resize (frames to JPEG
    files, sound to a mono 16 kHz WAV), N processes at a time, one thread each;
  - impax build of the same files with N workers (DirectRunner, in the mode the build
    picks: threads for this small manifest), end to end: Beam's start-up, tokenizer,
    shards and metadata included;
for N = 1 and 2. Prints JSON with the ratios the issue names:
  pipeline / bare ffmpeg at equal parallelism (goal >= 0.9),
  pipeline with 2 workers / with 1 worker (goal >= 1.7).
Each is given end to end, and in steady state: the pipeline's fixed cost
(Beam's start-up, worker imports, the global steps) is measured by building
one video in the N-video build's own mode (`mode`: its N workers), and taken out:
steady = (V - 1) / (T(V) - T(1)). `impax_one_video_s` is a one-video build as users
run it (in the launcher's process, whatever --workers). The machine may be shared:
each `*_cpu_s` is the CPU time (user + sys, ffmpeg and worker processes included)
of that wall time, which another job's load changes less. With --repeat R, each
build runs R times, interleaved, and each figure is the median of its R runs.
"""

import argparse
import concurrent.futures
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

from impax.datasets import registry
from impax.pipelines import build, publish, read
from impax.pipelines.tools import ffmpeg_binary

SETTINGS = {"video_fps": 8.0, "video_short_side": 256, "video_max_frames": 128, "num_shards": 4}


def make_videos(folder: str, count: int, seconds: float) -> str:
  os.makedirs(folder, exist_ok=True)
  lines = []

  def one(i):
    path = os.path.join(folder, f"v{i:04d}.mp4")
    if not os.path.exists(path):
      subprocess.run([ffmpeg_binary(), "-v", "error", "-y", "-f", "lavfi", "-i",
                      f"testsrc2=size=1280x720:rate=30,hue=h={i * 7}", "-f", "lavfi", "-i",
                      f"sine=frequency={200 + 10 * i}:sample_rate=44100", "-t", str(seconds),
                      "-c:v", "libx264", "-preset", "veryfast", "-pix_fmt", "yuv420p", "-c:a", "aac",
                      path], check=True)
    return {"id": f"v{i:04d}", "video": path, "label": f"class{i % 5}", "caption": f"video {i}"}

  with concurrent.futures.ThreadPoolExecutor(os.cpu_count()) as pool:
    lines = list(pool.map(one, range(count)))
  manifest = os.path.join(folder, "manifest.jsonl")
  with open(manifest, "w") as f:
    f.writelines(json.dumps(l) + "\n" for l in lines)
  return manifest


def bare_ffmpeg(manifest: str, out: str, parallel: int) -> float:
  """The same decode, trim, fps and resize, frames to JPEG files, sound to WAV."""
  with open(manifest) as f:
    videos = [json.loads(l)["video"] for l in f]
  s = SETTINGS
  scale = (f"scale=w='if(lte(iw,ih),{s['video_short_side']},-2)':"
           f"h='if(lte(iw,ih),-2,{s['video_short_side']})':flags=bicubic")
  duration = s["video_max_frames"] / s["video_fps"]

  def one(path):
    target = os.path.join(out, os.path.basename(path))
    os.makedirs(target, exist_ok=True)
    subprocess.run([ffmpeg_binary(), "-v", "error", "-nostdin", "-y", "-threads", "1",
                    "-t", str(duration), "-i", path, "-filter_complex_threads", "1",
                    "-map", "0:v:0", "-vf", f"fps={s['video_fps']},{scale}",
                    "-frames:v", str(s["video_max_frames"]), "-q:v", "3",
                    os.path.join(target, "%04d.jpg"),
                    "-map", "0:a:0", "-ac", "1", "-ar", "16000", os.path.join(target, "audio.wav")],
                   check=True)

  start = time.perf_counter()
  with concurrent.futures.ThreadPoolExecutor(parallel) as pool:
    list(pool.map(one, videos))
  return time.perf_counter() - start


def first_video(manifest: str, folder: str, count: int = 1) -> str:
  """A manifest of the first `count` videos of `manifest`, in `folder`."""
  with open(manifest) as f:
    lines = f.readlines()[:count]
  assert len(lines) == count, f"{manifest} has fewer than {count} videos"
  os.makedirs(folder, exist_ok=True)
  path = os.path.join(folder, "one.jsonl" if count == 1 else f"first{count}.jsonl")
  with open(path, "w") as f:
    f.writelines(lines)
  return path


def pipeline(manifest: str, out: str, workers: int, beam_args=()) -> float:
  start = time.perf_counter()
  plan = build.prepare("jsonl", manifest, out, "train", (SETTINGS,))
  summary = build.run(plan, workers=workers, beam_args=list(beam_args))
  elapsed = time.perf_counter() - start
  assert summary["num_failed"] == 0, summary
  return elapsed


def with_cpu(run, *args) -> tuple[float, float]:
  """run(*args)'s result (its wall seconds) and the CPU seconds it took, children included."""
  def cpu():
    return sum(r.ru_utime + r.ru_stime for r in (resource.getrusage(resource.RUSAGE_SELF),
                                                 resource.getrusage(resource.RUSAGE_CHILDREN)))
  before = cpu()
  wall = run(*args)
  return wall, cpu() - before


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--videos", type=int, default=48)
  parser.add_argument("--seconds", type=float, default=10.0)
  parser.add_argument("--repeat", type=int, default=1,
                      help="runs of each build, interleaved; each figure is their median")
  parser.add_argument("--workdir", default=os.path.join(tempfile.gettempdir(), "impax-bench-throughput"))
  args = parser.parse_args()
  manifest = make_videos(os.path.join(args.workdir, "videos"), args.videos, args.seconds)
  results = {"videos": args.videos, "seconds_per_video": args.seconds, "cpus": os.cpu_count(),
             "settings": SETTINGS, "ffmpeg": publish.ffmpeg_version()}
  for n in (1, 2):
    out = os.path.join(args.workdir, f"out{n}")
    # The fixed cost taken out of the N-video build: one video in that build's own mode
    # (with its N workers and their start-up), so that what is left is per video.
    own = build.pipeline_options([], n, read.max_entries(manifest, registry.get("jsonl")))
    own = own.get_all_options()
    mode = [f"--direct_running_mode={own['direct_running_mode']}",
            f"--direct_num_workers={own['direct_num_workers']}"]
    runs = []
    for _ in range(args.repeat):  # interleaved, so that a slow spell of the machine hits all
      shutil.rmtree(out, ignore_errors=True)
      bare = with_cpu(bare_ffmpeg, manifest, os.path.join(out, "bare"), n)
      impax = with_cpu(pipeline, manifest, os.path.join(out, "impax"), n)
      one_video = first_video(manifest, out)
      # A one-video build as users run it: in the launcher's process, whatever --workers.
      one = with_cpu(pipeline, one_video, os.path.join(out, "impax-one"), n)
      fixed = with_cpu(pipeline, one_video, os.path.join(out, "impax-one-same-mode"), n, mode)
      runs.append((bare, impax, one, fixed))
    # Each figure the median of its runs (wall and CPU seconds apart).
    (bare, bare_cpu), (impax, impax_cpu), (one, one_cpu), (fixed, fixed_cpu) = (
        (statistics.median(r[k][0] for r in runs), statistics.median(r[k][1] for r in runs))
        for k in range(4))
    steady = (args.videos - 1) / (impax - fixed)
    results[f"workers_{n}"] = {
        "mode": own["direct_running_mode"], "runs": args.repeat,
        "bare_ffmpeg_s": round(bare, 2), "impax_s": round(impax, 2),
        "impax_one_video_s": round(one, 2), "fixed_cost_s": round(fixed, 2),
        "bare_ffmpeg_cpu_s": round(bare_cpu, 2), "impax_cpu_s": round(impax_cpu, 2),
        "impax_one_video_cpu_s": round(one_cpu, 2), "fixed_cost_cpu_s": round(fixed_cpu, 2),
        "load_average": round(os.getloadavg()[0], 2),
        "bare_ffmpeg_videos_per_s": round(args.videos / bare, 3),
        "impax_videos_per_s": round(args.videos / impax, 3),
        "impax_steady_videos_per_s": round(steady, 3),
        "impax_over_bare": round(bare / impax, 3),
        "impax_over_bare_each_run": [round(b[0] / i[0], 3) for b, i, _, _ in runs],
        "impax_steady_over_bare": round(steady / (args.videos / bare), 3)}
    print(json.dumps({f"workers_{n}": results[f"workers_{n}"]}), file=sys.stderr)
  w1, w2 = results["workers_1"], results["workers_2"]
  results["impax_2_workers_over_1"] = round(w1["impax_s"] / w2["impax_s"], 3)
  results["impax_steady_2_workers_over_1"] = round(
      w2["impax_steady_videos_per_s"] / w1["impax_steady_videos_per_s"], 3)
  print(json.dumps(results, indent=2))


if __name__ == "__main__":
  main()
