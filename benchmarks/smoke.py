"""Every benchmark once at its smallest size: it runs to its end and prints its figures.

    .venv/bin/python benchmarks/smoke.py [NAME ...] [--keep DIR] [--jobs N]  # make bench-smoke: --jobs 2

CI runs this after the test suite (.ci/run), so that a benchmark cannot rot unnoticed (one
did: loader_throughput.py called the demo generator with an argument that had gone). Each
script in benchmarks/ runs as a subprocess with the arguments SMOKE gives it, one at a time
(--jobs N: N at once), within its timeout. It passes when it exits 0 and its standard output names each of its
figures; their values are not checked (at these sizes they mean nothing). A script in
benchmarks/ that SMOKE does not list fails the run, so a new benchmark gets its smoke
arguments when it is added. Prints each script's wall time, and exits 1 naming the failures.
NAME runs only those scripts; --keep DIR keeps their folders and logs there.

In the arguments, {work} is a fresh folder of the script's own, and {demo_data} the demo's
datasets (train/configs/demo.py's videos, images and audio, every split) at a small size,
built once for the scripts that train the demo config; those train SMALL_DEMO, the demo
config with one bucket a task.

Compiling is most of a smoke run's time (the demo config's programs take 20-30 CPU-s each on
the project's 2-core machine), so XLA compiles without its costly optimizations (FAST_COMPILE,
added to XLA_FLAGS: about half the CPU time, for slower steps, whose times are not read here),
and the scripts share one JAX persistent compilation cache that is kept from run to run
(--jax-cache): a run compiles only the programs that changed since the last. model_memory.py
turns it off for itself (compiling is what it measures); train_compile.py keeps it (--cache).
"""

import argparse
import concurrent.futures
import dataclasses
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
# web_ingest.py's peer tool, in the virtual environment that script makes on first use (with
# pip, from the network: the smoke run installs nothing).
IMG2DATASET_VENV = os.path.expanduser("~/.cache/impax/bench-venvs/img2dataset")
JAX_CACHE = os.path.expanduser("~/.cache/impax/bench-smoke/jax-cache")
FAST_COMPILE = "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"
# The demo config as the smoke runs train it (--set): each task at its first bucket and a
# batch of about 8 to 16 (the demo's 11 programs are 5; compiling them is most of the time).
SMALL_DEMO = tuple(a for item in (
    'tasks.image_text.buckets=[{"image": [32, 32]}]', "tasks.image_text.token_budget=512",
    'tasks.video_text.buckets=[{"video": [4, 32, 32]}]', "tasks.video_text.token_budget=512",
    "tasks.video_audio.token_budget=1280",
    'tasks.video_classification.buckets=[{"video": [4, 32, 32]}]',
    "tasks.video_classification.token_budget=512",
    'tasks.audio_classification.buckets=[{"audio_seconds": 0.64}]',
    "tasks.audio_classification.token_budget=1024") for a in ("--set", item))
# The demo corpus for {demo_data}, all splits: train splits that hold a batch of each task
# of SMALL_DEMO (a sixth of each for validation and for test).
DEMO_SIZES = {"videos": 30, "images": 30, "audio": 18}


@dataclasses.dataclass(frozen=True)
class Smoke:
  args: tuple[str, ...]
  figures: tuple[str, ...]  # what its standard output must name
  timeout: float = 600.0  # a hang, not a slow machine
  # A path the full run needs that a machine may lack; without it only `--help` is run.
  needs: str | None = None


SMOKE = {
    "pipeline_throughput.py": Smoke(
        ("--videos", "2", "--seconds", "1", "--workdir", "{work}"),
        ("impax_over_bare", "impax_steady_over_bare", "impax_one_video_s",
         "impax_2_workers_over_1", "impax_steady_2_workers_over_1")),
    "pipeline_memory.py": Smoke(
        ("--short_seconds", "2", "--long_seconds", "6", "--workdir", "{work}"),
        ("worker_peak_mib", "ffmpeg_peak_mib", "worker_peak_10min_over_10s",
         "worker_peak_max_mib")),
    "pipeline_scale.py": Smoke(
        ("--examples", "2", "--factor", "2", "--dir", "{work}"),
        ('"ratio"', "ratio_without_fixed_cost", "examples_per_second")),
    "pipeline_small_examples.py": Smoke(
        ("--examples", "20", "--images", "2", "--workdir", "{work}"),
        ("file_create_ms", "same_records", "over_loop", "cpu_over_loop", "steady_over_loop",
         "launcher_peak_mib", "worker_peaks_mib")),
    "engine_throughput.py": Smoke(
        ("--videos", "2", "--seconds", "1", "--no_warm_up", "--workdir", "{work}"),
        ("flink_cluster_start_s", "flink_steady_over_direct", "flink_10x_examples_time_ratio",
         "flink_10x_examples_time_ratio_less_fixed")),
    "fingerprint_cost.py": Smoke(
        ("--videos", "1", "--seconds", "1", "--rounds", "1", "--workdir", "{work}"),
        ("throughput_on_over_off", "fingerprint_over_decode")),
    "web_ingest.py": Smoke(
        ("--urls", "8", "--scale", "2", "--processes", "1", "--threads", "4", "--workdir", "{work}"),
        ("ratio_images_per_s", "ratio_cpu_s_per_image", "impax_time_growth"),
        needs=IMG2DATASET_VENV),
    "integrity.py": Smoke(
        ("--images", "20", "--mb", "8"),
        ("up-to-date prepare", "verify --deep", "x the read", "s per GB")),
    "dedup_quality.py": Smoke(
        ("--sources", "1", "--workdir", "{work}"),
        ("precision", "recall", "true_pairs", "found_pairs")),
    "dedup_scale.py": Smoke(
        ("--records", "2000", "--subset", "500"),
        ("index_s", "planted_missed", "subset_pairs_equal", "brute_force_over_index")),
    "loader_throughput.py": Smoke(
        ("--videos", "20", "--batches", "2", "--appetite_steps", "1", "--batch", "2",
         "--root", "{work}"),
        ("loader_over_plain_grain", "loader_over_tf_data", "impax_loader_3_buckets",
         "loader_two_workers_over_one", "loader_over_training_step")),
    "streaming.py": Smoke(
        ("--smoke", "--workdir", "{work}"),
        ("batches_per_s_streamed", "ratio_streamed_over_local", "first_batch_s_streamed",
         "peak_cache_bytes", "peak_rss_bytes", "loader_cpu_ms_per_batch", "batches_equal")),
    "model_step_time.py": Smoke(
        ("--smoke",),
        ("compile_s", "median_s", "ratio_moe_over_dense")),
    "model_load_balance.py": Smoke(
        ("--steps", "4", "--batch", "2"),
        ("expert_choice", "token_choice_top1", "token_choice_top2", "fraction_per_expert",
         "dropped_fraction")),
    "model_memory.py": Smoke(
        ("--smoke",),
        ("params_bytes", "temp_bytes", "peak_bytes", "hlo_flops", "model_flops_6nd",
         "compile_s")),
    "model_gpu.py": Smoke(  # its CPU path: no cuDNN attention, no MFU (no peak FLOP/s known)
        ("--presets", "tiny", "--size", "32", "--start-batch", "8", "--max-batch", "8",
         "--bisect-steps", "0", "--steps", "1"),
        ("largest_batch", "tokens_per_second", '"mfu"', "batches_tried")),
    "train_diagnostics.py": Smoke(
        ("--smoke",),
        ("step_ms_with", "step_ms_without", "ratio_with_over_without_diagnostics")),
    "train_step_time.py": Smoke(
        ("--data", "{demo_data}", "--steps", "4", *SMALL_DEMO),
        ("ratio_loader_over_memory", "data_wait_seconds_with_loader",
         "compilations_per_task_shape", "xla_compilations_in_loop")),
    "train_compile.py": Smoke(
        ("--data", "{demo_data}", "--rounds", "1", "--cache", *SMALL_DEMO),
        ("compile wall: threads", "ratio")),
    "train_ablation.py": Smoke(
        ("--data", "{demo_data}", "--steps", "2", "--seeds", "0", *SMALL_DEMO),
        ("AGD against mixed batches", "MoE against dense", "several resolutions against one",
         "patch tokens")),
    "demo_seeds.py": Smoke(
        ("--data", "{demo_data}", "--root", "{work}", "--seeds", "0", "--set", "steps=2",
         "--set", "eval_every=2", "--set", "warmup_steps=1", *SMALL_DEMO),
        ("mean ± std (min)", "best step", "video zero-shot, test", "probe: sounds",
         "video embeddings encode: colour")),
    "train_precision.py": Smoke(
        ("--data", "{demo_data}", "--root", "{work}", "--steps", "2", "--set", "eval_every=2",
         "--set", "warmup_steps=1", "--tasks", "video_text", *SMALL_DEMO),
        ("loss_curves_within_tolerance", "max_relative_difference_smoothed",
         "mean_step_seconds")),
    "same_bytes.sh": Smoke(
        (".", "{work}", "--smoke"),
        ("losses.txt", "shards.sha256")),
}


def benchmarks() -> list[str]:
  """The scripts in benchmarks/ (a leading underscore: a helper module, not a benchmark)."""
  return sorted(n for n in os.listdir(HERE) if n.endswith((".py", ".sh"))
                and n != os.path.basename(__file__) and not n.startswith("_"))


def make_demo_data(root: str) -> None:
  """The demo's datasets under root/data at DEMO_SIZES, built as the demo builds them."""
  from impax import demo
  from impax.pipelines import build
  corpus = os.path.join(root, "corpus")
  manifests = demo.write_corpus(corpus, **DEMO_SIZES)
  for key, manifest in manifests.items():
    modality, split = key.rsplit("-", 1)
    plan = build.prepare("jsonl", manifest, os.path.join(root, "data", modality), split,
                         (demo.settings(corpus),))
    summary = build.run(plan, workers=1)
    assert summary["num_failed"] == 0, summary


def children_cpu() -> float:
  usage = resource.getrusage(resource.RUSAGE_CHILDREN)
  return usage.ru_utime + usage.ru_stime


def _wait(pid: int, timeout: float) -> tuple[int, float] | None:
  """(exit status, CPU seconds of the process and of those it waited for) once it ends
  within `timeout` seconds, else None. os.wait4 gives this process's own usage, which
  RUSAGE_CHILDREN cannot when several scripts run at once."""
  end = time.monotonic() + timeout
  while True:
    done, status, usage = os.wait4(pid, os.WNOHANG)
    if done:
      return os.waitstatus_to_exitcode(status), usage.ru_utime + usage.ru_stime
    if time.monotonic() > end:
      return None
    time.sleep(0.2)


def run(command: list[str], log: str, timeout: float, env: dict
        ) -> tuple[int | str, str, float, float]:
  """(exit status or "timeout", standard output, wall seconds, CPU seconds of it and of the
  processes it waited for); both streams go to log."""
  start = time.monotonic()
  with open(log + ".out", "w") as out, open(log + ".err", "w") as err:
    # A session of its own: on a timeout its whole process group is interrupted (Beam's
    # workers, ffmpeg), as Ctrl-C would, so that the script's own clean-up runs (a Flink
    # cluster, which lives in sessions of its own, is stopped by engine_throughput's), and
    # killed if still there a minute later.
    process = subprocess.Popen(command, stdout=out, stderr=err, cwd=os.path.dirname(HERE),
                               env=env, start_new_session=True)
    ended = _wait(process.pid, timeout)
    if ended is None:
      os.killpg(process.pid, signal.SIGINT)
      ended = _wait(process.pid, 60)
      if ended is None:
        os.killpg(process.pid, signal.SIGKILL)
        ended = _wait(process.pid, 3600)
      ended = ("timeout", ended[1])
    process.returncode = ended[0] if isinstance(ended[0], int) else -1  # reaped by _wait
  with open(log + ".out") as f:
    return ended[0], f.read(), time.monotonic() - start, ended[1]


def tail(path: str, lines: int = 25) -> str:
  with open(path, errors="replace") as f:
    return "".join(f.readlines()[-lines:])


def main() -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("names", nargs="*", help="only these scripts (default: all)")
  parser.add_argument("--keep", metavar="DIR", help="keep the scripts' folders and logs in DIR")
  parser.add_argument("--jax-cache", metavar="DIR", default=JAX_CACHE,
                      help="JAX's persistent compilation cache, kept from run to run "
                      "(default: %(default)s)")
  parser.add_argument("--jobs", type=int, default=1,
                      help="scripts run at once (the demo datasets are built first)")
  parser.add_argument("--demo-data", metavar="DIR", help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.demo_data:  # the runner's own subprocess: {demo_data}
    make_demo_data(args.demo_data)
    return 0

  failures = [f"{n}: not in benchmarks/smoke.py's SMOKE (give it its smoke arguments there)"
              for n in benchmarks() if n not in SMOKE]
  failures += [f"{n}: in SMOKE but not in benchmarks/" for n in SMOKE if n not in benchmarks()]
  unknown = [n for n in args.names if n not in SMOKE]
  if unknown:
    parser.error(f"not in SMOKE: {' '.join(unknown)}")
  root = args.keep or tempfile.mkdtemp(prefix="impax-bench-smoke-")
  os.makedirs(os.path.join(root, "logs"), exist_ok=True)
  cache = args.jax_cache
  xla_flags = " ".join(filter(None, (os.environ.get("XLA_FLAGS"), FAST_COMPILE)))
  env = {**os.environ, "PYTHONUNBUFFERED": "1", "XLA_FLAGS": xla_flags,
         "JAX_COMPILATION_CACHE_DIR": cache,
         "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
         "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "-1"}
  demo_data, total = None, time.monotonic()

  def report(name, status, seconds, cpu, note=""):
    print(f"{name:28s} {status:6s} {seconds:7.1f} s {cpu:7.1f} CPU-s"
          + (f"  {note}" if note else ""), flush=True)

  names = args.names or [n for n in SMOKE if n in benchmarks()]
  if any("{demo_data}" in a for n in names for a in SMOKE[n].args):
    demo_data = os.path.join(root, "demo")
    log = os.path.join(root, "logs", "demo_data")
    status, _, seconds, cpu = run([sys.executable, __file__, "--demo-data", demo_data], log,
                                  600, env)
    report("(the small demo datasets)", "ok" if status == 0 else "FAILED", seconds, cpu)
    if status != 0:
      failures.append(f"the small demo datasets: exit {status}\n{tail(log + '.err')}")
    demo_data = os.path.join(demo_data, "data")

  def one(name: str) -> None:
    smoke = SMOKE[name]
    work = os.path.join(root, name.rsplit(".", 1)[0])
    shutil.rmtree(work, ignore_errors=True)
    command = [sys.executable] if name.endswith(".py") else ["bash"]
    command.append(os.path.join(HERE, name))
    figures, note = smoke.figures, ""
    if smoke.needs and not os.path.exists(smoke.needs):
      command.append("--help")
      figures, note = ("usage:",), f"only --help: the full run needs {smoke.needs}"
    else:
      os.makedirs(work, exist_ok=True)
      command += [a.replace("{work}", work).replace("{demo_data}", str(demo_data))
                  for a in smoke.args]
    log = os.path.join(root, "logs", name)
    status, out, seconds, cpu = run(command, log, smoke.timeout, env)
    missing = [f for f in figures if f not in out]
    if status != 0:
      failures.append(f"{name}: exit {status}\n{tail(log + '.err')}")
    elif missing:
      failures.append(f"{name}: its output names none of {missing}\n{tail(log + '.out')}")
    report(name, "ok" if status == 0 and not missing else "FAILED", seconds, cpu, note)

  with concurrent.futures.ThreadPoolExecutor(max(1, args.jobs)) as pool:
    list(pool.map(one, names))
  kept = args.keep or failures  # a failure's folders and logs stay for a look
  print(f"{'total':28s} {'':6s} {time.monotonic() - total:7.1f} s "
        f"{children_cpu():7.1f} CPU-s"
        + (f"  (logs: {root}/logs)" if kept else ""))
  if not kept:
    shutil.rmtree(root, ignore_errors=True)
  for failure in failures:
    print(f"\nFAILED {failure}", file=sys.stderr)
  return 1 if failures else 0


if __name__ == "__main__":
  sys.exit(main())
