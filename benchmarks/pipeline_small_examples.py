"""The build's fixed cost per example: `impax build` of tiny images against a plain loop
over the same per-example work, and every process's peak memory.

    .venv/bin/python benchmarks/pipeline_small_examples.py [--examples 5000] [--workers 1 2]
        [--repeat 1] [--loop_examples N] [--set fingerprints=false] [--profile PATH]
        [--workdir DIR]

Generates a few distinct 16x16 PNGs and a JSONL manifest of N lines over them (distinct
ids, a caption and a label each; default settings, so each image is resized to a short
side of 256, JPEG-encoded and fingerprinted), then in one run:
  - baseline: a plain Python loop in this process over the same work per example, without
    Beam: each manifest line parsed by the spec, `example.process_entry` (the function the
    pipeline's Process step calls: read and hash the file, decode, resize, JPEG encode,
    fingerprint, tokenize, serialize), and the record written to one ArrayRecord file with
    the build's options. Its tokenizer is trained the same way before the loop starts
    (`loop_tokenizer_s`, not in the loop's time); its records are checked to be the
    build's, byte for byte (`same_records`);
  - impax build of the manifest with N workers, in the mode the build picks (1 worker: in
    the launcher's process; 2: worker processes, since the manifest is over 64 KiB), end to
    end, and "steady": less the fixed cost of a one-example build in the same mode,
    (N - 1) / (T(N) - T(1)), as benchmarks/pipeline_throughput.py does.
Prints JSON: examples/s of each, the ratios pipeline / loop (goal at 1 worker >= 0.5),
the same in CPU seconds per example (`cpu_over_loop`: the build's CPU counts its worker
processes, so at 2 workers it is an efficiency, not a speed-up), and the peak resident memory (VmHWM) of the launcher (this process, its peak reset before
each build) and of each worker process, sampled every 0.2 s (goal: every process under
2 GiB at 200,000 examples). With --repeat R, each figure is the median of R interleaved runs.
`file_create_ms` is what creating one small file costs in --workdir (the build writes its
temporary files under its output there): it differs by 50x between folders of one disk on
the project's machine, and the build's examples/s with it. --profile PATH adds a profiled
1-worker build (not in the figures).
"""

import argparse
import collections
import cProfile
import hashlib
import json
import os
import pstats
import resource
import shutil
import statistics
import sys
import tempfile
import threading
import time

import numpy as np
import psutil
from array_record.python.array_record_module import ArrayRecordWriter
from PIL import Image

from impax.datasets import prepared, registry
from impax.pipelines import build, config as config_lib, example, read, text


def make_corpus(folder: str, count: int, images: int) -> str:
  """`images` distinct 16x16 PNGs and a manifest of `count` lines over them."""
  os.makedirs(os.path.join(folder, "images"), exist_ok=True)
  rng = np.random.default_rng(0)
  for k in range(images):
    path = os.path.join(folder, "images", f"{k}.png")
    if not os.path.exists(path):
      Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(path)
  manifest = os.path.join(folder, f"manifest-{count}.jsonl")
  if not os.path.exists(manifest):
    with open(manifest + ".partial", "w") as f:
      for i in range(count):
        f.write(json.dumps({"id": f"img-{i:07d}", "image": f"images/{i % images}.png",
                            "caption": f"a small picture of kind {i % images}",
                            "label": f"kind {i % images}"}) + "\n")
    os.replace(manifest + ".partial", manifest)
  return manifest


def head(manifest: str, count: int) -> str:
  """A manifest of the first `count` lines of `manifest`, beside it."""
  path = f"{manifest}.first{count}"
  with open(manifest) as src, open(path, "w") as dst:
    for _, line in zip(range(count), src):
      dst.write(line)
  return path


def entries(manifest: str):
  """The manifest's entries, read as the pipeline's ReadRanges step reads one byte range."""
  spec = registry.get("jsonl")
  fmt = spec.lines
  context = fmt.context(manifest, read.header(manifest, fmt.header_lines), "train")
  for number, raw in read.range_lines(manifest, 0, os.path.getsize(manifest), 1):
    if number > fmt.header_lines and (entry := fmt.parse(context, number, raw)) is not None:
      yield entry


def loop_tokenizer(manifest: str, config: config_lib.BuildConfig) -> tuple[bytes, list[str]]:
  """The tokenizer and labels the build learns from this corpus, learnt the same way."""
  spec = registry.get("jsonl")
  captions, labels = collections.Counter(), set()
  for entry in entries(manifest):
    captions.update(text.normalize(c) for c in entry.captions)
    labels.update(text.normalize(l) for l in entry.labels)
  labels = sorted(labels)
  texts = text.corpus_texts(captions.items(), labels, sorted(spec.prompts.values()))
  return text.train_tokenizer(texts, config.vocab_size, config.tokenizer_type), labels


def plain_loop(manifest: str, plan, tokenizer_model: bytes, labels: list[str], out: str
               ) -> tuple[float, float]:
  """The pipeline's per-example work in one loop, no Beam; its wall and CPU seconds."""
  label_index = {name: i for i, name in enumerate(labels)}
  # Untimed: the first example's imports (scipy, for the fingerprint), which the 1-worker
  # build, in this same process, finds done.
  example.process_entry(next(entries(manifest)), plan.config, tokenizer_model, label_index,
                        plan.media_base)
  start, cpu = time.perf_counter(), time.process_time()
  writer = ArrayRecordWriter(out, plan.config.array_record_options())
  for entry in entries(manifest):
    result, record = example.process_entry(entry, plan.config, tokenizer_model, label_index,
                                           plan.media_base)
    assert record is not None, result
    writer.write(record)
  writer.close()
  return time.perf_counter() - start, time.process_time() - cpu


def file_create_ms(folder: str, count: int = 200) -> float:
  """Milliseconds to create, write and rename one small file in `folder`, as the build's
  temporary files are: what a file costs on the disk this benchmark runs on."""
  folder = os.path.join(folder, "create-test")
  shutil.rmtree(folder, ignore_errors=True)
  os.makedirs(folder)
  start = time.perf_counter()
  for i in range(count):
    with open(os.path.join(folder, f"{i}.partial"), "wb") as f:
      f.write(b"{}" * 100)
    os.rename(os.path.join(folder, f"{i}.partial"), os.path.join(folder, f"{i}.json"))
  elapsed = time.perf_counter() - start
  shutil.rmtree(folder)
  return round(elapsed / count * 1e3, 3)


def profile(manifest: str, out: str, settings: dict, path: str):
  """A 1-worker build (in this process) under cProfile: stats to `path`, the top to stderr."""
  shutil.rmtree(out, ignore_errors=True)
  plan = build.prepare("jsonl", manifest, out, "train", (settings,))
  profiler = cProfile.Profile()
  profiler.runcall(build.run, plan, workers=1, progress=False)
  profiler.dump_stats(path)
  stats = pstats.Stats(profiler, stream=sys.stderr)
  stats.sort_stats("cumulative").print_stats(40)
  stats.sort_stats("tottime").print_stats(25)


def records_sha256(paths: list[str]) -> str:
  digest = hashlib.sha256()
  for path in paths:
    for _, data in prepared.read_shard(path):
      digest.update(data)
  return digest.hexdigest()


def vm_hwm(pid: int | str = "self") -> int:
  """Peak resident bytes of a process (VmHWM)."""
  with open(f"/proc/{pid}/status") as f:
    for line in f:
      if line.startswith("VmHWM:"):
        return int(line.split()[1]) * 1024
  return 0


def reset_hwm():
  """Resets this process's VmHWM to its current RSS (Linux's clear_refs, value 5)."""
  with open("/proc/self/clear_refs", "w") as f:
    f.write("5")


class Sampler(threading.Thread):
  """Peak resident memory of each process under this one, sampled every `interval` s."""

  def __init__(self, interval: float = 0.2):
    super().__init__(daemon=True)
    self.interval, self.stop = interval, threading.Event()
    self.peaks: dict[int, tuple[str, int]] = {}  # pid: (kind, peak bytes)

  def run(self):
    me = psutil.Process()
    while not self.stop.wait(self.interval):
      for child in me.children(recursive=True):
        try:
          name = child.name()
          # Beam starts each worker through `sh -c`: the shell is not the worker.
          worker = "sdk_worker_main" in " ".join(child.cmdline()) and name not in ("sh", "dash", "bash")
          kind = "beam_worker" if worker else name
          peak = vm_hwm(child.pid)
        except (psutil.Error, OSError):
          continue
        self.peaks[child.pid] = (kind, max(peak, self.peaks.get(child.pid, ("", 0))[1]))


def pipeline(manifest: str, out: str, workers: int, settings: dict, beam_args=()) -> dict:
  """One build, end to end; its wall and CPU seconds and every process's peak memory."""
  shutil.rmtree(out, ignore_errors=True)
  reset_hwm()
  sampler = Sampler()
  sampler.start()
  cpu = lambda: sum(r.ru_utime + r.ru_stime for r in (
      resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)))
  cpu_before, start = cpu(), time.perf_counter()
  plan = build.prepare("jsonl", manifest, out, "train", (settings,))
  summary = build.run(plan, workers=workers, beam_args=list(beam_args))
  wall = time.perf_counter() - start
  sampler.stop.set()
  sampler.join()
  assert summary["num_failed"] == 0, summary
  shards = [os.path.join(out, s["path"]) for s in summary["shards"]]
  return {"s": wall, "cpu_s": cpu() - cpu_before, "examples": summary["num_examples"],
          "shards": shards, "launcher_peak": vm_hwm(),
          "worker_peaks": sorted((p for k, p in sampler.peaks.values() if k == "beam_worker"),
                                 reverse=True),
          "other_peaks": {k: max(q for j, q in sampler.peaks.values() if j == k)
                          for k, _ in sampler.peaks.values() if k != "beam_worker"}}


def _value(text: str):
  """A --set value as JSON (false, 128, 0.5), else as the string given."""
  try:
    return json.loads(text)
  except json.JSONDecodeError:
    return text


def mib(n: float) -> float:
  return round(n / 2**20, 1)


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--examples", type=int, default=5000)
  parser.add_argument("--images", type=int, default=8, help="distinct PNGs the manifest repeats")
  parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
  parser.add_argument("--repeat", type=int, default=1,
                      help="runs of each build and of the loop, interleaved; each figure is their median")
  parser.add_argument("--loop_examples", type=int, default=None,
                      help="examples in the plain loop (default: all; its rate is per example)")
  parser.add_argument("--no_fixed_cost", action="store_true",
                      help="skip the one-example builds (no steady-state figures)")
  parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                      help="a build setting, e.g. fingerprints=false")
  parser.add_argument("--profile", metavar="PATH",
                      help="also profile a 1-worker build (cProfile stats to PATH, the top to stderr)")
  parser.add_argument("--workdir", default=os.path.join(tempfile.gettempdir(), "impax-bench-small"))
  args = parser.parse_args()
  settings = {key: _value(value) for key, value in (s.split("=", 1) for s in args.set)}
  manifest = make_corpus(args.workdir, args.examples, args.images)
  loop_manifest = head(manifest, args.loop_examples) if args.loop_examples else manifest
  loop_n = args.loop_examples or args.examples
  one = head(manifest, 1)
  results = {"examples": args.examples, "distinct_images": args.images, "settings": settings,
             "loop_examples": loop_n, "cpus": os.cpu_count(), "workdir": args.workdir,
             "file_create_ms": file_create_ms(args.workdir)}

  # The loop's plan (config, media base) is the build's; its tokenizer is learnt the same way.
  plan = build.prepare("jsonl", loop_manifest, os.path.join(args.workdir, "loop-plan"), "train",
                       (settings,), overwrite=True)
  start = time.perf_counter()
  tokenizer_model, labels = loop_tokenizer(loop_manifest, plan.config)
  results["loop_tokenizer_s"] = round(time.perf_counter() - start, 2)
  loop_file = os.path.join(args.workdir, "loop.array_record")

  loops, builds = [], {n: [] for n in args.workers}
  for _ in range(args.repeat):  # interleaved, so that a slow spell of the machine hits all
    reset_hwm()
    loops.append(plain_loop(loop_manifest, plan, tokenizer_model, labels, loop_file))
    loop_peak = vm_hwm()
    for n in args.workers:
      out = os.path.join(args.workdir, f"out{n}")
      run = pipeline(manifest, out, n, settings)
      own = build.pipeline_options([], n, read.max_entries(manifest, registry.get("jsonl")))
      own = own.get_all_options()
      run["mode"] = own["direct_running_mode"]
      if not args.no_fixed_cost:
        # The fixed cost: one example in the N-example build's own mode and workers.
        mode = [f"--direct_running_mode={own['direct_running_mode']}",
                f"--direct_num_workers={own['direct_num_workers']}"]
        run["fixed"] = pipeline(one, out + "-one", n, settings, mode)["s"]
      builds[n].append(run)
  loop_s, loop_cpu = (statistics.median(run[k] for run in loops) for k in (0, 1))
  results["loop"] = {"s": round(loop_s, 2), "runs_s": [round(s, 2) for s, _ in loops],
                     "cpu_s": round(loop_cpu, 2), "examples_per_s": round(loop_n / loop_s, 1),
                     "launcher_peak_mib": mib(loop_peak)}
  loop_rate = loop_n / loop_s
  if loop_n == args.examples:
    results["same_records"] = (records_sha256([loop_file])
                               == records_sha256(builds[args.workers[0]][-1]["shards"]))
  for n, runs in builds.items():
    med = lambda key: statistics.median(r[key] for r in runs)
    wall = med("s")
    row = {"mode": runs[0].get("mode"), "s": round(wall, 2), "runs_s": [round(r["s"], 2) for r in runs],
           "cpu_s": round(med("cpu_s"), 2), "examples_per_s": round(args.examples / wall, 1),
           "over_loop": round(args.examples / wall / loop_rate, 3),
           # CPU per example, loop over build: what a shared machine's load changes least.
           "cpu_over_loop": round(loop_cpu / loop_n / (med("cpu_s") / args.examples), 3),
           "launcher_peak_mib": mib(max(r["launcher_peak"] for r in runs)),
           "worker_peaks_mib": [mib(p) for p in max((r["worker_peaks"] for r in runs),
                                                     key=lambda p: p[:1])],
           "other_processes_peak_mib": {k: mib(p) for k, p in runs[-1]["other_peaks"].items()},
           "load_average": round(os.getloadavg()[0], 2)}
    if not args.no_fixed_cost:
      fixed = med("fixed")
      steady = (args.examples - 1) / (wall - fixed)
      row.update({"fixed_cost_s": round(fixed, 2), "steady_examples_per_s": round(steady, 1),
                  "steady_over_loop": round(steady / loop_rate, 3)})
    results[f"workers_{n}"] = row
    print(json.dumps({f"workers_{n}": row}), file=sys.stderr)
  if args.profile:
    profile(manifest, os.path.join(args.workdir, "profiled"), settings, args.profile)
  print(json.dumps(results, indent=2))


if __name__ == "__main__":
  main()
