"""The same video build on a Flink cluster and on the DirectRunner, at equal parallelism.

    .venv/bin/python benchmarks/engine_throughput.py [--videos 16] [--seconds 5] [--parallelism 2]
        [--no_warm_up]

Starts the loopback Flink cluster of `impax engine flink start` (JobManager, TaskManager
with --parallelism slots, Beam's job server and the SDK worker pool: each its own
process), then in one run, for the DirectRunner (multi-process, that many workers) and
for Flink (--parallelism), after one untimed build that warms each up (the first job
on a new Flink cluster also pays its JVMs' class loading and compilation, about 8 s more):
  - steady-state throughput: 4 V / (T(5 V) - T(V)), from a V- and a 5V-video build;
  - the fixed cost: T(V) less V videos at that throughput (Beam's start-up, job
    submission, the global steps; for Flink also the job server's translation, the
    scheduling of each step and the SDK workers' start), and a one-video build's time;
and prints JSON with Flink's steady throughput over the DirectRunner's (goal >= 0.8), and
how Flink's build time grows from V/2 to 5 V videos (10x the examples; goal <= 10.5x),
end to end and less the fixed cost. Videos as benchmarks/pipeline_throughput.py's
(H.264/AAC 1280x720, 30 fps); default settings (8 fps, short side 256). Every build is
checked to give the same shard bytes on both runners. --no_warm_up leaves out the
warm-up builds (benchmarks/smoke.py, whose times are not read: a Flink job less).
"""

import argparse
import glob
import hashlib
import json
import os
import shutil
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from pipeline_throughput import first_video, make_videos, pipeline  # noqa: E402

from impax.pipelines import engine  # noqa: E402


def shards(output: str) -> dict[str, str]:
  out = {}
  for path in sorted(glob.glob(os.path.join(output, "*.array_record-*"))):
    with open(path, "rb") as f:
      out[os.path.basename(path)] = hashlib.sha256(f.read()).hexdigest()
  return out


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--videos", type=int, default=16)
  parser.add_argument("--seconds", type=float, default=5.0)
  parser.add_argument("--parallelism", type=int, default=2)
  parser.add_argument("--no_warm_up", action="store_true", help="no untimed first build")
  parser.add_argument("--workdir", default=os.path.join(tempfile.gettempdir(), "impax-bench-engine"))
  args = parser.parse_args()
  v, n = args.videos, args.parallelism
  manifest = make_videos(os.path.join(args.workdir, "videos"), 5 * v, args.seconds)
  corpora = os.path.join(args.workdir, "manifests")
  start = time.perf_counter()
  cluster = engine.start("flink", os.path.join(args.workdir, "flink"), slots=n)
  results = {"videos": v, "seconds_per_video": args.seconds, "parallelism": n,
             "cpus": os.cpu_count(), "flink_cluster_start_s": round(time.perf_counter() - start, 2)}
  runners = {"direct": ["--direct_running_mode=multi_processing", f"--direct_num_workers={n}"],
             "flink": cluster["beam_options"] + [f"--parallelism={n}"]}
  try:
    bytes_seen = {}
    for name, options in runners.items():
      if not args.no_warm_up:
        pipeline(first_video(manifest, corpora, 2),
                 os.path.join(args.workdir, "out", name, "warm-up", "videos"), n, options)
      times = {}
      sizes = (1, v, 5 * v) if name == "direct" else tuple(dict.fromkeys((1, v // 2, v, 5 * v)))
      for count in sizes:
        out = os.path.join(args.workdir, "out", name, f"n{count}", "videos")
        shutil.rmtree(os.path.dirname(out), ignore_errors=True)
        times[count] = pipeline(first_video(manifest, corpora, count), out, n, options)
        bytes_seen.setdefault(count, {})[name] = shards(out)
        print(json.dumps({name: {count: round(times[count], 2)}}), file=sys.stderr)
      steady = 4 * v / (times[5 * v] - times[v])
      results[name] = {"fixed_cost_s": round(times[v] - v / steady, 2),
                       **{f"build_{c}_videos_s": round(t, 2) for c, t in times.items()},
                       "steady_videos_per_s": round(steady, 3)}
    for count, seen in bytes_seen.items():
      if len(seen) == 2:
        assert seen["direct"] == seen["flink"], f"{count} videos: the runners' shards differ"
    flink, direct = results["flink"], results["direct"]
    results["flink_steady_over_direct"] = round(
        flink["steady_videos_per_s"] / direct["steady_videos_per_s"], 3)
    small, large = flink[f"build_{v // 2}_videos_s"], flink[f"build_{5 * v}_videos_s"]
    results["flink_10x_examples_time_ratio"] = round(large / small, 3)
    results["flink_10x_examples_time_ratio_less_fixed"] = round(
        (large - flink["fixed_cost_s"]) / (small - flink["fixed_cost_s"]), 3)
  finally:
    engine.stop("flink", cluster["dir"])
  print(json.dumps(results, indent=2))


if __name__ == "__main__":
  main()
